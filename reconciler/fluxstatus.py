"""Flux status, read: what a Flux object's status says, and what a reconcile request came to.

:func:`status_of` reads the few fields outcome watching and the CDEvents mapping need from an
object as the API server returns it (``Ready`` and ``Reconciling`` conditions,
``lastHandledReconcileAt``, revisions, a HelmRelease's chart from ``status.history``), and
:func:`settled` says whether ``Ready`` has settled. :class:`Outcome` is the value a followed
request ends in, carrying the last :class:`ObjectStatus` seen.

Why apart from :mod:`reconciler.outcomes`: these are values and pure functions, no I/O and no
state. The watcher (list+watch, the status cache, timers, futures) produces them; the CDEvents
planning (:mod:`reconciler.chaining`) and the reporter read them without importing the watch
machinery, and the knowledge of how each Flux controller lays out its status lives in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from reconciler.kinds import REQUESTED_AT, ObjectRef

Result = Literal["success", "failure", "error"]
"""How a followed request ended: Ready=True, Ready=False, or not settled (timeout, deleted)."""


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
