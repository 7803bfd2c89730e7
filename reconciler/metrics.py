"""Reconciler metrics on a registry owned by the process (no global state; one per test).

What an operator needs to see the reconciler keep up: messages by outcome, consumer lag and
redeliveries (polled from the consumer), patches by kind and result, the API server pushing
back (429s) and the concurrency the AIMD limiter settled on, dead letters by reason, and how
much coalescing saved.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass
class ReconcilerMetrics:
    """Every reconciler metric, registered on :attr:`registry`."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.messages = Counter(
            "fluxrelay_reconciler_messages",
            "Consumed messages by outcome (ack, nak, term).",
            ["outcome"],
            registry=r,
        )
        self.redeliveries = Counter(
            "fluxrelay_reconciler_redeliveries",
            "Messages received that had been delivered before (num_delivered > 1).",
            registry=r,
        )
        self.consumer_pending = Gauge(
            "fluxrelay_reconciler_consumer_pending",
            "Consumer lag: stored messages not yet delivered to this durable (num_pending).",
            registry=r,
        )
        self.consumer_ack_pending = Gauge(
            "fluxrelay_reconciler_consumer_ack_pending",
            "Messages delivered to this durable and not yet acknowledged.",
            registry=r,
        )
        self.consumer_redelivered = Gauge(
            "fluxrelay_reconciler_consumer_redelivered",
            "Messages the server is redelivering to this durable (num_redelivered).",
            registry=r,
        )
        self.dead_letters = Counter(
            "fluxrelay_reconciler_dead_letters",
            "Messages terminated and published to the dead-letter stream, by reason.",
            ["reason"],
            registry=r,
        )
        self.targets = Counter(
            "fluxrelay_reconciler_targets",
            "Objects a message targeted, by how (explicit, auto).",
            ["how"],
            registry=r,
        )
        self.patches = Counter(
            "fluxrelay_reconciler_patches",
            "Reconcile requests (merge patches) by kind and result.",
            ["kind", "result"],
            registry=r,
        )
        self.patch_seconds = Histogram(
            "fluxrelay_reconciler_patch_seconds",
            "Time of one successful patch including waits for rate limits and retries.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.api_requests = Counter(
            "fluxrelay_reconciler_api_requests",
            "Kubernetes API requests by verb and HTTP status (0: no answer).",
            ["verb", "code"],
            registry=r,
        )
        self.throttled = Counter(
            "fluxrelay_reconciler_api_throttled",
            "HTTP 429 answers from the Kubernetes API server.",
            registry=r,
        )
        self.concurrency = Gauge(
            "fluxrelay_reconciler_api_concurrency",
            "Current limit of concurrent Kubernetes API requests (AIMD).",
            registry=r,
        )
        self.coalesced = Counter(
            "fluxrelay_reconciler_coalesced_deliveries",
            "Deliveries folded into a patch another delivery for the same object caused.",
            registry=r,
        )
        self.receivers = Gauge(
            "fluxrelay_reconciler_receivers", "Receivers currently known.", registry=r
        )
        self.nats_connected = Gauge(
            "fluxrelay_reconciler_nats_connected", "1 while connected to NATS.", registry=r
        )
