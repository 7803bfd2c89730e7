"""Kubernetes API discipline: client-side QPS/burst, AIMD concurrency, retries, error meaning.

Every request the reconciler makes (target lookups and patches) goes through one
:class:`ApiGate`, so the whole process stays inside one budget, as a client-go controller
does with its QPS/burst (one ``runtime.tokenbucket.TokenBucket``). On top of the fixed rate
the gate adapts its concurrency to the server: each 429 halves the number of requests
allowed in flight (once per "round", so a burst of 429s for requests sent together counts
once) and stops everyone until the server's ``Retry-After`` has passed; every success grows
the limit back by ``1/limit`` (additive increase, one slot per round of successes). 409, 429,
500/502/503/504, timeouts and connection failures are retried with jittered backoff
(``runtime.backoff``), except a 409 for a request made on condition of a resource version,
which would fail again: that is the caller's :class:`~reconciler.errors.Conflict`. What the
answers mean for the message is decided here and nowhere else: those, and 401/403 (RBAC or
a token being rolled out), are temporary; 404 and every other answer permanent.

A caller that must know it may send before it commits to what it sends (the coalescer keeps
a batch open while it waits) asks :meth:`ApiGate.admit` for a :class:`Ticket`: the rate-limit
token, taken. The call that carries the ticket spends it instead of taking another.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

from reconciler.errors import Conflict, PermanentError, TemporaryError
from reconciler.metrics import ReconcilerMetrics
from reconciler.settings import PatchSettings
from runtime import backoff
from runtime.tokenbucket import Clock, TokenBucket

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRIED_STATUS = frozenset({409, 500, 502, 503, 504})
"""Answers worth another try of the same request (conflict, server trouble)."""
UNAUTHORISED_STATUS = frozenset({401, 403})
"""Temporary on purpose: RBAC or a token being rolled out should not dead-letter traffic."""


class AimdLimiter:
    """Concurrency limit that halves on 429 and grows by one per round of successes.

    ``epoch`` counts decreases; a request remembers the epoch it started in and only a 429
    for a request of the current epoch shrinks the limit, so N requests throttled together
    shrink it once, not N times.
    """

    def __init__(
        self,
        maximum: int,
        minimum: int = 1,
        *,
        clock: Clock = time.monotonic,
        on_change: Callable[[int], None] | None = None,
    ) -> None:
        if minimum < 1 or maximum < minimum:
            raise ValueError("need 1 <= minimum <= maximum")
        self.maximum = maximum
        self.minimum = minimum
        self._limit = float(maximum)
        self._in_flight = 0
        self._epoch = 0
        self._resume_at = 0.0
        self._clock = clock
        self._on_change = on_change
        self._changed = asyncio.Condition()
        if on_change is not None:
            on_change(self.limit)

    @property
    def limit(self) -> int:
        return math.floor(self._limit)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def epoch(self) -> int:
        return self._epoch

    def pause_left(self) -> float:
        """Seconds until the server's last ``Retry-After`` has passed."""
        return max(0.0, self._resume_at - self._clock())

    async def acquire(self) -> int:
        """Wait for a free slot (and for any ``Retry-After`` pause); returns the epoch."""
        while True:
            pause = self.pause_left()
            if pause > 0:
                await asyncio.sleep(pause)
                continue
            async with self._changed:
                if self._in_flight < self.limit and self.pause_left() <= 0:
                    self._in_flight += 1
                    return self._epoch
                await self._changed.wait()

    async def release(self) -> None:
        async with self._changed:
            self._in_flight -= 1
            self._changed.notify_all()

    def succeeded(self) -> None:
        before = self.limit
        self._limit = min(float(self.maximum), self._limit + 1.0 / self._limit)
        if self.limit != before:
            self._report()

    def throttled(self, epoch: int, retry_after: float) -> bool:
        """Record a 429; returns whether it shrank the limit."""
        self._resume_at = max(self._resume_at, self._clock() + retry_after)
        if epoch != self._epoch:
            return False
        self._epoch += 1
        before = self.limit
        self._limit = max(float(self.minimum), self._limit / 2.0)
        if self.limit != before:
            log.warning("API server throttling: concurrency %d -> %d", before, self.limit)
            self._report()
        return True

    def _report(self) -> None:
        if self._on_change is not None:
            self._on_change(self.limit)


def retry_after(error: ApiException) -> float | None:
    """Seconds from ``Retry-After`` (or the Status body's ``retryAfterSeconds``)."""
    headers: Any = error.headers or {}
    raw = headers.get("Retry-After") if hasattr(headers, "get") else None
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError:
            pass
    try:
        body = json.loads(error.body) if error.body else None
    except (TypeError, ValueError):
        return None
    if isinstance(body, dict):
        seconds = (body.get("details") or {}).get("retryAfterSeconds")
        if isinstance(seconds, int | float):
            return float(seconds)
    return None


class Ticket:
    """Admission to send one request: a rate-limit token the gate has already taken.

    Issued by :meth:`ApiGate.admit`, spent by the :meth:`ApiGate.call` that carries it (its
    first attempt; retries take tokens of their own). Single use: a ticket spent twice would
    let two requests through on one token.
    """

    __slots__ = ("_bucket", "_spent")

    def __init__(self, bucket: TokenBucket | None = None) -> None:
        self._bucket = bucket
        self._spent = False

    def spend(self) -> None:
        """Mark the ticket used; RuntimeError if it already was (a bug in the caller)."""
        if self._spent:
            raise RuntimeError("admission ticket already spent")
        self._spent = True

    def refund(self) -> None:
        """The request turned out not to be needed: its token goes back to the bucket it came
        from, for another request (the coalescer, when another replica's request covers a
        batch)."""
        self.spend()
        if self._bucket is not None:
            self._bucket.put_back()


class ApiGate:
    """Runs Kubernetes API calls inside the rate limit, the AIMD limit and the retry policy."""

    def __init__(
        self,
        settings: PatchSettings,
        metrics: ReconcilerMetrics,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.bucket = TokenBucket(settings.qps, settings.burst, clock=clock)
        self.limiter = AimdLimiter(
            settings.max_concurrency,
            settings.min_concurrency,
            clock=clock,
            on_change=metrics.concurrency.set,
        )

    def backoff(self, attempt: int) -> float:
        """Equal-jitter exponential backoff for try number ``attempt`` (1-based)."""
        return backoff.delay(attempt, self.settings.retry_base, self.settings.retry_max)

    async def admit(self) -> Ticket:
        """Wait for a rate-limit token and hand it over as a ticket for one later call."""
        await self.bucket.acquire()
        return Ticket(self.bucket)

    async def call(
        self,
        verb: str,
        what: str,
        request: Callable[[], Awaitable[T]],
        *,
        ticket: Ticket | None = None,
        conditional: bool = False,
    ) -> T:
        """Run ``request`` with retries; raise TemporaryError/PermanentError when it fails.

        ``ticket`` (from :meth:`admit`) pays the first attempt's token. ``conditional``: the
        request names a resource version, so a 409 is final (the same request would fail
        again): :class:`Conflict` is raised at once for the caller to decide again.
        """
        if ticket is not None:
            ticket.spend()
        attempts = max(1, self.settings.attempts)
        for attempt in range(1, attempts + 1):
            epoch = await self.limiter.acquire()
            try:
                if ticket is None or attempt > 1:
                    await self.bucket.acquire()
                result = await asyncio.wait_for(request(), self.settings.request_timeout)
            except ApiException as e:
                await self.limiter.release()
                self.metrics.api_requests.labels(verb, str(e.status)).inc()
                if conditional and e.status == 409:
                    raise Conflict(f"{what}: changed since last seen") from e
                delay = self._failed(e, epoch, what, attempt, attempts)
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                await self.limiter.release()
                self.metrics.api_requests.labels(verb, "0").inc()
                if attempt == attempts:
                    raise TemporaryError(
                        f"{verb} {what}: API server unreachable: {type(e).__name__}",
                        reason="api_unreachable",
                        delay=self.backoff(attempt + 1),
                    ) from e
                delay = self.backoff(attempt)
                log.info("%s %s: %s, retrying in %.2fs", verb, what, type(e).__name__, delay)
            else:
                await self.limiter.release()
                self.metrics.api_requests.labels(verb, "200").inc()
                self.limiter.succeeded()
                return result
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _failed(self, e: ApiException, epoch: int, what: str, attempt: int, attempts: int) -> float:
        """Decide about one failed answer: the delay before retrying, or raise."""
        status = int(e.status or 0)
        if status == 404:
            raise PermanentError(f"{what}: not found", reason="not_found") from e
        if status == 429:
            self.metrics.throttled.inc()
            wait = retry_after(e)
            self.limiter.throttled(epoch, wait if wait is not None else 0.0)
            delay = wait if wait is not None else self.backoff(attempt)
            if attempt == attempts:
                raise TemporaryError(f"{what}: throttled", reason="throttled", delay=delay) from e
            return delay
        if status in RETRIED_STATUS:
            if attempt == attempts:
                raise TemporaryError(
                    f"{what}: HTTP {status}", reason=f"api_{status}", delay=self.backoff(attempt)
                ) from e
            return self.backoff(attempt)
        if status in UNAUTHORISED_STATUS:
            raise TemporaryError(f"{what}: HTTP {status}", reason=f"api_{status}", delay=5.0) from e
        raise PermanentError(f"{what}: HTTP {status}: {e.reason}", reason=f"api_{status}") from e
