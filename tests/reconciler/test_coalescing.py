"""Coalescing as logic (a recording patch function instead of the API server; the real
server's view of a burst is in test_consuming): one patch per object per window carrying
every envelope id, separate objects separately, errors reach every delivery of the batch,
patches of one object never overlap and deliveries arriving during a patch form the next; a
batch waiting for admission keeps gathering and its patch carries the admission ticket; a
request someone else made after a batch's deliveries were stored covers the batch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from reconciler.coalescing import COVER_MARGIN, MAX_CONFLICTS, Coalescer
from reconciler.errors import Conflict, TemporaryError
from reconciler.kinds import REQUESTED_AT, THROUGH_ANNOTATION, ObjectRef
from reconciler.metrics import ReconcilerMetrics
from reconciler.patching import LastRequest, Patched, Position, rfc3339_nano, stream_identity
from reconciler.throttling import Ticket
from runtime.tokenbucket import TokenBucket
from schemas.envelope import Envelope, validate
from tests.reconciler.conftest import make_envelope

A = ObjectRef.of("Kustomization", "ns", "a")
B = ObjectRef.of("GitRepository", "ns", "b")


class Recording:
    """A patch function that records what it was asked; ``conflict``: the resource version
    the object has, and what reading it after a 409 answers (a patch expecting another one
    is refused)."""

    def __init__(
        self,
        fail: Exception | None = None,
        hold: asyncio.Event | None = None,
        conflict: tuple[str, dict[str, Any]] | None = None,
    ) -> None:
        self.calls: list[tuple[ObjectRef, list[str]]] = []
        self.tickets: list[Ticket | None] = []
        self.throughs: list[Position | None] = []
        self.expected: list[str | None] = []
        self.conflict = conflict
        self.fail = fail
        self.hold = hold
        self.active = 0
        self.peak = 0
        self.started = asyncio.Event()

    async def __call__(
        self,
        ref: ObjectRef,
        envelopes: Sequence[Envelope],
        *,
        ticket: Ticket | None = None,
        through: Position | None = None,
        expect: str | None = None,
    ) -> Patched:
        self.expected.append(expect)
        if self.conflict is not None and expect is not None and expect != self.conflict[0]:
            raise Conflict("changed", current=self.conflict[1])
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            self.calls.append((ref, [e["id"] for e in envelopes]))
            self.tickets.append(ticket)
            self.throughs.append(through)
            self.started.set()
            if self.hold is not None:
                await self.hold.wait()
            if self.fail is not None:
                raise self.fail
            return Patched(ref, f"t{len(self.calls)}", tuple(e["id"] for e in envelopes))
        finally:
            self.active -= 1


def envs(n: int) -> list[Envelope]:
    return [validate(make_envelope("ns", "hook")) for _ in range(n)]


async def test_a_burst_for_one_object_is_one_patch_with_every_id() -> None:
    patch = Recording()
    metrics = ReconcilerMetrics()
    coalescer = Coalescer(patch, 0.05, metrics)
    docs = envs(100)
    results = await asyncio.gather(*(coalescer.submit(A, d) for d in docs))
    assert len(patch.calls) == 1
    assert patch.calls[0][1] == [d["id"] for d in docs]
    assert {r.requested_at for r in results} == {"t1"}
    assert metrics.coalesced._value.get() == 99
    assert patch.tickets == [None], "without admit the patch waits for the rate limit itself"


async def test_different_objects_are_patched_separately() -> None:
    patch = Recording()
    coalescer = Coalescer(patch, 0.01, ReconcilerMetrics())
    a, b = envs(2)
    await asyncio.gather(coalescer.submit(A, a), coalescer.submit(B, b), coalescer.submit(B, a))
    assert sorted((ref.name, ids) for ref, ids in patch.calls) == [
        ("a", [a["id"]]),
        ("b", [b["id"], a["id"]]),
    ]


async def test_a_failed_patch_fails_every_delivery_it_covered() -> None:
    patch = Recording(fail=TemporaryError("boom", reason="api_500", delay=3))
    coalescer = Coalescer(patch, 0.01, ReconcilerMetrics())
    results = await asyncio.gather(
        *(coalescer.submit(A, d) for d in envs(3)), return_exceptions=True
    )
    assert all(isinstance(r, TemporaryError) and r.delay == 3 for r in results)
    assert len(patch.calls) == 1


async def test_deliveries_during_a_patch_wait_and_form_the_next_one() -> None:
    hold = asyncio.Event()
    patch = Recording(hold=hold)
    coalescer = Coalescer(patch, 0.01, ReconcilerMetrics())
    first = asyncio.create_task(coalescer.submit(A, envs(1)[0]))
    await patch.started.wait()
    later = [asyncio.create_task(coalescer.submit(A, d)) for d in envs(5)]
    await asyncio.sleep(0.05)  # several windows pass while the first patch is held
    assert len(patch.calls) == 1
    hold.set()
    await asyncio.gather(first, *later)
    assert len(patch.calls) == 2
    assert len(patch.calls[1][1]) == 5
    assert patch.peak == 1


async def test_close_cancels_waiting_deliveries() -> None:
    coalescer = Coalescer(Recording(), 10.0, ReconcilerMetrics())
    first, second = envs(2)
    await coalescer.submit(A, first)  # patched at once; the next one waits out the window
    waiting = asyncio.create_task(coalescer.submit(A, second))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await coalescer.close()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_an_idle_object_is_patched_at_once_not_after_the_window() -> None:
    patch = Recording()
    coalescer = Coalescer(patch, 30.0, ReconcilerMetrics())
    # A window of 30 s would make this time out if the first delivery waited for it.
    result = await asyncio.wait_for(coalescer.submit(A, envs(1)[0]), 10)
    assert result.requested_at == "t1"
    assert len(patch.calls) == 1


async def test_deliveries_within_the_window_of_a_patch_gather_until_it_passes() -> None:
    patch = Recording()
    window = 0.2
    coalescer = Coalescer(patch, window, ReconcilerMetrics())
    loop = asyncio.get_running_loop()
    started = loop.time()
    await coalescer.submit(A, envs(1)[0])
    later = await asyncio.gather(*(coalescer.submit(A, d) for d in envs(4)))
    assert len(patch.calls) == 2
    assert len(patch.calls[1][1]) == 4
    assert {r.requested_at for r in later} == {"t2"}
    # The second patch respected the window: at most one patch per object per window.
    assert loop.time() - started >= window


async def test_a_batch_waiting_for_the_rate_limit_keeps_gathering() -> None:
    """Under a saturated API budget the pending patch carries every delivery that arrived
    before it could be sent: after a burst each object needs one patch, not two."""
    patch = Recording()
    gate = asyncio.Event()
    admitted = 0
    issued = Ticket()

    async def admit() -> Ticket:
        nonlocal admitted
        await gate.wait()
        admitted += 1
        return issued

    coalescer = Coalescer(patch, 0.0, ReconcilerMetrics(), admit=admit)
    first = asyncio.create_task(coalescer.submit(A, envs(1)[0]))
    await asyncio.sleep(0.01)
    later = [asyncio.create_task(coalescer.submit(A, d)) for d in envs(9)]
    await asyncio.sleep(0.01)
    assert patch.calls == []
    gate.set()
    await asyncio.gather(first, *later)
    assert len(patch.calls) == 1
    assert len(patch.calls[0][1]) == 10
    assert admitted == 1
    assert patch.tickets == [issued], "the patch spends the admission, not a token of its own"


# ------------------------------------------------------------------------------- covering
# Another replica's request (seen through the metadata cache) made after every delivery of a
# batch was stored covers the batch: nothing is sent, each delivery gets that request.


def stamp(unix: float) -> str:
    return rfc3339_nano(int(unix * 1e9))


class Requests:
    """What ``MetadataCache.last_request`` would answer, per object: ``values`` the
    ``requestedAt``, ``through`` fluxrelay's ``stored-through``, ``versions`` the resource
    version."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.through: dict[str, str] = {}
        self.versions: dict[str, str] = {}

    def __call__(self, ref: ObjectRef) -> LastRequest | None:
        if ref.key not in self.values:
            return None
        key = ref.key
        return LastRequest(self.values[key], self.through.get(key), self.versions.get(key))


@pytest.mark.parametrize(
    ("request_after_store", "covered"),
    [
        pytest.param(5.0, True, id="made-after-the-newest-delivery-was-stored"),
        pytest.param(COVER_MARGIN / 2, False, id="within-the-clock-margin"),
        pytest.param(-5.0, False, id="made-before-it-was-stored"),
        pytest.param(3600.0, False, id="from-the-future"),
    ],
)
async def test_a_newer_request_covers_a_batch(request_after_store: float, covered: bool) -> None:
    patch = Recording()
    requests = Requests()
    metrics = ReconcilerMetrics()
    coalescer = Coalescer(patch, 0.0, metrics, last_request=requests)
    stored = time.time() - 10.0
    docs = envs(3)
    requests.values[A.key] = stamp(stored + request_after_store)
    results = await asyncio.gather(*(coalescer.submit(A, d, stored) for d in docs))
    if covered:
        assert patch.calls == []
        assert {(r.requested_at, r.covered) for r in results} == {(requests.values[A.key], True)}
        assert results[0].envelope_ids == tuple(d["id"] for d in docs)
        assert metrics.covered._value.get() == 3
    else:
        assert len(patch.calls) == 1
        assert not any(r.covered for r in results)
        assert metrics.covered._value.get() == 0


@pytest.mark.parametrize("value", ["not a time", "", "2026-12-06T01:12:15"])
async def test_a_request_that_is_not_an_rfc3339_time_covers_nothing(value: str) -> None:
    patch = Recording()
    requests = Requests()
    requests.values[A.key] = value
    coalescer = Coalescer(patch, 0.0, ReconcilerMetrics(), last_request=requests)
    await coalescer.submit(A, envs(1)[0], time.time() - 10.0)
    assert len(patch.calls) == 1


async def test_only_the_deliveries_a_request_postdates_leave_the_batch() -> None:
    """The redelivery case: a message nak'd because another of its targets failed comes back
    (here with one stored later, and one whose store time is not known); the request made
    since it was stored covers it, the others are patched for."""
    patch = Recording()
    requests = Requests()
    now = time.time()
    requests.values[A.key] = stamp(now - 5.0)
    metrics = ReconcilerMetrics()
    coalescer = Coalescer(patch, 0.0, metrics, last_request=requests)
    old, fresh, unknown = envs(3)
    results = await asyncio.gather(
        coalescer.submit(A, old, now - 60.0),
        coalescer.submit(A, fresh, now - 1.0),
        coalescer.submit(A, unknown),
    )
    assert patch.calls == [(A, [fresh["id"], unknown["id"]])]
    assert results[0].covered and results[0].requested_at == requests.values[A.key]
    assert results[0].envelope_ids == (old["id"],)
    assert results[1] == results[2] and not results[1].covered
    assert metrics.covered._value.get() == 1


async def test_a_request_landing_while_the_batch_waits_for_the_rate_limit_refunds_the_token() -> (
    None
):
    """The wait for a token is when another replica's patch lands: once admitted the batch
    looks again, and the token it no longer needs goes back to the bucket."""
    patch = Recording()
    requests = Requests()
    bucket = TokenBucket(rate=1.0, burst=1)
    stored = time.time() - 10.0

    async def admit() -> Ticket:
        await bucket.acquire()
        requests.values[A.key] = stamp(stored + 5.0)  # the other replica's patch, meanwhile
        return Ticket(bucket)

    coalescer = Coalescer(patch, 0.0, ReconcilerMetrics(), admit=admit, last_request=requests)
    result = await coalescer.submit(A, envs(1)[0], stored)
    assert result.covered and patch.calls == []
    assert bucket.take() == 0.0, "the refunded token is there for the next request"


STREAM = stream_identity(datetime(2026, 12, 6, 9, 0, 0, 123456, tzinfo=UTC))
"""The events stream's identity: its creation time."""


@pytest.mark.parametrize(
    ("position", "covered"),
    [
        pytest.param(Position(7, STREAM), True, id="the-message-the-request-carried"),
        pytest.param(Position(5, STREAM), True, id="an-older-message"),
        pytest.param(Position(8, STREAM), False, id="a-newer-message"),
        pytest.param(
            Position(3, stream_identity(datetime(2026, 12, 6, 9, 0, 0, 123457, tzinfo=UTC))),
            False,
            id="a-stream-created-a-microsecond-later",
        ),
        pytest.param(None, False, id="position-not-known"),
    ],
)
async def test_a_request_covers_the_messages_stored_up_to_the_one_it_carried(
    position: Position | None, covered: bool
) -> None:
    """The redelivery the request time cannot cover: its patch came within the clock margin
    of the store (here 0.2 s after), then its ack was lost (the long soak's whole-cluster
    restart). The request's stream position covers it exactly; a later message, or one of
    another stream (created anew, whose sequences start again, or another installation's)
    it does not, however close their stored times."""
    patch = Recording()
    requests = Requests()
    stored = time.time() - 10.0
    requests.values[A.key] = stamp(stored + 0.2)
    requests.through[A.key] = Position(7, STREAM).annotation()
    metrics = ReconcilerMetrics()
    coalescer = Coalescer(patch, 0.0, metrics, last_request=requests)
    result = await coalescer.submit(A, envs(1)[0], stored, position)
    assert result.covered is covered
    assert len(patch.calls) == (0 if covered else 1)
    assert metrics.covered._value.get() == (1 if covered else 0)


@pytest.mark.parametrize(
    "through", ["", "7", "7@", f"@{STREAM}", f"-7@{STREAM}", "7@yesterday", "x" * 65,
                f"\u0667@{STREAM}", f"7@{STREAM}@x"],
)  # fmt: skip
async def test_a_stored_through_that_is_not_a_position_covers_nothing(through: str) -> None:
    """Anyone who may edit the object may write the annotation: what is not a position is
    ignored (the request's time still counts, here made before the store)."""
    patch = Recording()
    requests = Requests()
    stored = time.time() - 10.0
    requests.values[A.key] = stamp(stored - 5.0)
    requests.through[A.key] = through
    coalescer = Coalescer(patch, 0.0, ReconcilerMetrics(), last_request=requests)
    result = await coalescer.submit(A, envs(1)[0], stored, Position(1, STREAM))
    assert not result.covered and len(patch.calls) == 1


async def test_a_patch_records_the_newest_message_it_carries() -> None:
    patch = Recording()
    coalescer = Coalescer(patch, 0.0, ReconcilerMetrics())
    now = time.time()
    older, newest, unplaced = envs(3)
    await asyncio.gather(
        coalescer.submit(A, newest, now - 1.0, Position(41, STREAM)),
        coalescer.submit(A, older, now - 2.0, Position(40, STREAM)),
        coalescer.submit(A, unplaced),
    )
    assert patch.calls == [(A, [newest["id"], older["id"], unplaced["id"]])]
    assert patch.throughs == [Position(41, STREAM)]
    await coalescer.submit(A, envs(1)[0])  # no position known: none recorded
    assert patch.throughs[-1] is None


@pytest.mark.parametrize("seq", [1, 123456789, 2**63])
def test_a_position_reads_back_from_its_annotation(seq: int) -> None:
    position = Position(seq, STREAM)
    assert Position.parse(position.annotation()) == position
    assert len(position.annotation()) <= 64


def conflicting(version: str, current: dict[str, Any]) -> Recording:
    """A patch refused with 409 while the object is not at the version it expects; the
    object as read after the refusal is ``current`` (another replica's request landed)."""
    return Recording(conflict=(version, current))


def seen_at_version_10(stored: float) -> Requests:
    """The watch's view when a batch is decided: the object at resource version 10, its last
    request made 30 s before the batch's message was stored (covering nothing)."""
    requests = Requests()
    requests.values[A.key] = stamp(stored - 30.0)
    requests.versions[A.key] = "10"
    return requests


def metadata(version: str, requested: str, through: Position | None = None) -> dict[str, Any]:
    annotations = {REQUESTED_AT: requested}
    if through is not None:
        annotations[THROUGH_ANNOTATION] = through.annotation()
    return {"resourceVersion": version, "annotations": annotations}


async def test_a_patch_refused_because_another_request_landed_is_covered_by_it() -> None:
    """Two replicas sending for one redelivered message at once (the long soak, after a
    stream leader change with the API server down): both send on condition of the version
    their watch showed; the one that lands second is refused, reads the object, and finds
    the first's request covers its deliveries."""
    stored = time.time() - 60.0
    requests = seen_at_version_10(stored)
    other = metadata("11", stamp(time.time()), Position(5, STREAM))
    patch = conflicting("11", other)
    metrics = ReconcilerMetrics()
    coalescer = Coalescer(patch, 0.0, metrics, last_request=requests)
    result = await coalescer.submit(A, envs(1)[0], stored, Position(5, STREAM))
    assert patch.expected == ["10"] and patch.calls == []
    assert result.covered and result.requested_at == other["annotations"][REQUESTED_AT]
    assert metrics.conflicts._value.get() == 1


async def test_a_patch_refused_by_a_change_covering_nothing_goes_again_on_the_new_version() -> None:
    """The object changed for another reason (Flux wrote its status, or a request made before
    this delivery was stored): the patch goes again, on condition of the version read."""
    stored = time.time() - 60.0
    requests = seen_at_version_10(stored)
    patch = conflicting("11", metadata("11", stamp(stored - 30.0)))
    coalescer = Coalescer(patch, 0.0, ReconcilerMetrics(), last_request=requests)
    result = await coalescer.submit(A, envs(1)[0], stored, Position(5, STREAM))
    assert patch.expected == ["10", "11"]
    assert not result.covered and len(patch.calls) == 1


async def test_an_object_that_keeps_changing_fails_the_batch_after_max_conflicts() -> None:
    stored = time.time() - 60.0
    requests = seen_at_version_10(stored)
    patch = conflicting("never", metadata("12", stamp(stored - 30.0)))
    coalescer = Coalescer(patch, 0.0, ReconcilerMetrics(), last_request=requests)
    with pytest.raises(Conflict):
        await coalescer.submit(A, envs(1)[0], stored, Position(5, STREAM))
    assert len(patch.expected) == MAX_CONFLICTS and patch.calls == []


async def test_without_a_version_seen_the_patch_is_sent_unconditionally() -> None:
    patch = conflicting("11", {})
    coalescer = Coalescer(patch, 0.0, ReconcilerMetrics(), last_request=Requests())
    await coalescer.submit(A, envs(1)[0], time.time(), Position(1, STREAM))
    assert patch.expected == [None] and len(patch.calls) == 1
