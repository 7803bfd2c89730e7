"""Reconciling the books of a soak segment, per delivery id.

Three records meet here: what the driver was answered (every 202 and its envelope id), what
the objects show (every new ``requestedAt`` seen by the soak's own watch on the API server) and
what the reconciler told (the ``pipelinerun.queued`` CDEvents: one per delivery per reconcile
request, naming the delivery id, the object and the ``requestedAt`` of the request; coalesced
deliveries each get their own, with the same run id).

For each delivery answered 202 and each object it targets:

- **confirmed**: a ``queued`` event for this delivery names a ``requestedAt`` that the watch saw
  land on that object (the reconciler says it asked, and the object shows it);
- **covered**: otherwise, the object got a reconcile request after the 202 (a request made after
  the delivery was accepted reconciles the state it announced: the promise's letter, used only
  when the event that would attribute it was not emitted, e.g. a replica killed between patch
  and emit);
- **lost**: neither. Promise 1 is ``lost == 0``.

Duplicates: a delivery whose confirmed reconcile requests on one object number more than one
(a redelivered message patched twice: allowed by at-least-once, counted). A ``queued`` event
marked ``covered`` names a request someone else made after the delivery was stored (no patch
was sent for it): it confirms the delivery but is never counted as a second request. Patches
no ``queued`` event explains are counted apart. Latency of a delivery: first send to the moment its
confirming patch was seen on the last of its objects (the slowest target).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.soak.driving import Delivery
from bench.soak.observing import SeenEvent, SeenPatch
from reconciler.chaining import event_id


def chain_id_of(envelope_id: str) -> str:
    """The ``chainId`` the reconciler gives a delivery's events (uuid5 of the envelope id)."""
    return event_id(envelope_id, "chain")


QUEUED = "dev.cdevents.pipelinerun.queued"
FINISHED = "dev.cdevents.pipelinerun.finished"
INGEST = "dev.cdevents.change.merged"


@dataclass(frozen=True)
class Window:
    """Times (``time.monotonic()``) that split a segment's deliveries."""

    load_start: float
    fault_start: float
    fault_end: float
    load_end: float


@dataclass
class Latency:
    count: int = 0
    p50_s: float | None = None
    p99_s: float | None = None
    max_s: float | None = None

    @classmethod
    def of(cls, values: Sequence[float]) -> Latency:
        if not values:
            return cls()
        ordered = sorted(values)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return cls(
            len(ordered),
            round(statistics.median(ordered), 3),
            round(p99, 3),
            round(ordered[-1], 3),
        )


@dataclass
class Books:
    sent: int = 0
    accepted: int = 0
    refused: int = 0  # answered with a status that is not retried (a bug if > 0)
    gave_up: int = 0  # never 202 before the retry deadline
    answers: dict[str, int] = field(default_factory=dict)
    targets: int = 0  # (delivery, object) pairs to reconcile
    confirmed: int = 0
    covered: int = 0
    lost: int = 0
    lost_ids: list[str] = field(default_factory=list)
    duplicates: int = 0  # extra confirmed reconcile requests of one delivery on one object
    patches: int = 0
    unexplained_patches: int = 0
    deliveries_per_patch: float | None = None
    latency_before: Latency = field(default_factory=Latency)
    latency_during: Latency = field(default_factory=Latency)
    latency_after: Latency = field(default_factory=Latency)
    cdevents: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _unique(events: Iterable[SeenEvent]) -> tuple[dict[str, SeenEvent], int]:
    seen: dict[str, SeenEvent] = {}
    repeats = 0
    for event in events:
        if event.id in seen:
            repeats += 1
        else:
            seen[event.id] = event
    return seen, repeats


def reconcile(
    deliveries: Sequence[Delivery],
    patches: dict[str, list[SeenPatch]],
    nats_events: Sequence[SeenEvent],
    http_events: Sequence[SeenEvent],
    window: Window,
) -> Books:
    books = Books(sent=len(deliveries))
    answers: Counter[str] = Counter()
    for d in deliveries:
        answers.update(d.answers)
    books.answers = dict(answers)

    nats_unique, nats_repeats = _unique(nats_events)
    http_unique, http_repeats = _unique(http_events)
    # (delivery id, object key) -> requestedAt values the reconciler says it requested
    claimed: dict[tuple[str, str], set[str]] = defaultdict(set)
    covering: dict[tuple[str, str], set[str]] = defaultdict(set)  # requests others made
    explained: set[tuple[str, str]] = set()
    for event in [*nats_events, *http_events]:  # repeats too: a re-request keeps its event id
        if event.type.startswith(QUEUED) and event.delivery_id and event.run_id:
            obj, _, requested_at = event.run_id.rpartition("@")
            (covering if event.covered else claimed)[(event.delivery_id, obj)].add(requested_at)
            explained.add((obj, requested_at))

    landed: dict[str, dict[str, float]] = {
        obj: {p.requested_at: p.seen_at for p in seen} for obj, seen in patches.items()
    }
    books.patches = sum(len(v) for v in landed.values())
    books.unexplained_patches = sum(
        1 for obj, values in landed.items() for value in values if (obj, value) not in explained
    )

    before: list[float] = []
    during: list[float] = []
    after: list[float] = []
    for d in deliveries:
        if d.accepted_at is None:
            if sum(d.answers.values()) and not any(
                k in ("0", "429", "500", "502", "503", "504") for k in d.answers
            ):
                books.refused += 1
            else:
                books.gave_up += 1
            continue
        books.accepted += 1
        slowest: float | None = 0.0
        for obj in d.hook.targets:
            books.targets += 1
            on_object = landed.get(obj, {})
            own = claimed.get((d.delivery_id, obj), set())
            confirming = sorted(
                on_object[v]
                for v in own | covering.get((d.delivery_id, obj), set())
                if v in on_object
            )
            if confirming:
                books.confirmed += 1
                books.duplicates += max(0, sum(1 for v in own if v in on_object) - 1)
                if slowest is not None:
                    slowest = max(slowest, confirming[0] - d.first_sent)
                continue
            slowest = None  # latency is only measured on confirmed deliveries
            if any(seen_at >= d.accepted_at for seen_at in on_object.values()):
                books.covered += 1
            else:
                books.lost += 1
                if len(books.lost_ids) < 20:
                    books.lost_ids.append(f"{d.delivery_id} -> {obj}")
        if slowest is not None:
            if d.first_sent < window.fault_start:
                before.append(slowest)
            elif d.first_sent <= window.fault_end:
                during.append(slowest)
            else:
                after.append(slowest)
    books.latency_before = Latency.of(before)
    books.latency_during = Latency.of(during)
    books.latency_after = Latency.of(after)
    if books.patches:
        books.deliveries_per_patch = round(books.targets / books.patches, 2)

    chains = {chain_id_of(d.envelope_id) for d in deliveries if d.accepted_at and d.envelope_id}

    def stage_counts(unique: dict[str, SeenEvent]) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for event in unique.values():
            if event.chain_id in chains:
                counts[".".join(event.type.split(".")[2:4])] += 1
        return dict(counts)

    books.cdevents = {
        "expected": {
            "change.merged": books.accepted,
            "pipelinerun.queued": books.targets,
            "pipelinerun.finished": books.targets,
        },
        "nats": {**stage_counts(nats_unique), "repeated_ids": nats_repeats},
        "http": {**stage_counts(http_unique), "repeated_ids": http_repeats},
    }
    return books
