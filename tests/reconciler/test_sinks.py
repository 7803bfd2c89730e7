"""CDEvents sinks and the emitter, against real peers: an aiohttp server in the test as the HTTP
sink (it can go down and come back on the same port) and a private real nats-server.

Covers: HTTP binary mode with no auth, bearer and HMAC (table), decodable by the cloudevents
SDK; a refusing sink (4xx) counts failed, a flaky one (503 + Retry-After) is retried; a sink
down for a while (5 s always, 60 s under ``slow``) loses nothing that fits the outbox, in
order, and overflow is counted; offering never blocks on a sink that hangs; JetStream: the
stream is created on both subject wildcards if missing (an existing one is left alone), the
subject is the event type, headers are CloudEvents NATS binary mode with percent-encoding,
``Nats-Msg-Id`` de-duplicates a re-emitted event, a NATS restart loses nothing; the emitter
gives each sink its own spec version and skips ids it just emitted; sink option parsing.
An event is encoded once, when queued: the HTTP request is byte for byte what the cloudevents
SDK writes (table), and one that cannot be encoded is refused at once, never raised.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import tracemalloc
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import nats
import pytest
from aiohttp import web
from cloudevents.core.bindings import http as ce_http
from nats.aio.msg import Msg
from nats.js.api import StreamConfig
from prometheus_client import CollectorRegistry

from reconciler.chaining import Planned
from reconciler.emitting import Emitter
from reconciler.outcome_metrics import OutcomeMetrics
from reconciler.settings import CDEventsSettings, HttpSinkSettings
from reconciler.sinks import (
    HttpSink,
    NatsSink,
    OutboxSink,
    RetryPolicy,
    parse_sink_option,
    signature,
)
from reconciler.sinks.http import binary_mode
from schemas import natsbinding
from schemas.cdevents import (
    Event,
    SpecRelease,
    build_event,
    decode_http,
    pipelinerun_queued,
    release_of,
    to_http_binary,
)
from tests.reconciler.conftest import wait_for
from tests.support.natsd import NatsServer

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
FAST = CDEventsSettings(retry_initial=0.05, retry_max=0.5, request_timeout=2.0, outbox_size=100)


def event(n: int, release: str = "0.5.1", subject: str | None = None) -> Event:
    return pipelinerun_queued(
        release,
        run_id=subject or f"Kustomization/ns/app@{n}",
        pipeline_name="Kustomization/ns/app",
        source="/fluxrelay/reconciler",
        id=f"id-{n}",
    )


@dataclass
class Peer:
    """The HTTP sink: records what it receives; answers from a script, then 200."""

    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    hang: bool = False
    gather: int = 0
    """Answer nothing until this many requests wait at once (0: answer at once)."""
    waiting: int = 0
    port: int = 0
    _gathered: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None
    _site: web.TCPSite | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.waiting += 1
        if self.hang:
            await asyncio.sleep(3600)
        if self.gather:
            if self.waiting >= self.gather:
                self._gathered.set()
            await self._gathered.wait()
        self.waiting -= 1
        if self._gathered.is_set() and self.waiting == 0:
            self._gathered = asyncio.Event()  # the next window gathers again
        if self.answers:
            status, headers = self.answers.pop(0)
            return web.Response(status=status, headers=headers)
        self.received.append((dict(request.headers), body))
        return web.json_response({"status": "ok"}, status=202)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/sink", self.handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.2)
        await self._runner.setup()
        await self.up()

    async def up(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()
        self.port = int(self._runner.addresses[0][1])

    async def down(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/sink"

    def ids(self) -> list[str]:
        return [json.loads(body)["context"]["id"] for _, body in self.received]


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    p = Peer()
    await p.start()
    yield p
    await p.close()


def http_sink(
    peer: Peer, metrics: OutcomeMetrics, settings: CDEventsSettings = FAST, **sink: Any
) -> HttpSink:
    return HttpSink(HttpSinkSettings(url=peer.url, name="peer", **sink), settings, metrics)


@pytest.mark.parametrize(
    ("auth", "secret"),
    [
        pytest.param("none", "", id="no-auth"),
        pytest.param("bearer", "t0ken", id="bearer"),
        pytest.param("hmac", "k3y", id="hmac-sha256"),
    ],
)
async def test_events_are_posted_in_binary_mode_with_the_configured_auth(
    peer: Peer, auth: str, secret: str
) -> None:
    metrics = OutcomeMetrics(CollectorRegistry())
    sink = http_sink(peer, metrics, auth=auth, secret=secret)
    await sink.start()
    sent = event(1)
    assert sink.offer(sent, {"traceparent": TRACE})
    await wait_for(lambda: len(peer.received) == 1, "one POST")
    await sink.close(5)
    headers, body = peer.received[0]
    lowered = {k.lower(): v for k, v in headers.items()}
    assert json.loads(body) == sent
    assert lowered["content-type"] == "application/json"
    assert lowered["ce-specversion"] == "1.0"
    assert lowered["ce-id"] == "id-1"
    assert lowered["ce-type"] == sent["context"]["type"]
    assert lowered["ce-traceparent"] == TRACE
    decoded = ce_http.from_http_event(ce_http.HTTPMessage(headers=lowered, body=body))
    assert decoded.get_id() == "id-1" and decoded.get_source() == "/fluxrelay/reconciler"
    assert decode_http(headers, body).cdevent == sent
    if auth == "bearer":
        assert lowered["authorization"] == "Bearer t0ken"
    else:
        assert "authorization" not in lowered
    if auth == "hmac":
        expected = hmac.new(b"k3y", body, hashlib.sha256).hexdigest()
        assert lowered["x-signature"] == f"sha256={expected}" == signature(b"k3y", body)
    else:
        assert "x-signature" not in lowered
    assert metrics.sink_sent.labels("peer")._value.get() == 1


async def test_a_refused_event_counts_failed_and_a_flaky_sink_is_retried(peer: Peer) -> None:
    metrics = OutcomeMetrics(CollectorRegistry())
    peer.answers = [(400, {}), (503, {"Retry-After": "0"}), (429, {}), (500, {})]
    sink = http_sink(peer, metrics)
    await sink.start()
    sink.offer(event(1), {})  # refused for good by the 400
    sink.offer(event(2), {})  # 503, 429, 500, then delivered
    await wait_for(lambda: len(peer.received) == 1, "the retried event")
    await sink.close(5)
    assert peer.ids() == ["id-2"]
    assert metrics.sink_failed.labels("peer", "rejected")._value.get() == 1
    assert metrics.sink_retries.labels("peer")._value.get() == 3
    assert metrics.sink_sent.labels("peer")._value.get() == 1


@pytest.mark.parametrize(
    "downtime",
    [
        pytest.param(5.0, id="down-5s"),
        pytest.param(60.0, id="down-a-minute", marks=pytest.mark.slow),
    ],
)
async def test_a_sink_that_is_down_loses_nothing_that_fits_the_outbox(
    peer: Peer, downtime: float
) -> None:
    metrics = OutcomeMetrics(CollectorRegistry())
    settings = replace(FAST, outbox_size=20, retry_max=1.0)
    sink = http_sink(peer, metrics, settings)
    await sink.start()
    await peer.down()
    loop = asyncio.get_running_loop()
    back = loop.time() + downtime
    offered = []
    n = 0
    while loop.time() < back:  # events keep coming while the sink is down
        n += 1
        offered.append(sink.offer(event(n), {}))
        await asyncio.sleep(downtime / 40)
    await peer.up()
    # One event was taken by the worker (retrying), 20 fit the outbox, the rest overflowed.
    kept = [f"id-{i + 1}" for i, ok in enumerate(offered) if ok]
    assert len(kept) == 21 and n > 21
    await wait_for(lambda: len(peer.received) == len(kept), "the outbox delivered")
    await sink.close(5)
    # Nothing lost; the retried head first, then the outbox (one window: any order within it).
    assert peer.ids()[0] == kept[0] and sorted(peer.ids()) == sorted(kept)
    assert metrics.sink_dropped.labels("peer", "overflow")._value.get() == n - 21
    assert metrics.sink_sent.labels("peer")._value.get() == 21
    assert metrics.sink_failed.labels("peer", "expired")._value.get() == 0
    assert metrics.outbox.labels("peer")._value.get() == 0


async def test_an_overflowing_outbox_logs_a_line_now_and_then_not_one_per_event(
    peer: Peer, caplog: pytest.LogCaptureFixture
) -> None:
    """The long soak's full outboxes dropped at the delivery rate and logged each drop: 710,962
    warnings (140 MB) from one replica in nine minutes. Each is counted; one line says it is
    happening."""
    metrics = OutcomeMetrics(CollectorRegistry())
    peer.hang = True
    sink = http_sink(peer, metrics, replace(FAST, outbox_size=10, request_timeout=30.0))
    await sink.start()
    with caplog.at_level(logging.WARNING, logger="reconciler.sinks.outbox"):
        for i in range(5_000):
            sink.offer(event(i), {})
    assert metrics.sink_dropped.labels("peer", "overflow")._value.get() == 4_990
    lines = [r.getMessage() for r in caplog.records if "dropped CDEvent" in r.getMessage()]
    assert len(lines) == 1 and "outbox holds 10" in lines[0]
    await wait_for(lambda: peer.waiting == 10, "the worker stuck on its first window of POSTs")
    await sink.close(0.2)


async def test_offering_never_waits_for_a_sink_that_hangs(peer: Peer) -> None:
    metrics = OutcomeMetrics(CollectorRegistry())
    peer.hang = True
    sink = http_sink(peer, metrics, replace(FAST, outbox_size=10, request_timeout=30.0))
    await sink.start()
    results = [sink.offer(event(i), {}) for i in range(50)]  # synchronous: cannot block
    assert results.count(True) == 10
    assert metrics.sink_dropped.labels("peer", "overflow")._value.get() == 40
    await wait_for(lambda: peer.waiting == 10, "the worker stuck on its first window of POSTs")
    assert sink.pending == 0
    await sink.close(0.2)  # what is left is counted as dropped at shutdown, not lost silently
    assert metrics.sink_dropped.labels("peer", "shutdown")._value.get() == 10


async def test_a_window_of_events_is_in_flight_at_once(peer: Peer) -> None:
    """The peer answers nothing until 8 POSTs wait together: one at a time never gets there."""
    metrics = OutcomeMetrics(CollectorRegistry())
    peer.gather = 8
    sink = http_sink(peer, metrics, replace(FAST, send_window=8))
    for i in range(16):
        assert sink.offer(event(i), {})
    await sink.start()
    await wait_for(lambda: len(peer.received) == 16, "two windows of 8 concurrent POSTs")
    await sink.close(5)
    assert sorted(peer.ids()[:8]) == sorted(f"id-{i}" for i in range(8))  # windows in order
    assert metrics.sink_sent.labels("peer")._value.get() == 16


def test_a_queued_event_is_kept_as_compact_json() -> None:
    """An outbox holds events as the bytes and headers to send: about 1 KB each, not the
    ~4 KB built dict."""
    metrics = OutcomeMetrics(CollectorRegistry())
    sink = HttpSink(
        HttpSinkSettings(url="http://127.0.0.1:9/sink", name="peer"),
        replace(FAST, outbox_size=2000),
        metrics,
    )  # never started: everything offered stays queued
    # Once-per-process caches (the builder's compiled schema: ~2 KB per event of 2000) are
    # not the outbox's: made before counting, so the test does not depend on running after
    # others that made them.
    event(-1)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(2000):
            assert sink.offer(event(i), {"traceparent": TRACE})
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    per_event = sum(d.size_diff for d in after.compare_to(before, "filename")) / 2000
    assert per_event < 1500, per_event
    assert sink.pending == 2000


@pytest.mark.parametrize(
    ("release", "subject", "timestamp", "extensions", "custom"),
    [
        pytest.param(
            "0.5.1", "Kustomization/ns/app@1", None, {"traceparent": TRACE}, None, id="traced"
        ),
        pytest.param("0.4.1", "Kustomization/ns/app@1", None, {}, None, id="old-spec-untraced"),
        pytest.param("0.5.1", 'run "1" 100%', None, {}, None, id="subject-to-percent-encode"),
        pytest.param(
            "0.5.1",
            "équipe/déploiement ✓",
            None,
            {},
            {"note": "café ✓"},
            id="non-ascii-subject-and-data",
        ),
        pytest.param("0.5.1", "s", "2024-05-01T10:00:00Z", {}, None, id="whole-seconds"),
        pytest.param("0.5.1", "s", "2024-05-01T10:00:00.123456789Z", {}, None, id="nanoseconds"),
        pytest.param("0.5.1", "s", "2024-05-01T12:00:00.5+02:00", {}, None, id="offset"),
        pytest.param("0.5.1", "s", "2024-05-01T10:00:00-00:00", {}, None, id="negative-zero"),
        pytest.param(
            "0.5.1",
            "s",
            None,
            {"traceparent": TRACE},
            {"n": [1, 2.5, None, True], "text": 'a\nb\t"q" \\ /'},
            id="escapes-and-numbers-in-data",
        ),
    ],
)
def test_a_queued_post_is_what_the_cloudevents_sdk_writes_byte_for_byte(
    release: str,
    subject: str,
    timestamp: str | None,
    extensions: dict[str, str],
    custom: dict[str, Any] | None,
) -> None:
    """The HTTP sink encodes binary mode itself, once per event (one JSON pass, not the SDK's
    three): the same header names, order and values, and the same body, as the SDK's."""
    sent = build_event(
        release,
        "pipelinerun.queued",
        subject,
        {"pipelineName": "Kustomization/ns/app"},
        source="/fluxrelay/reconciler",
        id="id-1",
        timestamp=timestamp,
        custom_data=custom,
    )
    sdk = to_http_binary(sent, extensions=extensions)
    queued = binary_mode(sent, extensions)
    assert list(queued.headers.items()) == list(sdk.headers.items())
    assert queued.body == sdk.body


# --------------------------------------------------------------------------- NATS


async def read_stream(url: str, stream: str) -> list[tuple[str, dict[str, str], bytes]]:
    """Every message of ``stream``: subject, headers, data."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            if info.state.messages == 0:
                break
            msg = await js.get_msg(stream, seq)
            out.append((str(msg.subject), dict(msg.headers or {}), msg.data or b""))
        return out
    finally:
        await nc.close()


async def test_jetstream_sink_publishes_binary_mode_on_the_type_subject(
    nats_server: NatsServer,
) -> None:
    metrics = OutcomeMetrics(CollectorRegistry())
    sink = NatsSink(nats_server.url, FAST, metrics)
    nc = await nats.connect(nats_server.url)
    seen: list[Msg] = []

    async def collect(msg: Msg) -> None:
        seen.append(msg)

    await nc.subscribe("dev.cdevents.pipelinerun.>", cb=collect)
    await sink.start()
    odd = event(1, subject='run "1" 100%')
    sink.offer(odd, {"traceparent": TRACE})
    sink.offer(odd, {"traceparent": TRACE})  # re-emitted: same id
    sink.offer(event(2, "0.4.1"), {})
    await wait_for(lambda: metrics.sink_sent.labels("nats")._value.get() == 3, "three PubAcks")
    await sink.close(5)
    await wait_for(lambda: len(seen) >= 2, "core subscriber saw the messages")
    await nc.close()
    stored = await read_stream(nats_server.url, "CDEVENTS")
    assert len(stored) == 2  # the repeat was dropped by Nats-Msg-Id
    subject, headers, data = stored[0]
    assert subject == odd["context"]["type"] == "dev.cdevents.pipelinerun.queued.0.3.0"
    assert headers["ce-subject"] == "run%20%221%22%20100%25"
    assert headers["Nats-Msg-Id"] == "id-1"
    assert headers["ce-traceparent"] == TRACE
    decoded = natsbinding.from_message(headers, data)
    assert decoded.attributes["subject"] == 'run "1" 100%'
    assert json.loads(decoded.data) == odd
    assert stored[1][0] == "dev.cdevents.pipelinerun.queued.0.2.0"  # the 0.4.1 event type
    info = await _stream_info(nats_server.url, "CDEVENTS")
    assert sorted(info.config.subjects or []) == ["dev.cdevents.>", "dev.cdeventsx.>"]


async def _stream_info(url: str, stream: str) -> Any:
    nc = await nats.connect(url)
    try:
        return await nc.jetstream().stream_info(stream)
    finally:
        await nc.close()


async def test_an_existing_cdevents_stream_is_left_as_configured(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    await nc.jetstream().add_stream(
        StreamConfig(name="MINE", subjects=["dev.cdevents.>"], max_msgs=1000)
    )
    await nc.close()
    metrics = OutcomeMetrics(CollectorRegistry())
    sink = NatsSink(nats_server.url, replace(FAST, stream="MINE"), metrics)
    await sink.start()
    sink.offer(event(1), {})
    await wait_for(lambda: metrics.sink_sent.labels("nats")._value.get() == 1, "PubAck")
    await sink.close(5)
    info = await _stream_info(nats_server.url, "MINE")
    assert info.config.subjects == ["dev.cdevents.>"] and info.config.max_msgs == 1000
    assert info.state.messages == 1


async def test_jetstream_sink_loses_nothing_across_a_nats_restart(
    nats_server: NatsServer,
) -> None:
    metrics = OutcomeMetrics(CollectorRegistry())
    sink = NatsSink(nats_server.url, FAST, metrics)
    await sink.start()
    sink.offer(event(0), {})
    await wait_for(lambda: metrics.sink_sent.labels("nats")._value.get() == 1, "first PubAck")
    nats_server.stop()
    for n in range(1, 11):
        assert sink.offer(event(n), {})
    await asyncio.sleep(0.5)  # the worker is retrying against a stopped server
    nats_server.start()
    await wait_for(lambda: metrics.sink_sent.labels("nats")._value.get() == 11, "all PubAcked")
    await sink.close(5)
    stored = await read_stream(nats_server.url, "CDEVENTS")
    ids = [json.loads(data)["context"]["id"] for _, _, data in stored]
    assert ids == [f"id-{n}" for n in range(11)]
    assert metrics.sink_retries.labels("nats")._value.get() >= 1


async def test_a_deleted_cdevents_stream_is_recreated_and_nothing_is_lost(
    nats_server: NatsServer,
) -> None:
    """The server answers "no responders" for a subject no stream takes: the sink checks its
    stream again (creating it) and retries, rather than counting the event as sent."""
    metrics = OutcomeMetrics(CollectorRegistry())
    sink = NatsSink(nats_server.url, FAST, metrics)
    await sink.start()
    sink.offer(event(0), {})
    await wait_for(lambda: metrics.sink_sent.labels("nats")._value.get() == 1, "first PubAck")
    nc = await nats.connect(nats_server.url)
    await nc.jetstream().delete_stream("CDEVENTS")
    await nc.close()
    sink.offer(event(1), {})
    await wait_for(lambda: metrics.sink_sent.labels("nats")._value.get() == 2, "second PubAck")
    await sink.close(5)
    stored = await read_stream(nats_server.url, "CDEVENTS")
    assert [json.loads(data)["context"]["id"] for _, _, data in stored] == ["id-1"]
    assert metrics.sink_retries.labels("nats")._value.get() >= 1


# --------------------------------------------------------------------------- emitter


@dataclass
class Collecting:
    """A sink that keeps what it is offered (to test the emitter's fan-out alone)."""

    name: str
    release: SpecRelease
    offered: list[Event] = field(default_factory=list)

    def offer(self, event: Event, extensions: Any) -> bool:
        self.offered.append(event)
        return True

    async def start(self) -> None:
        return None

    async def close(self, grace: float) -> None:
        return None


async def test_the_emitter_gives_each_sink_its_spec_version_and_skips_recent_ids() -> None:
    from schemas.cdevents import V0_4_1, V0_5_1

    metrics = OutcomeMetrics(CollectorRegistry())
    new, old = Collecting("new", V0_5_1), Collecting("old", V0_4_1)
    emitter = Emitter([new, old], metrics)
    planned = Planned(
        "id-x",
        "pipelinerun.queued",
        lambda release: pipelinerun_queued(
            release, run_id="r", pipeline_name="p", source="/s", id="id-x"
        ),
        TRACE,
    )
    emitter.emit(planned)
    emitter.emit(planned)  # a redelivery re-plans the same id

    def broken(release: SpecRelease) -> Event:
        return build_event(release, "pipelinerun.queued", "r", {"bogus": 1}, source="/s")

    emitter.emit(Planned("id-y", "pipelinerun.queued", broken))
    assert [e["context"]["specversion"] for e in new.offered] == ["0.5.1"]
    assert [e["context"]["version"] for e in old.offered] == ["0.4.1"]
    assert metrics.emitted.labels("pipelinerun.queued")._value.get() == 1
    assert metrics.build_errors.labels("pipelinerun.queued")._value.get() == 2  # per version


# --------------------------------------------------------------------------- options


def test_sink_options_parse_and_read_secrets(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cret\n")
    sink = parse_sink_option(
        f"https://flux.example/hook/abc,spec=0.4.1,auth=bearer,secret-file={secret},name=flux", 1
    )
    assert sink == HttpSinkSettings(
        url="https://flux.example/hook/abc",
        name="flux",
        spec_version="0.4.1",
        auth="bearer",
        secret="s3cret",
    )
    assert "s3cret" not in repr(sink) and "hook" not in repr(sink)
    from_env = parse_sink_option("http://a/x,auth=hmac,secret-env=K", 2, {"K": "key"})
    assert (from_env.name, from_env.auth, from_env.secret) == ("http-2", "hmac", "key")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param("ftp://a/x", "http", id="not-http"),
        pytest.param("http://a/x,spec=0.3.0", "unsupported", id="unknown-spec"),
        pytest.param("http://a/x,auth=basic", "auth must be", id="unknown-auth"),
        pytest.param("http://a/x,auth=bearer", "needs secret", id="auth-without-secret"),
        pytest.param("http://a/x,secret-env=NOPE", "not set", id="missing-variable"),
        pytest.param("http://a/x,colour=blue", "unknown sink option", id="unknown-option"),
        pytest.param("http://a/x,spec", "key=value", id="no-value"),
    ],
)
def test_bad_sink_options_are_refused(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_sink_option(raw, 1, {})


class Buggy(OutboxSink[str]):
    """A sink whose first try raises something unexpected and whose second try hangs; its
    message is the event id."""

    def __init__(self, metrics: OutcomeMetrics) -> None:
        super().__init__(
            "buggy",
            release_of("0.5.1"),
            metrics,
            outbox_size=10,
            retry=RetryPolicy(initial=0.01, maximum=0.05),
            send_timeout=0.2,
        )
        self.tries = 0
        self.sent: list[str] = []

    def encode(self, event: Event, extensions: Mapping[str, str]) -> str:
        return str(event["context"]["id"])

    async def send(self, message: str) -> None:
        self.tries += 1
        if self.tries == 1:
            raise RuntimeError("a bug")
        if self.tries == 2:
            await asyncio.sleep(3600)
        self.sent.append(message)


async def test_an_unexpected_error_or_a_hung_try_does_not_stop_the_worker() -> None:
    metrics = OutcomeMetrics(CollectorRegistry())
    sink = Buggy(metrics)
    await sink.start()
    assert sink.offer(event(1), {}) and sink.offer(event(2), {})
    await wait_for(lambda: sink.sent == ["id-1", "id-2"], "both delivered after the bug and hang")
    await sink.close(1)
    assert metrics.sink_retries.labels("buggy")._value.get() == 2


def test_an_event_that_cannot_be_encoded_is_refused_when_offered() -> None:
    """Encoding is a bug, not a network failure: counted failed at once (no retries for an hour)
    and never raised into the emitter."""
    metrics = OutcomeMetrics(CollectorRegistry())
    sink = HttpSink(HttpSinkSettings(url="http://127.0.0.1:9/sink", name="peer"), FAST, metrics)
    assert not sink.offer(event(1), {"Not-An-Extension": "x"})
    assert sink.pending == 0
    assert metrics.sink_failed.labels("peer", "rejected")._value.get() == 1
