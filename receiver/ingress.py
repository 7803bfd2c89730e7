"""The hook endpoint: cap, look up, verify, parse, filter, store, answer.

Order matters and is Flux's, with fluxrelay's guards slotted in before any body byte is
read: the body cap applies before anything else (413 even on an unknown path), then the
source's rate limit (429), the path (404, current or still-honoured previous one), the
Receiver's source allow-list (403), its rate limit (429), the method (405), suspension (503),
the content encoding (415: bodies are never decompressed); the body must arrive within the
read timeout (408); the provider verifies the raw bytes, with the previous token too during
a rotation, before anything is parsed; 202 is sent only after every message of the delivery
has a PubAck. Every refusal is a :class:`~receiver.errors.Rejected`, turned into
a short JSON answer by :func:`render`, the one place statuses are rendered. A sender that
asked ``Expect: 100-continue`` is told to send the body only after the checks before it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import HttpVersion11, web

from receiver import addressing, deadlettering, normalising
from receiver.config import rotation
from receiver.config.spec import ReceiverSpec
from receiver.errors import (
    BodyTooLarge,
    DeadLetter,
    EncodingRefused,
    EventNotAllowed,
    ExpectationFailed,
    HookNotFound,
    MethodNotAllowed,
    RateLimited,
    Rejected,
    RequestTimeout,
    SourceNotAllowed,
    Suspended,
)
from receiver.limiting import retry_after
from receiver.providers import PROVIDERS
from receiver.providers.base import Parsed, Request, media_type
from receiver.state import STATE, IngressState
from runtime import logs
from schemas.excerpts import clipped, excerpt

log = logging.getLogger(__name__)

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def reply(http_status: int, **body: object) -> web.Response:
    return json_response(body, http_status)


def json_response(
    body: dict[str, object], http_status: int, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON answer, written by orjson (aiohttp's helper encodes twice: dumps, then text).

    A reason quoting request text with a lone surrogate (aiohttp's escape for a non-UTF-8
    byte) cannot be UTF-8: the standard library writes it ASCII-escaped instead of failing.
    """
    try:
        data = orjson.dumps(body)
    except orjson.JSONEncodeError:
        data = json.dumps(body, separators=(",", ":")).encode()
    return web.Response(body=data, status=http_status, headers=headers, content_type=JSON)


JSON = "application/json"


def render(error: Rejected) -> web.Response:
    """A refusal as its short JSON answer: the one place statuses are rendered."""
    response = json_response(
        {**error.details, "status": "rejected", "code": error.code, "reason": error.reason},
        error.status,
        error.headers,
    )
    if isinstance(error, RequestTimeout):
        response.force_close()  # the rest of the body is not worth waiting for
    return response


HOOK_PREFIX = "/hook/"


def create_handler(state: IngressState) -> Handler:
    """The ingress as one request handler for aiohttp's low-level server.

    One path prefix needs no router: dispatching on it here skips aiohttp's URL resolution,
    match-info objects and middleware chain (a few per cent of the CPU per delivery in the
    ingress benchmark). The prefix is matched on the path as sent, not percent-decoded:
    ``/hook%2F<digest>`` is no hook path, so a proxy rule written for the literal path
    cannot be slipped past. The probes are served on the metrics port only. No exception
    becomes an HTML page: refusals are rendered by :func:`render`, aiohttp's own HTTP
    errors as the same JSON shape.
    """

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        try:
            path = request.raw_path
            if path.startswith(HOOK_PREFIX):  # timed here: a wrapper would be one more coroutine
                started = time.perf_counter()
                digest = path[len(HOOK_PREFIX) :].partition("?")[0]
                try:
                    response = await handle_hook(request, state, digest)
                except Rejected as e:
                    response = render(e)
                state.metrics.request_time(response.status).observe(time.perf_counter() - started)
                return response
            return not_found(request, state)
        except Rejected as e:
            return render(e)
        except web.HTTPException as e:
            return reply(e.status, status="rejected", code="http", reason=e.reason)

    return handle


def not_found(request: web.BaseRequest, state: IngressState) -> web.Response:
    limit = state.settings.body_limit
    if request.content_length is not None and request.content_length > limit:
        return reply(413, status="rejected", code="body_too_large", reason="body too large")
    return reply(404, status="rejected", code="not_found", reason="no such path")


async def expect_continue(request: web.BaseRequest) -> None:
    """Answer ``Expect: 100-continue`` once the request has passed every check that needs no
    body, so a refused sender (404, 413, 429, 405...) never uploads it."""
    expect = request.headers.get("Expect")
    if expect is None:
        return
    if request.version != HttpVersion11 or expect.lower() != "100-continue":
        raise ExpectationFailed("unsupported Expect header (only 100-continue)")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0


async def read_body(request: web.BaseRequest, limit: int, seconds: float | None = None) -> bytes:
    """Read at most ``limit`` bytes within ``seconds``; chunked bodies are cut off as
    soon as they exceed the limit, slow ones (slowloris) when the time is up (408, and the
    connection is closed since the rest of the body was not read)."""
    length = request.content_length
    if length is not None and length > limit:
        raise BodyTooLarge(f"body of {length} bytes exceeds {limit}")
    content = request.content
    if length is not None and content.total_bytes >= length:
        # Already received with the head: nothing to wait for; taken as is (no copy).
        return content.read_nowait(-1)
    if content.at_eof():
        return b""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(seconds):
            async for chunk in content.iter_chunked(65536):
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(f"body exceeds {limit} bytes")
                chunks.append(chunk)
    except TimeoutError as e:
        raise RequestTimeout(f"body not received within {seconds:g} s") from e
    return b"".join(chunks)


IDENTITY_ENCODINGS = frozenset({"", "identity"})


def check_encoding(request: web.BaseRequest) -> None:
    """Refuse compressed bodies (415) instead of inflating them past the body cap."""
    if "Content-Encoding" not in request.headers:
        return
    encodings = [
        part.strip().lower()
        for value in request.headers.getall("Content-Encoding", [])
        for part in value.split(",")
    ]
    if any(e not in IDENTITY_ENCODINGS for e in encodings):
        raise EncodingRefused(
            "compressed bodies are not accepted (Content-Encoding must be identity)",
            headers={"Accept-Encoding": "identity"},
        )


def source_of(request: web.BaseRequest, state: IngressState) -> addressing.Address | None:
    """The client address, through ``--trusted-proxies`` only."""
    trusted = state.settings.trusted_proxies
    if not trusted:  # X-Forwarded-For is not even read
        return addressing.parse_address(request.remote)
    return addressing.client_address(
        request.remote, request.headers.getall("X-Forwarded-For", []), trusted
    )


def limit_source(state: IngressState, source: addressing.Address | None) -> None:
    limiter = state.source_limiter
    if limiter is None:
        return
    wait = limiter.take(source)
    state.metrics.rate_limit_sources.set(len(limiter))
    if wait:
        state.metrics.rate_limited.labels("source").inc()
        raise RateLimited(
            "too many requests from this source", headers={"Retry-After": retry_after(wait)}
        )


def limit_receiver(state: IngressState, spec: ReceiverSpec) -> None:
    limiter = state.receiver_limiter
    if limiter is None:
        return
    wait = limiter.take(spec.key)
    if wait:
        state.metrics.rate_limited.labels("receiver").inc()
        raise RateLimited(
            "too many requests for this receiver", headers={"Retry-After": retry_after(wait)}
        )


def note_previous_token(state: IngressState, spec: ReceiverSpec) -> None:
    """Count a delivery that needed the previous token; warn once per Receiver and path."""
    state.metrics.previous_token_used.labels(spec.key).inc()
    rotation = spec.rotation
    old = rotation.digest if rotation is not None else ""
    if (spec.key, old) in state.previous_token_warned:
        return
    state.previous_token_warned.add((spec.key, old))
    log.warning(
        "a delivery used the previous token (old hook path or old key); update the sender "
        "before the rotation deadline",
        extra={"receiver": spec.key, "provider": spec.type},
    )


async def handle_hook(
    request: web.BaseRequest, state: IngressState, digest: str
) -> web.StreamResponse:
    """Serve ``/hook/<digest>``: answer, or raise the :class:`Rejected` to render."""
    limit = state.settings.body_limit
    length = request.content_length
    if length is not None and length > limit:
        raise BodyTooLarge(f"body of {length} bytes exceeds {limit}")
    source = source_of(request, state)
    try:
        limit_source(state, source)
    except RateLimited:
        state.metrics.delivery("", "", "", RateLimited.code).inc()
        raise
    route = state.table.route(digest)
    if route is None:
        state.metrics.delivery("", "", "", "not_found").inc()
        raise HookNotFound("no receiver at this path")
    spec = route.spec
    provider = PROVIDERS[spec.type]
    outcome = "rejected"
    event = ""
    delivery = ""
    try:
        if not addressing.source_allowed(source, spec.allowed_sources):
            raise SourceNotAllowed("source address not allowed for this receiver")
        limit_receiver(state, spec)
        if request.method != "POST":
            raise MethodNotAllowed("only POST is accepted", headers={"Allow": "POST"})
        if spec.suspend:
            raise Suspended("receiver is suspended", headers={"Retry-After": "60"})
        check_encoding(request)
        content = request.content
        if length is not None and content.total_bytes >= length and "Expect" not in request.headers:
            # Already received with the head (the common case for webhooks): no deadline to
            # arm, nothing to wait for, and no coroutine to run; taken as is (no copy).
            body = content.read_nowait(-1)
        else:
            await expect_continue(request)
            body = await read_body(request, limit, state.settings.read_timeout)
        state.metrics.body_bytes.observe(len(body))
        remote = addressing.text(source) if source is not None else request.remote
        content_type = media_type(request.headers.get("Content-Type"))
        req = Request(request.headers, body, content_type, remote)
        now = state.table.now()
        if rotation.verify(provider, spec, spec.rotation, req, now) or route.previous:
            note_previous_token(state, spec)
        try:
            parsed = provider.parse(spec, req)
        except DeadLetter as e:
            await deadlettering.store(state, spec, req, e)
            raise
        event = clipped(parsed.event)  # logged and labelled: a sender's text, bounded
        if parsed.ping:
            outcome = "ping"
            return reply(200, status="ok", reason="ping acknowledged, nothing stored")
        if provider.filters_events:
            parsed = allowed_items(spec, parsed)
        if not parsed.items:
            outcome = "ignored"
            return reply(200, status="ignored", reason="nothing to store in this delivery")
        try:
            msgs = normalising.messages(
                spec,
                parsed,
                normalising.timestamp(time.time()),
                normalising.traceparent(request.headers.get("traceparent")),
                state.settings.stream.subject_prefix,
                state.settings.max_delivery_bytes,
            )
        except Rejected:  # no message to take it from: the refusal is logged with it
            delivery = normalising.delivery_key(parsed.items[0].delivery_id)
            raise
        delivery = msgs[0].delivery
        duplicate = True
        for msg in msgs:
            t0 = time.perf_counter()
            stored = await state.publisher.publish(msg.subject, msg.payload, msg.headers)
            state.metrics.publish_seconds.observe(time.perf_counter() - t0)
            if stored.duplicate:
                state.metrics.duplicates.inc()
            duplicate = duplicate and stored.duplicate
        outcome = "duplicate" if duplicate else "accepted"
        if log.isEnabledFor(logging.INFO):
            logs.info(
                log,
                f"stored {len(msgs)} event(s)",
                {
                    "receiver": spec.key,
                    "provider": spec.type,
                    "delivery_id": delivery,
                    "event": event,
                    "event_id": msgs[0].id,
                },
            )
        body_out: dict[str, object] = {"status": "accepted", "id": msgs[0].id}
        if len(msgs) > 1:
            body_out["ids"] = [m.id for m in msgs]
        if duplicate:
            body_out["duplicate"] = True
        return json_response(body_out, 202)
    except Rejected as e:
        outcome = e.code
        log.info(
            "rejected: %s",
            e.reason,
            extra={
                "receiver": spec.key,
                "provider": spec.type,
                "delivery_id": delivery or None,
                "event": event or None,
                "status": e.status,
                "code": e.code,
            },
        )
        if e.status == 503 and "Retry-After" not in e.headers:
            e.headers["Retry-After"] = str(state.settings.retry_after)
        raise
    finally:
        state.metrics.delivery(spec.key, spec.type, event, outcome).inc()


def allowed_items(spec: ReceiverSpec, parsed: Parsed) -> Parsed:
    """Apply ``spec.events``. A delivery of one event is refused with 400 when not allowed
    (Flux's answer). Items with their own event type are filtered one by one; when none is
    left the answer is 200 "ignored", since a sender cannot split an envelope to retry only
    part of it and would otherwise retry it forever."""
    for item in parsed.items:
        if item.event:
            break
    else:  # one event type for the whole delivery (written as loops: this runs per request)
        if (not parsed.event and not parsed.named) or spec.allows(parsed.event):
            # Providers without event types: spec.events does not apply (Flux). Those that
            # name the event in a header (``named``) are held to it even when none was sent,
            # as Flux holds them: an empty name is in no list.
            return parsed
        for alias in parsed.aliases:
            if spec.allows(alias):
                return parsed
        raise EventNotAllowed(f"event {excerpt(parsed.event)} is not in spec.events")
    kept = tuple(item for item in parsed.items if spec.allows(item.event or parsed.event))
    return dataclasses.replace(parsed, items=kept)


def readyz(state: IngressState) -> web.Response:
    problems = []
    if not state.publisher.ready:
        problems.append("NATS not connected or streams not ready")
    if not state.loaded:
        problems.append("receivers not loaded")
    if problems:
        return reply(503, status="unready", reasons=problems)
    return reply(200, status="ready", receivers=len(state.table))


async def handle_healthz(request: web.Request) -> web.StreamResponse:
    return reply(200, status="ok")


async def handle_readyz(request: web.Request) -> web.StreamResponse:
    return readyz(request.app[STATE])
