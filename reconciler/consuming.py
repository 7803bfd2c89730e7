"""The pull-consumer loop: fetch, decode, target, patch (coalesced), report, settle.

Each delivery runs top to bottom in :meth:`Consumer.process`: received (decoded, told to the
reporter) -> targeted -> patched (through the coalescer) -> reported (each patch that covered
it handed to the reporter as soon as it is done). The reporter (``reconciler.reporting``: the
CDEvents chain, outcome following, MTTP) never decides a message's fate: a failure in it is
logged and the message goes on.

This module alone decides what happens to a message, in :meth:`Consumer.settle`:

- every target patched (or none concerned us) -> ``ack``;
- a :class:`TemporaryError` -> ``nak`` with a delay (the longer of the error's own, e.g. a
  ``Retry-After``, and the configured backoff for this delivery count); on the last allowed
  delivery it is dead-lettered instead;
- a :class:`PermanentError` (invalid envelope, object not found, forbidden reference, bad
  filter) -> published to the dead-letter stream with the reason, then ``term``.

A dead letter (``reconciler.deadletters``) is stored before the message is terminated; if it
cannot be stored the message is nak'ed, so nothing is dropped silently.

Replicas of one shard share one durable (the server spreads messages between them); a
crashed replica's unacked messages come back after ``ack_wait``. Long work is kept alive with
``in_progress`` (one sweep over the messages held, not a task per message). The server can
still hand back a message this replica is working on (the long soak saw it after a NATS
node loss, with the keep-alive running): that delivery joins the attempt under way, which
settles through it, instead of patching its targets again. Targets patched for a message
are remembered (``reconciler.done``: by this replica, and shared through a
key-value bucket when the message goes back), so a redelivery after a partial failure
patches only what is still missing, whichever replica takes it.

What a replica holds is bounded (``reconciler.backpressure``): it pulls only the room left
under its bounds, and once a message is targeted its body is dropped (the decoded payload
and the stored bytes alike); a dead letter then takes the stored copy from the stream by its
sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, ReplayPolicy
from nats.js.errors import Error as JetStreamError

from reconciler.backpressure import DECODED_FACTOR, ROUTED_BYTES, Backpressure, Limits
from reconciler.coalescing import Coalescer
from reconciler.deadletters import DeadLetters
from reconciler.decisions import Decisions
from reconciler.done import DoneMemory, Stored, open_bucket
from reconciler.errors import PermanentError, ReconcilerError, TemporaryError
from reconciler.kinds import ObjectRef
from reconciler.metrics import ReconcilerMetrics
from reconciler.patching import Patched, Position, stream_identity
from reconciler.pulling import BoundedPull, NoRoom, message_size
from reconciler.settings import ConsumerSettings
from reconciler.targeting import Targets
from schemas import envelope as envelopes
from schemas import natsbinding
from schemas.envelope import Envelope

log = logging.getLogger(__name__)


class Reporter(Protocol):
    """Where the consumer reports each delivery's progress (``reporting.ChainReporter``).

    Called in line with the message's own work, so neither method may block.
    """

    def received(self, env: Envelope, stored_at: datetime | None) -> None:
        """Every envelope decoded from a message (each delivery of it), before targeting,
        with the time JetStream stored it."""

    def patched(self, patched: Patched, env: Envelope, decisions: Decisions | None = None) -> None:
        """A patch that covered ``env`` was accepted (a coalesced patch: once per delivery),
        with the delivery's targeting ``decisions``."""

    def untargeted(self, env: Envelope, decisions: Decisions) -> None:
        """Targeting found nothing to reconcile for ``env``; ``decisions`` say why."""


class Targeting(Protocol):
    """Which objects an envelope concerns (``reconciler.targeting.Targeter``)."""

    async def targets(self, env: Envelope) -> Targets: ...


class Unreported:
    """The reporter when neither outcomes are followed nor CDEvents emitted: the stage
    latencies are part of that reporting and are not recorded either."""

    def received(self, env: Envelope, stored_at: datetime | None) -> None:
        pass

    def patched(self, patched: Patched, env: Envelope, decisions: Decisions | None = None) -> None:
        pass

    def untargeted(self, env: Envelope, decisions: Decisions) -> None:
        pass


@dataclass(slots=True, eq=False)
class Held:
    """One pulled message while this replica works on it, with what it is charged."""

    msg: Msg
    """The newest delivery of the message: the attempt settles through it (``Consumer._join``)."""
    charge: int
    since: float = field(default_factory=time.monotonic)
    targeting: bool = True
    """Not targeted yet: counted as an object waiting (``Consumer.objects_waiting``)."""
    first: Msg | None = None
    """The delivery the attempt decoded, when a newer one has joined (its body is dropped too)."""


def decode(headers: Mapping[str, str] | None, data: bytes) -> Envelope:
    """The envelope of a stored message; PermanentError when it is not one."""
    try:
        event = natsbinding.from_message(headers, data)
    except natsbinding.BindingError as e:
        raise PermanentError(f"not a CloudEvent: {e}", reason="invalid_event") from e
    if event.attributes.get("type") != envelopes.CLOUDEVENT_TYPE:
        raise PermanentError(
            f"unexpected CloudEvent type {event.attributes.get('type')!r}", reason="invalid_event"
        )
    try:
        doc = json.loads(event.data)
    except ValueError as e:
        raise PermanentError("envelope is not JSON", reason="invalid_envelope") from e
    try:
        return envelopes.validate(doc)
    except envelopes.EnvelopeInvalid as e:
        raise PermanentError(f"invalid envelope: {e}", reason="invalid_envelope") from e


def _message_key(msg: Msg) -> tuple[int, datetime]:
    """A message across its deliveries: stream sequence and stored time (sequences start
    again at 1 in a stream created anew; the stored time tells such a message apart)."""
    return (msg.metadata.sequence.stream, msg.metadata.timestamp)


def _stored_size(msg: Msg) -> int:
    """What a pulled message is charged while its body is held: its bytes and headers as
    they decode, plus the routing size it keeps afterwards (``reconciler.backpressure``)."""
    return DECODED_FACTOR * message_size(msg) + ROUTED_BYTES


def consumer_config(settings: ConsumerSettings, durable: str) -> ConsumerConfig:
    """The durable pull consumer: explicit ack, bounded deliveries, every stored event."""
    return ConsumerConfig(
        durable_name=durable,
        description="fluxrelay reconciler: targeted Flux reconcile requests",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait,
        max_deliver=settings.max_deliver,
        filter_subject=f"{settings.subject_prefix}.>",
        replay_policy=ReplayPolicy.INSTANT,
        max_ack_pending=settings.max_ack_pending,
    )


class Consumer:
    """Runs one durable's pull loop and settles every message it takes."""

    def __init__(
        self,
        nc: Client,
        settings: ConsumerSettings,
        durable: str,
        targeter: Targeting,
        coalescer: Coalescer,
        metrics: ReconcilerMetrics,
        *,
        reporter: Reporter,
        backpressure: Backpressure | None = None,
    ) -> None:
        """``backpressure``: the bounds this replica pulls within; by default the settings'
        counts with no memory limit and no bound on objects waiting."""
        self.nc = nc
        self.js = nc.jetstream(timeout=5.0)
        self.settings = settings
        self.durable = durable
        self.targeter = targeter
        self.coalescer = coalescer
        self.reporter = reporter
        self.metrics = metrics
        self.dead_letters = DeadLetters(self.js, settings, durable, metrics)
        self._sub: BoundedPull | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._held: dict[int, Held] = {}
        # The attempt under way for a message, by _message_key.
        self._by_message: dict[tuple[int, datetime], Held] = {}
        bucket = settings.done_bucket
        self.done = DoneMemory(
            metrics,
            durable,
            (lambda: open_bucket(self.js, bucket, settings.stream)) if bucket else None,
        )
        self.ready = asyncio.Event()
        self.backpressure = backpressure or Backpressure(
            Limits(
                max_in_flight=settings.max_in_flight,
                max_in_flight_bytes=settings.max_in_flight_bytes,
                max_objects_waiting=settings.max_objects_waiting or 1 << 62,
                memory_limit=None,
            ),
            metrics,
            lambda: self.objects_waiting,
        )
        self._targeting = 0
        self.stream_id: str | None = None
        """The events stream's identity (``patching.stream_identity``) once bound: with a
        message's sequence, its position, which a request for a later message covers."""

    # ------------------------------------------------------------------------------- setup

    async def ensure(self) -> None:
        """Create or update the durable, then bind a pull subscription to it."""
        config = consumer_config(self.settings, self.durable)
        await self.js.add_consumer(self.settings.stream, config)
        created = (await self.js.stream_info(self.settings.stream)).created
        # Read again whenever the consumer is (re)created: a stream created anew takes its
        # consumers with it, so no message of it arrives before this names it.
        self.stream_id = stream_identity(created) if created is not None else None
        await self.done.bind()  # at start, so a missing permission shows at once
        self.backpressure.max_message = self.nc.max_payload
        if self._sub is None:
            limits = self.backpressure.limits
            pull = BoundedPull(
                self.nc,
                self.settings.stream,
                self.durable,
                pending_bytes=limits.max_in_flight_bytes + 2 * self.nc.max_payload,
            )
            await pull.start()
            self._sub = pull
        self.ready.set()
        log.info(
            "consuming %s.> from %s as durable %s",
            self.settings.subject_prefix,
            self.settings.stream,
            self.durable,
        )

    async def ensure_until_ready(self, stop: asyncio.Event) -> None:
        delay = 0.2
        while not stop.is_set():
            try:
                await self.ensure()
                return
            except (NatsError, JetStreamError, TimeoutError) as e:
                log.warning("cannot create consumer %s yet: %s", self.durable, e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 5.0)

    # -------------------------------------------------------------------------------- loop

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def objects_waiting(self) -> int:
        """Objects waiting for a patch, counting each delivery not targeted yet as one: a
        pull's deliveries reach the coalescer only after targeting, and without them the
        next pull's room missed the previous pull's objects (the storm test saw the bound
        passed by two pulls)."""
        return self.coalescer.objects_waiting + self._targeting

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and dispatch until ``stop`` is set; messages in flight keep running."""
        await self.ensure_until_ready(stop)
        keepalive = asyncio.create_task(self._keep_alive(), name="in-progress")
        try:
            await self._pull(stop)
        finally:
            keepalive.cancel()

    async def _pull(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            room = self.backpressure.room(self.settings.fetch_batch)
            if not room:  # the stream holds the rest until something is settled
                await self._wait_for_room(stop)
                continue
            assert self._sub is not None
            try:
                msgs = await self._sub.fetch(
                    room.count, room.max_bytes, self.settings.fetch_timeout
                )
            except TimeoutError:
                failures = 0
                continue
            except NoRoom:  # the next message needs more room: wait for some to be freed
                await self._wait_for_room(stop)
                continue
            except (NatsError, JetStreamError) as e:
                failures += 1
                log.warning("fetch failed (%s): %s", type(e).__name__, e)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(0.2 * 2**failures, 5.0))
                if failures >= 3:  # the consumer may be gone (a memory stream restarted)
                    with contextlib.suppress(NatsError, JetStreamError, TimeoutError):
                        await self.ensure()
                continue
            failures = 0
            for msg in msgs:
                self._start(msg)

    async def _wait_for_room(self, stop: asyncio.Event) -> None:
        """Until a held message is settled (or half a second, for the memory sampler)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    def _start(self, msg: Msg) -> None:
        key = _message_key(msg)
        if (running := self._by_message.get(key)) is not None:
            self._join(running, msg)
            return
        held = Held(msg, _stored_size(msg))
        self.backpressure.hold(held.charge)
        self._targeting += 1
        self._held[id(held)] = held
        self._by_message[key] = held
        task = asyncio.create_task(self.handle(msg, held), name="reconcile-message")
        self._tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._targeted(held)
            self._tasks.discard(task)
            del self._held[id(held)]
            self._let_go(held)  # handle() has, unless it was cancelled
            self.backpressure.release(held.charge)

        task.add_done_callback(done)

    def _join(self, running: Held, msg: Msg) -> None:
        """A redelivery of a message this replica is still working on joins the attempt under
        way, which settles through the newest delivery: the server may ignore a nak through an
        older one, and the newest carries the delivery count ``max_deliver`` and the backoff
        go by. A second attempt here would find none of the targets done (they are remembered
        as each patch lands) and request them again. (A redelivery to another replica while
        this one works on the message is not seen here: the API server refuses the second of
        the two conditional requests, ``reconciler.coalescing``.)"""
        self.metrics.redeliveries.inc()
        msg.data = b""  # the attempt under way has decoded its own copy
        msg.headers = None
        if running.first is None:
            running.first = running.msg
        running.msg = msg
        log.info(
            "redelivered while being worked on: joined to the attempt under way",
            extra={"sequence": msg.metadata.sequence.stream, "attempt": msg.metadata.num_delivered},
        )

    def _let_go(self, held: Held) -> None:
        """A redelivery of ``held``'s message no longer joins its attempt."""
        key = _message_key(held.msg)
        if self._by_message.get(key) is held:
            del self._by_message[key]

    async def drain(self, grace: float) -> None:
        """Wait for messages in flight; nak what is still running after ``grace`` seconds."""
        if self._tasks:
            log.info("draining %d message(s) in flight", len(self._tasks))
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._sub is not None:
            with contextlib.suppress(NatsError, JetStreamError, TimeoutError):
                await self._sub.unsubscribe()
            self._sub = None

    # ----------------------------------------------------------------------------- message

    async def handle(self, msg: Msg, held: Held | None = None) -> None:
        """Process one message and settle it; never raises (except cancellation)."""
        delivered = msg.metadata.num_delivered
        if delivered > 1:
            self.metrics.redeliveries.inc()
        error: ReconcilerError | None = None
        env: Envelope | None = None
        try:
            env = decode(msg.headers, msg.data)
            stored = Stored(msg.metadata.sequence.stream, env["id"])
            await self.process(env, msg.metadata.timestamp, stored, held, delivered)
        except ReconcilerError as e:
            error = e
        except asyncio.CancelledError:
            with contextlib.suppress(NatsError, JetStreamError, TimeoutError):
                # Let another replica take it now rather than after ack_wait.
                await (held.msg if held is not None else msg).nak()
            self.metrics.messages.labels("nak").inc()
            raise
        except Exception as e:  # a bug must not lose the message: retry, then dead-letter
            log.exception("unexpected error handling a message")
            error = TemporaryError(f"internal error: {type(e).__name__}", reason="internal")
        if held is not None:
            # From here a redelivery starts an attempt of its own (which the done memory
            # keeps from patching again) rather than joining one that has settled. No await
            # between letting go and reading the newest delivery.
            self._let_go(held)
        await self.settle(held.msg if held is not None else msg, env, error)

    async def process(
        self,
        env: Envelope,
        stored_at: datetime | None,
        message: Stored,
        held: Held | None = None,
        delivered: int = 1,
    ) -> None:
        """Received -> targeted -> patched -> reported; raise the error that decides the
        message's fate (``stored_at``: when JetStream stored the message; ``message``: its
        stream sequence and envelope id, the done memory's key; ``held``: its bookkeeping,
        whose body is dropped once targeted; ``delivered``: its delivery count)."""
        try:
            self.reporter.received(env, stored_at)
        except Exception:
            log.exception("reporting a received delivery failed", extra={"event_id": env["id"]})
        targets = await self.targeter.targets(env)
        # The webhook body was needed for CEL filters only. Drop it before the (possibly long)
        # wait for the patch: thousands of in-flight messages then hold routing fields, not
        # bodies (the soak showed RSS following the in-flight count). Dead letters re-read the
        # stored copy.
        env["payload"] = None
        if held is not None:
            self._targeted(held)
            self._drop_body(held)
        done = await self.done.recall(message, delivered)
        todo = [ref for ref in targets.refs if ref.key not in done]

        stored = stored_at.timestamp() if stored_at is not None else None
        position = Position(message.seq, self.stream_id) if self.stream_id else None

        async def patch_and_report(ref: ObjectRef) -> Patched:
            # Reported as soon as this target is patched, not after the message's slowest
            # target: the stage latencies and the outcome's patch time are this patch's.
            patched = await self.coalescer.submit(ref, env, stored, position)
            try:
                self.reporter.patched(patched, env, targets.decisions)
            except Exception:
                log.exception("reporting a patch failed", extra={"object": ref.key})
            return patched

        results: list[Patched | BaseException]
        if len(todo) == 1:  # the common case, without gather's task and future per delivery
            try:
                results = [await patch_and_report(todo[0])]
            except ReconcilerError as e:
                results = [e]
        else:
            results = await asyncio.gather(
                *(patch_and_report(ref) for ref in todo), return_exceptions=True
            )
        temporary: list[TemporaryError] = []
        permanent: list[PermanentError] = list(targets.failures)
        for ref, result in zip(todo, results, strict=True):
            if isinstance(result, TemporaryError):
                temporary.append(result)
            elif isinstance(result, PermanentError):
                permanent.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                self.done.remember(message, ref.key)
        if not targets.refs:  # reported even when an entry's failure dead-letters it below
            self._untargeted(env, targets)
        if temporary:
            # Before the nak, so whichever replica takes the redelivery knows what is done.
            patched = (
                ref.key for ref, r in zip(todo, results, strict=True) if isinstance(r, Patched)
            )
            await self.done.share(message, (*done, *patched))
            worst = max(temporary, key=lambda e: e.delay)
            raise TemporaryError(
                f"{len(temporary)} of {len(todo)} target(s) not patched yet: {worst}",
                reason=worst.reason,
                delay=worst.delay,
            )
        if permanent:
            raise PermanentError("; ".join(str(e) for e in permanent), reason=permanent[0].reason)

    def _untargeted(self, env: Envelope, targets: Targets) -> None:
        """Nothing to reconcile: counted by reason, logged with the reasons, reported."""
        decisions = targets.decisions
        receiver = f"{env['receiver']['namespace']}/{env['receiver']['name']}"
        self.metrics.untargeted.labels(receiver, decisions.why_not).inc()
        log.info(
            "no object to reconcile: %s",
            "; ".join(f"{d.target}: {d.reason}" for d in decisions.kept) or "no resources",
            extra={"delivery_id": env["delivery_id"], "event_id": env["id"], "receiver": receiver},
        )
        try:
            self.reporter.untargeted(env, decisions)
        except Exception:
            log.exception("reporting an untargeted delivery failed", extra={"event_id": env["id"]})

    def _targeted(self, held: Held) -> None:
        if held.targeting:
            held.targeting = False
            self._targeting -= 1

    def _drop_body(self, held: Held) -> None:
        """Keep routing fields only: the stored bytes go, the stream keeps its copy."""
        for msg in (held.msg, held.first):
            if msg is not None:
                msg.data = b""
                msg.headers = None
        self.backpressure.recharge(held.charge, ROUTED_BYTES)
        held.charge = ROUTED_BYTES

    async def _keep_alive(self) -> None:
        """Tell the server every held message older than a third of ``ack_wait`` is still
        being worked on (one publish each, a sweep every third of ``ack_wait``)."""
        interval = max(self.settings.ack_wait / 3, 0.5)
        while True:
            await asyncio.sleep(interval)
            horizon = time.monotonic() - interval
            for held in [h for h in self._held.values() if h.since <= horizon]:
                with contextlib.suppress(NatsError, JetStreamError, TimeoutError):
                    await held.msg.in_progress()

    # ------------------------------------------------------------------------------ settle

    async def settle(self, msg: Msg, env: Envelope | None, error: ReconcilerError | None) -> None:
        """The one place a message's fate is decided (see the module docstring)."""
        context = {
            "delivery_id": env["delivery_id"] if env else None,
            "event_id": env["id"] if env else None,
            "attempt": msg.metadata.num_delivered,
        }
        try:
            if error is None:
                # The done memory keeps this delivery's targets (until it is evicted): an ack
                # is fire-and-forget, and one lost with a NATS node brings the message back,
                # which then patches nothing again (the soak counted such duplicates).
                await msg.ack()
                self.metrics.messages.labels("ack").inc()
                return
            delivered = msg.metadata.num_delivered
            if isinstance(error, TemporaryError) and delivered < self.settings.max_deliver:
                delay = max(error.delay, self.settings.nak_delay(delivered))
                log.info("will retry in %.1fs: %s", delay, error, extra=context)
                await msg.nak(delay=delay)
                self.metrics.messages.labels("nak").inc()
                return
            reason = error.reason if isinstance(error, PermanentError) else "max_deliveries"
            log.warning("dead-lettering (%s): %s", reason, error, extra=context)
            try:
                await self.dead_letters.store(msg, reason, str(error))
            except (NatsError, JetStreamError, TimeoutError) as e:
                log.error("cannot store dead letter (%s); retrying the message", e, extra=context)
                await msg.nak(delay=self.settings.nak_delay(delivered))
                self.metrics.messages.labels("nak").inc()
                return
            await msg.term()
            self.metrics.messages.labels("term").inc()
        except (NatsError, JetStreamError, TimeoutError) as e:
            # The connection is down: the server redelivers after ack_wait.
            log.warning("cannot settle message: %s", e, extra=context)

    # ------------------------------------------------------------------------------- lag

    async def poll_lag(self) -> None:
        """Export the consumer's pending, ack-pending and redelivered counts."""
        while True:
            try:
                info = await self.js.consumer_info(self.settings.stream, self.durable)
                self.metrics.consumer_pending.set(info.num_pending or 0)
                self.metrics.consumer_ack_pending.set(info.num_ack_pending or 0)
                self.metrics.consumer_redelivered.set(info.num_redelivered or 0)
            except (NatsError, JetStreamError, TimeoutError) as e:
                log.debug("consumer info unavailable: %s", e)
            await asyncio.sleep(self.settings.lag_interval)
