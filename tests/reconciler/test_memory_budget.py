"""What one delivery held by a replica costs, measured: the figure behind ``ROUTED_BYTES``
and the README's memory budget table.

A real nats-server and the real consumer and coalescer; the patch never returns (an API
server at its rate limit), so every delivery pulled stays held after targeting, which is the
state a storm leaves thousands in. ``tracemalloc`` counts what holding them allocated, per
delivery, with 32 KB webhook bodies: the bodies must be gone (dropped once targeted) and
what remains (message handle and headers, routing fields, the task working on it, its place
in the object's batch) must fit the routing charge the byte budget uses for it.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import tracemalloc
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from reconciler.backpressure import ROUTED_BYTES
from reconciler.coalescing import Coalescer
from reconciler.consuming import Consumer, Unreported
from reconciler.done import DoneMemory, Stored
from reconciler.errors import TemporaryError
from reconciler.kinds import ObjectRef
from reconciler.metrics import ReconcilerMetrics
from reconciler.patching import Patched
from reconciler.targeting import Targets
from reconciler.throttling import Ticket
from schemas.envelope import Envelope
from tests.reconciler.conftest import Bus, make_envelope, wait_for

HELD = 2000
OBJECTS = 50
FIXTURES = Path(__file__).resolve().parents[1] / "receiver" / "fixtures"


class SpreadTargets:
    """Each delivery targets one of ``OBJECTS`` objects (the batches are per object)."""

    def __init__(self) -> None:
        self.calls = 0

    async def targets(self, env: Envelope) -> Targets:
        self.calls += 1
        return Targets([ObjectRef.of("GitRepository", "ns", f"repo-{self.calls % OBJECTS}")])


async def test_a_held_delivery_costs_less_than_its_routing_charge(bus: Bus) -> None:
    push = json.loads((FIXTURES / "gitlab_push.json").read_text())
    push["commits"] = (push.get("commits") or [{}]) * 30  # about 32 KB, a busy push
    assert len(json.dumps(push)) > 30_000
    for _ in range(HELD):
        await bus.publish(make_envelope("ns", "hook", push))

    release = asyncio.Event()

    async def blocked_patch(
        ref: ObjectRef,
        envelopes: Sequence[Envelope],
        *,
        ticket: Ticket | None = None,
        **_: object,
    ) -> Patched:
        await release.wait()
        raise TemporaryError("released", reason="test")

    metrics = ReconcilerMetrics(CollectorRegistry())
    settings = bus.consumer_settings(max_in_flight=HELD, max_in_flight_bytes=1 << 30)
    coalescer = Coalescer(blocked_patch, 0.0, metrics)
    consumer = Consumer(
        bus.nc, settings, "budget", SpreadTargets(), coalescer, metrics, reporter=Unreported()
    )
    await consumer.ensure()
    stop = asyncio.Event()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        running = asyncio.create_task(consumer.run(stop))
        await wait_for(
            lambda: consumer.backpressure.held_bytes == HELD * ROUTED_BYTES,
            f"{HELD} deliveries held with their bodies dropped",
        )
        gc.collect()
        per_delivery = (tracemalloc.get_traced_memory()[0] - before) / HELD
    finally:
        tracemalloc.stop()
        stop.set()
        release.set()
    await running
    await consumer.drain(10)
    await coalescer.close()
    assert coalescer.objects_waiting == 0
    assert consumer.in_flight == 0
    print(f"\none held delivery: {per_delivery:.0f} bytes (charged {ROUTED_BYTES})")
    assert per_delivery <= ROUTED_BYTES, f"{per_delivery:.0f} bytes per held delivery"
    assert per_delivery > 300  # it did measure the held deliveries, not nothing


async def test_the_lookup_cache_holds_no_more_than_the_api_budget_can_fill() -> None:
    """Every entry is one API read under the rate limit, so ``qps x ttl + burst`` bounds the
    fresh ones; a cache that only dropped expired entries grew with the number of distinct
    objects named within one TTL (rate-dependent). Here the bound is 300 and 1,000 distinct
    objects are read in one TTL: the cache never holds more than 300, the oldest going."""
    from reconciler.targeting import SharedLookups

    lookups = SharedLookups(ttl=60.0, limit=300)

    async def read(i: int) -> int:
        return i

    for i in range(1000):
        assert await lookups.get(f"obj-{i}", functools.partial(read, i)) == i
        assert len(lookups) <= 300
    assert len(lookups) >= 299  # the newest are kept
    assert await lookups.get("obj-999", lambda: read(-1)) == 999  # still cached
    assert await lookups.get("obj-0", lambda: read(-1)) == -1  # the oldest was dropped
    await lookups.close()


# ----------------------------------------------------------------------------------------
# Bytes per entry of every other bounded structure, measured the same way; the README's
# memory budget table quotes these figures (tests/test_docs.py-style check below).

ENTRIES = 4000


def _per_entry(fill: Callable[[int], object]) -> float:
    """Bytes allocated per call of ``fill`` (what it keeps referenced), averaged."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [fill(i) for i in range(ENTRIES)]
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del kept
    return (after - before) / ENTRIES


async def measured_entry_costs() -> dict[str, float]:
    """Structure -> bytes per entry, with realistic ids and envelopes."""
    from reconciler.chaining import ingest
    from reconciler.emitting import Emitter
    from reconciler.outcome_metrics import OutcomeMetrics
    from reconciler.reporting import ChainReporter
    from reconciler.settings import CDEventsSettings, HttpSinkSettings
    from reconciler.sinks import HttpSink
    from schemas.cdevents import V0_5_1

    envs: list[Any] = [make_envelope("apps", "github-push") for _ in range(ENTRIES)]
    ref = ObjectRef.of("GitRepository", "apps", "podinfo")
    registry_metrics = OutcomeMetrics(CollectorRegistry())
    costs: dict[str, float] = {}

    # a delivery following a reconcile request (ten per request, as coalescing makes them)
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(ENTRIES // 10)]

    class Watcher:
        def follow(self, ref: ObjectRef, requested_at: str, patched_at: float) -> Any:
            return futures[int(requested_at) // 10]

    reporter = ChainReporter(None, Watcher(), registry_metrics)
    costs["follower"] = _per_entry(
        lambda i: reporter.patched(Patched(ref, str(i), (envs[i]["id"],)), envs[i])
    )
    stored_at = datetime.now(UTC)
    costs["stored"] = _per_entry(lambda i: reporter.received(envs[i], stored_at))

    done = DoneMemory(ReconcilerMetrics(CollectorRegistry()))
    costs["done"] = _per_entry(lambda i: done.remember(Stored(i, envs[i]["id"]), ref.key))

    emitter = Emitter([], registry_metrics)
    planned = [ingest(env) for env in envs]
    # built inside the measurement: the id the memory keeps is counted, the event is not
    costs["emitted"] = _per_entry(lambda i: emitter.emit(ingest(envs[i])))  # type: ignore[arg-type]

    settings = CDEventsSettings(
        sinks=(HttpSinkSettings(url="http://127.0.0.1:9/x", name="m"),), outbox_size=ENTRIES
    )
    sink = HttpSink(settings.sinks[0], settings, registry_metrics)
    events = [p.build(V0_5_1) for p in planned if p is not None]
    extensions = [p.extensions for p in planned if p is not None]
    costs["outbox"] = _per_entry(lambda i: sink.offer(events[i], extensions[i]))
    costs["metadata"] = metadata_cost()
    return costs


def metadata_cost() -> float:
    """One object the metadata cache keeps, as the API server sends it (PartialObjectMetadata
    of a Kustomization Flux has handled: finalizer, labels, the reconcile annotation), parsed
    from JSON as the informer parses it."""
    from reconciler.metadata import _Collection

    raw = json.dumps(
        {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {
                "name": "NAME",
                "namespace": "apps",
                "uid": "0b7c6a0e-3c1e-4a51-9d7b-2f8e1c5d4a3b",
                "resourceVersion": "123456789",
                "generation": 3,
                "creationTimestamp": "2026-12-05T10:00:00Z",
                "labels": {
                    "app.kubernetes.io/part-of": "platform",
                    "kustomize.toolkit.fluxcd.io/name": "flux-system",
                    "kustomize.toolkit.fluxcd.io/namespace": "flux-system",
                    "team": "red",
                },
                "annotations": {"reconcile.fluxcd.io/requestedAt": "2026-12-05T10:00:00.1Z"},
                "finalizers": ["finalizers.fluxcd.io"],
                "managedFields": [{"manager": "kustomize-controller", "fieldsV1": {"f:s": {}}}],
            },
        }
    )
    collection = _Collection("Kustomization", "kustomize.toolkit.fluxcd.io/v1")
    return _per_entry(lambda i: collection.put(json.loads(raw.replace("NAME", f"app-{i:05d}"))))


async def request_cost() -> float:
    """Bytes per reconcile request an OutcomeWatcher follows (its own entry, timer and
    future; the deliveries following it are counted above). The watcher's watch is not
    started: the scope is marked as started so no API server is needed."""
    from reconciler.outcome_metrics import OutcomeMetrics
    from reconciler.outcomes import OutcomeWatcher

    unused: Any = None
    watcher = OutcomeWatcher(unused, OutcomeMetrics(CollectorRegistry()), timeout=600)
    watcher._ensure_scope = lambda ref: _Idle()  # type: ignore[method-assign,assignment,return-value]
    refs = [ObjectRef.of("GitRepository", "apps", f"repo-{i % 500}") for i in range(ENTRIES)]
    stamp = "2026-12-05T10:00:00.123456789Z"
    cost = _per_entry(lambda i: watcher.follow(refs[i], f"{stamp}{i}"))
    await watcher.close()
    return cost


class _Idle:
    """A watch scope that never watches (its cache is empty)."""

    cache: dict[str, Any] = {}


README = Path(__file__).resolve().parents[2] / "README.md"
BUDGET_ROWS = {
    "Deliveries following a request": "follower",
    "Reconcile requests followed": "request",
    "Stored-time memory": "stored",
    "Done memory": "done",
    "Emitted-id memory": "emitted",
    "CDEvents outbox": "outbox",
    "Targeted objects' metadata": "metadata",
}


def readme_budget() -> dict[str, float]:
    """The README table's bytes-per-entry figure, per structure this test measures."""
    figures: dict[str, float] = {}
    for line in README.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        for name, key in BUDGET_ROWS.items():
            if cells and cells[0].startswith(name):
                figures[key] = float(cells[2].split()[0].replace(",", ""))
    return figures


async def test_the_readme_budget_quotes_each_structure_at_or_above_its_measured_cost() -> None:
    """The memory budget table's bytes per entry are upper bounds of what each entry costs,
    measured here (a figure below its measurement, or a row missing, fails)."""
    quoted = readme_budget()
    measured = await measured_entry_costs()
    measured["request"] = await request_cost()
    print(
        "\n"
        + "\n".join(f"{k}: {v:.0f} B measured, {quoted.get(k)} quoted" for k, v in measured.items())
    )
    assert set(quoted) == set(BUDGET_ROWS.values())
    for key, cost in measured.items():
        assert 20 < cost <= quoted[key], (key, cost, quoted[key])
