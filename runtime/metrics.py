"""Prometheus metrics as both services keep them: on a registry their process (or test) owns.

No metric is registered on prometheus_client's global registry: a test builds as many
services as it likes, each with its own registry, and reads its series without the others'.
:class:`MetricSet` is the base of each service's metrics holder (it owns the registry and
creates metrics on it); :func:`exposition` answers ``/metrics`` from such a registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.registry import Collector

CollectorT = TypeVar("CollectorT", bound=Collector)


class MetricSet:
    """Metrics registered on one :attr:`registry`, a new one unless given (one registry may
    hold several sets: ``/metrics`` then shows them all).

    Subclasses create their metrics in ``__init__`` as attributes, with the full series name
    spelled out so that a name in a dashboard or an alert can be found in the code.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(name, documentation, labels, registry=self.registry)

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(name, documentation, labels, registry=self.registry)

    def histogram(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        *,
        buckets: Sequence[float],
    ) -> Histogram:
        return Histogram(name, documentation, labels, buckets=buckets, registry=self.registry)

    def register(self, collector: CollectorT) -> CollectorT:
        """Registers a collector of the subclass' own making; returns it."""
        self.registry.register(collector)
        return collector


def exposition(registry: CollectorRegistry) -> web.Response:
    """A ``/metrics`` answer: ``registry`` in the Prometheus text format."""
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
