"""Outcome watching: what Flux made of each reconcile request the reconciler sent.

After a patch, the request ``(object, requestedAt)`` is followed until Flux reports it handled
(``status.lastHandledReconcileAt`` equals the value written; only kinds whose controller writes
that field are followed at all, see ``kinds.Kind.reports_handling``) and then until the ``Ready``
condition settles: ``True`` is success, ``False`` with a reason other than ``Progressing`` is
failure. A request not settled within the timeout is an error (timed out); an object deleted
while followed is an error too. Reading a Flux object's status, and what settled means, is
:mod:`reconciler.fluxstatus`; this module follows requests and holds the watches.

Many objects at once, few connections: one list+watch per kind (per namespace when the
reconciler is namespace-scoped), started when the first request for that kind is followed and
kept afterwards; it fills a small status cache (a few strings per object, never whole objects)
and every change of an object with followers re-evaluates just those followers. A request
whose object was already handled before the watch saw it is settled from the cache at once.
The watches are :mod:`runtime.informer` informers: they resume from the last resourceVersion
after a dropped connection and list again after 410 Gone; an object missing from a relist is
treated as deleted.

Superseded requests: when a newer ``requestedAt`` (a later patch of ours, or ``flux reconcile``)
replaces ours before Flux got to it, Flux handles only the newer value, which includes what ours
asked for; the request is then settled by that reconcile's result (``superseded_by`` says so).
This is only concluded after the watch has shown our own value on the object, so a cache that
lags behind our patch never settles a request early.

Bounded: at most ``max_followed`` deliveries are followed at once (each holds a callback and
its chain fields until the outcome). Following one more gives the oldest request up with an
``error`` outcome (reason ``FollowLimit``), counted in ``outcome_abandoned``: its deliveries
get their ``finished`` event, the memory stays flat, nothing goes silent. Requests are also
bounded by time (``timeout``) and so by the API budget: at most ``qps x timeout`` of them.

The watches use their own API client (long-lived watch connections must never take the pool
slots patches need) and do not pass through the patch rate limiter: a watch is one request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio import client as k8s

from reconciler.fluxstatus import ObjectStatus, Outcome, settled, status_of
from reconciler.kinds import ObjectRef
from reconciler.outcome_metrics import OutcomeMetrics
from runtime.informer import Informer, InformerSettings, custom_objects

log = logging.getLogger(__name__)

ScopeKey = tuple[str, str, str, str | None]
"""``(group, version, plural, namespace or None for all namespaces)``: one watch each."""


@dataclass
class _Waiter:
    ref: ObjectRef
    requested_at: str
    patched_at: float
    future: asyncio.Future[Outcome]
    seen_own: bool = False
    handled_at: float | None = None
    superseded_by: str | None = None
    timer: asyncio.TimerHandle | None = None
    followers: int = 1
    """Deliveries following this request (each call of ``follow``)."""


@dataclass(frozen=True, kw_only=True)
class WatchSettings(InformerSettings):
    """How outcome watches talk to the API server: an informer's settings, paged."""

    page_size: int | None = 500


@dataclass
class _Scope:
    key: ScopeKey
    kind: str
    cache: dict[str, ObjectStatus] = field(default_factory=dict)
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def object_key(self, obj: Mapping[str, Any]) -> str:
        """The key an object is cached and followed under (``ObjectRef.key``'s form)."""
        meta = obj.get("metadata") or {}
        return f"{self.kind}/{meta.get('namespace')}/{meta.get('name')}"


@dataclass
class _ScopeListing:
    """One list of a scope: every object listed is observed; a cached one the list no longer
    shows was deleted while the watch was away."""

    watcher: OutcomeWatcher
    scope: _Scope
    seen: set[str] = field(default_factory=set)

    def add(self, items: list[dict[str, Any]]) -> None:
        for item in items:
            self.seen.add(self.scope.object_key(item))
            self.watcher._observe(self.scope, item)

    def done(self) -> None:
        cache = self.scope.cache
        for key in [k for k in cache if k not in self.seen]:
            del cache[key]
            self.watcher._gone(key)
        self.scope.synced.set()


Clock = Callable[[], float]


class OutcomeWatcher:
    """Follows reconcile requests to their outcome with one list+watch per kind."""

    def __init__(
        self,
        api: k8s.ApiClient,
        metrics: OutcomeMetrics,
        *,
        timeout: float,
        label_selector: str | None = None,
        per_namespace: bool = False,
        settings: WatchSettings | None = None,
        clock: Clock = time.time,
        max_followed: int = 20_000,
    ) -> None:
        self._custom_api = api
        self._metrics = metrics
        self.timeout = timeout
        self._selector = label_selector
        self._per_namespace = per_namespace
        self._settings = settings or WatchSettings()
        self._clock = clock
        self._scopes: dict[ScopeKey, _Scope] = {}
        self._waiters: dict[str, dict[str, _Waiter]] = {}
        self._oldest_first: dict[int, _Waiter] = {}
        """Every request followed, in the order following began (the eviction order)."""
        self.max_followed = max_followed
        self._followers = 0
        self._closed = False

    # ------------------------------------------------------------------------------- API

    @property
    def waiting(self) -> int:
        """Requests followed."""
        return len(self._oldest_first)

    @property
    def followers(self) -> int:
        """Deliveries following those requests."""
        return self._followers

    def scope_of(self, ref: ObjectRef) -> ScopeKey:
        return (ref.group, ref.version, ref.plural, ref.namespace if self._per_namespace else None)

    def follow(
        self, ref: ObjectRef, requested_at: str, patched_at: float | None = None
    ) -> asyncio.Future[Outcome]:
        """The future outcome of the request that set ``requestedAt`` to ``requested_at``.

        Following the same request twice returns the same future. The future is cancelled if
        the watcher closes first.
        """
        if self._closed:
            raise RuntimeError("outcome watcher is closed")
        by_time = self._waiters.setdefault(ref.key, {})
        existing = by_time.get(requested_at)
        if existing is not None:
            existing.followers += 1
            self._followers += 1
            self._make_room(keep=existing)
            self._metrics.followed.set(self._followers)
            return existing.future
        loop = asyncio.get_running_loop()
        waiter = _Waiter(
            ref,
            requested_at,
            self._clock() if patched_at is None else patched_at,
            loop.create_future(),
        )
        by_time[requested_at] = waiter
        self._oldest_first[id(waiter)] = waiter
        self._followers += 1
        waiter.timer = loop.call_later(self.timeout, self._expire, waiter)
        waiter.future.add_done_callback(lambda f: self._forget(waiter) if f.cancelled() else None)
        self._make_room(keep=waiter)
        self._metrics.waiting.set(self.waiting)
        self._metrics.followed.set(self._followers)
        scope = self._ensure_scope(ref)
        cached = scope.cache.get(ref.key)
        if cached is not None:
            self._evaluate(waiter, cached)
        return waiter.future

    async def close(self) -> None:
        """Stop every watch; requests still followed are cancelled (logged, not reported)."""
        self._closed = True
        pending = [w for by_time in self._waiters.values() for w in by_time.values()]
        if pending:
            log.info("closing with %d reconcile request(s) still followed", len(pending))
        for waiter in pending:
            if waiter.timer is not None:
                waiter.timer.cancel()
            waiter.future.cancel()
        self._waiters.clear()
        self._oldest_first.clear()
        self._followers = 0
        self._metrics.waiting.set(0)
        self._metrics.followed.set(0)
        tasks = [s.task for s in self._scopes.values() if s.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._scopes.clear()

    async def synced(self, ref: ObjectRef) -> None:
        """Wait until the watch covering ``ref`` has listed once (tests; wrap in a timeout)."""
        await self._ensure_scope(ref).synced.wait()

    # ------------------------------------------------------------------------ evaluating

    def _evaluate(self, waiter: _Waiter, status: ObjectStatus) -> None:
        if waiter.future.done():
            return
        now = self._clock()
        if waiter.handled_at is None:
            if status.handled == waiter.requested_at:
                waiter.seen_own = True
                waiter.handled_at = now
            elif status.requested == waiter.requested_at:
                waiter.seen_own = True
                return
            elif (
                waiter.seen_own
                and status.handled is not None
                and status.requested is not None
                and status.handled == status.requested
            ):
                waiter.handled_at = now
                waiter.superseded_by = status.handled
            else:
                return
        verdict = settled(status)
        if verdict is None:
            return
        ready = status.ready
        assert ready is not None
        self._resolve(
            waiter,
            Outcome(
                waiter.ref,
                waiter.requested_at,
                verdict,
                ready.reason,
                ready.message,
                waiter.patched_at,
                waiter.handled_at,
                now,
                waiter.superseded_by,
                status,
            ),
        )

    def _expire(self, waiter: _Waiter) -> None:
        handled = waiter.handled_at is not None
        what = "became neither Ready nor failed" if handled else "was not handled by Flux"
        message = f"reconcile request {what} within {self.timeout:g}s"
        self._resolve(
            waiter,
            _error(waiter, "Timeout", message, waiter.superseded_by, self._status(waiter.ref)),
        )

    def _make_room(self, keep: _Waiter) -> None:
        """Give up the oldest requests while more than ``max_followed`` deliveries follow."""
        while self._followers > self.max_followed:
            oldest = next(iter(self._oldest_first.values()))
            if oldest is keep:
                return  # one request alone past the bound: it is the one being followed
            message = (
                f"no longer followed: more than {self.max_followed} deliveries were being "
                "followed and this was the oldest request"
            )
            self._metrics.abandoned.inc()
            self._resolve(oldest, _error(oldest, "FollowLimit", message, oldest.superseded_by))

    def _gone(self, key: str) -> None:
        for waiter in list(self._waiters.get(key, {}).values()):
            message = "the object was deleted before its reconcile request settled"
            self._resolve(waiter, _error(waiter, "ObjectDeleted", message))

    def _forget(self, waiter: _Waiter) -> None:
        if waiter.timer is not None:
            waiter.timer.cancel()
        by_time = self._waiters.get(waiter.ref.key)
        if by_time is not None and by_time.get(waiter.requested_at) is waiter:
            del by_time[waiter.requested_at]
            if not by_time:
                del self._waiters[waiter.ref.key]
        if self._oldest_first.pop(id(waiter), None) is not None:
            self._followers -= waiter.followers
        self._metrics.waiting.set(self.waiting)
        self._metrics.followed.set(self._followers)

    def _resolve(self, waiter: _Waiter, outcome: Outcome) -> None:
        self._forget(waiter)
        self._metrics.outcomes.labels(waiter.ref.kind, outcome.result).inc()
        if not waiter.future.done():
            waiter.future.set_result(outcome)
        log.info(
            "reconcile request %s: %s (%s)",
            waiter.requested_at,
            outcome.result,
            outcome.reason,
            extra={"object": waiter.ref.key, "kind": waiter.ref.kind},
        )

    def _status(self, ref: ObjectRef) -> ObjectStatus | None:
        scope = self._scopes.get(self.scope_of(ref))
        return scope.cache.get(ref.key) if scope is not None else None

    def _observe(self, scope: _Scope, obj: Mapping[str, Any]) -> None:
        key = scope.object_key(obj)
        status = status_of(obj)
        scope.cache[key] = status
        for waiter in list(self._waiters.get(key, {}).values()):
            self._evaluate(waiter, status)

    # -------------------------------------------------------------------------- watching

    def _ensure_scope(self, ref: ObjectRef) -> _Scope:
        key = self.scope_of(ref)
        scope = self._scopes.get(key)
        if scope is None:
            scope = _Scope(key, ref.kind)
            scope.task = asyncio.create_task(self._run(scope), name=f"outcome-watch-{ref.plural}")
            self._scopes[key] = scope
        return scope

    async def _run(self, scope: _Scope) -> None:
        group, version, plural, namespace = scope.key
        call = custom_objects(
            self._custom_api,
            group,
            version,
            plural,
            namespace=namespace,
            label_selector=self._selector,
        )
        restarts = self._metrics.watch_restarts
        informer = Informer(
            scope.kind,
            call,
            on_list=lambda: _ScopeListing(self, scope),
            on_event=lambda event, obj: self._changed(scope, event, obj),
            settings=self._settings,
            logger=log,
            on_restart=lambda why: restarts.labels(scope.kind, why).inc(),
        )
        await informer.run()

    def _changed(self, scope: _Scope, event: str, obj: Mapping[str, Any]) -> None:
        if event == "DELETED":
            key = scope.object_key(obj)
            scope.cache.pop(key, None)
            self._gone(key)
        else:
            self._observe(scope, obj)


def _error(
    waiter: _Waiter,
    reason: str,
    message: str,
    superseded_by: str | None = None,
    status: ObjectStatus | None = None,
) -> Outcome:
    """The ``error`` outcome of a request that can no longer settle (timed out, deleted)."""
    return Outcome(
        waiter.ref,
        waiter.requested_at,
        "error",
        reason,
        message,
        waiter.patched_at,
        waiter.handled_at,
        None,
        superseded_by,
        status,
    )
