"""Reconciler metrics on a registry owned by the process (no global state; one per test).

What an operator needs to see the reconciler keep up: messages by outcome, consumer lag and
redeliveries (polled from the consumer), patches by kind and result, the API server pushing
back (429s) and the concurrency the AIMD limiter settled on, dead letters by reason, and how
much coalescing saved.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from runtime.metrics import MetricSet

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ReconcilerMetrics(MetricSet):
    """Every metric of the consuming and patching half, registered on :attr:`registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        self.messages = self.counter(
            "fluxrelay_reconciler_messages",
            "Consumed messages by outcome (ack, nak, term).",
            ["outcome"],
        )
        self.redeliveries = self.counter(
            "fluxrelay_reconciler_redeliveries",
            "Messages received that had been delivered before (num_delivered > 1).",
        )
        self.done_shared = self.counter(
            "fluxrelay_reconciler_done_shared",
            "The shared done memory of nak'd messages (reconciler.done) by result: shared "
            "(put before a nak), recalled or absent (read for a redelivery), too_large, failed.",
            ["result"],
        )
        self.consumer_pending = self.gauge(
            "fluxrelay_reconciler_consumer_pending",
            "Consumer lag: stored messages not yet delivered to this durable (num_pending).",
        )
        self.consumer_ack_pending = self.gauge(
            "fluxrelay_reconciler_consumer_ack_pending",
            "Messages delivered to this durable and not yet acknowledged.",
        )
        self.consumer_redelivered = self.gauge(
            "fluxrelay_reconciler_consumer_redelivered",
            "Messages the server is redelivering to this durable (num_redelivered).",
        )
        self.dead_letters = self.counter(
            "fluxrelay_reconciler_dead_letters",
            "Messages terminated and published to the dead-letter stream, by reason.",
            ["reason"],
        )
        self.targets = self.counter(
            "fluxrelay_reconciler_targets",
            "Objects a message targeted, by how (explicit, auto).",
            ["how"],
        )
        self.patches = self.counter(
            "fluxrelay_reconciler_patches",
            "Reconcile requests (merge patches) by kind and result.",
            ["kind", "result"],
        )
        self.patch_seconds = self.histogram(
            "fluxrelay_reconciler_patch_seconds",
            "Time of one successful patch including waits for rate limits and retries.",
            buckets=LATENCY_BUCKETS,
        )
        self.api_requests = self.counter(
            "fluxrelay_reconciler_api_requests",
            "Kubernetes API requests by verb and HTTP status (0: no answer).",
            ["verb", "code"],
        )
        self.throttled = self.counter(
            "fluxrelay_reconciler_api_throttled",
            "HTTP 429 answers from the Kubernetes API server.",
        )
        self.concurrency = self.gauge(
            "fluxrelay_reconciler_api_concurrency",
            "Current limit of concurrent Kubernetes API requests (AIMD).",
        )
        self.coalesced = self.counter(
            "fluxrelay_reconciler_coalesced_deliveries",
            "Deliveries folded into a patch another delivery for the same object caused.",
        )
        self.covered = self.counter(
            "fluxrelay_reconciler_covered_deliveries",
            "Deliveries not patched: the object's requestedAt was set after they were stored "
            "(by another replica, or anyone), so that request covers them.",
        )
        self.conflicts = self.counter(
            "fluxrelay_reconciler_patch_conflicts",
            "Reconcile requests refused with 409: the object changed since the version they "
            "were sent on condition of, so they were checked again against it.",
        )
        self.untargeted = self.counter(
            "fluxrelay_reconciler_untargeted",
            "Deliveries that reconciled no object, by Receiver and the first reason (see "
            "reconciler/decisions.py: not_found, match_labels, filter_false, shard, no_source...).",
            ["receiver", "reason"],
        )
        self.cached_objects = self.gauge(
            "fluxrelay_reconciler_cached_objects",
            "Flux objects whose metadata targeting keeps, by kind (reconciler/metadata.py).",
            ["kind"],
        )
        self.in_flight = self.gauge(
            "fluxrelay_reconciler_in_flight",
            "Deliveries this replica holds (pulled, not yet settled).",
        )
        self.in_flight_bytes = self.gauge(
            "fluxrelay_reconciler_in_flight_bytes",
            "Bytes charged to the deliveries held (stored size while the body is needed, a "
            "fixed routing size after).",
        )
        self.objects_waiting = self.gauge(
            "fluxrelay_reconciler_objects_waiting",
            "Flux objects with deliveries waiting for their patch.",
        )
        self.paused = self.gauge(
            "fluxrelay_reconciler_paused",
            "1 while this bound holds pulling from JetStream back (in_flight, "
            "in_flight_bytes, objects_waiting, memory).",
            ["reason"],
        )
        self.memory_limit = self.gauge(
            "fluxrelay_reconciler_memory_limit_bytes",
            "The memory limit pulling slows down under (--memory-limit or the cgroup's).",
        )
        self.resident_bytes = self.gauge(
            "fluxrelay_reconciler_resident_bytes",
            "Resident set size as last sampled for the memory limit.",
        )
        self.receivers = self.gauge("fluxrelay_reconciler_receivers", "Receivers currently known.")
        self.nats_connected = self.gauge(
            "fluxrelay_reconciler_nats_connected", "1 while connected to NATS."
        )
