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
from collections.abc import AsyncIterator, Sequence

import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.kv import KeyValue
from prometheus_client import CollectorRegistry

from reconciler import done as done_module
from reconciler.coalescing import Coalescer
from reconciler.consuming import Consumer, Unreported
from reconciler.done import SHARED_MAX_BYTES, SHARED_TTL, DoneMemory, Stored, open_bucket
from reconciler.errors import TemporaryError
from reconciler.kinds import ObjectRef
from reconciler.metrics import ReconcilerMetrics
from reconciler.patching import Patched
from reconciler.settings import ConsumerSettings
from reconciler.targeting import Targets
from reconciler.throttling import Ticket
from schemas.envelope import Envelope
from tests.reconciler.conftest import Bus, make_envelope, message_headers, wait_for

A = ObjectRef.of("GitRepository", "ns", "a")
B = ObjectRef.of("GitRepository", "ns", "b")


class Replica:
    """One consumer of the shared durable, recording the targets it patched."""

    def __init__(self, bus: Bus, settings: ConsumerSettings, *, fail: ObjectRef | None) -> None:
        self.metrics = ReconcilerMetrics(CollectorRegistry())
        self.patched: list[str] = []
        self.fail = fail

        async def patch(
            ref: ObjectRef,
            envelopes: Sequence[Envelope],
            *,
            ticket: Ticket | None = None,
            **_: object,
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
    assert info.config.max_age == SHARED_TTL
    assert info.config.max_bytes == SHARED_MAX_BYTES
    assert info.config.max_msgs_per_subject == 1
    assert info.config.allow_direct
    # A second replica binds the bucket it finds.
    again = Replica(bus, settings, fail=None)
    async with again.running():
        assert again.consumer.done.bucket is not None


async def test_a_new_message_with_an_envelope_id_seen_before_is_patched_in_full(
    bus: Bus,
) -> None:
    """The envelope id is not unique to a message: a generic webhook's delivery id is its
    body's digest, and the same body sent after the stream's duplicate window is stored
    again under the same id. It must be patched for again (a memory keyed by envelope id
    alone skipped every target and acked it: a lost request)."""
    settings = bus.consumer_settings()
    replica = Replica(bus, settings, fail=None)
    doc = make_envelope("ns", "hook")
    async with replica.running():
        await bus.publish(doc)
        await wait_for(lambda: settled(bus, settings), "the first message acknowledged")
        later = message_headers(doc) | {"Nats-Msg-Id": "after-the-duplicate-window"}
        await bus.publish(doc, headers=later)
        await wait_for(lambda: len(replica.patched) == 4, "the second message patched")
        await wait_for(lambda: settled(bus, settings), "the second message acknowledged")
    assert sorted(replica.patched) == sorted([A.key, B.key] * 2)


async def test_what_the_bucket_holds_is_checked_before_it_is_believed(bus: Bus) -> None:
    """An entry counts for the message it names: the same sequence with another envelope id
    (a stream recreated since) or under another durable (a shard, which takes the same
    message through its own durable) is not believed, nor is a value share() does not
    write. Each of those costs a second request at most."""
    settings = bus.consumer_settings()
    replica = Replica(bus, settings, fail=None)
    async with replica.running():
        bucket = replica.consumer.done.bucket
        assert bucket is not None

        def memory(durable: str) -> DoneMemory:
            m = DoneMemory(replica.metrics, durable)
            m.bucket = bucket
            return m

        one, shard = memory("done"), memory("done-s1")
        await bucket.put("done.1", b"{not json")
        assert await one.recall(Stored(1, "e1"), 2) == frozenset()
        assert replica.count("failed") == 1

        await one.share(Stored(2, "e2"), [A.key])
        assert await memory("done").recall(Stored(2, "e2"), 2) == {A.key}
        assert await memory("done").recall(Stored(2, "e2"), 1) == frozenset()  # first delivery
        assert await memory("done").recall(Stored(2, "another"), 2) == frozenset()
        assert await shard.recall(Stored(2, "e2"), 2) == frozenset()
        assert await one.recall(Stored(3, "e3"), 2) == frozenset()
        assert replica.count("absent") == 3

        # Three targets, two replicas: each may know a different one; both count.
        mixed = Stored(4, "e4")
        one.remember(mixed, A.key)
        await memory("done").share(mixed, [B.key])
        assert await one.recall(mixed, 3) == {A.key, B.key}
        assert await one.recall(mixed, 1) == {A.key, B.key}  # now known locally


async def test_a_bucket_that_could_not_be_bound_is_bound_later(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NATS hiccup at start must not leave the replica without the shared memory for the
    rest of its life: binding is tried again (every BIND_RETRY s) when a redelivery needs it."""
    settings = bus.consumer_settings()
    attempts: list[int] = []

    async def opener() -> KeyValue:
        attempts.append(1)
        if len(attempts) == 1:
            raise NatsTimeoutError
        return await open_bucket(bus.js, bus.done_bucket, settings.stream)

    metrics = ReconcilerMetrics(CollectorRegistry())
    memory = DoneMemory(metrics, "done", opener)
    assert await memory.bind() is None
    assert await memory.bind() is None and len(attempts) == 1  # not before BIND_RETRY
    monkeypatch.setattr(done_module, "BIND_RETRY", 0.0)
    memory._bind_after = 0.0
    await memory.share(Stored(9, "e9"), [A.key])
    assert memory.bucket is not None and len(attempts) == 2
    assert await DoneMemory(metrics, "done", opener).recall(Stored(9, "e9"), 2) == {A.key}


@pytest.mark.parametrize("targets", [1, 2_000])
async def test_a_large_done_set_is_not_shared(bus: Bus, targets: int) -> None:
    settings = bus.consumer_settings()
    replica = Replica(bus, settings, fail=None)
    async with replica.running():
        done = replica.consumer.done
        wide = (f"Kustomization/some-namespace/app-{i:05}" for i in range(targets))
        await done.share(Stored(1, "wide"), wide)
    expected = "shared" if targets == 1 else "too_large"
    assert replica.count(expected) == 1
