"""The bounds a replica pulls within (``reconciler.backpressure``), decided without a server.

Covers: a pull asks for no more than the count and byte room left (stored bytes the room
holds once decoded, so one pull cannot overshoot; one message always gets through when
nothing is held), pulling stops at each bound
with its ``paused{reason}`` gauge set and resumes when the room comes back; objects waiting
at the API budget's bound stop pulling; memory over the high-water mark slows pulling to a
trickle instead of stopping it; the default objects-waiting bound is qps x ack-wait.
How the consumer honours the room against a real nats-server is tests/reconciler/
test_storm.py; the sizes each held delivery costs, test_memory_budget.py.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from reconciler.backpressure import (
    DECODED_FACTOR,
    REASONS,
    ROUTED_BYTES,
    Backpressure,
    Limits,
    Room,
)
from reconciler.metrics import ReconcilerMetrics
from reconciler.settings import ConsumerSettings, PatchSettings, ReconcilerSettings

MiB = 1024 * 1024


def paused(metrics: ReconcilerMetrics) -> set[str]:
    return {r for r in REASONS if metrics.paused.labels(r)._value.get() == 1}


def make(
    *,
    in_flight: int = 100,
    in_flight_bytes: int = 64 * MiB,
    objects: int = 10,
    memory_limit: int | None = None,
    rss: int = 0,
) -> tuple[Backpressure, ReconcilerMetrics, list[int]]:
    metrics = ReconcilerMetrics(CollectorRegistry())
    waiting = [0]
    limits = Limits(in_flight, in_flight_bytes, objects, memory_limit, trickle=5)
    bp = Backpressure(limits, metrics, lambda: waiting[0], rss=lambda: rss)
    bp.max_message = 8 * MiB
    return bp, metrics, waiting


def test_a_pull_takes_no_more_than_the_count_room() -> None:
    bp, metrics, _ = make(in_flight=100)
    assert bp.room(128).count == 100
    for _ in range(98):
        bp.hold(1000)
    assert bp.room(128).count == 2
    bp.hold(1000)
    bp.hold(1000)
    assert not bp.room(128)
    assert paused(metrics) == {"in_flight"}
    assert metrics.in_flight._value.get() == 100
    bp.release(1000)
    assert bp.room(128).count == 1
    assert paused(metrics) == set()


def test_a_pull_asks_for_no_more_stored_bytes_than_the_room_holds_decoded() -> None:
    bp, metrics, _ = make(in_flight=100, in_flight_bytes=64 * MiB)
    room = bp.room(10)
    # ten routing charges are set aside, the rest holds bodies at five times their size
    assert room == Room(10, (64 * MiB - 10 * ROUTED_BYTES) // DECODED_FACTOR)
    bp.hold(40 * MiB)  # a body being decoded
    assert bp.room(10).max_bytes == (24 * MiB - 10 * ROUTED_BYTES) // DECODED_FACTOR
    bp.hold(24 * MiB - 10 * ROUTED_BYTES)
    assert not bp.room(10)
    assert paused(metrics) == {"in_flight_bytes"}
    assert metrics.in_flight_bytes._value.get() == 64 * MiB - 10 * ROUTED_BYTES
    bp.recharge(40 * MiB, ROUTED_BYTES)  # that body was dropped once targeted
    assert bp.room(10)
    assert paused(metrics) == set()


def test_with_nothing_held_one_message_of_any_allowed_size_gets_through() -> None:
    bp, _, _ = make(in_flight_bytes=1 * MiB)  # less than one 8 MiB message decoded
    assert bp.room(128).max_bytes == 8 * MiB
    bp.hold(5 * 8 * MiB + ROUTED_BYTES)
    assert not bp.room(128)


def test_objects_waiting_at_the_api_budget_stop_pulling() -> None:
    bp, metrics, waiting = make(objects=10)
    waiting[0] = 10
    assert not bp.room(128)
    assert paused(metrics) == {"objects_waiting"}
    assert metrics.objects_waiting._value.get() == 10
    waiting[0] = 9
    assert bp.room(128)


def test_memory_over_the_high_water_mark_slows_pulling_to_a_trickle() -> None:
    bp, metrics, _ = make(memory_limit=100 * MiB, rss=81 * MiB)
    assert bp.limits.high_water_bytes == 80 * MiB
    bp.check_memory()
    assert bp.over_memory
    assert metrics.resident_bytes._value.get() == 81 * MiB
    assert metrics.memory_limit._value.get() == 100 * MiB
    for _ in range(3):
        bp.hold(10)
    assert bp.room(128).count == 2  # a trickle of five in flight, not the usual hundred
    bp.hold(10)
    bp.hold(10)
    assert not bp.room(128)
    assert paused(metrics) == {"memory"}


def test_without_a_memory_limit_memory_never_pauses() -> None:
    bp, metrics, _ = make(memory_limit=None, rss=10_000 * MiB)
    bp.check_memory()
    assert not bp.over_memory
    assert bp.room(128).count == 100
    assert paused(metrics) == set()


def test_the_objects_waiting_bound_is_what_the_api_budget_patches_in_one_ack_wait() -> None:
    assert ReconcilerSettings().objects_waiting_limit == 50 * 30
    custom = ReconcilerSettings(patch=PatchSettings(qps=20), consumer=ConsumerSettings(ack_wait=10))
    assert custom.objects_waiting_limit == 200
    fixed = ReconcilerSettings(consumer=ConsumerSettings(max_objects_waiting=7))
    assert fixed.objects_waiting_limit == 7
