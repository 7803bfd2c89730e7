"""Sinks: delivering emitted CDEvents to JetStream and to HTTP endpoints, without ever
holding up reconciliation and without losing an event silently.

Every sink has a bounded outbox (an asyncio queue). ``offer`` puts an event in it and returns
at once; when the outbox is full the event is dropped, counted
(``fluxrelay_reconciler_sink_dropped{reason="overflow"}``) and logged with its id. The outbox
holds each event as its compact JSON bytes, not as the built dict: a queued ``pipelinerun``
event is ~0.6 KB of JSON but ~4 KB of nested dicts and strings, and a sink that is down for
minutes holds up to ``outbox_size`` of them.

One worker per sink sends the outbox in order, a *window* of up to ``send_window`` events at a
time: their requests (PubAcks, POSTs) are in flight together, so events within one window may
arrive in any order, and a window is finished before the next starts. Sending one event at a
time could not keep up: each event costs a round trip plus a turn of a busy event loop, and at
500 deliveries/s (about 5 events each) the soak's outboxes grew by ~900 events/s per sink,
which was the reconciler's whole RSS growth. Events of a window that fail are retried one at a
time, in order, with capped exponential backoff and full jitter (a ``Retry-After`` from an HTTP
sink wins when longer), and the next window is a single event until one is delivered again, so
a sink that is down for a while only makes its outbox grow, and it catches up in order when it
is back. An event still failing after ``give_up_after`` seconds, or refused outright (an HTTP
4xx other than 408, 425 and 429), is counted as failed and logged. On shutdown the sinks get a
grace period to empty their outboxes; whatever is left is counted as dropped (``shutdown``) and
logged.

- :class:`NatsSink`: its own NATS connection (reconnecting forever); ensures the CDEvents stream
  (``dev.cdevents.>`` and ``dev.cdeventsx.>``) exists, creating it if missing and leaving an
  existing one as its operator configured it; publishes each event on the subject equal to
  its type in CloudEvents NATS binary mode (``ce-*`` headers, percent-encoded values) with
  ``Nats-Msg-Id`` = the event id, and counts it sent only after the PubAck.
- :class:`HttpSink`: one aiohttp session; CloudEvents HTTP binary mode (``ce-*`` headers,
  body = the CDEvent), optionally ``Authorization: Bearer`` or ``X-Signature: sha256=<hex>``
  (HMAC-SHA256 of the body).

Log lines name the sink and the event id, never the sink URL's path (a Flux hook path is a
secret), a token or a body.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import Error as JetStreamError
from nats.js.errors import NotFoundError

from reconciler.outcome_metrics import OutcomeMetrics
from reconciler.settings import CDEventsSettings, HttpSinkSettings
from runtime import natsconn
from runtime.pubacks import AckedPublisher, NotAcknowledged
from schemas import natsbinding, subjects
from schemas.cdevents import Event, SpecRelease, cloudevent_attributes, release_of, to_http_binary

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 425, 429})
MAX_RETRY_AFTER = 300.0


class Retry(Exception):
    """This try failed; try again (after ``delay`` seconds at least, if given)."""

    def __init__(self, message: str, delay: float = 0.0) -> None:
        super().__init__(message)
        self.delay = delay


class Rejected(Exception):
    """The sink refused the event for good (retrying would not help)."""


@dataclass(frozen=True, slots=True)
class _Item:
    """One queued event, kept small (see the module docstring): its id for logs, its compact
    JSON and its CloudEvents extensions as pairs."""

    event_id: str
    data: bytes
    extensions: tuple[tuple[str, str], ...]
    queued_at: float

    @classmethod
    def of(cls, event: Event, extensions: Mapping[str, str]) -> _Item:
        # Not orjson here: its bytes keep the capacity it grew while writing (~8 KB each by
        # tracemalloc), and these are held for as long as the event waits in the outbox.
        data = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
        return cls(str(event["context"]["id"]), data, tuple(extensions.items()), time.monotonic())

    def event(self) -> Event:
        decoded: Event = orjson.loads(self.data)
        return decoded


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How one sink retries (from :class:`reconciler.settings.CDEventsSettings`)."""

    initial: float = 0.5
    maximum: float = 30.0
    give_up_after: float = 3600.0

    @classmethod
    def of(cls, settings: CDEventsSettings) -> RetryPolicy:
        return cls(settings.retry_initial, settings.retry_max, settings.give_up_after)

    def delay(self, failures: int) -> float:
        ceiling = min(self.maximum, self.initial * 2 ** max(failures - 1, 0))
        return random.uniform(0, ceiling)  # noqa: S311 - full jitter, not a secret


class OutboxSink:
    """The bounded outbox and the retrying worker every sink shares."""

    def __init__(
        self,
        name: str,
        release: SpecRelease,
        metrics: OutcomeMetrics,
        *,
        outbox_size: int,
        retry: RetryPolicy,
        send_window: int = 1,
        send_timeout: float = 60.0,
    ) -> None:
        self.name = name
        self.release = release
        self._metrics = metrics
        self._retry = retry
        self._window = max(1, send_window)
        self._send_timeout = send_timeout
        self._healthy = True
        """False from a failed try until the next delivered event: windows are then one event."""
        self._outbox: asyncio.Queue[_Item] = asyncio.Queue(maxsize=outbox_size)
        self._worker: asyncio.Task[None] | None = None
        self._current: list[_Item] = []
        """The window being sent: events taken from the outbox, not delivered yet."""
        self._closing = asyncio.Event()
        self._gauge = metrics.outbox.labels(name)
        self._gauge.set(0)

    @property
    def pending(self) -> int:
        """Events waiting in the outbox (not counting the one being sent)."""
        return self._outbox.qsize()

    def offer(self, event: Event, extensions: Mapping[str, str]) -> bool:
        """Queue ``event`` for delivery; never blocks. False (counted, logged) when full."""
        if self._closing.is_set():
            self._drop(event["context"]["id"], "shutdown")
            return False
        if self._outbox.full():
            self._drop(event["context"]["id"], "overflow")
            return False
        self._outbox.put_nowait(_Item.of(event, extensions))
        self._gauge.set(self._outbox.qsize())
        return True

    def _drop(self, event_id: str, reason: str) -> None:
        self._metrics.sink_dropped.labels(self.name, reason).inc()
        log.warning(
            "sink %s dropped CDEvent %s (%s): outbox holds %d",
            self.name,
            event_id,
            reason,
            self._outbox.qsize(),
        )

    async def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name=f"sink-{self.name}")

    async def close(self, grace: float) -> None:
        """Deliver what the outbox holds for up to ``grace`` seconds, then stop."""
        self._closing.set()
        if self._worker is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox.join(), grace)
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        for item in self._current:  # interrupted mid-delivery: it may not have arrived
            self._drop(item.event_id, "shutdown")
        self._current = []
        while not self._outbox.empty():
            item = self._outbox.get_nowait()
            self._outbox.task_done()
            self._drop(item.event_id, "shutdown")
        self._gauge.set(0)
        await self._disconnect()

    async def _work(self) -> None:
        while True:
            window = [await self._outbox.get()]
            if self._healthy:
                while len(window) < self._window and not self._outbox.empty():
                    window.append(self._outbox.get_nowait())
            self._current = list(window)
            try:
                await self._send_window(window)
            finally:
                for _ in window:
                    self._outbox.task_done()
                self._gauge.set(self._outbox.qsize())

    async def _send_window(self, window: list[_Item]) -> None:
        """First tries of the whole window together; then the failed ones, one at a time."""
        if len(window) == 1:
            errors: list[Retry | None] = [await self._attempt(window[0])]
        else:
            errors = list(await asyncio.gather(*(self._attempt(item) for item in window)))
        if any(error is not None for error in errors):
            self._healthy = False
        for item, error in zip(window, errors, strict=True):
            if error is not None:
                await self._deliver(item, error)
            self._current.remove(item)

    async def _attempt(self, item: _Item) -> Retry | None:
        """One try of ``item``: None when it is done with (sent, or refused for good).

        Nothing escapes: an unexpected error or a try that outlives ``send_timeout`` (the
        sink's own request timeout should have ended it) is retried like any failure, so the
        one worker never stops or stalls for good, leaving the outbox to fill silently.
        """
        try:
            await asyncio.wait_for(
                self.send(item.event(), dict(item.extensions)), self._send_timeout
            )
        except Rejected as e:
            self._metrics.sink_failed.labels(self.name, "rejected").inc()
            log.error("sink %s refused CDEvent %s: %s", self.name, item.event_id, e)
            return None
        except Retry as e:
            return e
        except TimeoutError:
            return Retry(f"no answer within {self._send_timeout:g}s")
        except Exception as e:
            log.exception("sink %s: unexpected error sending CDEvent %s", self.name, item.event_id)
            return Retry(f"internal error: {type(e).__name__}")
        self._metrics.sink_sent.labels(self.name).inc()
        self._healthy = True
        return None

    async def _deliver(self, item: _Item, error: Retry) -> None:
        """Retry ``item`` (whose last try failed with ``error``) until it is done or expired."""
        failures = 0
        while True:
            failures += 1
            if time.monotonic() - item.queued_at > self._retry.give_up_after:
                self._metrics.sink_failed.labels(self.name, "expired").inc()
                log.error(
                    "sink %s gave up on CDEvent %s after %d tries: %s",
                    self.name,
                    item.event_id,
                    failures,
                    error,
                )
                return
            self._metrics.sink_retries.labels(self.name).inc()
            delay = max(self._retry.delay(failures), error.delay)
            log.info(
                "sink %s: CDEvent %s not delivered (%s); retry %d in %.1fs",
                self.name,
                item.event_id,
                error,
                failures,
                delay,
            )
            await asyncio.sleep(delay)
            next_error = await self._attempt(item)
            if next_error is None:
                return
            error = next_error

    async def send(self, event: Event, extensions: Mapping[str, str]) -> None:
        """Deliver one event; raise :class:`Retry` or :class:`Rejected` when it did not go."""
        raise NotImplementedError

    async def _disconnect(self) -> None:
        """Release connections (after the worker stopped)."""


# --------------------------------------------------------------------------- NATS


def stream_config(settings: CDEventsSettings) -> StreamConfig:
    """The CDEvents stream this process creates when it is missing."""
    return StreamConfig(
        name=settings.stream,
        description="CDEvents emitted by fluxrelay (subjects are the event types)",
        subjects=list(subjects.CDEVENTS_SUBJECTS),
        storage=StorageType.FILE,
        duplicate_window=settings.duplicate_window,
        max_age=7 * 24 * 3600.0,
    )


class NatsSink(OutboxSink):
    """Publishes to JetStream in CloudEvents NATS binary mode, counting only PubAcked events."""

    def __init__(
        self,
        servers: str,
        settings: CDEventsSettings,
        metrics: OutcomeMetrics,
        *,
        name: str = "nats",
        connect_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._connect_options = dict(connect_options or {})
        super().__init__(
            name,
            release_of(settings.nats_spec_version),
            metrics,
            outbox_size=settings.outbox_size,
            retry=RetryPolicy.of(settings),
            send_window=settings.send_window,
            send_timeout=2 * settings.request_timeout,
        )
        self._servers = natsconn.servers(servers)
        self._settings = settings
        self._nc: Client | None = None
        self._acks = AckedPublisher()
        self._connecting = asyncio.Lock()
        self._ensuring = asyncio.Lock()
        self._stream_ready = False

    async def _client(self) -> Client:
        async with self._connecting:  # a window's sends share one connection, made once
            return await self._connect()

    async def _connect(self) -> Client:
        if self._nc is None or self._nc.is_closed:
            try:
                self._nc = await natsconn.connect(
                    self._servers, self._connect_options, on_error=self._on_error, retry=False
                )
            except (NatsError, OSError, TimeoutError) as e:
                raise Retry(f"cannot connect to NATS: {e}") from e
            self._acks = AckedPublisher()
            try:
                await self._acks.attach(self._nc)
            except (NatsError, OSError, TimeoutError) as e:
                raise Retry(f"cannot subscribe for PubAcks: {e}") from e
        if not self._nc.is_connected:
            raise Retry("NATS connection is down")
        return self._nc

    async def _on_error(self, e: Exception) -> None:
        log.info("sink %s: NATS: %s", self.name, e)

    async def ensure_stream(self) -> None:
        """Create the CDEvents stream unless it exists (an existing one is left alone)."""
        js = (await self._client()).jetstream(timeout=self._settings.request_timeout)
        try:
            try:
                await js.stream_info(self._settings.stream)
            except NotFoundError:
                await js.add_stream(stream_config(self._settings))
                log.info("created CDEvents stream %s", self._settings.stream)
        except (NatsError, JetStreamError, TimeoutError) as e:
            raise Retry(f"cannot ensure stream {self._settings.stream}: {e}") from e
        self._stream_ready = True

    async def send(self, event: Event, extensions: Mapping[str, str]) -> None:
        if not self._stream_ready:
            async with self._ensuring:
                if not self._stream_ready:
                    await self.ensure_stream()
        await self._client()
        attributes = cloudevent_attributes(event, extensions=extensions)
        headers = natsbinding.to_headers(attributes, attributes["datacontenttype"])
        headers["Nats-Msg-Id"] = attributes["id"]
        data = orjson.dumps(event)
        try:
            await self._acks.publish(
                subjects.cdevent_subject(attributes["type"]),
                data,
                headers,
                self._settings.stream,
                self._settings.request_timeout,
            )
        except NotAcknowledged as e:
            if e.refused:
                # No stream for the subject (deleted, or a memory stream lost on restart).
                self._stream_ready = False
                raise Retry(f"publish refused: {e}") from e
            raise Retry(f"no PubAck: {e}") from e

    async def _disconnect(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(NatsError, TimeoutError):
                await self._nc.close()
        self._nc = None


# --------------------------------------------------------------------------- HTTP


def signature(secret: str, body: bytes) -> str:
    """``sha256=<hex>``: the ``X-Signature`` value of an HMAC-signed POST."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _retry_after(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        return 0.0


class HttpSink(OutboxSink):
    """POSTs each event in CloudEvents HTTP binary mode."""

    def __init__(
        self, sink: HttpSinkSettings, settings: CDEventsSettings, metrics: OutcomeMetrics
    ) -> None:
        super().__init__(
            sink.name,
            release_of(sink.spec_version),
            metrics,
            outbox_size=settings.outbox_size,
            retry=RetryPolicy.of(settings),
            send_window=settings.send_window,
            send_timeout=2 * settings.request_timeout,
        )
        self._sink = sink
        self._timeout = aiohttp.ClientTimeout(total=settings.request_timeout)
        self._session: aiohttp.ClientSession | None = None
        parts = urlsplit(sink.url)
        self.host = parts.netloc.rpartition("@")[2]

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        await super().start()

    def request(self, event: Event, extensions: Mapping[str, str]) -> tuple[dict[str, str], bytes]:
        """Headers and body of the POST for ``event`` (binary mode, plus auth)."""
        message = to_http_binary(event, extensions=extensions)
        headers = dict(message.headers)
        body = message.body
        if self._sink.auth == "bearer":
            headers["Authorization"] = f"Bearer {self._sink.secret}"
        elif self._sink.auth == "hmac":
            headers["X-Signature"] = signature(self._sink.secret, body)
        return headers, body

    async def send(self, event: Event, extensions: Mapping[str, str]) -> None:
        assert self._session is not None, "start() the sink first"
        headers, body = self.request(event, extensions)
        try:
            async with self._session.post(self._sink.url, data=body, headers=headers) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise Retry(f"{self.host}: {type(e).__name__}") from e
        if 200 <= status < 300:
            return
        if status in RETRYABLE_STATUS or status >= 500:
            raise Retry(f"{self.host} answered HTTP {status}", _retry_after(retry_after))
        raise Rejected(f"{self.host} answered HTTP {status}")

    async def _disconnect(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# --------------------------------------------------------------------------- configuration


def parse_sink_option(
    raw: str, index: int, environ: Mapping[str, str] | None = None
) -> HttpSinkSettings:
    """``URL[,spec=0.4.1][,auth=bearer|hmac][,secret-file=PATH|secret-env=VAR][,name=NAME]``.

    The secret is read here, once, from the file (trailing newline stripped) or variable.
    Raises ValueError with a message that never contains the secret.
    """
    env = os.environ if environ is None else environ
    url, *options = [part.strip() for part in raw.split(",")]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("sink URL must be http:// or https://")
    fields: dict[str, Any] = {"url": url, "name": f"http-{index}"}
    secret: str | None = None
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not value:
            raise ValueError(f"expected key=value, got {key!r}")
        if key == "spec":
            release_of(value)  # raises for an unknown version
            fields["spec_version"] = value
        elif key == "auth":
            if value not in ("none", "bearer", "hmac"):
                raise ValueError("auth must be none, bearer or hmac")
            fields["auth"] = value
        elif key == "secret-file":
            try:
                secret = Path(value).read_text(encoding="utf-8").strip()
            except OSError as e:
                raise ValueError(f"cannot read secret file {value}: {e.strerror}") from e
        elif key == "secret-env":
            if value not in env:
                raise ValueError(f"variable {value} is not set")
            secret = env[value]
        elif key == "name":
            fields["name"] = value
        else:
            raise ValueError(f"unknown sink option {key!r}")
    auth = fields.get("auth", "none")
    if auth != "none" and not secret:
        raise ValueError(f"auth={auth} needs secret-file=PATH or secret-env=VAR")
    if secret:
        fields["secret"] = secret
    return HttpSinkSettings(**fields)


def build_sinks(
    nats_url: str,
    settings: CDEventsSettings,
    metrics: OutcomeMetrics,
    connect_options: Mapping[str, Any] | None = None,
) -> list[OutboxSink]:
    """The sinks ``settings`` asks for (JetStream first, then HTTP in the given order);
    ``connect_options`` carry the process's NATS TLS and credentials."""
    out: list[OutboxSink] = []
    if settings.nats:
        out.append(NatsSink(nats_url, settings, metrics, connect_options=connect_options))
    out.extend(HttpSink(sink, settings, metrics) for sink in settings.sinks)
    return out
