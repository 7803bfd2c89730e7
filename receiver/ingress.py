"""The hook endpoint: cap, look up, verify, parse, filter, store, answer.

Order matters and is Flux's: the body cap applies before anything else (413 even on an
unknown path), then the path (404), the method (405), suspension (503); the provider
verifies the raw bytes before anything is parsed; 202 is sent only after every message of
the delivery has a PubAck. Every refusal is a :class:`~receiver.errors.Rejected`, turned into
a short JSON answer by :func:`errors_middleware`, the one place statuses are rendered.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiohttp import web

from receiver import deadlettering, normalising
from receiver.errors import (
    BodyTooLarge,
    DeadLetter,
    EventNotAllowed,
    HookNotFound,
    MethodNotAllowed,
    Rejected,
    Suspended,
)
from receiver.providers import PROVIDERS
from receiver.providers.base import Parsed, Request
from receiver.receivers import ReceiverSpec
from receiver.state import STATE, IngressState

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def reply(http_status: int, **body: object) -> web.Response:
    return web.json_response(body, status=http_status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render :class:`Rejected` as JSON; never let an exception become an HTML 500."""
    try:
        return await handler(request)
    except Rejected as e:
        return web.json_response(
            {**e.details, "status": "rejected", "code": e.code, "reason": e.reason},
            status=e.status,
            headers=e.headers,
        )
    except web.HTTPRequestEntityTooLarge:
        return reply(413, status="rejected", code=BodyTooLarge.code, reason="body too large")
    except web.HTTPException as e:
        return reply(e.status, status="rejected", code="http", reason=e.reason)


async def read_body(request: web.Request, limit: int) -> bytes:
    """Read at most ``limit`` bytes; chunked bodies are cut off as soon as they exceed it."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"body of {request.content_length} bytes exceeds {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def handle_hook(request: web.Request) -> web.StreamResponse:
    """Serve ``/hook/<digest>``."""
    state = request.app[STATE]
    started = time.perf_counter()
    response = await _handle(request, state)
    state.metrics.request_seconds.labels(f"{response.status // 100}xx").observe(
        time.perf_counter() - started
    )
    return response


async def _handle(request: web.Request, state: IngressState) -> web.StreamResponse:
    limit = state.settings.body_limit
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"body of {request.content_length} bytes exceeds {limit}")
    spec = state.table.lookup(request.match_info["digest"])
    if spec is None:
        state.metrics.deliveries.labels("", "", "", "not_found").inc()
        raise HookNotFound("no receiver at this path")
    provider = PROVIDERS[spec.type]
    outcome = "rejected"
    event = ""
    delivery = ""
    context = {"receiver": spec.key, "provider": spec.type}
    try:
        if request.method != "POST":
            raise MethodNotAllowed("only POST is accepted", headers={"Allow": "POST"})
        if spec.suspend:
            raise Suspended("receiver is suspended", headers={"Retry-After": "60"})
        body = await read_body(request, limit)
        state.metrics.body_bytes.observe(len(body))
        req = Request(request.headers, body, request.content_type.lower(), request.remote)
        provider.verify(spec, req)
        try:
            parsed = provider.parse(spec, req)
        except DeadLetter as e:
            await deadlettering.store(state, spec, req, e)
            raise
        event = parsed.event
        if parsed.ping:
            outcome = "ping"
            return reply(200, status="ok", reason="ping acknowledged, nothing stored")
        parsed = allowed_items(spec, parsed)
        if not parsed.items:
            outcome = "ignored"
            return reply(200, status="ignored", reason="nothing to store in this delivery")
        delivery = parsed.items[0].delivery_id
        msgs = normalising.messages(
            spec,
            parsed,
            datetime.now(UTC),
            normalising.traceparent(request.headers.get("traceparent")),
            state.settings.stream.subject_prefix,
        )
        duplicate = True
        for msg in msgs:
            t0 = time.perf_counter()
            stored = await state.publisher.publish(msg.subject, msg.payload, msg.headers)
            state.metrics.publish_seconds.observe(time.perf_counter() - t0)
            if stored.duplicate:
                state.metrics.duplicates.inc()
            duplicate = duplicate and stored.duplicate
        outcome = "duplicate" if duplicate else "accepted"
        log.info(
            "stored %d event(s)",
            len(msgs),
            extra={**context, "delivery_id": delivery, "event": event, "event_id": msgs[0].id},
        )
        body_out: dict[str, object] = {"status": "accepted", "id": msgs[0].id}
        if len(msgs) > 1:
            body_out["ids"] = [m.id for m in msgs]
        if duplicate:
            body_out["duplicate"] = True
        return web.json_response(body_out, status=202)
    except Rejected as e:
        outcome = e.code
        log.info(
            "rejected: %s",
            e.reason,
            extra={
                **context,
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
        state.metrics.deliveries.labels(spec.key, spec.type, event, outcome).inc()


def allowed_items(spec: ReceiverSpec, parsed: Parsed) -> Parsed:
    """Apply ``spec.events``. A delivery of one event is refused with 400 when not allowed
    (Flux's answer). Items with their own event type are filtered one by one; when none is
    left the answer is 200 "ignored", since a sender cannot split an envelope to retry only
    part of it and would otherwise retry it forever."""
    if not any(item.event for item in parsed.items):
        if not parsed.event:
            return parsed  # providers without event types: spec.events does not apply (Flux)
        if not any(spec.allows(name) for name in (parsed.event, *parsed.aliases)):
            raise EventNotAllowed(f"event {parsed.event!r} is not in spec.events")
        return parsed
    kept = tuple(item for item in parsed.items if spec.allows(item.event or parsed.event))
    return dataclasses.replace(parsed, items=kept)


async def handle_healthz(request: web.Request) -> web.StreamResponse:
    return reply(200, status="ok")


async def handle_readyz(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    problems = []
    if not state.publisher.ready:
        problems.append("NATS not connected or streams not ready")
    if not state.loaded:
        problems.append("receivers not loaded")
    if problems:
        return reply(503, status="unready", reasons=problems)
    return reply(200, status="ready", receivers=len(state.table))
