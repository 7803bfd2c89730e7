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

With ``last_request`` (``MetadataCache.last_request``) a delivery in a batch is not patched
for when the object's last reconcile request, as the watch last showed it, was made after
that delivery was stored: that request (another replica's, as replicas of one durable each
get deliveries for every object, or a ``flux reconcile``) already makes Flux fetch after its
push, and a second one would only make it reconcile again. It leaves the batch with that
request's value (``Patched.covered``), so its outcome is followed as if it had been its own;
a batch left empty sends nothing. The case that matters most is a redelivery: a message
nak'd because another of its targets failed, or acked with an ack the server lost (a NATS
node killed), taken by a replica whose done memory does not know it. It is checked before
waiting for the rate limit and again once admitted (a token no longer needed is refunded).

Two facts say a request was made after a delivery was stored:

- **its stream position**: fluxrelay's own requests carry the newest message they were
  made for (``fluxrelay.io/stored-through``, :class:`~reconciler.patching.Position`). A
  delivery stored at or before it in the same stream is covered, whatever the clocks say:
  the stream stores in sequence order, and the request was made after that message was
  stored. The stream is named by its creation time, so a stream created anew (sequences
  start again at 1) or another installation's stream never matches. This is exact for a
  redelivery of a message a patch carried, which the request time alone cannot cover when
  the patch came within the margin of the store (the long soak counted 7 double requests
  after a whole-cluster restart lost acks).
- **its time**, for any other request (``flux reconcile``, notification-controller, an
  older fluxrelay): stored times are JetStream's and request times the requester's clock,
  so a request must be ``COVER_MARGIN`` newer than the delivery, and not from the future by
  more than that: clocks within a second of each other (any NTP-synced cluster) never skip
  a needed patch; worse skew only loses the saving or, past the margin, can skip one.

Both read the object as the metadata watch showed it (``MetadataCache``: the kinds a
Receiver names, or filters with ``resourceFilter``); an object it does not hold is patched
for without either, and unconditionally.

The patch is sent on condition of the resource version the batch was last checked against.
Two replicas can hold one message at once (the server hands it out again after a stream
leader change while the first replica's patch waits out an API outage): both decide on
what their watch showed, one request lands, and the other is refused (409). The refused one
reads the object and checks its batch again, which the landed request now covers, and sends
for what it does not, up to ``MAX_CONFLICTS`` sends before the deliveries are nak'd. Any
change to the object refuses it (Flux writing its status, too): that costs a read and
another send, never a skipped request.
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

from reconciler.errors import Conflict
from reconciler.kinds import ObjectRef
from reconciler.metrics import ReconcilerMetrics
from reconciler.patching import LastRequest, Patched, Position, parse_rfc3339
from reconciler.throttling import Ticket
from schemas.envelope import Envelope

log = logging.getLogger(__name__)


class Patch(Protocol):
    """Sends one batch's patch (``Patcher.patch``), spending ``ticket`` when it has one,
    recording ``through``, the newest message it carries, when known, and on condition the
    object still has resource version ``expect`` (else :class:`Conflict`) when given."""

    async def __call__(
        self,
        ref: ObjectRef,
        envelopes: Sequence[Envelope],
        *,
        ticket: Ticket | None = None,
        through: Position | None = None,
        expect: str | None = None,
    ) -> Patched: ...


Admit = Callable[[], Awaitable[Ticket]]
"""Waits for the API rate limit and returns the admission (``ApiGate.admit``)."""
LastRequestOf = Callable[[ObjectRef], LastRequest | None]
"""The object's last reconcile request as last seen, ``None`` when not known."""

MAX_CONFLICTS = 5
"""Conflicts one batch's patch goes through (each read the object anew and checked again)
before its deliveries are nak'd: an object changing that often is settled by a later try."""
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
    positions: dict[str, Position] = field(default_factory=dict)
    """Stream position of each delivery, where known (a delivery submitted twice, as two
    messages: the newer)."""
    expect: str | None = None
    """The object's resource version when the batch was last checked against its request:
    the patch is sent on condition it still has it."""
    closed: bool = False

    def through(self) -> Position | None:
        """The newest message the batch's patch carries, when its position is known."""
        return max(self.positions.values(), key=lambda p: p.seq, default=None)

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
        last_request: LastRequestOf | None = None,
    ) -> None:
        self._patch = patch
        self._admit = admit
        self._last_request = last_request
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
        self,
        ref: ObjectRef,
        envelope: Envelope,
        stored_at: float | None = None,
        position: Position | None = None,
    ) -> Patched:
        """Wait until a patch covering ``envelope`` is done; raise its error if it failed.

        ``stored_at``: Unix time JetStream stored it (lets a newer request cover it);
        ``position``: where it is in the stream (lets a request made for a later message
        cover it)."""
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
            known = batch.stored.get(envelope["id"])
            batch.stored[envelope["id"]] = stored_at if known is None else max(known, stored_at)
        if position is not None:
            held = batch.positions.get(envelope["id"])
            if held is None or held.stream != position.stream or position.seq > held.seq:
                batch.positions[envelope["id"]] = position
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
        """Patch for the deliveries left in ``batch`` and settle each with the result; on a
        conflict (the object changed since the batch was checked), check again against the
        object as it is now and send for what is still not covered."""
        conflicts = 0
        while True:
            try:
                result = await self._patch(
                    batch.ref,
                    list(batch.envelopes.values()),
                    ticket=ticket,
                    through=batch.through(),
                    expect=batch.expect,
                )
            except asyncio.CancelledError:
                for waiter in batch.futures():
                    waiter.cancel()
                raise
            except Conflict as e:
                conflicts += 1
                ticket = None
                try:
                    self._metrics.conflicts.inc()
                    self._cover(batch, LastRequest.of(e.current or {}))
                except Exception as failed:  # a bug must not leave the deliveries waiting
                    log.exception("checking a batch again after a conflict failed")
                    self._settle(batch, failed)
                    return
                if not batch.envelopes:  # the request that changed it covers them all
                    return
                if conflicts < MAX_CONFLICTS and batch.expect is not None:
                    continue
                self._settle(batch, e)
            except Exception as e:
                self._settle(batch, e)
            else:
                self._settle(batch, result)
            return

    @staticmethod
    def _settle(batch: _Batch, outcome: Patched | Exception) -> None:
        for waiter in batch.futures():
            if waiter.done():
                continue
            if isinstance(outcome, Exception):
                waiter.set_exception(outcome)
            else:
                waiter.set_result(outcome)

    def _cover(self, batch: _Batch, last: LastRequest | None = None) -> None:
        """Settle, and take out of ``batch``, the deliveries the object's current request
        (made by anyone) postdates; see the module docstring. ``last``: the object as just
        read (else as the watch last showed it); its version is what the patch expects."""
        if last is None:
            if self._last_request is None:
                return
            last = self._last_request(batch.ref)
        batch.expect = last.resource_version if last is not None else None
        if last is None or last.requested_at is None or not batch.stored:
            return
        value = last.requested_at
        at = parse_rfc3339(value)
        if at is not None and at > time.time() + COVER_MARGIN:
            at = None  # from the future: no clock to trust
        through = Position.parse(last.through)

        def postdates(envelope_id: str, stored: float) -> bool:
            if at is not None and stored + COVER_MARGIN <= at:
                return True
            position = batch.positions.get(envelope_id)
            return through is not None and position is not None and through.covers(position)

        covered = tuple(i for i, stored in batch.stored.items() if postdates(i, stored))
        if not covered:
            return
        result = Patched(batch.ref, value, covered, covered=True)
        for envelope_id in covered:
            del batch.envelopes[envelope_id], batch.stored[envelope_id]
            batch.positions.pop(envelope_id, None)
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
