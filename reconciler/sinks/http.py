"""The HTTP sink: CDEvents POSTed in CloudEvents HTTP binary mode (``ce-*`` headers, body =
the CDEvent), optionally with ``Authorization: Bearer`` or ``X-Signature: sha256=<hex>``
(HMAC-SHA256 of the body), through one aiohttp session.

The request is made once, when the event is queued (:func:`binary_mode`), and every try POSTs
those bytes. The encoding is the one the ``cloudevents`` SDK writes for
``schemas.cdevents.to_http_binary`` (the same header order, percent-encoding and ``ce-time``
spelling, and a body of ``json.dumps`` with its default separators), written here without the
SDK's detour: that copies the event through a JSON round trip and builds a ``CloudEvent``
first, three JSON passes where one will do. The tests compare both encodings byte for byte.

Log lines name the sink and the event id, never the sink URL's path (a Flux hook path is a
secret), a token or a body.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from reconciler.outcome_metrics import OutcomeMetrics
from reconciler.settings import CDEventsSettings, HttpSinkSettings
from reconciler.sinks.base import Rejected, Retry
from reconciler.sinks.outbox import OutboxSink, limits
from schemas.cdevents import Event, cloudevent_attributes, release_of
from schemas.cdevents.cloudevent import CE_HEADER_PREFIX, parse_time
from schemas.natsbinding import encode_value

RETRYABLE_STATUS = frozenset({408, 425, 429})
"""4xx answers that mean "not now" rather than "never"."""
MAX_RETRY_AFTER = 300.0
"""Longest ``Retry-After`` honoured: a sink asking for more is tried again sooner."""

CONTENT_TYPE = "content-type"
_HEADER_NAMES = {
    name: CE_HEADER_PREFIX + name
    for name in ("specversion", "id", "source", "type", "subject", "time", "traceparent")
}
"""Header names of the attributes every event carries, made once so that queued requests
share them rather than each holding its own copies."""


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One event as POSTed: headers (auth included) and body, made once when it is queued."""

    headers: dict[str, str]
    body: bytes


def signature(key: bytes, body: bytes) -> str:
    """``sha256=<hex>``: the ``X-Signature`` value of an HMAC-signed POST."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def binary_mode(event: Event, extensions: Mapping[str, str]) -> HttpRequest:
    """``event`` in CloudEvents HTTP binary mode: ``ce-*`` headers, ``content-type``, body.

    Header values are percent-encoded as the HTTP binding says (space, ``"``, ``%`` and
    anything outside printable ASCII), the same rule as the NATS binding's; ``ce-time`` is
    the timestamp as the SDK spells a parsed time (microseconds, ``Z`` for UTC).
    """
    headers: dict[str, str] = {}
    for name, value in cloudevent_attributes(event, extensions=extensions).items():
        if name == "datacontenttype":
            headers[CONTENT_TYPE] = value
        elif name == "time":
            headers[_HEADER_NAMES[name]] = _time_value(value)
        else:
            headers[_HEADER_NAMES.get(name) or CE_HEADER_PREFIX + name] = encode_value(value)
    return HttpRequest(headers, json.dumps(event).encode())


def _time_value(timestamp: str) -> str:
    """``ce-time`` as the SDK spells the time it parsed: ``isoformat`` (six fraction digits or
    none, nanoseconds cut), ``Z`` for UTC. Kept so that the bytes stay what they were; readers
    compare it with ``context.timestamp`` as an instant, not as text."""
    spelled = parse_time(timestamp).isoformat()
    if spelled.endswith("+00:00"):
        spelled = spelled[:-6] + "Z"
    return encode_value(spelled)


def _retry_after(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        return 0.0


class HttpSink(OutboxSink[HttpRequest]):
    """POSTs each event in CloudEvents HTTP binary mode."""

    def __init__(
        self, sink: HttpSinkSettings, settings: CDEventsSettings, metrics: OutcomeMetrics
    ) -> None:
        super().__init__(sink.name, release_of(sink.spec_version), metrics, **limits(settings))
        self._sink = sink
        self._bearer = f"Bearer {sink.secret}" if sink.auth == "bearer" else ""
        """Made once: every queued request shares the one string."""
        self._hmac_key = sink.secret.encode() if sink.auth == "hmac" else b""
        self._timeout = aiohttp.ClientTimeout(total=settings.request_timeout)
        self._session: aiohttp.ClientSession | None = None
        parts = urlsplit(sink.url)
        self.host = parts.netloc.rpartition("@")[2]

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        await super().start()

    def encode(self, event: Event, extensions: Mapping[str, str]) -> HttpRequest:
        """The POST for ``event``: binary mode, plus this sink's auth header."""
        request = binary_mode(event, extensions)
        if self._sink.auth == "bearer":
            request.headers["Authorization"] = self._bearer
        elif self._sink.auth == "hmac":
            request.headers["X-Signature"] = signature(self._hmac_key, request.body)
        return request

    async def send(self, message: HttpRequest) -> None:
        assert self._session is not None, "start() the sink first"
        try:
            async with self._session.post(
                self._sink.url, data=message.body, headers=message.headers
            ) as resp:
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
