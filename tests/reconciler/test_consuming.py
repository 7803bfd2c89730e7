"""The reconciler end to end on real servers: envelopes on a real JetStream stream in, merge
patches on a real kube-apiserver out.

Covers: a named target is patched with requestedAt + the delivery annotation and the message
is acked; invalid envelopes and missing objects are dead-lettered with their reason (nothing
patched); a message that keeps failing is dead-lettered after max deliveries; 100 deliveries
for one object in a burst become one PATCH whose result, reported for each of them, carries
all 100 envelope ids; two shards (and the unsharded reconciler) each patch only their own
objects; consumer metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import pytest

from reconciler.coalescing import Patch
from reconciler.consuming import Consumer
from reconciler.decisions import Decisions
from reconciler.kinds import (
    DELIVERY_ANNOTATION,
    REQUESTED_AT,
    SHARD_LABEL,
    THROUGH_ANNOTATION,
    ObjectRef,
)
from reconciler.patching import Patched
from reconciler.running import Reconciler
from schemas.envelope import Envelope
from tests.reconciler.conftest import (
    Bus,
    Fleet,
    annotations_of,
    flux_object,
    make_envelope,
    receiver_manifest,
    requested_at,
    wait_for,
)
from tests.support.faultproxy import FaultProxy
from tests.support.kubeapi import KubeAPI
from tests.support.natsd import MAX_PAYLOAD


class Recorder:
    """Stands where the chain reporter goes and records each patch the consumer reports.

    A coalesced patch is reported once per delivery it carried: ``calls`` has each patch
    once, ``reported`` each (delivery, patch) pair. No assertions in here: the consumer logs
    and ignores a reporter's failures, so the tests check what was recorded.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[ObjectRef, str, list[str]]] = []
        self.reported: list[tuple[str, Patched]] = []
        self.untargeted_ids: list[str] = []

    def received(self, env: Envelope, stored_at: datetime | None) -> None:
        pass

    def untargeted(self, env: Envelope, decisions: Decisions) -> None:
        self.untargeted_ids.append(env["id"])

    def patched(self, patched: Patched, env: Envelope, decisions: Decisions | None = None) -> None:
        if all(p != patched for _, p in self.reported):
            self.calls.append((patched.ref, patched.requested_at, list(patched.envelope_ids)))
        self.reported.append((env["id"], patched))


def hook_naming(namespace: str, *kustomizations: str) -> dict[str, Any]:
    """The ``hook`` Receiver in ``namespace``, naming these Kustomizations there."""
    return receiver_manifest(
        "hook",
        namespace,
        [
            {"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization", "name": name}
            for name in kustomizations
        ],
    )


async def acked_all(reconciler: Reconciler) -> bool:
    assert reconciler.consumer is not None
    info = await reconciler.consumer.js.consumer_info(
        reconciler.consumer.settings.stream, reconciler.consumer.durable
    )
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


def bare_consumer(
    bus: Bus, durable: str, refs: Sequence[ObjectRef], patch: Patch, **settings: Any
) -> Consumer:
    """A consumer of the bus's stream whose every message targets ``refs``, patched through
    ``patch`` (no API server) and reported nowhere; its metrics are ``consumer.metrics``."""
    from prometheus_client import CollectorRegistry

    from reconciler.coalescing import Coalescer
    from reconciler.consuming import Unreported
    from reconciler.metrics import ReconcilerMetrics
    from reconciler.targeting import Targets

    class Fixed:
        async def targets(self, env: Envelope) -> Targets:
            return Targets(list(refs))

    metrics = ReconcilerMetrics(CollectorRegistry())
    return Consumer(
        bus.nc, bus.consumer_settings(**settings), durable, Fixed(),
        Coalescer(patch, 0.0, metrics), metrics, reporter=Unreported(),
    )  # fmt: skip


@contextlib.asynccontextmanager
async def consuming(consumer: Consumer) -> AsyncIterator[None]:
    """The consumer's loop running, stopped and drained on the way out."""
    stop = asyncio.Event()
    running = asyncio.create_task(consumer.run(stop))
    try:
        yield
    finally:
        stop.set()
        await running
        await consumer.drain(5)


async def test_a_named_target_is_patched_and_the_message_acked(
    kube: KubeAPI, kube_namespace: str, fleet: Fleet, bus: Bus
) -> None:
    kube.apply(flux_object("Kustomization", "apps"), namespace=kube_namespace)
    kube.apply(flux_object("Kustomization", "other"), namespace=kube_namespace)
    receivers = fleet.write_receivers([hook_naming(kube_namespace, "apps")])
    hook = Recorder()
    reconciler = await fleet.start(fleet.settings(receivers), reporter=hook)
    doc = make_envelope(kube_namespace, "hook")
    await bus.publish(doc)
    await wait_for(lambda: len(hook.calls) == 1, "one patch")
    await wait_for(lambda: acked_all(reconciler), "message acked")
    annotations = annotations_of(kube, kube_namespace, "Kustomization", "apps")
    ref, at, ids = hook.calls[0]
    assert ref.key == f"Kustomization/{kube_namespace}/apps"
    assert annotations[REQUESTED_AT] == at
    assert annotations[DELIVERY_ANNOTATION] == doc["id"]
    assert ids == [doc["id"]]
    assert requested_at(kube, kube_namespace, "Kustomization", "other") is None
    assert await bus.dead() == []


@pytest.mark.parametrize("position", [True, False], ids=["stored-through", "control-without"])
async def test_a_message_whose_ack_was_lost_is_not_patched_again_by_the_other_replica(
    kube: KubeAPI,
    kube_namespace: str,
    fleet: Fleet,
    bus: Bus,
    monkeypatch: pytest.MonkeyPatch,
    position: bool,
) -> None:
    """The long soak's 7 double requests after a whole-cluster restart: replica one patched
    and acked, the server lost the ack, and the message came back after ``ack_wait`` to
    replica two, which has no memory of it, and whose watch shows a request made within the
    clock margin of the store (so its time covers nothing). The request's stream position
    (``fluxrelay.io/stored-through``) covers it; the control writes none and patches twice."""
    ns = kube_namespace
    kube.apply(flux_object("Kustomization", "apps"), namespace=ns)
    receivers = fleet.write_receivers([hook_naming(ns, "apps")])
    settings = fleet.settings(receivers, consumer={"ack_wait": 6.0})
    # The patch comes within the margin here unless the machine is slow: make the time rule
    # cover nothing either way, so only the position can.
    monkeypatch.setattr("reconciler.coalescing.COVER_MARGIN", 3600.0)
    if not position:
        monkeypatch.setattr("reconciler.coalescing._Batch.through", lambda self: None)
    with monkeypatch.context() as lost:
        lost.setattr("nats.aio.msg.Msg.ack", _ack_lost)
        one = await fleet.start(settings, reporter=Recorder())
        await bus.publish(make_envelope(ns, "hook"))
        await wait_for(lambda: one.metrics.messages.labels("ack")._value.get() == 1, "acked")
        await one.stop()
        fleet.started.remove(one)
    first = annotations_of(kube, ns, "Kustomization", "apps")
    assert (THROUGH_ANNOTATION in first) is position

    two = await fleet.start(settings, reporter=Recorder())
    assert two.targeter is not None and two.targeter.metadata is not None
    await two.targeter.metadata.listed(ObjectRef.of("Kustomization", ns, "apps"))
    assert two.metrics.redeliveries._value.get() == 0, "the watch listed before it came back"
    await wait_for(lambda: acked_all(two), "the redelivery acked", limit=30)
    assert two.metrics.redeliveries._value.get() == 1
    then = annotations_of(kube, ns, "Kustomization", "apps")
    if position:
        assert then[REQUESTED_AT] == first[REQUESTED_AT], "no second request"
        assert two.metrics.covered._value.get() == 1
    else:
        assert then[REQUESTED_AT] != first[REQUESTED_AT]
        assert two.metrics.covered._value.get() == 0


async def _ack_lost(self: object) -> None:
    """An ack the server never got (published into a connection that then died)."""


async def test_invalid_messages_are_dead_lettered_with_their_reason(
    kube: KubeAPI, kube_namespace: str, fleet: Fleet, bus: Bus
) -> None:
    kube.apply(flux_object("Kustomization", "apps"), namespace=kube_namespace)
    receivers = fleet.write_receivers([hook_naming(kube_namespace, "apps", "gone")])
    reconciler = await fleet.start(fleet.settings(receivers))
    good = make_envelope(kube_namespace, "hook")
    broken = dict(good, id="broken", specversion="2")
    await bus.publish(broken)  # schema violation
    await bus.publish(make_envelope(kube_namespace, "hook"), raw=b"not json")  # body not JSON
    await bus.publish(good, headers={"Content-Type": "application/json"})  # not a CloudEvent
    await bus.publish(good)  # valid, but one of its two named targets does not exist

    async def four_dead() -> bool:
        return len(await bus.dead()) == 4

    await wait_for(four_dead, "four dead letters")
    await wait_for(lambda: acked_all(reconciler), "all settled")
    dead = await bus.dead()
    reasons = sorted(headers["Fluxrelay-Dead-Reason"] for _, headers, _ in dead)
    assert reasons == ["invalid_envelope", "invalid_envelope", "invalid_event", "not_found"]
    assert all(
        subject.startswith(bus.stream.dead_subject_prefix + ".reconciler.")
        for subject, _, _ in dead
    )
    (not_found,) = [d for d in dead if d[1]["Fluxrelay-Dead-Reason"] == "not_found"]
    assert json.loads(not_found[2])["id"] == good["id"]  # the original body is kept
    # ...although the consumer dropped it once targeted: the stored copy, payload and all
    assert json.loads(not_found[2])["payload"] == good["payload"]
    assert not_found[1]["Nats-Msg-Id"].startswith(bus.stream.name)
    assert "gone" in not_found[1]["Fluxrelay-Dead-Error"]
    # The target that exists was still patched before the message was dead-lettered.
    assert (
        annotations_of(kube, kube_namespace, "Kustomization", "apps")[DELIVERY_ANNOTATION]
        == good["id"]
    )
    assert reconciler.metrics.dead_letters.labels("not_found")._value.get() == 1


async def test_a_message_that_keeps_failing_is_dead_lettered_after_max_deliveries(
    kube: KubeAPI, kube_namespace: str, fleet: Fleet, bus: Bus
) -> None:
    receivers = fleet.write_receivers([hook_naming(kube_namespace, "apps")])
    reconciler = await fleet.start(fleet.settings(receivers, consumer={"max_deliver": 3}))
    # A Receiver the reconciler does not know is a temporary failure (its config may lag).
    await bus.publish(make_envelope(kube_namespace, "unknown-receiver"))

    async def dead() -> bool:
        return len(await bus.dead()) == 1

    await wait_for(dead, "dead letter after max deliveries")
    ((_, headers, _),) = await bus.dead()
    assert headers["Fluxrelay-Dead-Reason"] == "max_deliveries"
    assert headers["Fluxrelay-Deliveries"] == "3"
    assert "not known" in headers["Fluxrelay-Dead-Error"]
    await wait_for(lambda: acked_all(reconciler), "terminated")
    assert reconciler.metrics.messages.labels("nak")._value.get() == 2
    assert reconciler.metrics.redeliveries._value.get() == 2


async def test_a_burst_of_100_deliveries_for_one_object_is_one_patch(
    kube: KubeAPI, kube_namespace: str, fleet: Fleet, bus: Bus, kube_proxy: FaultProxy
) -> None:
    kube.apply(flux_object("GitRepository", "repo"), namespace=kube_namespace)
    receivers = fleet.write_receivers(
        [receiver_manifest("hook", kube_namespace, [{"kind": "GitRepository", "name": "repo"}])]
    )
    docs = [make_envelope(kube_namespace, "hook") for _ in range(100)]
    for doc in docs:
        await bus.publish(doc)
    hook = Recorder()
    # A generous window so that the whole burst falls in it even on a loaded machine, and a
    # byte budget that lets one pull take all 100 (a pull asks for no more messages than the
    # budget left holds at the server's max_payload each: 8 at the 64 MiB default).
    settings = fleet.settings(
        receivers,
        server=kube_proxy.url,
        coalesce_window=2.0,
        consumer={"max_in_flight_bytes": 128 * MAX_PAYLOAD},
    )
    reconciler = await fleet.start(settings, reporter=hook)
    await wait_for(lambda: acked_all(reconciler), "100 messages acked")
    assert kube_proxy.count("PATCH", "/gitrepositories/repo$") == 1
    assert kube_proxy.count("GET", "/gitrepositories/repo$") == 1  # one shared lookup
    ((_, _, ids),) = hook.calls
    assert sorted(ids) == sorted(d["id"] for d in docs)
    assert sorted(env_id for env_id, _ in hook.reported) == sorted(ids)  # each one, once
    assert all(env_id in patched.envelope_ids for env_id, patched in hook.reported)
    assert reconciler.metrics.coalesced._value.get() == 99
    assert reconciler.metrics.messages.labels("ack")._value.get() == 100


async def test_two_shards_each_patch_only_their_own_objects(
    kube: KubeAPI, kube_namespace: str, fleet: Fleet, bus: Bus
) -> None:
    for name, shard in (("a1", "a"), ("a2", "a"), ("b1", "b"), ("plain", None)):
        labels = {"team": "x", **({SHARD_LABEL: shard} if shard else {})}
        kube.apply(flux_object("Kustomization", name, labels), namespace=kube_namespace)
    resources: list[dict[str, Any]] = [
        {
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
            "kind": "Kustomization",
            "name": "*",
            "matchLabels": {"team": "x"},
        },
        {"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization", "name": "b1"},
    ]
    receivers = fleet.write_receivers([receiver_manifest("hook", kube_namespace, resources)])
    hooks = {shard: Recorder() for shard in ("a", "b", "")}
    started = {
        shard: await fleet.start(fleet.settings(receivers, shard=shard or None), reporter=hook)
        for shard, hook in hooks.items()
    }
    assert {r.consumer.durable for r in started.values() if r.consumer} == {
        "fluxrelay-reconciler-a",
        "fluxrelay-reconciler-b",
        "fluxrelay-reconciler",
    }
    await bus.publish(make_envelope(kube_namespace, "hook"))
    for reconciler in started.values():
        await wait_for(lambda r=reconciler: acked_all(r), "every shard settled")  # type: ignore[misc]
    patched = {shard: sorted(ref.name for ref, _, _ in hook.calls) for shard, hook in hooks.items()}
    assert patched == {"a": ["a1", "a2"], "b": ["b1"], "": ["plain"]}
    for name in ("a1", "a2", "b1", "plain"):
        assert requested_at(kube, kube_namespace, "Kustomization", name) is not None
    assert await bus.dead() == []


async def test_long_work_is_kept_alive_past_ack_wait_without_redelivery(
    kube: KubeAPI, kube_namespace: str, fleet: Fleet, bus: Bus, kube_proxy: FaultProxy
) -> None:
    kube.apply(flux_object("Kustomization", "apps"), namespace=kube_namespace)
    receivers = fleet.write_receivers([hook_naming(kube_namespace, "apps")])
    kube_proxy.delay(3.0, method="PATCH")  # three times the ack wait
    settings = fleet.settings(receivers, server=kube_proxy.url, consumer={"ack_wait": 1.0})
    reconciler = await fleet.start(settings)
    await bus.publish(make_envelope(kube_namespace, "hook"))
    await wait_for(lambda: acked_all(reconciler), "acked after the slow patch")
    assert kube_proxy.count("PATCH") == 1
    assert reconciler.metrics.redeliveries._value.get() == 0


async def test_consumer_lag_is_exported(
    kube: KubeAPI, kube_namespace: str, fleet: Fleet, bus: Bus, kube_proxy: FaultProxy
) -> None:
    kube.apply(flux_object("Kustomization", "apps"), namespace=kube_namespace)
    receivers = fleet.write_receivers([hook_naming(kube_namespace, "apps")])
    kube_proxy.delay(600, method="PATCH")  # hold the first patch: the rest must queue
    settings = fleet.settings(
        receivers, server=kube_proxy.url, consumer={"max_in_flight": 1, "fetch_batch": 1}
    )
    reconciler = await fleet.start(settings)
    for _ in range(10):
        await bus.publish(make_envelope(kube_namespace, "hook"))
    await wait_for(lambda: reconciler.metrics.consumer_pending._value.get() >= 5, "lag exported")
    assert reconciler.metrics.consumer_ack_pending._value.get() == 1
    kube_proxy.clear_faults()
    await kube_proxy.drop_connections()  # the held patch fails; the message is retried
    await wait_for(lambda: acked_all(reconciler), "all acked once released")
    await wait_for(lambda: reconciler.metrics.consumer_pending._value.get() == 0, "lag gone")


async def test_a_message_abandoned_on_its_last_delivery_is_dead_lettered_by_advisory(
    bus: Bus,
) -> None:
    """A replica that dies holding a message's last delivery cannot dead-letter it itself:
    the server's MAX_DELIVERIES advisory triggers it (here a raw subscriber plays the replica
    that never acks)."""
    from reconciler.metrics import ReconcilerMetrics

    settings = bus.consumer_settings(max_deliver=1, ack_wait=1.0)
    unused: Any = None  # this consumer only dead-letters; it never targets or patches
    consumer = Consumer(
        bus.nc, settings, "abandoning", unused, unused, ReconcilerMetrics(), reporter=unused
    )
    await consumer.ensure()
    dead_letters = consumer.dead_letters
    advisories = await bus.nc.subscribe(
        dead_letters.advisory_subject(), cb=dead_letters.on_max_deliveries
    )
    doc = make_envelope("ns", "hook")
    await bus.publish(doc)
    sub = await bus.js.pull_subscribe_bind(durable="abandoning", stream=settings.stream)
    (msg,) = await sub.fetch(1, timeout=5)
    assert json.loads(msg.data)["id"] == doc["id"]  # taken, never acknowledged

    async def dead() -> bool:
        with contextlib.suppress(TimeoutError):
            await sub.fetch(1, timeout=0.5)  # pull requests make the server check expiries
        return len(await bus.dead()) == 1

    await wait_for(dead, "dead letter from the advisory")
    ((subject, headers, data),) = await bus.dead()
    assert headers["Fluxrelay-Dead-Reason"] == "max_deliveries"
    assert subject.endswith(".reconciler.max_deliveries")
    assert json.loads(data)["id"] == doc["id"]
    await advisories.unsubscribe()
    await sub.unsubscribe()


async def test_a_redelivery_after_a_lost_ack_patches_nothing_again(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ack is fire-and-forget: lost with its connection (a NATS node killed), the server
    redelivers after ack_wait. The done memory must still know the delivery's targets then
    (it was dropped at the ack, and the long soak counted hundreds of such double patches)."""
    from nats.aio.msg import Msg

    from reconciler.throttling import Ticket

    ref = ObjectRef.of("GitRepository", "ns", "app")
    patches: list[str] = []

    async def patch(
        ref: ObjectRef,
        envelopes: Sequence[Envelope],
        *,
        ticket: Ticket | None = None,
        **_: object,
    ) -> Patched:
        patches.append(ref.key)
        return Patched(ref, f"t{len(patches)}", tuple(e["id"] for e in envelopes))

    real_ack = Msg.ack
    dropped: list[int] = []

    async def lossy_ack(self: Msg) -> None:
        if not dropped:  # the first ack never reaches the server
            dropped.append(self.metadata.sequence.stream)
            return
        await real_ack(self)

    monkeypatch.setattr(Msg, "ack", lossy_ack)
    consumer = bare_consumer(bus, "lost-ack", [ref], patch, ack_wait=1.0)
    await bus.publish(make_envelope("ns", "hook"))

    async def settled() -> bool:
        if not consumer.ready.is_set() or consumer.metrics.redeliveries._value.get() != 1:
            return False
        info = await bus.js.consumer_info(consumer.settings.stream, "lost-ack")
        return bool(info.num_ack_pending == 0)

    async with consuming(consumer):
        await wait_for(settled, "redelivered once, then acknowledged")
    assert dropped and patches == [ref.key]  # one patch for two deliveries of the message


async def test_a_redelivery_while_being_worked_on_joins_the_attempt_under_way(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 30-minute soak at 1,000 objects (daf7265) counted 159 double requests: after the
    NATS stream leader was killed, the server redelivered messages a replica was still
    patching (the API was down), with its keep-alive running. The redelivery started a second
    attempt, which found no target done yet and requested them again as soon as the first
    patch landed. Here the keep-alive is switched off so the server redelivers after ack_wait
    while the patch is held: the redeliveries must join the attempt under way (one patch),
    which then acks through the newest of them."""
    from nats.aio.msg import Msg

    from reconciler.throttling import Ticket

    ref = ObjectRef.of("GitRepository", "ns", "app")
    patches: list[str] = []
    release = asyncio.Event()

    async def patch(
        ref: ObjectRef,
        envelopes: Sequence[Envelope],
        *,
        ticket: Ticket | None = None,
        **_: object,
    ) -> Patched:
        patches.append(ref.key)
        await release.wait()  # the API server is unreachable until the test says so
        return Patched(ref, f"t{len(patches)}", tuple(e["id"] for e in envelopes))

    async def no_keep_alive(self: Msg) -> None:
        return None

    real_ack = Msg.ack
    acks: list[int] = []  # the delivery count of each delivery acked through

    async def recorded_ack(self: Msg) -> None:
        acks.append(self.metadata.num_delivered)
        await real_ack(self)

    monkeypatch.setattr(Msg, "in_progress", no_keep_alive)
    monkeypatch.setattr(Msg, "ack", recorded_ack)
    consumer = bare_consumer(bus, "joined", [ref], patch, ack_wait=1.0)
    metrics = consumer.metrics
    await bus.publish(make_envelope("ns", "hook"))

    async def redelivered_twice() -> bool:
        return bool(metrics.redeliveries._value.get() >= 2)

    async def acked() -> bool:
        info = await bus.js.consumer_info(consumer.settings.stream, "joined")
        return bool(info.num_ack_pending == 0 and info.num_pending == 0)

    async with consuming(consumer):
        await wait_for(redelivered_twice, "redelivered while the patch is held")
        newest = 1 + int(metrics.redeliveries._value.get())
        release.set()
        await wait_for(acked, "acknowledged")
        await asyncio.sleep(1.5)  # past ack_wait: nothing is patched again
    assert patches == [ref.key]
    # Settled through a delivery at least as new as the last one joined before the release
    # (one more may have joined meanwhile), not through the first.
    assert acks and acks[0] >= newest >= 3, (acks, newest)


async def test_a_redelivery_after_the_attempt_let_go_starts_an_attempt_of_its_own(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once an attempt is settling, a redelivery of its message must not join it: the attempt
    has read the delivery it settles through, and the joined one would never be settled (a
    dead letter's store can take seconds). It starts an attempt of its own; a different
    message that only shares the stream sequence (a stream created anew) never joins."""
    from nats.aio.msg import Msg

    async def never(*_: Any, **__: Any) -> Patched:
        raise AssertionError("nothing here is patched")

    consumer = bare_consumer(bus, "let-go", [], never)
    release = asyncio.Event()
    both_settling = asyncio.Event()
    settled: list[int] = []

    async def slow_settle(msg: Msg, env: Envelope | None, error: object) -> None:
        settled.append(msg.metadata.num_delivered)
        if len(settled) == 2:
            both_settling.set()
        await release.wait()

    monkeypatch.setattr(consumer, "settle", slow_settle)

    def delivery(count: int, stored_ns: int = 1_700_000_000_000_000_000) -> Msg:
        # Not an envelope: the attempt goes straight to settling (a dead letter).
        reply = f"$JS.ACK.{bus.consumer_settings().stream}.let-go.{count}.7.{count}.{stored_ns}.0"
        return Msg(_client=bus.nc, subject="x", reply=reply, data=b"junk", headers=None)

    consumer._start(delivery(1))
    consumer._start(delivery(1, stored_ns=1_800_000_000_000_000_000))  # another message
    consumer._start(delivery(2))  # redelivered while the first attempt is under way: joins
    await asyncio.wait_for(both_settling.wait(), 5)
    consumer._start(delivery(3))  # redelivered while the first attempt settles
    release.set()
    await asyncio.wait_for(asyncio.gather(*consumer._tasks), 5)
    # The first attempt settled through delivery 2, the other message through its own, and
    # delivery 3 had an attempt of its own.
    assert sorted(settled) == [1, 2, 3]
    assert not consumer._by_message
