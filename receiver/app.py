"""aiohttp application factories: the hook ingress and the metrics/health endpoint."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from receiver import ingress
from receiver.state import STATE, IngressState

HEAD_LIMITS = {"max_field_size": 8190, "max_line_size": 8190, "max_headers": 128}
"""Bytes per header line and request line, header count: more is refused with 400 (aiohttp's
parser) before any handler runs."""
LINGERING_SECONDS = 2.0
"""After answering without reading a whole body (413, 408, 404...), at most this long is
spent reading and discarding the rest before the connection is closed."""


def create_app(state: IngressState) -> web.Application:
    """The ingress app. ``client_max_size`` backs up the handler's own streaming cap.

    ``keepalive_timeout`` is aiohttp's timer for a connection waiting for a complete request
    head (armed when the connection opens and after each answer, not reset by partial data),
    so it bounds slow-header clients as well as idle ones; ``auto_decompress`` is off so a
    compressed body reaches the handler as sent and is refused (no decompression bombs).
    """
    app = web.Application(
        middlewares=[ingress.errors_middleware],
        client_max_size=state.settings.body_limit,
        handler_args={
            **HEAD_LIMITS,
            "keepalive_timeout": state.settings.header_timeout,
            "lingering_time": LINGERING_SECONDS,
            "auto_decompress": False,
        },
    )
    app[STATE] = state
    app.router.add_route("*", "/hook/{digest}", ingress.handle_hook)
    app.router.add_get("/healthz", ingress.handle_healthz)
    app.router.add_get("/readyz", ingress.handle_readyz)
    app.router.add_route("*", "/{tail:.*}", _not_found)
    return app


async def _not_found(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    limit = state.settings.body_limit
    if request.content_length is not None and request.content_length > limit:
        return ingress.reply(413, status="rejected", code="body_too_large", reason="body too large")
    return ingress.reply(404, status="rejected", code="not_found", reason="no such path")


async def _metrics(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    state.metrics.nats_connected.set(1 if state.publisher.connected else 0)
    state.metrics.receivers.set(len(state.table))
    return web.Response(
        body=generate_latest(state.metrics.registry),
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )


def create_metrics_app(state: IngressState) -> web.Application:
    """``/metrics`` (Prometheus) plus the probes, on their own port."""
    app = web.Application()
    app[STATE] = state
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", ingress.handle_healthz)
    app.router.add_get("/readyz", ingress.handle_readyz)
    return app
