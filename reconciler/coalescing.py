"""Coalescing: many deliveries for one object become few patches, without delaying the first.

A push storm (a monorepo merge train, a registry pushing every tag) names the same Flux
object many times a second; Flux would reconcile once anyway. The window works like a
leading- and trailing-edge throttle per object: a delivery for an object that was not
patched within the last ``window`` seconds is patched at once (after the deliveries already
in hand for it join, i.e. at the next turn of the event loop), so a lone push costs no
waiting; deliveries arriving within ``window`` of the last patch gather into one batch that
is patched when the window has passed. Patches for one object never overlap: while one is in
flight (waiting for the rate limit, retrying) the next batch keeps gathering, so a slow API
server means more coalescing, not more requests. Under a burst an object is thus patched at
most once per window, and the last request always comes after the newest delivery was
stored (its patch carries it, or it covers it: below).

Every delivery waits for the patch that covered it and gets its outcome (success with the
``requestedAt`` value, or the error), so a message is acked only when its own patch is done;
the patch carries all envelope ids it covered for the outcome stage.

With an ``admit`` (``ApiGate.admit``) a batch also keeps gathering while it waits for the
API rate limit: the admission ticket it gets is handed to the patch, which spends it instead
of waiting for a token again, so under a saturated budget an object's pending patch carries
every delivery that arrived before it could be sent.

With ``requested_at`` (``MetadataCache.requested_at``) a delivery in a batch is not patched
for when the object's ``reconcile.fluxcd.io/requestedAt``, as the watch last showed it, was
set after that delivery was stored: that request (another replica's, as replicas of one
durable each get deliveries for every object, or a ``flux reconcile``) already makes Flux
fetch after its push, and a second one would only make it reconcile again. It leaves the
batch with that request's value (``Patched.covered``), so its outcome is followed as if it had
been its own; a batch left empty sends nothing. The case that matters most is a redelivery
(a message nak'd because another of its targets failed, taken by the other replica, whose
done memory does not know it). It is checked before waiting for the rate limit and again once
admitted (a token no longer needed is refunded). Stored times are JetStream's and request
times the requester's clock, so a request must be ``COVER_MARGIN`` newer than the delivery,
and not from the future by more than that: clocks within a second of each other (any
NTP-synced cluster) never skip a needed patch; worse skew only loses the saving or, past the
margin, can skip one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from reconciler.kinds import ObjectRef
from reconciler.metrics import ReconcilerMetrics
from reconciler.patching import Patched, parse_rfc3339
from reconciler.throttling import Ticket
from schemas.envelope import Envelope

log = logging.getLogger(__name__)


class Patch(Protocol):
    """Sends one batch's patch (``Patcher.patch``), spending ``ticket`` when it has one."""

    async def __call__(
        self, ref: ObjectRef, envelopes: Sequence[Envelope], *, ticket: Ticket | None = None
    ) -> Patched: ...


Admit = Callable[[], Awaitable[Ticket]]
"""Waits for the API rate limit and returns the admission (``ApiGate.admit``)."""
RequestedAt = Callable[[ObjectRef], str | None]
"""The object's ``requestedAt`` annotation as last seen, ``None`` when not known."""

COVER_MARGIN = 1.0
"""Seconds a request must postdate a batch's newest stored delivery to cover it (clock skew
between the NATS servers and the replicas), and may lie in the future."""


@dataclass
class _Batch:
    ref: ObjectRef
    envelopes: dict[str, Envelope] = field(default_factory=dict)
    waiters: dict[str, list[asyncio.Future[Patched]]] = field(default_factory=dict)
    """Per envelope id (a delivery submitted twice waits twice)."""
    stored: dict[str, float] = field(default_factory=dict)
    """Unix time each delivery was stored, where known (only those can be covered)."""
    closed: bool = False

    def futures(self) -> list[asyncio.Future[Patched]]:
        return [w for waiting in self.waiters.values() for w in waiting]


class Coalescer:
    """Patches an idle object at once; gathers deliveries within ``window`` of its last patch."""

    def __init__(
        self,
        patch: Patch,
        window: float,
        metrics: ReconcilerMetrics,
        *,
        admit: Admit | None = None,
        requested_at: RequestedAt | None = None,
    ) -> None:
        self._patch = patch
        self._admit = admit
        self._requested_at = requested_at
        """The batch keeps gathering until it returns (see the module docstring); without
        it the patch waits for the rate limit itself, with the batch already closed."""
        self.window = window
        self._metrics = metrics
        self._open: dict[str, _Batch] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_start: dict[str, float] = {}
        """Monotonic time each object's latest patch started (pruned once a window old)."""
        self._flushing: dict[str, int] = {}
        """Batches gathering or being patched, per object (the consumer's backpressure reads
        how many objects wait; counted as batches come and go, not by scanning)."""

    @property
    def open_batches(self) -> int:
        return len(self._open)

    @property
    def objects_waiting(self) -> int:
        """Objects with deliveries waiting for a patch (gathering or being patched)."""
        return len(self._flushing)

    async def submit(
        self, ref: ObjectRef, envelope: Envelope, stored_at: float | None = None
    ) -> Patched:
        """Wait until a patch covering ``envelope`` is done; raise its error if it failed.

        ``stored_at``: Unix time JetStream stored it (lets a newer request cover it)."""
        batch = self._open.get(ref.key)
        if batch is None or batch.closed:
            batch = _Batch(ref)
            self._open[ref.key] = batch
            self._flushing[ref.key] = self._flushing.get(ref.key, 0) + 1
            task = asyncio.create_task(self._flush(batch), name=f"coalesce:{ref.key}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(functools.partial(self._flushed, ref.key))
        else:
            self._metrics.coalesced.inc()
        batch.envelopes[envelope["id"]] = envelope
        if stored_at is not None:
            batch.stored[envelope["id"]] = stored_at
        waiter: asyncio.Future[Patched] = asyncio.get_running_loop().create_future()
        batch.waiters.setdefault(envelope["id"], []).append(waiter)
        # Each delivery has its own waiter, so a cancelled delivery cancels only its own
        # (the batch skips waiters already done); no shield, one future less per delivery.
        return await waiter

    def _wait_left(self, key: str) -> float:
        last = self._last_start.get(key)
        return 0.0 if last is None else max(0.0, last + self.window - time.monotonic())

    def _prune(self) -> None:
        horizon = time.monotonic() - self.window
        for key in [k for k, t in self._last_start.items() if t <= horizon]:
            del self._last_start[key]

    def _flushed(self, key: str, _: object) -> None:
        left = self._flushing[key] - 1
        if left:
            self._flushing[key] = left
        else:
            del self._flushing[key]

    async def _flush(self, batch: _Batch) -> None:
        key = batch.ref.key
        # Zero for an idle object: the deliveries already dispatched in this turn still join.
        await asyncio.sleep(self._wait_left(key))
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            # A patch that held the lock may have started within the window: keep gathering.
            left = self._wait_left(key)
            if left > 0:
                await asyncio.sleep(left)
            self._cover(batch)
            ticket = None
            if batch.envelopes and self._admit is not None:
                ticket = await self._admit()
                self._cover(batch)  # deliveries joined, another request landed meanwhile
                if not batch.envelopes:
                    ticket.refund()
            batch.closed = True
            if self._open.get(key) is batch:
                del self._open[key]
            if batch.envelopes:  # else every delivery was covered: nothing to send
                if len(self._last_start) > 4096:
                    self._prune()
                self._last_start[key] = time.monotonic()
                await self._send(batch, ticket)
        if key not in self._open and not lock.locked():
            self._locks.pop(key, None)

    async def _send(self, batch: _Batch, ticket: Ticket | None) -> None:
        """Patch for the deliveries left in ``batch`` and settle each with the result."""
        try:
            result = await self._patch(batch.ref, list(batch.envelopes.values()), ticket=ticket)
        except asyncio.CancelledError:
            for waiter in batch.futures():
                waiter.cancel()
            raise
        except Exception as e:
            for waiter in batch.futures():
                if not waiter.done():
                    waiter.set_exception(e)
        else:
            for waiter in batch.futures():
                if not waiter.done():
                    waiter.set_result(result)

    def _cover(self, batch: _Batch) -> None:
        """Settle, and take out of ``batch``, the deliveries the object's current request
        (made by anyone) postdates; see the module docstring."""
        if self._requested_at is None or not batch.stored:
            return
        value = self._requested_at(batch.ref)
        at = parse_rfc3339(value) if value else None
        if value is None or at is None or at > time.time() + COVER_MARGIN:
            return
        covered = tuple(i for i, stored in batch.stored.items() if stored + COVER_MARGIN <= at)
        if not covered:
            return
        result = Patched(batch.ref, value, covered, covered=True)
        for envelope_id in covered:
            del batch.envelopes[envelope_id], batch.stored[envelope_id]
            for waiter in batch.waiters.pop(envelope_id):
                if not waiter.done():
                    waiter.set_result(result)
        self._metrics.covered.inc(len(covered))
        log.debug(
            "%d delivery(ies) covered by the request at %s",
            len(covered),
            value,
            extra={"object": batch.ref.key},
        )

    async def close(self) -> None:
        """Cancel batches still waiting (their messages are redelivered, never acked)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for batch in self._open.values():
            for waiter in batch.futures():
                if not waiter.done():
                    waiter.cancel()
        self._open.clear()
