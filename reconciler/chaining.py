"""Chaining: every delivery followed to its end and told as a chain of linked CDEvents.

One chain per delivery (envelope), ``context.chainId`` = uuid5 of the envelope id (or the
incoming CDEvent's own ``chainId``, continuing its producer's chain). Each event carries a PATH
link (``links``) to the event before it. The final mapping:

==========================================  ===============================================
what happened                               CDEvent (subject id; notes)
==========================================  ===============================================
Git push with a revision (branch or tag)    ``change.merged`` (the revision; ``repository``
                                            id = full name or URL; the ref, provider and
                                            delivery id in ``customData``)
registry push                               ``artifact.published`` (``pkg:oci/<name>@<digest>
                                            ?repository_url=<registry/repo>&tag=<tag>``;
                                            the tag stands in when no digest was sent)
incoming CDEvent (``cdevents`` provider)     not re-emitted: its producer published it; the
                                            next event links to its ``context.id``
any other delivery (no revision, artifact)  ``dev.cdeventsx.fluxrelay-webhook.received.0.1.0``
reconcile requested (one patch)             ``pipelinerun.queued`` per delivery the patch
                                            carried (subject ``<Kind>/<ns>/<name>@<requestedAt>``,
                                            ``pipelineName`` ``<Kind>/<ns>/<name>``; the
                                            targeting decisions in ``customData.targeting``)
nothing reconciled in a shard               ``dev.cdeventsx.fluxrelay-webhook.untargeted.0.1.0``
                                            (subject: the delivery id; the shard, the first
                                            reason and each decision in the content)
Flux handled it and Ready settled           ``pipelinerun.finished`` outcome ``success``
                                            (Ready=True) or ``failure`` (Ready=False);
                                            ``error`` when not settled within the timeout or
                                            the object was deleted; ``errors`` = reason: message;
                                            never for ExternalArtifact (its status cannot say
                                            a request was handled, so the chain ends at queued)
HelmRelease Ready at our request            then ``service.deployed`` (``<ns>/<release>``,
                                            environment = target namespace, artifactId
                                            ``pkg:generic/<chart>@<version>``) when the status
                                            names the chart and version
Kustomization (or HelmRelease without       then ``environment.modified`` (the target namespace;
chart data) Ready at our request            the applied revision in ``customData``)
==========================================  ===============================================

Coalescing: one patch may carry several deliveries. Each delivery keeps its own chain, so
each gets its own ``pipelinerun.queued``/``finished`` linked into it; they share the subject
id (the one reconcile request), which is how a consumer sees they were coalesced.

Deterministic ids: ``context.id`` = uuid5(envelope id, stage, object key). A redelivered
message (a crash after the patch, before the ack) re-emits the same ids, so the JetStream
sink's ``Nats-Msg-Id`` de-duplication drops the repeat and HTTP consumers can de-duplicate by
id. The ingest event is emitted whenever the reconciler first processes an envelope (its
timestamp is ``received_at``, so a repeat is identical). ``queued`` takes its timestamp
from ``requestedAt``.

Trace context: the envelope's W3C ``traceparent`` (continued from the webhook or started by
the receiver) is carried unchanged as the CloudEvents ``traceparent`` extension of every
event in the chain.

Feeding: :class:`reconciler.reporting.ChainReporter` is told by the consumer, in line with its
own work, of each delivery it received and each patch that covered one; outcomes come back as
callbacks of the outcome watcher's futures. This module only plans the events and keeps no
state (the same delivery and outcome give the same ids); the reporter decides when, and is
never called from inside the patcher or the coalescer.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NotRequired, TypedDict

from reconciler.decisions import Decisions
from reconciler.fluxstatus import Outcome
from reconciler.kinds import ObjectRef
from schemas.cdevents import (
    Event,
    SpecRelease,
    artifact_published,
    build_event,
    change_merged,
    environment_modified,
    oci_purl,
    path_link,
    pipelinerun_finished,
    pipelinerun_queued,
    service_deployed,
)
from schemas.envelope import Envelope

log = logging.getLogger(__name__)

SOURCE = "/fluxrelay/reconciler"
"""Default ``context.source`` of the events the reconciler emits."""
ID_NAMESPACE = uuid.UUID("5b0f3c1e-6a53-4d7e-9b8e-f1c2a7d0e4b1")
"""uuid5 namespace of fluxrelay's CDEvent ids (fixed forever: ids must not change)."""
WEBHOOK_TYPE = "dev.cdeventsx.fluxrelay-webhook.received.0.1.0"
UNTARGETED_TYPE = "dev.cdeventsx.fluxrelay-webhook.untargeted.0.1.0"


def event_id(envelope_id: str, stage: str, key: str = "") -> str:
    """The deterministic ``context.id`` of one stage of one delivery's chain."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{envelope_id}\x00{stage}\x00{key}"))


class Followed(TypedDict):
    """What ``finished`` and MTTP read of a delivery while its request is followed.

    A request is followed until Flux settles it (up to ``outcome_timeout``, 600 s by
    default), and when Flux lags, hundreds of them are; holding whole envelopes (repo,
    commits, headers...) for that long showed in the soak at 500/s, the followed count
    climbing by ~2/s with RSS following it. An :class:`Envelope` is a ``Followed`` too, so
    the event builders take either.
    """

    id: str
    delivery_id: str
    received_at: str
    traceparent: NotRequired[str]
    cdevent: NotRequired[dict[str, Any] | None]
    """Of an incoming CDEvent, the slim form keeps ``context.id`` and ``context.chainId``."""


def incoming_context(env: Followed) -> Mapping[str, Any] | None:
    """The incoming CDEvent's context, for deliveries of the ``cdevents`` provider."""
    cdevent = env.get("cdevent")
    if isinstance(cdevent, Mapping):
        context = cdevent.get("context")
        if isinstance(context, Mapping) and isinstance(context.get("id"), str):
            return context
    return None


def chain_id(env: Followed) -> str:
    """The delivery's ``chainId``: the incoming CDEvent's, else uuid5 of the envelope id."""
    context = incoming_context(env)
    if context is not None and isinstance(context.get("chainId"), str) and context["chainId"]:
        return str(context["chainId"])
    return event_id(env["id"], "chain")


def ingest_id(env: Followed) -> str:
    """The id of the chain's first event (the incoming CDEvent's own id for CDEvents)."""
    context = incoming_context(env)
    if context is not None:
        return str(context["id"])
    return event_id(env["id"], "ingest")


def run_id(ref: ObjectRef, requested_at: str) -> str:
    """The pipeline run: one reconcile request of one object."""
    return f"{ref.key}@{requested_at}"


Build = Callable[[SpecRelease], Event]


@dataclass(frozen=True)
class Planned:
    """One CDEvent to emit, built per spec release by the emitter (each sink speaks one)."""

    id: str
    type_key: str
    """``subject.predicate`` (or the custom type) for metrics and logs."""
    build: Build
    traceparent: str | None = None
    delivery_id: str | None = None

    @property
    def extensions(self) -> dict[str, str]:
        return {"traceparent": self.traceparent} if self.traceparent else {}


def _options(env: Followed, source: str, id_: str, links: list[dict[str, Any]]) -> dict[str, Any]:
    return {"source": source, "id": id_, "chain_id": chain_id(env), "links": links or None}


def _delivery_data(env: Envelope) -> dict[str, Any]:
    data: dict[str, Any] = {
        "deliveryId": env["delivery_id"],
        "provider": env["provider"],
        "event": env["event"],
        "receiver": f"{env['receiver']['namespace']}/{env['receiver']['name']}",
    }
    if env.get("ref"):
        data["ref"] = env.get("ref")
    return data


def _repository_id(env: Envelope) -> str | None:
    repo = env.get("repository") or {}
    for candidate in (repo.get("full_name"), repo.get("web"), repo.get("http")):
        if candidate:
            return str(candidate)
    urls = repo.get("urls") or []
    return str(urls[0]) if urls else None


def _artifact_purl(env: Envelope) -> str | None:
    artifact = env.get("artifact") or {}
    repository = artifact.get("repository")
    version = artifact.get("digest") or artifact.get("tag")
    if not repository or not version:
        return None
    registry = artifact.get("registry")
    full = f"{registry}/{repository}" if registry else str(repository)
    name = str(repository).rsplit("/", 1)[-1]
    return oci_purl(name, str(version), repository_url=full, tag=artifact.get("tag"))


def ingest(env: Envelope, *, source: str = SOURCE) -> Planned | None:
    """The chain's first event, or None when the delivery was itself a CDEvent."""
    if incoming_context(env) is not None:
        return None
    id_ = ingest_id(env)
    opts = _options(env, source, id_, [])
    opts["timestamp"] = env["received_at"]
    opts["custom_data"] = _delivery_data(env)
    revision, repository, purl = env.get("revision"), _repository_id(env), _artifact_purl(env)
    build: Build
    if purl is not None:
        type_key = "artifact.published"

        def build(release: SpecRelease) -> Event:
            return artifact_published(release, artifact_id=purl, **opts)

    elif revision and repository:
        type_key = "change.merged"
        web = (env.get("repository") or {}).get("web")

        def build(release: SpecRelease) -> Event:
            return change_merged(
                release,
                revision=str(revision),
                repository_id=repository,
                repository_source=web or None,
                **opts,
            )

    else:
        type_key = WEBHOOK_TYPE
        content = {"provider": env["provider"], "event": env["event"]}

        def build(release: SpecRelease) -> Event:
            return build_event(release, WEBHOOK_TYPE, env["delivery_id"], content, **opts)

    return Planned(id_, type_key, build, env.get("traceparent"), env["delivery_id"])


def _timestamp_of(requested_at: str) -> str:
    """``requestedAt`` (nanoseconds) as the millisecond RFC 3339 CDEvents tools parse best."""
    head, dot, rest = requested_at.partition(".")
    if not dot:
        return requested_at
    digits = "".join(c for c in rest if c.isdigit())
    zone = rest[len(digits) :]
    return f"{head}.{(digits + '000')[:3]}{zone}"


def queued(
    env: Followed,
    ref: ObjectRef,
    requested_at: str,
    *,
    source: str = SOURCE,
    decisions: Decisions | None = None,
    covered: bool = False,
) -> Planned:
    """``pipelinerun.queued``: a reconcile of ``ref`` was requested for this delivery (with
    the delivery's targeting decisions: what else was considered and why not). ``covered``:
    the request is one someone else (another replica) made after the delivery was stored, so
    this process sent none for it (``reconciler.coalescing``); customData says so."""
    id_ = event_id(env["id"], "queued", ref.key)
    opts = _options(env, source, id_, [path_link(ingest_id(env))])
    opts["timestamp"] = _timestamp_of(requested_at)
    custom: dict[str, Any] = {"requestedAt": requested_at, "deliveryId": env["delivery_id"]}
    if decisions is not None:
        custom["targeting"] = decisions.as_data()
    if covered:
        custom["covered"] = True
    opts["custom_data"] = custom

    def build(release: SpecRelease) -> Event:
        return pipelinerun_queued(
            release, run_id=run_id(ref, requested_at), pipeline_name=ref.key, **opts
        )

    return Planned(id_, "pipelinerun.queued", build, env.get("traceparent"), env["delivery_id"])


def untargeted(
    env: Envelope, decisions: Decisions, *, source: str = SOURCE, shard: str | None = None
) -> Planned:
    """The chain's end in one shard when its targeting reconciled nothing: why, object by
    object. Each shard decides for its own objects, so each has its own event (the id names
    the shard); another shard may still have reconciled the delivery."""
    id_ = event_id(env["id"], "untargeted", shard or "")
    opts = _options(env, source, id_, [path_link(ingest_id(env))])
    opts["custom_data"] = _delivery_data(env)
    content = {"reason": decisions.why_not, "shard": shard or "", **decisions.as_data()}

    def build(release: SpecRelease) -> Event:
        return build_event(release, UNTARGETED_TYPE, env["delivery_id"], content, **opts)

    return Planned(id_, UNTARGETED_TYPE, build, env.get("traceparent"), env["delivery_id"])


def _moment(seconds: float | None) -> datetime:
    return datetime.fromtimestamp(seconds if seconds is not None else time.time(), UTC)


def finished(env: Followed, outcome: Outcome, *, source: str = SOURCE) -> list[Planned]:
    """``pipelinerun.finished`` and, after a success, what the deployment changed."""
    ref = outcome.ref
    id_ = event_id(env["id"], "finished", ref.key)
    opts = _options(env, source, id_, [path_link(event_id(env["id"], "queued", ref.key))])
    opts["timestamp"] = _moment(outcome.ready_at)
    data: dict[str, Any] = {"requestedAt": outcome.requested_at, "reason": outcome.reason}
    if outcome.superseded_by:
        data["supersededBy"] = outcome.superseded_by
    status = outcome.status
    revision = status and (
        status.applied_revision or status.artifact_revision or status.attempted_revision
    )
    if revision:
        data["revision"] = revision
    opts["custom_data"] = data
    errors = None if outcome.result == "success" else f"{outcome.reason}: {outcome.message}"

    def build(release: SpecRelease) -> Event:
        return pipelinerun_finished(
            release,
            run_id=run_id(ref, outcome.requested_at),
            pipeline_name=ref.key,
            outcome=outcome.result,
            errors=errors,
            **opts,
        )

    trace, delivery = env.get("traceparent"), env["delivery_id"]
    out = [Planned(id_, "pipelinerun.finished", build, trace, delivery)]
    deployed = _deployed(env, outcome, id_, source)
    if deployed is not None:
        out.append(deployed)
    return out


def _deployed(env: Followed, outcome: Outcome, previous: str, source: str) -> Planned | None:
    status, ref = outcome.status, outcome.ref
    if outcome.result != "success" or status is None:
        return None
    if ref.kind not in ("HelmRelease", "Kustomization"):
        return None
    id_ = event_id(env["id"], "deployed", ref.key)
    opts = _options(env, source, id_, [path_link(previous)])
    opts["timestamp"] = _moment(outcome.ready_at)
    environment = status.target_namespace or ref.namespace
    trace, delivery = env.get("traceparent"), env["delivery_id"]
    version = status.chart_version or status.attempted_revision
    if ref.kind == "HelmRelease" and status.chart_name and version:
        default_release = (
            f"{status.target_namespace}-{ref.name}" if status.target_namespace else ref.name
        )
        service = f"{environment}/{status.release_name or default_release}"
        artifact = f"pkg:generic/{status.chart_name}@{version}"
        opts["custom_data"] = {"object": ref.key, "appVersion": status.app_version}

        def build_service(release: SpecRelease) -> Event:
            return service_deployed(
                release,
                service_id=service,
                environment_id=environment,
                artifact_id=artifact,
                **opts,
            )

        return Planned(id_, "service.deployed", build_service, trace, delivery)
    revision = status.applied_revision or status.attempted_revision
    if not revision:
        return None
    opts["custom_data"] = {"object": ref.key, "revision": revision}

    def build_environment(release: SpecRelease) -> Event:
        return environment_modified(release, environment_id=environment, name=environment, **opts)

    return Planned(id_, "environment.modified", build_environment, trace, delivery)
