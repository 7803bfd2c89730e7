"""Metrics of the loop's closing half: outcomes, Mean Time To Production and CDEvents sinks.

Kept apart from ``reconciler.metrics`` (the consuming/patching half) but registered on the same
per-process registry, so ``/metrics`` shows both. MTTP is measured per delivery, from the
webhook's arrival at the receiver (``received_at`` in the envelope) to the moment the reconciler
saw the object Ready at the request that delivery caused; the four stage histograms split that
time so a slow stage is visible: received→stored (receiver and JetStream), stored→patched
(consumer lag, coalescing window, API rate limits), patched→handled (Flux's queue) and
handled→ready (Flux's own work).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from runtime.metrics import MetricSet

MTTP_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)
STAGE_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1200)
STAGES = ("received_stored", "stored_patched", "patched_handled", "handled_ready")
"""Label values of ``fluxrelay_reconciler_stage_seconds{stage}``, in order."""


class OutcomeMetrics(MetricSet):
    """Outcome, MTTP and sink metrics, registered on the reconciler's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.mttp = self.histogram(
            "fluxrelay_reconciler_mttp_seconds",
            "Mean Time To Production per delivery: webhook received to object Ready at the "
            "request it caused, by kind (successful outcomes only).",
            ["kind"],
            buckets=MTTP_BUCKETS,
        )
        self.stage = self.histogram(
            "fluxrelay_reconciler_stage_seconds",
            "Per-delivery latency of one stage: received_stored, stored_patched, "
            "patched_handled, handled_ready.",
            ["stage"],
            buckets=STAGE_BUCKETS,
        )
        self.outcomes = self.counter(
            "fluxrelay_reconciler_outcomes",
            "Reconcile requests followed to the end, by kind and result (success, failure, error).",
            ["kind", "result"],
        )
        self.waiting = self.gauge(
            "fluxrelay_reconciler_outcome_waiting",
            "Reconcile requests whose outcome is still awaited.",
        )
        self.followed = self.gauge(
            "fluxrelay_reconciler_outcome_followed",
            "Deliveries whose reconcile requests are followed (bounded by --max-followed).",
        )
        self.abandoned = self.counter(
            "fluxrelay_reconciler_outcome_abandoned",
            "Reconcile requests given up on (error outcome FollowLimit) to stay within "
            "--max-followed, oldest first.",
        )
        self.watch_restarts = self.counter(
            "fluxrelay_reconciler_outcome_watch_restarts",
            "Outcome watches restarted, by kind and why (gone: relisted after 410; error).",
            ["kind", "why"],
        )
        self.emitted = self.counter(
            "fluxrelay_reconciler_cdevents_emitted",
            "CDEvents handed to the sinks, by CDEvent type.",
            ["type"],
        )
        self.build_errors = self.counter(
            "fluxrelay_reconciler_cdevents_build_errors",
            "CDEvents that could not be built or failed validation (a bug), by type.",
            ["type"],
        )
        self.sink_sent = self.counter(
            "fluxrelay_reconciler_sink_sent",
            "CDEvents a sink delivered (PubAck or 2xx).",
            ["sink"],
        )
        self.sink_retries = self.counter(
            "fluxrelay_reconciler_sink_retries",
            "Delivery attempts that failed and were retried.",
            ["sink"],
        )
        self.sink_failed = self.counter(
            "fluxrelay_reconciler_sink_failed",
            "CDEvents a sink gave up on, by reason (rejected: a 4xx; expired: retried too long).",
            ["sink", "reason"],
        )
        self.sink_dropped = self.counter(
            "fluxrelay_reconciler_sink_dropped",
            "CDEvents never attempted, by reason (overflow: outbox full; shutdown).",
            ["sink", "reason"],
        )
        self.outbox = self.gauge(
            "fluxrelay_reconciler_sink_outbox",
            "CDEvents waiting in a sink's outbox.",
            ["sink"],
        )
