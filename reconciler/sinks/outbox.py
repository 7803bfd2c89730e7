"""The outbox every sink shares: a bounded queue, one worker sending it in order, retries,
and an account of every event that does not arrive.

``offer`` encodes the event into the message its sink sends (:meth:`OutboxSink.encode`),
queues it and returns at once; when the outbox is full the event is dropped, counted
(``fluxrelay_reconciler_sink_dropped{reason="overflow"}``) and logged with its id, at most
one line per :data:`LOG_EVERY` seconds with the count of the others (``runtime.ratelog``).
Encoding happens once, here, and every try sends the same bytes: the outbox used to hold
compact JSON that each try decoded and encoded again, three or four JSON passes per HTTP send
(about 30% of the sink's CPU per event, ``python -m bench.sinks``). The queued message is
bytes and header strings, not the built event, because a sink that is down for minutes holds
up to ``outbox_size`` of them: a queued ``pipelinerun`` event costs about 1 KB (the compact JSON
alone was about 0.5 KB; headers made once are the price of not making them per try), where
the built event is ~4 KB of nested dicts and strings.

One worker per sink sends the outbox in order, a *window* of up to ``send_window`` events at a
time: their requests (PubAcks, POSTs) are in flight together, so events within one window may
arrive in any order, and a window is finished before the next starts. Sending one event at a
time could not keep up: each event costs a round trip plus a turn of a busy event loop, and at
500 deliveries/s (about 5 events each) the soak's outboxes grew by ~900 events/s per sink,
which was the reconciler's whole RSS growth. Events of a window that fail are retried one at a
time, in order, with the project's backoff (:mod:`runtime.backoff`; a ``Retry-After`` from an
HTTP sink wins when longer), and the next window is a single event until one is delivered
again, so a sink that is down for a while only makes its outbox grow, and it catches up in
order when it is back. An event still failing after ``give_up_after`` seconds, or refused
outright, is counted as failed and logged. On shutdown the sinks get a grace period to empty
their outboxes; whatever is left is counted as dropped (``shutdown``) and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypedDict, TypeVar

from reconciler.outcome_metrics import OutcomeMetrics
from reconciler.settings import CDEventsSettings
from reconciler.sinks.base import Rejected, Retry
from runtime.backoff import Backoff
from runtime.ratelog import Spaced, since_last
from schemas.cdevents import Event, SpecRelease

log = logging.getLogger(__name__)

LOG_EVERY = 10.0
"""Seconds between two log lines about dropped events (the rest are counted)."""

M = TypeVar("M")
"""What one sink sends for one event: its bytes and headers, ready for every try."""


@dataclass(frozen=True, slots=True)
class _Queued(Generic[M]):
    """One queued event: its id for logs, the message to send and when it was queued."""

    event_id: str
    message: M
    queued_at: float


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How one sink retries (from :class:`reconciler.settings.CDEventsSettings`)."""

    initial: float = 0.5
    """Nominal delay before the first retry, doubling per retry."""
    maximum: float = 30.0
    """Longest nominal delay between retries."""
    give_up_after: float = 3600.0
    """Seconds after queueing that an event still failing is counted as failed (expired)."""

    @classmethod
    def of(cls, settings: CDEventsSettings) -> RetryPolicy:
        return cls(settings.retry_initial, settings.retry_max, settings.give_up_after)


class Limits(TypedDict):
    """The outbox's keyword arguments a sink takes from its settings."""

    outbox_size: int
    retry: RetryPolicy
    send_window: int
    send_timeout: float


def limits(settings: CDEventsSettings) -> Limits:
    """Every sink's outbox as ``settings`` sizes it; a try may take two request timeouts
    (connecting and sending) before the outbox gives up on it."""
    return Limits(
        outbox_size=settings.outbox_size,
        retry=RetryPolicy.of(settings),
        send_window=settings.send_window,
        send_timeout=2 * settings.request_timeout,
    )


class OutboxSink(ABC, Generic[M]):
    """The bounded outbox and the retrying worker; a transport supplies :meth:`encode` and
    :meth:`send` (and :meth:`_disconnect` if it holds a connection)."""

    def __init__(
        self,
        name: str,
        release: SpecRelease,
        metrics: OutcomeMetrics,
        *,
        outbox_size: int,
        retry: RetryPolicy,
        send_window: int = 1,
        send_timeout: float = 60.0,
    ) -> None:
        self.name = name
        self.release = release
        self._metrics = metrics
        self._retry = retry
        self._window = max(1, send_window)
        self._send_timeout = send_timeout
        self._healthy = True
        """False from a failed try until the next delivered event: windows are then one event."""
        self._outbox: asyncio.Queue[_Queued[M]] = asyncio.Queue(maxsize=outbox_size)
        self._worker: asyncio.Task[None] | None = None
        self._current: list[_Queued[M]] = []
        """The window being sent: events taken from the outbox, not delivered yet."""
        self._closing = asyncio.Event()
        self._gauge = metrics.outbox.labels(name)
        self._gauge.set(0)
        self._drops = Spaced(LOG_EVERY)

    @abstractmethod
    def encode(self, event: Event, extensions: Mapping[str, str]) -> M:
        """The message every try of ``event`` sends; called once, when it is queued."""

    @abstractmethod
    async def send(self, message: M) -> None:
        """Deliver one message; raise :class:`Retry` or :class:`Rejected` when it did not go."""

    async def _disconnect(self) -> None:
        """Release connections (after the worker stopped); a sink without any has nothing
        to do."""

    @property
    def pending(self) -> int:
        """Events waiting in the outbox (not counting the one being sent)."""
        return self._outbox.qsize()

    def offer(self, event: Event, extensions: Mapping[str, str]) -> bool:
        """Queue ``event`` for delivery; never blocks, never raises. False (counted, logged)
        when the outbox is full or closing, or the event cannot be encoded."""
        event_id = str(event["context"]["id"])
        if self._closing.is_set():
            self._drop(event_id, "shutdown")
            return False
        if self._outbox.full():
            self._drop(event_id, "overflow")
            return False
        try:
            message = self.encode(event, extensions)
        except Exception:
            # A bug, not a network failure: no try could ever send it, so it is refused now
            # rather than retried for give_up_after; the emitter must not see it raise.
            self._metrics.sink_failed.labels(self.name, "rejected").inc()
            log.exception("sink %s cannot encode CDEvent %s", self.name, event_id)
            return False
        self._outbox.put_nowait(_Queued(event_id, message, time.monotonic()))
        self._gauge.set(self._outbox.qsize())
        return True

    def _drop(self, event_id: str, reason: str) -> None:
        """Counted each time; logged at most every :data:`LOG_EVERY` seconds (a full outbox
        drops at the delivery rate)."""
        self._metrics.sink_dropped.labels(self.name, reason).inc()
        skipped = self._drops.due()
        if skipped is None:
            return
        log.warning(
            "sink %s dropped CDEvent %s (%s): outbox holds %d%s",
            self.name,
            event_id,
            reason,
            self._outbox.qsize(),
            since_last(skipped, "dropped"),
        )

    async def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name=f"sink-{self.name}")

    async def close(self, grace: float) -> None:
        """Deliver what the outbox holds for up to ``grace`` seconds, then stop."""
        self._closing.set()
        if self._worker is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox.join(), grace)
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        for item in self._current:  # interrupted mid-delivery: it may not have arrived
            self._drop(item.event_id, "shutdown")
        self._current = []
        while not self._outbox.empty():
            item = self._outbox.get_nowait()
            self._outbox.task_done()
            self._drop(item.event_id, "shutdown")
        self._gauge.set(0)
        await self._disconnect()

    async def _work(self) -> None:
        while True:
            window = [await self._outbox.get()]
            if self._healthy:
                while len(window) < self._window and not self._outbox.empty():
                    window.append(self._outbox.get_nowait())
            self._current = list(window)
            try:
                await self._send_window(window)
            finally:
                for _ in window:
                    self._outbox.task_done()
                self._gauge.set(self._outbox.qsize())

    async def _send_window(self, window: list[_Queued[M]]) -> None:
        """First tries of the whole window together; then the failed ones, one at a time."""
        if len(window) == 1:
            errors: list[Retry | None] = [await self._attempt(window[0])]
        else:
            errors = list(await asyncio.gather(*(self._attempt(item) for item in window)))
        if any(error is not None for error in errors):
            self._healthy = False
        for item, error in zip(window, errors, strict=True):
            if error is not None:
                await self._deliver(item, error)
            self._current.remove(item)

    async def _attempt(self, item: _Queued[M]) -> Retry | None:
        """One try of ``item``: None when it is done with (sent, or refused for good).

        Nothing escapes: an unexpected error or a try that outlives ``send_timeout`` (the
        sink's own request timeout should have ended it) is retried like any failure, so the
        one worker never stops or stalls for good, leaving the outbox to fill silently.
        """
        try:
            await asyncio.wait_for(self.send(item.message), self._send_timeout)
        except Rejected as e:
            self._metrics.sink_failed.labels(self.name, "rejected").inc()
            log.error("sink %s refused CDEvent %s: %s", self.name, item.event_id, e)
            return None
        except Retry as e:
            return e
        except TimeoutError:
            return Retry(f"no answer within {self._send_timeout:g}s")
        except Exception as e:
            log.exception("sink %s: unexpected error sending CDEvent %s", self.name, item.event_id)
            return Retry(f"internal error: {type(e).__name__}")
        self._metrics.sink_sent.labels(self.name).inc()
        self._healthy = True
        return None

    async def _deliver(self, item: _Queued[M], error: Retry) -> None:
        """Retry ``item`` (whose last try failed with ``error``) until it is done or expired."""
        backoff = Backoff(self._retry.initial, self._retry.maximum)
        while True:
            if time.monotonic() - item.queued_at > self._retry.give_up_after:
                self._metrics.sink_failed.labels(self.name, "expired").inc()
                log.error(
                    "sink %s gave up on CDEvent %s after %d tries: %s",
                    self.name,
                    item.event_id,
                    backoff.attempts + 1,
                    error,
                )
                return
            self._metrics.sink_retries.labels(self.name).inc()
            delay = max(backoff.next(), error.delay)
            log.info(
                "sink %s: CDEvent %s not delivered (%s); retry %d in %.1fs",
                self.name,
                item.event_id,
                error,
                backoff.attempts,
                delay,
            )
            await asyncio.sleep(delay)
            next_error = await self._attempt(item)
            if next_error is None:
                return
            error = next_error
