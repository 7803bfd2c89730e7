"""The token bucket both services limit rates with: ``rate`` tokens a second, ``burst`` at most.

The receiver refuses what its buckets cannot pay for (a hook request per Receiver and per
source address, answered 429 with the wait), the reconciler queues behind its one bucket
(client-side QPS/burst towards the Kubernetes API, as client-go does). Both are the same
arithmetic on the same state, so it lives here once with two ways to spend a token:

- :meth:`TokenBucket.take` refuses: a token is taken only if one is there, otherwise the
  bucket is left as it is and the caller learns how long until one will be;
- :meth:`TokenBucket.reserve` queues: a token is always taken, the bucket going into debt,
  and the caller learns how long to wait before using it. Waiters are served in the order
  they reserved without a lock, since each one's wait is fixed when it reserves.

The clock is injected (monotonic by default) so tests run on a fake one. A clock that goes
back never adds tokens.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
"""Seconds on a clock that does not jump (``time.monotonic``)."""
Sleep = Callable[[float], Awaitable[None]]


class TokenBucket:
    """Starts full; refills at ``rate`` per second up to ``burst`` tokens."""

    __slots__ = ("_clock", "_sleep", "_stamp", "_tokens", "burst", "rate")
    # Slots: the receiver keeps one bucket per source address, tens of thousands of them.

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not rate > 0 or not burst >= 1:
            raise ValueError(f"rate must be > 0 and burst >= 1 (got {rate}, {burst})")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._stamp)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        self._stamp = now

    def take(self) -> float:
        """Take a token if there is one: 0.0; else take nothing and return the seconds until
        there will be one."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate

    def reserve(self) -> float:
        """Take a token now, due or not; return the seconds to wait before using it."""
        self._refill()
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def put_back(self) -> None:
        """Return a token taken and not used (never above ``burst``)."""
        self._refill()
        self._tokens = min(float(self.burst), self._tokens + 1.0)

    async def acquire(self) -> None:
        """Reserve a token and sleep until it is due."""
        wait = self.reserve()
        if wait > 0:
            await self._sleep(wait)
