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
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry

from reconciler.backpressure import ROUTED_BYTES
from reconciler.coalescing import Coalescer
from reconciler.consuming import Consumer, Unreported
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
        ref: ObjectRef, envelopes: Sequence[Envelope], *, ticket: Ticket | None = None
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
