"""A stand-in for Flux's controllers, for tests against the real API server.

No Flux controller runs in tests, yet fluxrelay's reconciler must see Flux react to a
``reconcile.fluxcd.io/requestedAt`` request. This module owns that reaction, done the way Flux
does it and nothing more: it list+watches the given Flux kinds in one namespace and, whenever an
object's requestedAt annotation differs from ``status.lastHandledReconcileAt`` (and the object
is not suspended), it writes status through the status subresource with a JSON merge patch:
first ``Reconciling=True``/``Ready=Unknown`` (reason ``Progressing``, optional), then after a
delay the result with ``lastHandledReconcileAt`` set to the annotation's value.

The objects live under Flux's real CRDs, so status is written only in the fields each
controller's schema has (anything else would be pruned silently):

- Kustomization: ``lastAppliedRevision``/``lastAttemptedRevision``;
- HelmRelease v2: ``lastAttemptedRevision`` and, on success, a new ``status.history[0]``
  snapshot (``deployed``, the previous one ``superseded``): v2 has no ``lastAppliedRevision``;
- sources: ``status.artifact`` with every field the schema requires;
- ArtifactGenerator: no ``observedGeneration`` (its status has none); paused by the annotation
  ``source.extensions.fluxcd.io/reconcile: disabled`` (any case), not ``spec.suspend``;
- ExternalArtifact: never handled. No controller reconciles it on request and its status has
  no ``lastHandledReconcileAt`` (a stand-in writing it would see it pruned and loop forever).

The result per object comes from a rule (a callable) or, by default, from the object's own
metadata so a test can state it when it creates the object:

- label ``standin.fluxrelay.io/outcome``: ``succeed`` (default), ``fail`` (Ready=False) or
  ``hang`` (never handled, to test timeouts);
- annotations ``standin.fluxrelay.io/reason``, ``.../message``, ``.../revision`` and
  ``.../delay-seconds`` override the condition's reason and message, the revision reported
  (``lastAppliedRevision``/``lastAttemptedRevision`` for Kustomization and HelmRelease,
  ``artifact.revision`` for sources) and the delay.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio.client.exceptions import ApiException

logger = logging.getLogger(__name__)

REQUESTED_AT = "reconcile.fluxcd.io/requestedAt"
OUTCOME_LABEL = "standin.fluxrelay.io/outcome"
REASON_ANNOTATION = "standin.fluxrelay.io/reason"
MESSAGE_ANNOTATION = "standin.fluxrelay.io/message"
REVISION_ANNOTATION = "standin.fluxrelay.io/revision"
DELAY_ANNOTATION = "standin.fluxrelay.io/delay-seconds"

_MERGE_PATCH: dict[str, Any] = {"_content_type": "application/merge-patch+json"}
_WATCH_SECONDS = 240

Result = Literal["succeed", "fail", "hang"]
JSON = dict[str, Any]


@dataclass(frozen=True)
class FluxKind:
    """A Flux custom resource kind as the API server serves it."""

    group: str
    version: str
    plural: str
    kind: str
    revision_fields: tuple[str, ...] = ()  # status fields holding applied/attempted revisions
    has_artifact: bool = False  # sources publish status.artifact
    has_history: bool = False  # HelmRelease v2 records releases in status.history
    has_observed_generation: bool = True  # status.observedGeneration exists in the schema
    handles_requests: bool = True  # its controller answers requestedAt (ExternalArtifact: no)
    disable_annotation: str | None = None  # annotation that pauses it when "disabled"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


_APPLIED = ("lastAppliedRevision", "lastAttemptedRevision")
KUSTOMIZATION = FluxKind(
    "kustomize.toolkit.fluxcd.io", "v1", "kustomizations", "Kustomization", _APPLIED
)
HELM_RELEASE = FluxKind(
    "helm.toolkit.fluxcd.io",
    "v2",
    "helmreleases",
    "HelmRelease",
    ("lastAttemptedRevision",),
    has_history=True,
)
GIT_REPOSITORY = FluxKind(
    "source.toolkit.fluxcd.io", "v1", "gitrepositories", "GitRepository", has_artifact=True
)
OCI_REPOSITORY = FluxKind(
    "source.toolkit.fluxcd.io", "v1", "ocirepositories", "OCIRepository", has_artifact=True
)
HELM_REPOSITORY = FluxKind(
    "source.toolkit.fluxcd.io", "v1", "helmrepositories", "HelmRepository", has_artifact=True
)
HELM_CHART = FluxKind(
    "source.toolkit.fluxcd.io", "v1", "helmcharts", "HelmChart", has_artifact=True
)
BUCKET = FluxKind("source.toolkit.fluxcd.io", "v1", "buckets", "Bucket", has_artifact=True)
EXTERNAL_ARTIFACT = FluxKind(
    "source.toolkit.fluxcd.io",
    "v1",
    "externalartifacts",
    "ExternalArtifact",
    has_artifact=True,
    has_observed_generation=False,
    handles_requests=False,
)
IMAGE_REPOSITORY = FluxKind("image.toolkit.fluxcd.io", "v1", "imagerepositories", "ImageRepository")
IMAGE_POLICY = FluxKind("image.toolkit.fluxcd.io", "v1", "imagepolicies", "ImagePolicy")
IMAGE_UPDATE_AUTOMATION = FluxKind(
    "image.toolkit.fluxcd.io", "v1", "imageupdateautomations", "ImageUpdateAutomation"
)
ARTIFACT_GENERATOR = FluxKind(
    "source.extensions.fluxcd.io",
    "v1beta1",
    "artifactgenerators",
    "ArtifactGenerator",
    has_observed_generation=False,
    disable_annotation="source.extensions.fluxcd.io/reconcile",
)
RECEIVER = FluxKind("notification.toolkit.fluxcd.io", "v1", "receivers", "Receiver")

FLUX_KINDS: dict[str, FluxKind] = {
    k.kind: k
    for k in (
        KUSTOMIZATION,
        HELM_RELEASE,
        GIT_REPOSITORY,
        OCI_REPOSITORY,
        HELM_REPOSITORY,
        HELM_CHART,
        BUCKET,
        EXTERNAL_ARTIFACT,
        IMAGE_REPOSITORY,
        IMAGE_POLICY,
        IMAGE_UPDATE_AUTOMATION,
        ARTIFACT_GENERATOR,
        RECEIVER,
    )
}
# What Flux reconciles on request (Receiver objects are not reconciled by a requestedAt here,
# and nothing answers a requestedAt on an ExternalArtifact).
RECONCILED_KINDS: tuple[FluxKind, ...] = tuple(
    k for k in FLUX_KINDS.values() if k is not RECEIVER and k.handles_requests
)


@dataclass(frozen=True)
class Outcome:
    """How the stand-in answers one reconcile request."""

    result: Result = "succeed"
    reason: str | None = None
    message: str | None = None
    revision: str | None = None
    delay: float | None = None  # None: the stand-in's default delay


@dataclass(frozen=True)
class HandledReconcile:
    """One request the stand-in noticed and what it did (``hang``: noticed, never handled)."""

    kind: str
    name: str
    requested_at: str
    outcome: Outcome
    revision: str | None = None


def outcome_from_metadata(obj: JSON) -> Outcome:
    """The default rule: read the outcome label and override annotations of the object."""
    meta = obj.get("metadata", {})
    labels = meta.get("labels") or {}
    notes = meta.get("annotations") or {}
    result = labels.get(OUTCOME_LABEL, "succeed")
    if result not in ("succeed", "fail", "hang"):
        raise ValueError(f"unknown {OUTCOME_LABEL} value {result!r}")
    delay = notes.get(DELAY_ANNOTATION)
    return Outcome(
        result=result,
        reason=notes.get(REASON_ANNOTATION),
        message=notes.get(MESSAGE_ANNOTATION),
        revision=notes.get(REVISION_ANNOTATION),
        delay=float(delay) if delay is not None else None,
    )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _default_revision(kind: FluxKind, name: str, requested_at: str) -> str:
    digest = hashlib.sha1(f"{name}/{requested_at}".encode(), usedforsecurity=False).hexdigest()
    if kind.has_history:
        return f"0.1.0+{digest[:12]}"  # a HelmRelease's revision is its chart's version
    return f"main@sha1:{digest}"


def _chart_name(obj: JSON) -> str:
    """The chart a HelmRelease installs: ``chart.spec.chart`` or the ``chartRef``'s name."""
    spec = obj.get("spec") or {}
    chart = ((spec.get("chart") or {}).get("spec") or {}).get("chart")
    if isinstance(chart, str) and chart:
        return chart.rsplit("/", 1)[-1]
    return str((spec.get("chartRef") or {}).get("name") or obj["metadata"]["name"])


def _release_history(obj: JSON, revision: str) -> list[JSON]:
    """``status.history`` after a successful release of ``revision``, newest first.

    Every field the HelmRelease v2 schema requires of a snapshot is set; older snapshots turn
    ``superseded`` as helm-controller records them, and at most five are kept.
    """
    spec = obj.get("spec") or {}
    meta = obj["metadata"]
    before = [dict(h) for h in ((obj.get("status") or {}).get("history") or [])]
    for old in before:
        if old.get("status") == "deployed":
            old["status"] = "superseded"
    now = _now()
    number = max((int(h.get("version") or 0) for h in before), default=0) + 1
    release = spec.get("releaseName") or (
        f"{spec['targetNamespace']}-{meta['name']}" if spec.get("targetNamespace") else meta["name"]
    )
    config = "sha256:" + hashlib.sha256(json.dumps(spec.get("values") or {}).encode()).hexdigest()
    snapshot: JSON = {
        "name": release,
        "namespace": spec.get("targetNamespace") or meta["namespace"],
        "version": number,
        "status": "deployed",
        "chartName": _chart_name(obj),
        "chartVersion": revision,
        "appVersion": revision.split("+", 1)[0],
        "configDigest": config,
        "digest": "sha256:" + hashlib.sha256(f"{release}/{number}".encode()).hexdigest(),
        "firstDeployed": before[-1]["firstDeployed"] if before else now,
        "lastDeployed": now,
    }
    return [snapshot, *before][:5]


def _set_conditions(
    existing: list[JSON], updates: Iterable[JSON], drop: Iterable[str]
) -> list[JSON]:
    """Replace conditions by type, keeping lastTransitionTime when the status is unchanged."""
    by_type = {c.get("type"): c for c in existing}
    for gone in drop:
        by_type.pop(gone, None)
    for update in updates:
        before = by_type.get(update["type"])
        new = dict(update)
        if before is not None and before.get("status") == update["status"]:
            new["lastTransitionTime"] = before.get("lastTransitionTime", new["lastTransitionTime"])
        by_type[update["type"]] = new
    return list(by_type.values())


@dataclass
class _ObjectState:
    task: asyncio.Task[None] | None = None
    dirty: bool = False
    hung: set[str] = field(default_factory=set)


class FluxStandIn:
    """Watches Flux kinds in a namespace and writes status like Flux's controllers would.

    Use as ``async with FluxStandIn(api_client, namespace) as flux: ...``; ``flux.handled``
    lists what it did and :meth:`wait_handled` waits for it.
    """

    def __init__(
        self,
        api: k8s_client.ApiClient,
        namespace: str,
        kinds: Iterable[FluxKind] = RECONCILED_KINDS,
        *,
        delay: float = 0.0,
        rule: Callable[[JSON], Outcome] = outcome_from_metadata,
        report_progress: bool = True,
        label_selector: str | None = None,
    ) -> None:
        self.namespace = namespace
        self.kinds = tuple(kinds)
        self.delay = delay
        self.rule = rule
        self.report_progress = report_progress
        self.label_selector = label_selector
        self.handled: list[HandledReconcile] = []
        self._custom = k8s_client.CustomObjectsApi(api)
        self._objects: dict[tuple[str, str], _ObjectState] = {}
        self._watchers: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()
        self._synced: dict[str, asyncio.Event] = {}

    async def start(self) -> FluxStandIn:
        """Start watching; returns once every kind has been listed once."""
        for kind in self.kinds:
            self._synced[kind.plural] = asyncio.Event()
            self._watchers.append(
                asyncio.create_task(self._watch(kind), name=f"standin-{kind.plural}")
            )

        async def all_synced() -> None:
            for event in self._synced.values():
                await event.wait()

        synced = asyncio.create_task(all_synced())
        done, _ = await asyncio.wait({synced, *self._watchers}, return_when=asyncio.FIRST_COMPLETED)
        if synced in done:
            return self
        synced.cancel()
        failed = next(iter(done))
        error = failed.exception() or RuntimeError("stand-in watcher ended")
        await self.stop()
        raise error

    async def stop(self) -> None:
        tasks = self._watchers + [s.task for s in self._objects.values() if s.task is not None]
        for task in tasks:
            task.cancel()
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, Exception):
                logger.info("stand-in task ended with %r", result)
        self._watchers.clear()

    async def __aenter__(self) -> FluxStandIn:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def handled_for(self, name: str, kind: str | None = None) -> list[HandledReconcile]:
        return [h for h in self.handled if h.name == name and (kind is None or h.kind == kind)]

    async def wait_handled(self, n: int = 1, name: str | None = None) -> list[HandledReconcile]:
        """Wait until ``n`` requests (for ``name`` if given) were noticed; bound it yourself."""
        while True:
            self._changed.clear()
            matched = [h for h in self.handled if name is None or h.name == name]
            if len(matched) >= n:
                return matched
            await self._changed.wait()

    # ------------------------------------------------------------------------------ watching

    async def _watch(self, kind: FluxKind) -> None:
        while True:
            try:
                await self._list_then_watch(kind)
            except asyncio.CancelledError:
                raise
            except ApiException as exc:
                if exc.status in (403, 404) and not self._synced[kind.plural].is_set():
                    raise  # misconfigured (no CRD, no rights): fail start() instead of spinning
                logger.info("stand-in watch of %s restarts after HTTP %s", kind.plural, exc.status)
                await asyncio.sleep(0.5)
            except Exception as exc:  # API server restarting, dropped stream
                logger.info("stand-in watch of %s restarts after %r", kind.plural, exc)
                await asyncio.sleep(0.5)

    async def _list_then_watch(self, kind: FluxKind) -> None:
        selector: dict[str, Any] = (
            {"label_selector": self.label_selector} if self.label_selector else {}
        )
        listing = await self._custom.list_namespaced_custom_object(
            kind.group, kind.version, self.namespace, kind.plural, **selector
        )
        for obj in listing["items"]:
            self._consider(kind, obj)
        self._synced[kind.plural].set()
        version = listing["metadata"]["resourceVersion"]
        response = await self._custom.list_namespaced_custom_object(
            kind.group,
            kind.version,
            self.namespace,
            kind.plural,
            watch=True,
            resource_version=version,
            timeout_seconds=_WATCH_SECONDS,
            _preload_content=False,
            **selector,
        )
        async with response:
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                if event["type"] in ("ADDED", "MODIFIED"):
                    self._consider(kind, event["object"])
                elif event["type"] == "ERROR":
                    return  # e.g. 410 Gone: list again

    def _consider(self, kind: FluxKind, obj: JSON) -> None:
        name = obj["metadata"]["name"]
        state = self._objects.setdefault((kind.plural, name), _ObjectState())
        if state.task is not None and not state.task.done():
            state.dirty = True
            return
        if not self._wanted(kind, obj, state):
            return
        state.task = asyncio.create_task(
            self._reconcile(kind, name, state), name=f"standin-{kind.plural}-{name}"
        )

    @staticmethod
    def _wanted(kind: FluxKind, obj: JSON, state: _ObjectState) -> str | None:
        """The requestedAt value to handle, or None if there is nothing to do."""
        annotations = obj["metadata"].get("annotations") or {}
        requested = annotations.get(REQUESTED_AT)
        handled = (obj.get("status") or {}).get("lastHandledReconcileAt")
        suspended = bool((obj.get("spec") or {}).get("suspend"))
        if kind.disable_annotation is not None:
            suspended = str(annotations.get(kind.disable_annotation, "")).lower() == "disabled"
        if (
            not kind.handles_requests
            or not requested
            or requested == handled
            or suspended
            or requested in state.hung
        ):
            return None
        wanted: str = requested
        return wanted

    # ---------------------------------------------------------------------------- reconciling

    async def _reconcile(self, kind: FluxKind, name: str, state: _ObjectState) -> None:
        """Handle requests for one object until none is left (like a controller's work queue)."""
        while True:
            state.dirty = False
            try:
                obj = await self._custom.get_namespaced_custom_object(
                    kind.group, kind.version, self.namespace, kind.plural, name
                )
                requested = self._wanted(kind, obj, state)
                if requested is None:
                    if state.dirty:
                        continue
                    return
                await self._handle(kind, obj, requested, state)
            except ApiException as exc:
                if exc.status == 404:
                    return
                logger.info("stand-in requeues %s/%s after HTTP %s", kind.kind, name, exc.status)
                await asyncio.sleep(0.5)
            except (TimeoutError, OSError, aiohttp.ClientError) as exc:
                logger.info("stand-in requeues %s/%s after %r", kind.kind, name, exc)
                await asyncio.sleep(0.5)

    async def _handle(self, kind: FluxKind, obj: JSON, requested: str, state: _ObjectState) -> None:
        name = obj["metadata"]["name"]
        outcome = self.rule(obj)
        if outcome.result == "hang":
            state.hung.add(requested)
            self._note(HandledReconcile(kind.kind, name, requested, outcome))
            return
        generation = obj["metadata"].get("generation")
        conditions: list[JSON] = list((obj.get("status") or {}).get("conditions") or [])
        if self.report_progress:
            conditions = _set_conditions(
                conditions,
                [
                    self._condition(
                        "Reconciling",
                        "True",
                        "Progressing",
                        "reconciliation in progress",
                        generation,
                    ),
                    self._condition(
                        "Ready", "Unknown", "Progressing", "reconciliation in progress", generation
                    ),
                ],
                drop=(),
            )
            await self._patch_status(kind, name, {"conditions": conditions})
        delay = self.delay if outcome.delay is None else outcome.delay
        if delay > 0:
            await asyncio.sleep(delay)
        revision = outcome.revision or _default_revision(kind, name, requested)
        status: JSON = {"lastHandledReconcileAt": requested}
        if kind.has_observed_generation:
            status["observedGeneration"] = generation
        if outcome.result == "succeed":
            message = outcome.message or f"Applied revision: {revision}"
            ready = self._condition(
                "Ready", "True", outcome.reason or "ReconciliationSucceeded", message, generation
            )
            for field_name in kind.revision_fields:
                status[field_name] = revision
            if kind.has_history:
                status["history"] = _release_history(obj, revision)
            if kind.has_artifact:
                status["artifact"] = {
                    "revision": revision,
                    "digest": "sha256:" + hashlib.sha256(revision.encode()).hexdigest(),
                    "lastUpdateTime": _now(),
                    "path": f"{kind.plural}/{self.namespace}/{name}/latest.tar.gz",
                    "url": f"http://source-controller.flux-system.svc/{kind.plural}/{name}.tar.gz",
                }
        else:
            message = outcome.message or f"reconciliation of {revision} failed (stand-in)"
            ready = self._condition(
                "Ready", "False", outcome.reason or "ReconciliationFailed", message, generation
            )
            if "lastAttemptedRevision" in kind.revision_fields:
                status["lastAttemptedRevision"] = revision
        status["conditions"] = _set_conditions(conditions, [ready], drop=("Reconciling",))
        await self._patch_status(kind, name, status)
        self._note(HandledReconcile(kind.kind, name, requested, outcome, revision))
        logger.debug("stand-in handled %s/%s at %s: %s", kind.kind, name, requested, outcome.result)

    @staticmethod
    def _condition(
        type_: str, status: str, reason: str, message: str, generation: int | None
    ) -> JSON:
        condition: JSON = {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": _now(),
        }
        if generation is not None:
            condition["observedGeneration"] = generation
        return condition

    async def _patch_status(self, kind: FluxKind, name: str, status: JSON) -> None:
        await self._custom.patch_namespaced_custom_object_status(
            kind.group,
            kind.version,
            self.namespace,
            kind.plural,
            name,
            {"status": status},
            **_MERGE_PATCH,
        )

    def _note(self, handled: HandledReconcile) -> None:
        self.handled.append(handled)
        self._changed.set()
