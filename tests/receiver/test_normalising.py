"""The received timestamp: formatted per second once, it must read back as the same instant
and always in the same shape (six fraction digits, ``Z``), across second boundaries."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from receiver.normalising import timestamp

SHAPE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_reads_back_as_the_same_instant(seconds: float) -> None:
    text = timestamp(seconds)
    assert SHAPE.fullmatch(text), text
    back = datetime.fromisoformat(text)
    assert back.tzinfo == UTC
    # Truncated to the microsecond (never rounded up into the next second).
    assert 0 <= seconds - back.timestamp() < 2e-6


def test_seconds_alternating_do_not_mix_up_the_cached_prefix() -> None:
    for seconds in (1_700_000_000.25, 1_700_000_001.5, 1_700_000_000.75, 1_800_000_000.0):
        expected = datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%S")
        assert timestamp(seconds).startswith(expected + ".")
    assert timestamp(1_700_000_000.25).endswith(".250000Z")
    assert timestamp(1_800_000_000.0).endswith(".000000Z")
