"""Reporting: the chain of each delivery told as it happens, with MTTP and stage latencies.

:class:`ChainReporter` is the stateful side of the CDEvents chain. The consumer tells it, in
line with its own work, of each delivery it received and each patch that covered one; it emits
the events :mod:`reconciler.chaining` plans, has the outcome watcher follow each request, and
emits ``finished`` when the watcher's future settles. It also records Mean Time To Production
and the stage latencies (received -> stored -> patched -> handled -> ready).

Why apart from :mod:`reconciler.chaining`: that module is the CDEvents mapping and keeps no
state (deliveries and outcomes in, planned events out, tested as a table); this one holds the
state that lives as long as the process (the stored-time memory, the callbacks on futures, the
metrics) and decides when each event goes out. Either can change without reading the other.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from reconciler.chaining import (
    SOURCE,
    Followed,
    Planned,
    finished,
    incoming_context,
    ingest,
    queued,
    untargeted,
)
from reconciler.decisions import Decisions
from reconciler.fluxstatus import Outcome
from reconciler.kinds import KINDS, ObjectRef
from reconciler.outcome_metrics import OutcomeMetrics
from reconciler.patching import Patched
from schemas.envelope import Envelope

STORED_MEMORY = 16_384
"""Envelopes whose stored time is remembered between consuming and patching. An entry is only
needed while its message is in flight (at most ``max_in_flight``, 4,096 by default, per
replica; a redelivery notes it again), so four times that is plenty. It was 100,000: ~19 MiB
that took ~7 minutes to fill at 250 deliveries/s per replica, i.e. growth a soak segment
could not see the end of."""


class Emit(Protocol):
    """Where planned events go (``reconciler.emitting.Emitter.emit``); never blocks."""

    def __call__(self, planned: Planned) -> None: ...


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _slim(env: Envelope) -> Followed:
    """The :class:`Followed` form of a delivery."""
    slim: Followed = {
        "id": env["id"],
        "delivery_id": env["delivery_id"],
        "received_at": env["received_at"],
    }
    if "traceparent" in env:
        slim["traceparent"] = env["traceparent"]
    context = incoming_context(env)
    if context is not None:
        slim["cdevent"] = {"context": {k: context[k] for k in ("id", "chainId") if k in context}}
    return slim


def _reports_handling(ref: ObjectRef) -> bool:
    """Whether Flux will ever say it handled a request on ``ref`` (else it is not followed).

    An ExternalArtifact is still patched, as notification-controller patches it, but its status
    has no ``lastHandledReconcileAt``; following it would end in a timeout reported as an error.
    """
    known = KINDS.get(ref.kind)
    return known is None or known.reports_handling


class Follow(Protocol):
    """Follows a reconcile request to its outcome (``reconciler.outcomes.OutcomeWatcher``):
    following the same request again returns the same future."""

    def follow(
        self, ref: ObjectRef, requested_at: str, patched_at: float
    ) -> asyncio.Future[Outcome]: ...


class ChainReporter:
    """Follows each delivery: ingest event, ``queued`` per patch, outcome → ``finished``.

    The consumer tells it, in line, each delivery it received (:meth:`received`) and each
    patch that covered one (:meth:`patched`, once per delivery the patch carried). Also
    records MTTP and the stage latencies. Never blocks: events go to ``emit``, outcomes
    arrive as callbacks of the watcher's futures.
    """

    def __init__(
        self,
        emit: Emit | None,
        watcher: Follow | None,
        metrics: OutcomeMetrics,
        *,
        source: str = SOURCE,
        clock: Callable[[], float] = time.time,
        shard: str | None = None,
    ) -> None:
        self._emit = emit
        self._watcher = watcher
        self._metrics = metrics
        self._source = source
        self._clock = clock
        self._shard = shard
        self._stored: OrderedDict[str, float] = OrderedDict()

    def received(self, env: Envelope, stored_at: datetime | None) -> None:
        """An envelope was taken from the stream: emit its ingest event, note its stored time."""
        if stored_at is not None:
            stored = stored_at.timestamp()
            received = _epoch(env["received_at"])
            if env["id"] not in self._stored and received is not None:  # once per delivery
                self._metrics.stage.labels("received_stored").observe(max(stored - received, 0))
            self._stored[env["id"]] = stored
            self._stored.move_to_end(env["id"])
            while len(self._stored) > STORED_MEMORY:
                self._stored.popitem(last=False)
        if self._emit is not None:
            planned = ingest(env, source=self._source)
            if planned is not None:
                self._emit(planned)

    def untargeted(self, env: Envelope, decisions: Decisions) -> None:
        """Nothing was reconciled for ``env``: the chain ends with the ``untargeted`` event."""
        if self._emit is not None:
            self._emit(untargeted(env, decisions, source=self._source, shard=self._shard))

    def patched(self, patched: Patched, env: Envelope, decisions: Decisions | None = None) -> None:
        """``patched`` covered ``env``: its ``queued`` event, then its outcome followed.

        The request is followed once per delivery it carried (the watcher hands each the same
        future); the delivery that opened the batch also records the request's own stage
        latencies, so a coalesced patch counts once there, as it is one request.
        """
        ref, requested_at = patched.ref, patched.requested_at
        patched_at = self._clock()
        stored = self._stored.get(env["id"])  # kept: one delivery may patch many objects
        if stored is not None:
            self._metrics.stage.labels("stored_patched").observe(max(patched_at - stored, 0))
        if self._emit is not None:
            self._emit(
                queued(
                    env,
                    ref,
                    requested_at,
                    source=self._source,
                    decisions=decisions,
                    covered=patched.covered,
                )
            )
        if self._watcher is None or not _reports_handling(ref):
            return
        future = self._watcher.follow(ref, requested_at, patched_at)
        if patched.envelope_ids[:1] == (env["id"],) and not patched.covered:
            # the request's own stage latencies are its maker's, not a covered delivery's
            future.add_done_callback(
                lambda f: None if f.cancelled() else self._on_request_outcome(f.result())
            )
        slim = _slim(env)
        future.add_done_callback(
            lambda f: None if f.cancelled() else self._on_outcome(f.result(), slim)
        )

    def _on_request_outcome(self, outcome: Outcome) -> None:
        stage = self._metrics.stage
        if outcome.handled_at is not None:
            stage.labels("patched_handled").observe(max(outcome.handled_at - outcome.patched_at, 0))
            if outcome.ready_at is not None:
                stage.labels("handled_ready").observe(max(outcome.ready_at - outcome.handled_at, 0))

    def _on_outcome(self, outcome: Outcome, env: Followed) -> None:
        received = _epoch(env["received_at"])
        if outcome.result == "success" and outcome.ready_at is not None and received is not None:
            self._metrics.mttp.labels(outcome.ref.kind).observe(max(outcome.ready_at - received, 0))
        if self._emit is not None:
            for planned in finished(env, outcome, source=self._source):
                self._emit(planned)
