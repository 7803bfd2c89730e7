"""The done memory (``reconciler.done``) on a real nats-server: a delivery nak'd after one of
its targets was patched is redelivered to another replica, which patches only the rest.

Two consumers of one durable stand for two replicas; the patch function is the only stand-in
(it records, and fails the second target on the first replica only). The control case turns
the shared memory off and shows the double request it prevents (the 30-minute soak counted
113 of them after an API outage).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence

import pytest
from prometheus_client import CollectorRegistry

from reconciler.coalescing import Coalescer
from reconciler.consuming import Consumer, Unreported
from reconciler.done import SHARED_TTL, DoneMemory
from reconciler.errors import TemporaryError
from reconciler.kinds import ObjectRef
from reconciler.metrics import ReconcilerMetrics
from reconciler.patching import Patched
from reconciler.settings import ConsumerSettings
from reconciler.targeting import Targets
from reconciler.throttling import Ticket
from schemas.envelope import Envelope
from tests.reconciler.conftest import Bus, make_envelope, wait_for

A = ObjectRef.of("GitRepository", "ns", "a")
B = ObjectRef.of("GitRepository", "ns", "b")


class Replica:
    """One consumer of the shared durable, recording the targets it patched."""

    def __init__(self, bus: Bus, settings: ConsumerSettings, *, fail: ObjectRef | None) -> None:
        self.metrics = ReconcilerMetrics(CollectorRegistry())
        self.patched: list[str] = []
        self.fail = fail

        async def patch(
            ref: ObjectRef, envelopes: Sequence[Envelope], *, ticket: Ticket | None = None
        ) -> Patched:
            if ref == self.fail:
                raise TemporaryError("API server unreachable", reason="unreachable", delay=0.2)
            self.patched.append(ref.key)
            return Patched(ref, f"t{len(self.patched)}", tuple(e["id"] for e in envelopes))

        class TwoTargets:
            async def targets(self, env: Envelope) -> Targets:
                return Targets([A, B])

        self.consumer = Consumer(
            bus.nc, settings, "done", TwoTargets(), Coalescer(patch, 0.0, self.metrics),
            self.metrics, reporter=Unreported(),
        )  # fmt: skip

    def count(self, result: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "fluxrelay_reconciler_done_shared_total", {"result": result}
        )
        return value or 0.0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = asyncio.create_task(self.consumer.run(stop))
        try:
            await wait_for(self.consumer.ready.is_set, "consumer ready")
            yield
        finally:
            stop.set()
            await task
            await self.consumer.drain(5)


async def settled(bus: Bus, settings: ConsumerSettings) -> bool:
    info = await bus.js.consumer_info(settings.stream, "done")
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def hand_over(bus: Bus, settings: ConsumerSettings) -> tuple[Replica, Replica]:
    """Replica one patches A, fails B and naks; replica two then takes the redelivery."""
    one = Replica(bus, settings, fail=B)
    two = Replica(bus, settings, fail=None)
    await bus.publish(make_envelope("ns", "hook"))
    async with one.running():
        await wait_for(
            lambda: one.metrics.messages.labels("nak")._value.get() >= 1, "replica one naks"
        )
    # Replica one stopped before the nak delay ran out: the redelivery is replica two's.
    async with two.running():
        await wait_for(lambda: settled(bus, settings), "replica two acknowledges it")
    return one, two


async def test_a_redelivery_to_another_replica_patches_only_what_is_missing(bus: Bus) -> None:
    settings = bus.consumer_settings(backoff=(1.0,))
    one, two = await hand_over(bus, settings)
    assert one.patched == [A.key]
    assert two.patched == [B.key]  # A is not requested a second time
    assert one.count("shared") >= 1
    assert two.count("recalled") == 1
    assert two.metrics.redeliveries._value.get() == 1


async def test_without_the_shared_memory_the_other_replica_patches_twice(bus: Bus) -> None:
    """The control: what the bucket prevents (and what an unreachable bucket costs)."""
    settings = bus.consumer_settings(backoff=(1.0,), done_bucket="")
    one, two = await hand_over(bus, settings)
    assert one.patched == [A.key]
    assert sorted(two.patched) == [A.key, B.key]


async def test_the_same_replica_recalls_after_its_own_memory_moved_on(bus: Bus) -> None:
    """A burst of new deliveries can push an entry out of the local memory before the nak'd
    message comes back (at 500/s, 10,000 entries last 20 s; the backoff reaches 60 s)."""
    settings = bus.consumer_settings(backoff=(1.0,))
    replica = Replica(bus, settings, fail=B)
    replica.consumer.done.local_entries = 0  # every entry is forgotten at once
    await bus.publish(make_envelope("ns", "hook"))
    async with replica.running():
        await wait_for(lambda: replica.count("recalled") >= 1, "recalled from the bucket")
        replica.fail = None
        await wait_for(lambda: settled(bus, settings), "acknowledged")
    assert replica.patched.count(A.key) == 1
    assert replica.patched.count(B.key) == 1


async def test_the_bucket_is_created_bounded_and_expiring(bus: Bus) -> None:
    settings = bus.consumer_settings()
    replica = Replica(bus, settings, fail=None)
    async with replica.running():
        pass
    info = await bus.js.stream_info(f"KV_{bus.done_bucket}")
    events = await bus.js.stream_info(settings.stream)
    assert info.config.max_age == SHARED_TTL
    assert info.config.max_bytes and info.config.max_bytes > 0
    assert info.config.max_msgs_per_subject == 1
    assert info.config.num_replicas == (events.config.num_replicas or 1)
    # A second replica binds the bucket it finds.
    again = Replica(bus, settings, fail=None)
    async with again.running():
        assert again.consumer.done.bucket is not None


async def test_what_the_bucket_holds_is_checked_before_it_is_believed(bus: Bus) -> None:
    """The bucket is the reconciler's to write, but a value that is not a list of keys (or a
    key the store cannot hold) is ignored: the redelivery then patches everything again."""
    settings = bus.consumer_settings()
    replica = Replica(bus, settings, fail=None)
    async with replica.running():
        done = replica.consumer.done
        assert done.bucket is not None
        await done.bucket.put("garbage", b"{not json")
        assert await DoneMemory(replica.metrics).recall("garbage", 2) == frozenset()
        fresh = DoneMemory(replica.metrics)
        fresh.bucket = done.bucket
        assert await fresh.recall("garbage", 2) == frozenset()
        assert replica.count("failed") == 1
        await done.bucket.put("listed", json.dumps([A.key, 7]).encode())
        assert await fresh.recall("listed", 2) == {A.key}
        assert await fresh.recall("listed", 1) == {A.key}  # now known locally
        assert await fresh.recall("never-put", 2) == frozenset()
        # Three targets, two replicas: each may know a different one; both count.
        fresh.remember("mixed", A.key)
        await done.bucket.put("mixed", json.dumps([B.key]).encode())
        assert await fresh.recall("mixed", 3) == {A.key, B.key}
        assert await fresh.recall("mixed", 1) == {A.key, B.key}
        assert await fresh.recall("a key with spaces", 2) == frozenset()
        assert replica.count("absent") == 1


@pytest.mark.parametrize("targets", [1, 2_000])
async def test_a_large_done_set_is_not_shared(bus: Bus, targets: int) -> None:
    settings = bus.consumer_settings()
    replica = Replica(bus, settings, fail=None)
    async with replica.running():
        done = replica.consumer.done
        await done.share(
            "wide", (f"Kustomization/some-namespace/app-{i:05}" for i in range(targets))
        )
    expected = "shared" if targets == 1 else "too_large"
    assert replica.count(expected) == 1
