"""Ingress metrics on a registry owned by the app (no global state, one per process or test).

The four series updated on every delivery (deliveries, publish latency, request time, body
size) are plain counters read by a collector at scrape time: prometheus_client's metric
objects take a lock per update (they are thread-safe), and those locks and label lookups
were a measurable part of the CPU per delivery. The event loop is the only writer and the
scrape runs on the same loop, so plain integers are exact. The exposition is the same as
prometheus_client's own Counter and Histogram (names, labels, buckets, ``_created``).

Label values a sender chooses never become series as sent: the ``event`` label goes through
:mod:`receiver.labelling` (a closed set per provider, the rest ``other``), and every family
stops creating series at :data:`MAX_SERIES`, new label combinations then being counted in one
overflow series whose labels are all ``other``. The first is the policy, the second the
guard against a label that escapes it: either way ``/metrics`` and the memory behind it stay
bounded whatever is sent.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from receiver.labelling import EVENT_LABELS, NO_EVENTS, OTHER
from runtime.metrics import MetricSet

log = logging.getLogger(__name__)

BODY_BUCKETS = (256, 1024, 4096, 16384, 65536, 262144, 1048576, 3145728, float("inf"))
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
MAX_SERIES = 10_000
"""Series one family may hold before new label combinations go to its overflow series: far
above what the closed label sets allow for a large installation (Receivers x documented
events x outcomes), low enough that a label escaping them costs at most a few MB."""


class Count:
    """One counter series."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0
        self.created = time.time()

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class Distribution:
    """One histogram series: a count per bucket (upper bounds, the last one +Inf) and a sum."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, amount)] += 1
        self.sum += amount

    def cumulative(self) -> list[tuple[str, float]]:
        total = 0
        out = []
        for bound, count in zip(self.bounds, self.counts, strict=True):
            total += count
            out.append((floatToGoString(bound), float(total)))  # type: ignore[no-untyped-call]
        return out


S = TypeVar("S", Count, Distribution)


class Family(Collector, Generic[S]):
    """Series of one metric by label values, exposed like prometheus_client's own; its
    subclasses say what one series is (:class:`Counters`, :class:`Histograms`)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        max_series: int = MAX_SERIES,
    ) -> None:
        self.name, self.documentation, self.labels = name, documentation, list(labels)
        self.series: dict[tuple[str, ...], S] = {}
        self.max_series = max_series
        self.overflow = (OTHER,) * len(self.labels)
        """The label values of the series counting what came after the cap."""

    def _new(self) -> S:
        raise TypeError(f"{type(self).__name__} makes no series")  # pragma: no cover

    def child(self, *values: str) -> S:
        """The series for ``values`` (created on first use, then looked up in a dict)."""
        series = self.series.get(values)
        if series is None:
            series = self._create(values)
        return series

    def _create(self, values: tuple[str, ...]) -> S:
        """A new series, or the overflow series once :attr:`max_series` are held: the one
        place a family grows, so its size is bounded whatever label values reach it."""
        if len(values) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.labels)} label values expected")
        if len(self.series) >= self.max_series:
            series = self.series.get(self.overflow)
            if series is not None:
                return series
            log.warning(
                "%s: %d series reached; new label combinations are counted under %r",
                self.name,
                self.max_series,
                OTHER,
            )
            values = self.overflow
        series = self._new()
        self.series[values] = series
        return series


class Counters(Family[Count]):
    """A counter family."""

    def _new(self) -> Count:
        return Count()

    def value(self, *values: str) -> float:
        """The current count of one series: for tests."""
        series = self.series.get(values)
        return 0.0 if series is None else float(series.value)

    def collect(self) -> Iterator[Metric]:
        counter = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for values, count in self.series.items():
            counter.add_metric(list(values), count.value, created=count.created)
        yield counter


class Histograms(Family[Distribution]):
    """A histogram family; ``buckets`` are upper bounds, +Inf added when missing."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        max_series: int = MAX_SERIES,
    ) -> None:
        super().__init__(name, documentation, labels, max_series)
        bounds = tuple(float(b) for b in buckets)
        self.bounds = bounds if bounds[-1] == float("inf") else (*bounds, float("inf"))

    def _new(self) -> Distribution:
        return Distribution(self.bounds)

    def value(self, *values: str) -> float:
        """The sum of one series: for tests."""
        series = self.series.get(values)
        return 0.0 if series is None else series.sum

    def collect(self) -> Iterator[Metric]:
        histogram = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for values, dist in self.series.items():
            histogram.add_metric(list(values), dist.cumulative(), dist.sum)
            histogram.add_sample(
                self.name + "_created", dict(zip(self.labels, values, strict=True)), dist.created
            )
        yield histogram


class IngressMetrics(MetricSet):
    """Deliveries by receiver/provider/event/outcome, publish latency, body sizes, config state."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        self.deliveries = self.register(
            Counters(
                "fluxrelay_receiver_deliveries",
                "Webhook deliveries by receiver, provider, event and outcome.",
                ["receiver", "provider", "event", "outcome"],
            )
        )
        self.publish_latency = self.register(
            Histograms(
                "fluxrelay_receiver_publish_seconds",
                "Time from publish to JetStream PubAck.",
                buckets=LATENCY_BUCKETS,
            )
        )
        self.request_seconds = self.register(
            Histograms(
                "fluxrelay_receiver_request_seconds",
                "Time to answer a hook request, by status code class.",
                ["code"],
                buckets=LATENCY_BUCKETS,
            )
        )
        self.body_sizes = self.register(
            Histograms(
                "fluxrelay_receiver_body_bytes",
                "Sizes of request bodies read.",
                buckets=BODY_BUCKETS,
            )
        )
        self.publish_seconds = self.publish_latency.child()
        self.body_bytes = self.body_sizes.child()
        self.receivers = self.gauge("fluxrelay_receiver_receivers", "Receivers currently served.")
        self.receivers_unserved = self.gauge(
            "fluxrelay_receiver_receivers_unserved",
            "Receivers known but not served, by reason (secret_missing, secret_unreadable, "
            "invalid, weak_token, collision).",
            ["reason"],
        )
        self.reloads = self.counter(
            "fluxrelay_receiver_config_reloads",
            "Receiver table reloads by result.",
            ["result"],
        )
        self.duplicates = self.counter(
            "fluxrelay_receiver_duplicates",
            "Deliveries JetStream had already stored (provider redeliveries).",
        )
        self.rate_limited = self.counter(
            "fluxrelay_receiver_rate_limited",
            "Requests refused with 429, by limit (receiver or source).",
            ["scope"],
        )
        self.rate_limit_sources = self.gauge(
            "fluxrelay_receiver_rate_limit_sources",
            "Source addresses currently tracked by the per-source rate limit.",
        )
        self.previous_token_used = self.counter(
            "fluxrelay_receiver_previous_token_used",
            "Deliveries accepted thanks to a Receiver's previous token (path or key): senders "
            "still to be updated before the rotation deadline.",
            ["receiver"],
        )
        self.tls_reloads = self.counter(
            "fluxrelay_receiver_tls_reloads",
            "Reloads of the hook listener's certificate and key, by result.",
            ["result"],
        )
        self._request_times = {c: self.request_seconds.child(f"{c}xx") for c in range(1, 6)}
        self.nats_connected = self.gauge(
            "fluxrelay_receiver_nats_connected", "1 while connected to NATS."
        )

    def delivery(self, receiver: str, provider: str, event: str, outcome: str) -> Count:
        """The deliveries counter for these labels, ``event`` as sent by the provider.

        ``event`` is the sender's text: it is replaced here by its label from the provider's
        closed set (:func:`receiver.labelling.event_label`, inlined: two dict lookups on
        every delivery), so no caller can put the raw value on a series.
        """
        label = EVENT_LABELS.get(provider, NO_EVENTS).get(event, OTHER)
        return self.deliveries.child(receiver, provider, label, outcome)

    def request_time(self, status: int) -> Distribution:
        """The request-time histogram's series for ``status``'s class (``2xx``...)."""
        series = self._request_times.get(status // 100)
        if series is None:
            series = self.request_seconds.child(f"{status // 100}xx")
        return series
