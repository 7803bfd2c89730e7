"""Ingress metrics on a registry owned by the app (no global state, one per process or test)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BODY_BUCKETS = (256, 1024, 4096, 16384, 65536, 262144, 1048576, 3145728, float("inf"))
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


@dataclass
class IngressMetrics:
    """Deliveries by receiver/provider/event/outcome, publish latency, body sizes, config state."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.deliveries = Counter(
            "fluxrelay_receiver_deliveries",
            "Webhook deliveries by receiver, provider, event and outcome.",
            ["receiver", "provider", "event", "outcome"],
            registry=r,
        )
        self.publish_seconds = Histogram(
            "fluxrelay_receiver_publish_seconds",
            "Time from publish to JetStream PubAck.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_seconds = Histogram(
            "fluxrelay_receiver_request_seconds",
            "Time to answer a hook request, by status code class.",
            ["code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.body_bytes = Histogram(
            "fluxrelay_receiver_body_bytes",
            "Sizes of request bodies read.",
            buckets=BODY_BUCKETS,
            registry=r,
        )
        self.receivers = Gauge(
            "fluxrelay_receiver_receivers", "Receivers currently served.", registry=r
        )
        self.receivers_unserved = Gauge(
            "fluxrelay_receiver_receivers_unserved",
            "Receivers known but not served, by reason (secret_missing, secret_unreadable, "
            "invalid, collision).",
            ["reason"],
            registry=r,
        )
        self.reloads = Counter(
            "fluxrelay_receiver_config_reloads",
            "Receiver table reloads by result.",
            ["result"],
            registry=r,
        )
        self.duplicates = Counter(
            "fluxrelay_receiver_duplicates",
            "Deliveries JetStream had already stored (provider redeliveries).",
            registry=r,
        )
        self.rate_limited = Counter(
            "fluxrelay_receiver_rate_limited",
            "Requests refused with 429, by limit (receiver or source).",
            ["scope"],
            registry=r,
        )
        self.rate_limit_sources = Gauge(
            "fluxrelay_receiver_rate_limit_sources",
            "Source addresses currently tracked by the per-source rate limit.",
            registry=r,
        )
        self.previous_token_used = Counter(
            "fluxrelay_receiver_previous_token_used",
            "Deliveries accepted thanks to a Receiver's previous token (path or key): senders "
            "still to be updated before the rotation deadline.",
            ["receiver"],
            registry=r,
        )
        self.tls_reloads = Counter(
            "fluxrelay_receiver_tls_reloads",
            "Reloads of the hook listener's certificate and key, by result.",
            ["result"],
            registry=r,
        )
        self._deliveries: dict[tuple[str, str, str, str], Any] = {}
        self._request_times = {c: self.request_seconds.labels(f"{c}xx") for c in range(1, 6)}
        self.nats_connected = Gauge(
            "fluxrelay_receiver_nats_connected", "1 while connected to NATS.", registry=r
        )

    def delivery(self, receiver: str, provider: str, event: str, outcome: str) -> Any:
        """The deliveries counter's child for these labels, looked up once: prometheus'
        ``labels()`` validates and locks on every call, a visible cost per request. The cache
        holds exactly the children the counter itself keeps."""
        key = (receiver, provider, event, outcome)
        child = self._deliveries.get(key)
        if child is None:
            child = self._deliveries[key] = self.deliveries.labels(*key)
        return child

    def request_time(self, status: int) -> Any:
        """The request-time histogram's child for ``status``'s class (``2xx``...)."""
        return self._request_times.get(status // 100) or self.request_seconds.labels(
            f"{status // 100}xx"
        )
