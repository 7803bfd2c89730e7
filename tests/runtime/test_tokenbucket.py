"""The token bucket both services limit rates with, on a fake clock (no real time passes).

Covers: a full bucket allows the burst, then the rate; reservations (the reconciler's way)
queue up in debt and each learns its own wait; refusals (the receiver's way) take nothing
and say how long until a token is there; refilling stops at the burst; a clock that goes
back adds nothing; the two ways share one state; nonsense rates are refused.
"""

from __future__ import annotations

import pytest

from runtime.tokenbucket import TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_the_bucket_allows_the_burst_then_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(50, 100, clock=clock, sleep=clock.sleep)
    for _ in range(100):
        await bucket.acquire()
    assert clock.slept == []
    await bucket.acquire()
    assert clock.slept == [pytest.approx(1 / 50)]
    # Reservations queue up: the 3rd request over the burst waits 3 token periods.
    assert bucket.reserve() == pytest.approx(1 / 50)
    assert bucket.reserve() == pytest.approx(2 / 50)


async def test_the_bucket_refills_at_the_rate_up_to_the_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, 5, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        bucket.reserve()
    clock.now += 100  # long idle: refills to the burst, not beyond
    waits = [bucket.reserve() for _ in range(6)]
    assert waits[:5] == [0.0] * 5
    assert waits[5] == pytest.approx(0.1)


def test_a_refusal_takes_nothing_and_tells_when_the_next_token_comes() -> None:
    clock = FakeClock()
    bucket = TokenBucket(0.5, 2, clock=clock)
    assert [bucket.take(), bucket.take()] == [0.0, 0.0]
    assert bucket.take() == pytest.approx(2.0)
    assert bucket.take() == pytest.approx(2.0), "a refusal does not go into debt"
    clock.now += 1.5
    assert bucket.take() == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(2.0)


def test_a_fractional_burst_is_kept_as_given() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1, 1.5, clock=clock)
    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(0.5)
    clock.now += 10
    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(0.5), "refilled to 1.5 tokens, not 2"


def test_a_clock_going_back_adds_no_tokens() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1, 1, clock=clock)
    assert bucket.take() == 0.0
    clock.now -= 50
    assert bucket.take() == pytest.approx(1.0)
    clock.now += 1
    assert bucket.take() == 0.0


def test_refusals_see_the_debt_of_reservations() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, 1, clock=clock)
    assert bucket.reserve() == 0.0
    assert bucket.reserve() == pytest.approx(0.1)
    assert bucket.take() == pytest.approx(0.2), "two tokens owed before this one"
    clock.now += 0.2
    assert bucket.take() == 0.0


@pytest.mark.parametrize(
    ("rate", "burst"),
    [
        pytest.param(0, 1, id="no-rate"),
        pytest.param(-1, 1, id="negative-rate"),
        pytest.param(1, 0.5, id="burst-below-one"),
        pytest.param(float("nan"), 1, id="nan-rate"),
    ],
)
def test_a_bucket_that_could_never_pay_is_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="rate must be > 0"):
        TokenBucket(rate, burst)
