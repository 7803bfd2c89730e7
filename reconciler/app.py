"""The reconciler's HTTP side: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

Ready means: connected to NATS, the durable consumer bound, and the Receivers loaded; a
replica that is not ready takes no messages anyway, so the probe only tells Kubernetes when a
rollout may continue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from reconciler.metrics import ReconcilerMetrics
from runtime.metrics import exposition


@dataclass(frozen=True)
class Probes:
    """What the endpoints report, as callables evaluated per request."""

    metrics: ReconcilerMetrics
    checks: Callable[[], dict[str, bool]]
    """Named readiness checks; ready when all are true."""


PROBES = web.AppKey("probes", Probes)


async def _metrics(request: web.Request) -> web.StreamResponse:
    probes = request.app[PROBES]
    probes.checks()  # refreshes gauges such as nats_connected
    return exposition(probes.metrics.registry)


async def _healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.StreamResponse:
    checks = request.app[PROBES].checks()
    ready = all(checks.values())
    return web.json_response(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status=200 if ready else 503,
    )


def create_metrics_app(probes: Probes) -> web.Application:
    app = web.Application()
    app[PROBES] = probes
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    return app
