"""The publisher's own PubAck handling, against a real nats-server: every way the stream can
fail to store an event is a NotStored (503 at the edge), never a 202 and never a crash."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.aio.msg import Msg

from receiver.errors import NotStored
from receiver.publishing import Publisher
from receiver.settings import StreamSettings
from runtime import natsheaders
from runtime.pubacks import SWEEP_SECONDS, AckedPublisher, NotAcknowledged
from tests.support.natsd import NatsServer


async def ready_publisher(url: str, name: str, ack_wait: float = 2.0) -> Publisher:
    settings = StreamSettings(
        name=name,
        subject_prefix=f"{name.lower()}.events",
        dead_name=f"{name}_DEAD",
        dead_subject_prefix=f"{name.lower()}.dead",
    )
    publisher = Publisher(url, settings, ack_wait)
    await publisher.start()
    for _ in range(200):
        if publisher.ready:
            return publisher
        await asyncio.sleep(0.02)
    raise RuntimeError("publisher never became ready")


async def test_acks_name_stream_sequence_and_duplicates(nats_server: NatsServer) -> None:
    publisher = await ready_publisher(nats_server.url, "PUBOK")
    try:
        hdrs = {"Nats-Msg-Id": "one"}
        first = await asyncio.gather(
            *(
                publisher.publish(f"pubok.events.x.{i}", b"{}", {"Nats-Msg-Id": f"m{i}"})
                for i in range(50)
            )
        )
        assert sorted(s.seq for s in first) == list(range(1, 51))
        assert {s.stream for s in first} == {"PUBOK"}
        assert not any(s.duplicate for s in first)
        once = await publisher.publish("pubok.events.x", b"{}", hdrs)
        again = await publisher.publish("pubok.events.x", b"{}", hdrs)
        assert not once.duplicate
        assert again.duplicate and again.seq == once.seq
    finally:
        await publisher.close()


@pytest.mark.parametrize("raw", [True, False], ids=["hpub", "client-publish"])
async def test_both_send_paths_store_the_same_headers(nats_server: NatsServer, raw: bool) -> None:
    """The direct HPUB path and the ``Client.publish`` fallback (used if nats-py ever lacks
    the members the direct path needs) store identical messages, dict or encoded lines."""
    name = f"PUBPATH{int(raw)}"
    publisher = await ready_publisher(nats_server.url, name)
    publisher._acks.raw = raw
    nc = await nats.connect(nats_server.url)
    try:
        subject = f"{name.lower()}.events.x"
        lines = natsheaders.lines({"ce-id": "e1", "Nats-Msg-Id": "e1", "ce-time": "t"})
        first = await publisher.publish(subject, b'{"a":1}', lines)
        second = await publisher.publish(subject, b"", {"Nats-Msg-Id": "e2", "X-Two": "2"})
        js = nc.jetstream()
        one = await js.get_msg(name, first.seq)
        two = await js.get_msg(name, second.seq)
        assert one.data == b'{"a":1}'
        expected = {"Nats-Expected-Stream": name}
        assert one.headers == {"ce-id": "e1", "Nats-Msg-Id": "e1", "ce-time": "t", **expected}
        assert not two.data
        assert two.headers == {"Nats-Msg-Id": "e2", "X-Two": "2", **expected}
        dup = await publisher.publish(subject, b"{}", lines)
        assert dup.duplicate and dup.seq == first.seq
    finally:
        await nc.close()
        await publisher.close()


async def test_invalid_headers_are_refused_before_sending(nats_server: NatsServer) -> None:
    publisher = await ready_publisher(nats_server.url, "PUBBAD")
    try:
        with pytest.raises(natsheaders.HeaderError):
            await publisher.publish("pubbad.events.x", b"{}", {"Nats-Msg-Id": "a\r\nPUB x 0"})
        assert publisher._acks.waiting == 0
        ok = await publisher.publish("pubbad.events.x", b"{}", {"Nats-Msg-Id": "a"})
        assert ok.seq == 1
    finally:
        await publisher.close()


async def test_a_deleted_stream_is_not_stored(nats_server: NatsServer) -> None:
    publisher = await ready_publisher(nats_server.url, "PUBGONE")
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().delete_stream("PUBGONE")
        with pytest.raises(NotStored, match="no stream"):
            await publisher.publish("pubgone.events.x", b"{}", {"Nats-Msg-Id": "a"})
    finally:
        await nc.close()
        await publisher.close()


async def test_a_subject_captured_by_another_stream_is_refused(nats_server: NatsServer) -> None:
    """The expected-stream header makes a misrouted subject an error, not a silent store."""
    publisher = await ready_publisher(nats_server.url, "PUBMINE")
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().add_stream(name="OTHER", subjects=["other.>"])
        with pytest.raises(NotStored, match="refused"):
            await publisher._store("PUBMINE", "other.x", b"{}", {"Nats-Msg-Id": "b"})
        info = await nc.jetstream().stream_info("OTHER")
        assert info.state.messages == 0
    finally:
        await nc.close()
        await publisher.close()


async def test_no_ack_within_the_timeout_is_not_stored(nats_server: NatsServer) -> None:
    """A subject nobody answers (a plain subscriber swallows the request): NotStored, and the
    waiting reply is forgotten. nats-server 2.15 now and then answers "no responders" for it
    at once (about one run in ten here) instead of staying silent until the timeout; either
    way nothing is claimed stored. The pure timeout path is the next test's."""
    publisher = await ready_publisher(nats_server.url, "PUBSLOW", ack_wait=0.3)
    nc = await nats.connect(nats_server.url)
    try:
        await nc.subscribe("silent.x")
        await nc.flush()
        with pytest.raises(NotStored, match=r"TimeoutError|no stream for the subject"):
            await publisher._store("PUBSLOW", "silent.x", b"{}", {})
        assert publisher._acks.waiting == 0
    finally:
        await nc.close()
        await publisher.close()


async def test_an_unanswered_publish_times_out_and_the_sweeper_stops(
    nats_server: NatsServer,
) -> None:
    """No stream and a silent subscriber: no PubAck and no "no responders" either, so only the
    ack-wait deadline ends the wait (one sweeping timer, not a timer per message)."""

    async def swallow(msg: Msg) -> None:
        pass

    nc = await nats.connect(nats_server.url)
    try:
        await nc.subscribe("silent.x", cb=swallow)
        acks = AckedPublisher()
        await acks.attach(nc)
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(
            *(acks.publish("silent.x", b"{}", {"Nats-Msg-Id": str(i)}, "S", 0.3) for i in range(5)),
            return_exceptions=True,
        )
        waited = loop.time() - started
        assert all(isinstance(r, NotAcknowledged) and not r.refused for r in results)
        assert 0.3 <= waited < 0.3 + SWEEP_SECONDS + 0.5
        assert acks.waiting == 0
        await asyncio.sleep(SWEEP_SECONDS * 2)
        assert acks._sweeper is None
    finally:
        await nc.close()
