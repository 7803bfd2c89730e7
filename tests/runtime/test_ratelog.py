"""runtime.ratelog: one line per interval for what can happen once per request or event."""

from __future__ import annotations

from runtime.ratelog import Spaced, since_last
from tests.reconciler.test_throttling import FakeClock


def test_one_line_per_interval_with_the_count_of_the_rest() -> None:
    clock = FakeClock()
    spaced = Spaced(10.0, clock)
    assert spaced.due() == 0  # the first occurrence is logged at once
    assert [spaced.due() for _ in range(999)] == [None] * 999
    clock.now += 9.9
    assert spaced.due() is None
    clock.now += 0.1
    assert spaced.due() == 1000  # the next line counts every one not logged
    clock.now += 60.0
    assert spaced.due() == 0


def test_the_tail_says_how_many_were_not_logged() -> None:
    assert since_last(0, "dropped") == ""
    assert since_last(12, "dropped") == "; 12 more dropped since the last such line"
