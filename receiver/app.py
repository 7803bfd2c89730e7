"""aiohttp server factories: the hook ingress (low-level server) and the metrics/health
application."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from receiver import ingress
from receiver.protocol import IngressServer
from receiver.state import STATE, IngressState
from runtime.metrics import exposition

HEAD_LIMITS = {"max_field_size": 8190, "max_line_size": 8190, "max_headers": 128}
"""Bytes per header line and request line, header count: more is refused with 400 (aiohttp's
parser) before any handler runs."""
LINGERING_SECONDS = 2.0
"""After answering without reading a whole body (413, 408, 404...), at most this long is
spent reading and discarding the rest before the connection is closed."""


def server_options(state: IngressState) -> dict[str, Any]:
    """Arguments of aiohttp's low-level ``web.Server`` for the ingress (also given to
    ``RawTestServer`` by the tests).

    ``keepalive_timeout`` is aiohttp's timer for a connection waiting for a complete request
    head (armed when the connection opens and after each answer, not reset by partial data),
    so it bounds slow-header clients as well as idle ones; ``auto_decompress`` is off so a
    compressed body reaches the handler as sent and is refused (no decompression bombs).
    The body cap is the handler's own (:func:`receiver.ingress.read_body`), which never
    calls ``request.read()``; aiohttp's ``client_max_size`` would only apply to that.
    There is no access log: its request line is ``POST /hook/<digest>``, and for Receivers
    that sign nothing the digest is the credential; the handler logs each delivery itself,
    by Receiver name.
    """
    return {
        **HEAD_LIMITS,
        "access_log": None,
        "keepalive_timeout": state.settings.header_timeout,
        "lingering_time": LINGERING_SECONDS,
        "auto_decompress": False,
    }


def create_server(state: IngressState, **extra: Any) -> web.Server:
    """The ingress: one handler on aiohttp's low-level server (see
    :func:`receiver.ingress.create_handler` for why there is no application router), with
    connections that answer the parser's refusals as JSON (:mod:`receiver.protocol`)."""
    return IngressServer(ingress.create_handler(state), state, **{**server_options(state), **extra})


async def _metrics(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    state.metrics.nats_connected.set(1 if state.publisher.connected else 0)
    state.metrics.receivers.set(len(state.table))
    return exposition(state.metrics.registry)


def create_metrics_app(state: IngressState) -> web.Application:
    """``/metrics`` (Prometheus) plus the probes, on their own port."""
    app = web.Application()
    app[STATE] = state
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", ingress.handle_healthz)
    app.router.add_get("/readyz", ingress.handle_readyz)
    return app
