"""API discipline as pure logic (fake clock, no servers): the AIMD limiter (halves once per
round of 429s, grows back by one per round of successes, stays within its bounds, holds
everyone for Retry-After), admission tickets (a call carrying one spends the token its
admission took instead of another, and only once), Retry-After parsing, and the requestedAt
clock (RFC 3339 with nanoseconds, never repeating). The token bucket under the gate has its
own tests (tests/runtime/test_tokenbucket.py)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from reconciler.errors import Conflict, TemporaryError
from reconciler.metrics import ReconcilerMetrics
from reconciler.patching import RequestClock, rfc3339_nano
from reconciler.settings import PatchSettings
from reconciler.throttling import AimdLimiter, ApiGate, retry_after


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_aimd_halves_once_per_round_and_grows_back() -> None:
    clock = FakeClock()
    seen: list[int] = []
    limiter = AimdLimiter(32, 2, clock=clock, on_change=seen.append)
    epoch = limiter.epoch
    # 20 requests sent together all come back 429: one decrease, not twenty.
    shrunk = [limiter.throttled(epoch, 1.0) for _ in range(20)]
    assert shrunk.count(True) == 1
    assert limiter.limit == 16
    for _ in range(10):
        limiter.throttled(limiter.epoch, 0.0)
    assert limiter.limit == 2  # the floor
    for _ in range(1000):
        limiter.succeeded()
    assert limiter.limit == 32  # the ceiling
    assert seen[0] == 32 and min(seen) == 2 and seen[-1] == 32


def test_aimd_additive_increase_is_about_one_per_round() -> None:
    limiter = AimdLimiter(64, 1)
    limiter.throttled(limiter.epoch, 0)
    assert limiter.limit == 32
    for _ in range(33):  # one round of successes at limit ~32
        limiter.succeeded()
    assert limiter.limit == 33


async def test_retry_after_holds_every_request() -> None:
    limiter = AimdLimiter(4, 1)
    limiter.throttled(limiter.epoch, 0.3)
    assert limiter.pause_left() > 0
    epoch = await limiter.acquire()  # waits out the pause (bounded by the test timeout)
    assert limiter.pause_left() == 0
    assert epoch == 1
    await limiter.release()


async def test_the_limiter_never_exceeds_its_limit() -> None:
    limiter = AimdLimiter(3, 1)
    peak = 0

    async def work() -> None:
        nonlocal peak
        await limiter.acquire()
        peak = max(peak, limiter.in_flight)
        await asyncio.sleep(0.001)
        await limiter.release()

    await asyncio.gather(*(work() for _ in range(30)))
    assert peak == 3
    assert limiter.in_flight == 0


async def test_a_call_carrying_a_ticket_spends_the_token_its_admission_took() -> None:
    clock = FakeClock()
    gate = ApiGate(PatchSettings(qps=10, burst=1), ReconcilerMetrics(), clock=clock)
    ticket = await gate.admit()  # takes the only token of the burst
    sent: list[str] = []

    async def request() -> str:
        sent.append("patch")
        return "ok"

    assert await gate.call("patch", "x", request, ticket=ticket) == "ok"
    assert sent == ["patch"]
    # One token was taken for admission and call together: the next is one period away.
    assert gate.bucket.reserve() == pytest.approx(0.1)


async def test_a_ticket_is_spent_once() -> None:
    gate = ApiGate(PatchSettings(), ReconcilerMetrics())
    ticket = await gate.admit()

    async def request() -> None:
        return None

    await gate.call("patch", "x", request, ticket=ticket)
    with pytest.raises(RuntimeError, match="already spent"):
        await gate.call("patch", "x", request, ticket=ticket)


def api_error(status: int, headers: dict[str, str] | None, body: Any) -> ApiException:
    e = ApiException(status=status, reason="x")
    e.headers = headers  # type: ignore[assignment]  # the proxy-free way to build one
    e.body = json.dumps(body).encode() if body is not None else None
    return e


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        pytest.param({"Retry-After": "7"}, None, 7.0, id="header"),
        pytest.param(None, {"details": {"retryAfterSeconds": 3}}, 3.0, id="status-body"),
        pytest.param({"Retry-After": "soon"}, {"details": {"retryAfterSeconds": 2}}, 2.0,
                     id="unparseable-header-falls-back-to-body"),
        pytest.param(None, {"kind": "Status"}, None, id="none"),
        pytest.param({}, None, None, id="empty"),
    ],
)  # fmt: skip
def test_retry_after(headers: dict[str, str] | None, body: Any, expected: float | None) -> None:
    assert retry_after(api_error(429, headers, body)) == expected


def test_requested_at_is_rfc3339_with_nanoseconds() -> None:
    assert rfc3339_nano(1_700_000_000_000_000_001) == "2023-11-14T22:13:20.000000001Z"
    assert rfc3339_nano(0) == "1970-01-01T00:00:00.000000000Z"


def test_requested_at_values_never_repeat_or_go_back() -> None:
    clock = RequestClock()
    values = [clock.next() for _ in range(10_000)]
    assert len(set(values)) == len(values)
    assert values == sorted(values)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", v) for v in values)


@pytest.mark.parametrize("conditional", [True, False])
async def test_a_conditional_requests_409_is_final_and_any_others_retried(
    conditional: bool,
) -> None:
    """A request sent on condition of a resource version fails the same way every time once
    the object has changed: the caller must decide again (``Conflict``), not the gate retry."""
    gate = ApiGate(
        PatchSettings(retry_base=0.001, retry_max=0.002, attempts=3), ReconcilerMetrics()
    )
    sent = 0

    async def request() -> str:
        nonlocal sent
        sent += 1
        if sent == 1:
            raise ApiException(status=409, reason="Conflict")
        return "ok"

    if conditional:
        with pytest.raises(Conflict) as raised:
            await gate.call("patch", "Kustomization/ns/a", request, conditional=True)
        assert raised.value.current is None and isinstance(raised.value, TemporaryError)
        assert sent == 1
        assert gate.limiter.in_flight == 0, "its concurrency slot is given back"
    else:
        assert await gate.call("patch", "Kustomization/ns/a", request) == "ok"
        assert sent == 2
