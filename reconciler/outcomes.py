"""Outcome watching: what Flux made of each reconcile request the reconciler sent.

After a patch, the request ``(object, requestedAt)`` is followed until Flux reports it handled
(``status.lastHandledReconcileAt`` equals the value written; only kinds whose controller writes
that field are followed at all, see ``kinds.Kind.reports_handling``) and then until the ``Ready``
condition settles: ``True`` is success, ``False`` with a reason other than ``Progressing`` is
failure. A request not settled within the timeout is an error (timed out); an object deleted
while followed is an error too.

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

The watches use their own API client (long-lived watch connections must never take the pool
slots patches need) and do not pass through the patch rate limiter: a watch is one request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from kubernetes_asyncio import client as k8s

from reconciler.kinds import REQUESTED_AT, ObjectRef
from reconciler.outcome_metrics import OutcomeMetrics
from runtime.informer import Informer, InformerSettings, custom_objects

log = logging.getLogger(__name__)

Result = Literal["success", "failure", "error"]
ScopeKey = tuple[str, str, str, str | None]
"""``(group, version, plural, namespace or None for all namespaces)``: one watch each."""


# --------------------------------------------------------------------------- status


@dataclass(frozen=True, slots=True)
class Condition:
    status: str
    reason: str
    message: str
    observed_generation: int | None = None


@dataclass(frozen=True, slots=True)
class ObjectStatus:
    """The few fields of a Flux object outcome watching and the CDEvents mapping need."""

    requested: str | None = None
    """The ``reconcile.fluxcd.io/requestedAt`` annotation now on the object."""
    handled: str | None = None
    """``status.lastHandledReconcileAt``."""
    generation: int | None = None
    ready: Condition | None = None
    reconciling: bool = False
    applied_revision: str | None = None
    attempted_revision: str | None = None
    artifact_revision: str | None = None
    artifact_digest: str | None = None
    chart_name: str | None = None
    chart_version: str | None = None
    app_version: str | None = None
    target_namespace: str | None = None
    release_name: str | None = None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def status_of(obj: Mapping[str, Any]) -> ObjectStatus:
    """Read an object's status the way Flux's objects lay it out (missing parts are None)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    ready: Condition | None = None
    reconciling = False
    for cond in status.get("conditions") or ():
        if not isinstance(cond, Mapping):
            continue
        if cond.get("type") == "Ready":
            ready = Condition(
                str(cond.get("status") or "Unknown"),
                str(cond.get("reason") or ""),
                str(cond.get("message") or ""),
                _int(cond.get("observedGeneration")),
            )
        elif cond.get("type") == "Reconciling":
            reconciling = cond.get("status") == "True"
    artifact = status.get("artifact") or {}
    history = status.get("history") or ()
    latest = history[0] if history and isinstance(history[0], Mapping) else {}
    chart_spec = ((spec.get("chart") or {}).get("spec") or {}) if isinstance(spec, Mapping) else {}
    return ObjectStatus(
        requested=_text((meta.get("annotations") or {}).get(REQUESTED_AT)),
        handled=_text(status.get("lastHandledReconcileAt")),
        generation=_int(meta.get("generation")),
        ready=ready,
        reconciling=reconciling,
        applied_revision=_text(status.get("lastAppliedRevision")) or _released(latest),
        attempted_revision=_text(status.get("lastAttemptedRevision")),
        artifact_revision=_text(artifact.get("revision")),
        artifact_digest=_text(artifact.get("digest")),
        chart_name=_text(latest.get("chartName")) or _text(chart_spec.get("chart")),
        chart_version=_text(latest.get("chartVersion")),
        app_version=_text(latest.get("appVersion")),
        target_namespace=_text(spec.get("targetNamespace")),
        release_name=_text(spec.get("releaseName")),
    )


def _released(snapshot: Mapping[str, Any]) -> str | None:
    """The chart version a HelmRelease v2 runs now, from its newest ``status.history[]`` entry.

    helm-controller v2 has no ``lastAppliedRevision``: it records each release in
    ``status.history`` (newest first) and only a ``deployed`` snapshot was applied; a failed
    or superseded one says what was tried, which ``lastAttemptedRevision`` already carries.
    """
    if snapshot.get("status") != "deployed":
        return None
    return _text(snapshot.get("chartVersion"))


def settled(status: ObjectStatus) -> Literal["success", "failure"] | None:
    """Ready's verdict, or None while it is Unknown, Progressing or about an older generation."""
    ready = status.ready
    if ready is None:
        return None
    if (
        ready.observed_generation is not None
        and status.generation is not None
        and ready.observed_generation < status.generation
    ):
        return None
    if ready.status == "True":
        return "success"
    if ready.status == "False" and ready.reason != "Progressing":
        return "failure"
    return None


# --------------------------------------------------------------------------- outcomes


@dataclass(frozen=True, slots=True)
class Outcome:
    """The end of one reconcile request. Times are Unix seconds as this process saw them."""

    ref: ObjectRef
    requested_at: str
    result: Result
    reason: str
    message: str
    patched_at: float
    handled_at: float | None = None
    ready_at: float | None = None
    superseded_by: str | None = None
    status: ObjectStatus | None = None


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
        self._closed = False

    # ------------------------------------------------------------------------------- API

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())

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
            return existing.future
        loop = asyncio.get_running_loop()
        waiter = _Waiter(
            ref,
            requested_at,
            self._clock() if patched_at is None else patched_at,
            loop.create_future(),
        )
        by_time[requested_at] = waiter
        waiter.timer = loop.call_later(self.timeout, self._expire, waiter)
        waiter.future.add_done_callback(lambda f: self._forget(waiter) if f.cancelled() else None)
        self._metrics.waiting.set(self.waiting)
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
        self._metrics.waiting.set(0)
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
        self._resolve(
            waiter,
            Outcome(
                waiter.ref,
                waiter.requested_at,
                "error",
                "Timeout",
                f"reconcile request {what} within {self.timeout:g}s",
                waiter.patched_at,
                waiter.handled_at,
                None,
                waiter.superseded_by,
                self._status(waiter.ref),
            ),
        )

    def _gone(self, key: str) -> None:
        for waiter in list(self._waiters.get(key, {}).values()):
            self._resolve(
                waiter,
                Outcome(
                    waiter.ref,
                    waiter.requested_at,
                    "error",
                    "ObjectDeleted",
                    "the object was deleted before its reconcile request settled",
                    waiter.patched_at,
                    waiter.handled_at,
                ),
            )

    def _forget(self, waiter: _Waiter) -> None:
        if waiter.timer is not None:
            waiter.timer.cancel()
        by_time = self._waiters.get(waiter.ref.key)
        if by_time is not None and by_time.get(waiter.requested_at) is waiter:
            del by_time[waiter.requested_at]
            if not by_time:
                del self._waiters[waiter.ref.key]
        self._metrics.waiting.set(self.waiting)

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
