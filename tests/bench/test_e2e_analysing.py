"""The arithmetic behind bench/e2e's verdicts: windows, percentiles, attribution of watch
events to deliveries, and the burst and rate checks that decide pass or fail."""

from __future__ import annotations

import pytest

from bench.e2e.analysing import (
    Delivery,
    Seen,
    burst_summary,
    latency_summary,
    max_in_window,
    median_of,
    percentile,
    rate_summary,
    writes_summary,
)


def delivery(index: int, obj: str, sent: float, attribution: str | None = None) -> Delivery:
    status = 202 if attribution else None
    done = sent + 0.002 if attribution else None
    return Delivery(index, obj, attribution, sent, sent, done, status)


@pytest.mark.parametrize(
    ("times", "window", "expected"),
    [
        pytest.param([], 1.0, 0, id="empty"),
        pytest.param([0.0, 0.5, 0.99, 1.0, 1.5], 1.0, 3, id="half-open"),
        pytest.param([3.0, 0.0, 2.5, 2.9, 0.1], 1.0, 3, id="unsorted"),
        pytest.param([0.0, 1.0, 2.0], 2.0, 2, id="two-seconds"),
    ],
)
def test_max_in_window(times: list[float], window: float, expected: int) -> None:
    assert max_in_window(times, window) == expected


@pytest.mark.parametrize(
    ("p", "expected"),
    [pytest.param(50, 50.0, id="p50"), pytest.param(99, 99.0, id="p99"), pytest.param(100, 100.0)],
)
def test_nearest_rank_percentile(p: float, expected: float) -> None:
    assert percentile([float(v) for v in range(100, 0, -1)], p) == expected


def test_latency_counts_only_the_annotation_of_each_delivery() -> None:
    deliveries = [delivery(0, "a", 10.0, "id-a"), delivery(1, "b", 10.05, "id-b")]
    events = [
        Seen(10.01, "a", "t0", "older"),  # someone else's write: not ours
        Seen(10.03, "a", "t1", "id-a"),
        Seen(10.04, "a", "t1", "id-a"),  # a later event with the same value
    ]
    summary = latency_summary(deliveries, events)
    assert (summary["seen"], summary["missing"]) == (1, 1)
    assert summary["send_to_annotation_p50_ms"] == 30.0
    assert summary["response_to_annotation_p50_ms"] == 28.0


def test_burst_object_is_current_only_once_its_last_delivery_is_seen() -> None:
    deliveries = [
        delivery(0, "a", 1.0, "a1"),
        delivery(1, "b", 1.5, "b1"),
        delivery(2, "a", 2.0, "a2"),
        delivery(3, "b", 2.5, "b2"),
    ]
    events = [Seen(2.1, "a", "t", "a2"), Seen(2.2, "b", "t", "b1")]
    summary = burst_summary(deliveries, events, {"a": ("t", "a2"), "b": ("t", "b1")}, 3.2)
    assert summary["objects_current"] == 1
    assert summary["objects_final_annotation_is_last_delivery"] == 1
    assert summary["all_current_within_bound"] is False
    late = burst_summary(deliveries, [*events, Seen(9.0, "b", "u", "b2")], {}, 3.2)
    assert late["objects_current"] == 2
    assert late["last_object_current_after_burst_s"] == 6.5
    assert late["all_current_within_bound"] is False
    on_time = burst_summary(deliveries, [*events, Seen(4.0, "b", "u", "b2")], {}, 3.2)
    assert on_time["all_current_within_bound"] is True


def test_rate_check_follows_the_token_bucket_over_several_windows() -> None:
    burst_then_steady = [0.0] * 100 + [0.02 * i for i in range(1, 251)]  # 100 at once, 50/s
    ok = rate_summary(burst_then_steady, burst_then_steady, qps=50, burst=100)
    assert ok["within_bound"] is True
    assert ok["max_requests_1s"] == 149
    too_fast = [0.0] * 100 + [0.01 * i for i in range(1, 501)]  # 100/s after the burst
    over = rate_summary(too_fast, too_fast, qps=50, burst=100)
    assert over["within_bound"] is False
    assert over["worst_window_vs_bound"] > 1.3


def test_writes_are_changes_of_the_delivery_annotation() -> None:
    events = [
        Seen(1.0, "a", "t1", "x"),
        Seen(1.1, "a", "t1", "x"),  # same value again (a status update, say): no write
        Seen(1.2, "a", "t2", "y"),
        Seen(1.3, "b", None, None),
    ]
    assert writes_summary(events) == {"writes": 2, "max_writes_1s": 2}


def test_medians_of_runs_key_by_key() -> None:
    runs = [
        {"p99": 10.0, "ok": True, "api": {"n": 1}, "note": "x"},
        {"p99": 30.0, "ok": False, "api": {"n": 3}, "note": "y"},
        {"p99": 20.0, "ok": True, "api": {"n": 2}, "missing": None},
    ]
    assert median_of(runs) == {
        "p99": 20.0,
        "ok": "2/3",
        "api": {"n": 2},
        "note": "x",
        "missing": None,
    }
