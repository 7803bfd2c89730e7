"""The hot-path metrics expose exactly what prometheus_client's own Counter and Histogram
would: same names, labels, buckets, counts and sums (only ``_created`` times differ)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from receiver.metrics import BODY_BUCKETS, LATENCY_BUCKETS, IngressMetrics

OUTCOMES = st.sampled_from(["accepted", "duplicate", "signature_invalid", "not_stored"])


def shape(registry: CollectorRegistry, prefix: str) -> list[str]:
    """The exposition lines of ``prefix``'s metrics, ``_created`` values blanked."""
    text = generate_latest(registry).decode()
    lines = [line for line in text.splitlines() if prefix in line]
    return sorted(re.sub(r"(_created(\{[^}]*\})?) \S+$", r"\1", line) for line in lines)


@given(
    deliveries=st.lists(st.tuples(st.sampled_from(["a/x", "b/y"]), OUTCOMES), max_size=30),
    latencies=st.lists(st.floats(min_value=0, max_value=20, allow_nan=False), max_size=30),
    sizes=st.lists(st.integers(min_value=0, max_value=4 * 1024 * 1024), max_size=30),
    statuses=st.lists(st.sampled_from([200, 202, 400, 404, 503]), max_size=30),
)
def test_exposition_matches_prometheus_client(
    deliveries: list[tuple[str, str]],
    latencies: list[float],
    sizes: list[int],
    statuses: list[int],
) -> None:
    ours = IngressMetrics()
    reference = CollectorRegistry()
    counter = Counter(
        "fluxrelay_receiver_deliveries",
        "Webhook deliveries by receiver, provider, event and outcome.",
        ["receiver", "provider", "event", "outcome"],
        registry=reference,
    )
    publish = Histogram(
        "fluxrelay_receiver_publish_seconds",
        "Time from publish to JetStream PubAck.",
        buckets=LATENCY_BUCKETS,
        registry=reference,
    )
    request = Histogram(
        "fluxrelay_receiver_request_seconds",
        "Time to answer a hook request, by status code class.",
        ["code"],
        buckets=LATENCY_BUCKETS,
        registry=reference,
    )
    body = Histogram(
        "fluxrelay_receiver_body_bytes",
        "Sizes of request bodies read.",
        buckets=BODY_BUCKETS,
        registry=reference,
    )
    for code in range(1, 6):  # the receiver creates these series up front
        request.labels(f"{code}xx")
    for receiver, outcome in deliveries:
        ours.delivery(receiver, "github", "push", outcome).inc()
        counter.labels(receiver, "github", "push", outcome).inc()
    for seconds in latencies:
        ours.publish_seconds.observe(seconds)
        publish.observe(seconds)
    for size in sizes:
        ours.body_bytes.observe(size)
        body.observe(size)
    for status, seconds in zip(statuses, latencies, strict=False):
        ours.request_time(status).observe(seconds)
        request.labels(f"{status // 100}xx").observe(seconds)
    for prefix in (
        "fluxrelay_receiver_deliveries",
        "fluxrelay_receiver_publish_seconds",
        "fluxrelay_receiver_request_seconds",
        "fluxrelay_receiver_body_bytes",
    ):
        assert shape(ours.registry, prefix) == shape(reference, prefix)


def test_value_reads_one_series() -> None:
    metrics = IngressMetrics()
    metrics.delivery("a/x", "github", "push", "accepted").inc()
    metrics.delivery("a/x", "github", "push", "accepted").inc()
    metrics.body_bytes.observe(100)
    assert metrics.deliveries.value("a/x", "github", "push", "accepted") == 2
    assert metrics.deliveries.value("a/x", "github", "push", "duplicate") == 0
    assert metrics.body_sizes.value() == 100
