"""Building CDEvents for spec v0.4.1 and v0.5.1 from one call site.

Owns the shape of every CDEvent fluxrelay emits: the typed builders below (one per event the
relay sends) and ``build_event`` for anything else, including custom ``dev.cdeventsx.*``
types. The caller says which spec release to speak; the differences (``context.version`` vs
``specversion``, ``subject.type``, ``url`` vs ``uri``, event versions) are handled here. Every
built event is validated against the project's schemas before it is returned, so a builder
never hands out an event a consumer would reject.

Links: both releases' official schemas allow ``context.chainId`` and ``context.links``
(v0.4.1 included), so both are emitted whenever the caller passes them.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, Required, TypedDict, Unpack
from urllib.parse import quote

from schemas.cdevents.catalog import (
    RELEASES_BY_VERSION,
    SUBJECT_TYPE_NAMES,
    V0_4_1,
    SpecRelease,
)
from schemas.cdevents.validating import CUSTOM_TYPE_PREFIX, CDEventInvalid, validate

Outcome = Literal["success", "failure", "error", "cancel"]
"""``pipelinerun.finished`` outcomes (an enum in 0.5; 0.4 takes the same words as text)."""
Event = dict[str, Any]


class EventOptions(TypedDict, total=False):
    """Context options every builder accepts (all optional except ``source``)."""

    source: Required[str]
    """``context.source`` (URI-reference): who emits, e.g. ``/fluxrelay/reconciler``."""
    chain_id: str | None
    links: Sequence[Mapping[str, Any]] | None
    custom_data: Mapping[str, Any] | str | None
    custom_data_content_type: str | None
    id: str | None
    timestamp: datetime | str | None
    subject_source: str | None


# --------------------------------------------------------------------------- links


def path_link(from_context_id: str, *, tags: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A PATH link: this event follows the event whose ``context.id`` is ``from_context_id``."""
    link: dict[str, Any] = {"linkType": "PATH", "from": {"contextId": from_context_id}}
    if tags:
        link["tags"] = dict(tags)
    return link


def relation_link(
    kind: str, target_context_id: str, *, tags: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A RELATION link of ``kind`` (e.g. ``TRIGGER``) to another event."""
    link: dict[str, Any] = {
        "linkType": "RELATION",
        "linkKind": kind,
        "target": {"contextId": target_context_id},
    }
    if tags:
        link["tags"] = dict(tags)
    return link


def trigger_link(
    target_context_id: str, *, tags: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A RELATION/TRIGGER link: the event with ``target_context_id`` triggered this one."""
    return relation_link("TRIGGER", target_context_id, tags=tags)


def end_link(from_context_id: str, *, tags: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An END link: this event closes the chain that reached it from ``from_context_id``."""
    link: dict[str, Any] = {"linkType": "END", "from": {"contextId": from_context_id}}
    if tags:
        link["tags"] = dict(tags)
    return link


# --------------------------------------------------------------------------- helpers


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds and ``Z``; refuses naive datetimes."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("timestamp must be timezone-aware")
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.removesuffix("+00:00") + "Z"


def oci_purl(
    name: str, digest: str, *, repository_url: str | None = None, tag: str | None = None
) -> str:
    """``pkg:oci/<name>@<digest>?repository_url=…&tag=…``: an OCI artifact as a package URL.

    ``name`` is the last path segment of the image (lower-cased, as purl requires);
    ``repository_url`` is the registry and path without the name's last segment or with it,
    as the producer knows it. Qualifiers are sorted by key, values percent-encoded.
    """
    qualifiers = {"repository_url": repository_url, "tag": tag}
    query = "&".join(
        f"{key}={quote(value, safe='/:')}" for key, value in sorted(qualifiers.items()) if value
    )
    purl = f"pkg:oci/{quote(name.lower(), safe='')}@{quote(digest, safe='')}"
    return f"{purl}?{query}" if query else purl


def release_of(spec_version: str | SpecRelease) -> SpecRelease:
    """The catalogue release for ``"0.4.1"``/``"0.5.1"`` (or a release passed through)."""
    if isinstance(spec_version, SpecRelease):
        return spec_version
    try:
        return RELEASES_BY_VERSION[spec_version]
    except KeyError:
        supported = ", ".join(RELEASES_BY_VERSION)
        raise ValueError(
            f"unsupported CDEvents spec version {spec_version!r} (supported: {supported})"
        ) from None


def _resolve_type(release: SpecRelease, type_name: str) -> tuple[str, str | None]:
    """Full type string and the 0.4 ``subject.type`` for ``type_name``.

    ``type_name`` is ``subject.predicate`` (``change.merged``), a full catalogue type, or a
    full custom ``dev.cdeventsx.<tool>-<subject>.<predicate>.<M.m.p>`` type.
    """
    if type_name.startswith(CUSTOM_TYPE_PREFIX):
        tool_subject = type_name[len(CUSTOM_TYPE_PREFIX) :].split(".", maxsplit=1)[0]
        return type_name, tool_subject
    if type_name.startswith("dev.cdevents."):
        spec = release.by_type.get(type_name)
    else:
        spec = release.by_key.get(type_name)
    if spec is None:
        raise ValueError(f"unknown CDEvents type {type_name!r} for spec {release.version}")
    return spec.type, SUBJECT_TYPE_NAMES.get(spec.subject, spec.subject)


def _drop_none(content: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in content.items() if value is not None}


# --------------------------------------------------------------------------- generic


def build_event(
    spec_version: str | SpecRelease,
    type_name: str,
    subject_id: str,
    content: Mapping[str, Any],
    *,
    source: str,
    chain_id: str | None = None,
    links: Sequence[Mapping[str, Any]] | None = None,
    custom_data: Mapping[str, Any] | str | None = None,
    custom_data_content_type: str | None = None,
    id: str | None = None,
    timestamp: datetime | str | None = None,
    subject_source: str | None = None,
) -> Event:
    """Build and validate one CDEvent.

    ``content`` keys whose value is ``None`` are left out. ``custom_data`` as a mapping gets
    ``customDataContentType: application/json`` unless told otherwise; a string is taken as
    base64. ``id`` defaults to a UUID4, ``timestamp`` to now. Raises ``ValueError`` for an
    unknown type or spec version and ``CDEventInvalid`` if the result breaks the schema.
    """
    release = release_of(spec_version)
    event_type, subject_type = _resolve_type(release, type_name)
    if isinstance(timestamp, datetime):
        stamp = format_timestamp(timestamp)
    else:
        stamp = timestamp if timestamp is not None else format_timestamp(datetime.now(UTC))
    context: dict[str, Any] = {
        release.version_field: release.version,
        "id": id if id is not None else str(uuid.uuid4()),
        "source": source,
        "type": event_type,
        "timestamp": stamp,
    }
    if chain_id is not None:
        context["chainId"] = chain_id
    if links:
        context["links"] = [dict(link) for link in links]
    subject: dict[str, Any] = {"id": subject_id}
    if subject_source is not None:
        subject["source"] = subject_source
    if release.subject_type:
        subject["type"] = subject_type
    subject["content"] = _drop_none(content)
    event: Event = {"context": context, "subject": subject}
    if custom_data is not None:
        event["customData"] = custom_data if isinstance(custom_data, str) else dict(custom_data)
        content_type = custom_data_content_type
        if content_type is None and not isinstance(custom_data, str):
            content_type = "application/json"
        if content_type is not None:
            event["customDataContentType"] = content_type
    validate(event)
    return event


# --------------------------------------------------------------------------- typed builders


def _uri_field(release: SpecRelease) -> str:
    """0.4 says ``url`` (any string), 0.5 ``uri`` (an absolute URI)."""
    return "url" if release is V0_4_1 else "uri"


def change_merged(
    spec_version: str | SpecRelease,
    *,
    revision: str,
    repository_id: str,
    repository_source: str | None = None,
    **options: Unpack[EventOptions],
) -> Event:
    """A change (pushed revision) landed on a branch: subject id is the revision."""
    repository = _drop_none({"id": repository_id, "source": repository_source})
    return build_event(
        spec_version, "change.merged", revision, {"repository": repository}, **options
    )


def artifact_published(
    spec_version: str | SpecRelease,
    *,
    artifact_id: str,
    sbom_uri: str | None = None,
    user: str | None = None,
    **options: Unpack[EventOptions],
) -> Event:
    """An artifact (subject id: a purl, see ``oci_purl``) was pushed to a registry."""
    content = {"sbom": {"uri": sbom_uri} if sbom_uri else None, "user": user}
    return build_event(spec_version, "artifact.published", artifact_id, content, **options)


def pipelinerun_queued(
    spec_version: str | SpecRelease,
    *,
    run_id: str,
    pipeline_name: str,
    uri: str | None = None,
    **options: Unpack[EventOptions],
) -> Event:
    """A reconciliation was requested (``pipelineName`` = ``<Kind>/<namespace>/<name>``)."""
    release = release_of(spec_version)
    content = {"pipelineName": pipeline_name, _uri_field(release): uri}
    return build_event(release, "pipelinerun.queued", run_id, content, **options)


def pipelinerun_started(
    spec_version: str | SpecRelease,
    *,
    run_id: str,
    pipeline_name: str,
    uri: str,
    **options: Unpack[EventOptions],
) -> Event:
    """The reconciliation began (both releases require the name and a URL/URI)."""
    release = release_of(spec_version)
    content = {"pipelineName": pipeline_name, _uri_field(release): uri}
    return build_event(release, "pipelinerun.started", run_id, content, **options)


def pipelinerun_finished(
    spec_version: str | SpecRelease,
    *,
    run_id: str,
    pipeline_name: str,
    outcome: Outcome,
    errors: str | None = None,
    uri: str | None = None,
    **options: Unpack[EventOptions],
) -> Event:
    """The reconciliation ended: ``success``, ``failure`` (not Ready) or ``error`` (timed out
    or could not be requested); ``errors`` carries the reason."""
    release = release_of(spec_version)
    content = {
        "pipelineName": pipeline_name,
        _uri_field(release): uri,
        "outcome": outcome,
        "errors": errors,
    }
    return build_event(release, "pipelinerun.finished", run_id, content, **options)


def service_deployed(
    spec_version: str | SpecRelease,
    *,
    service_id: str,
    environment_id: str,
    artifact_id: str,
    environment_source: str | None = None,
    **options: Unpack[EventOptions],
) -> Event:
    """A service (Kustomization/HelmRelease) runs ``artifact_id`` in an environment."""
    environment = _drop_none({"id": environment_id, "source": environment_source})
    content = {"environment": environment, "artifactId": artifact_id}
    return build_event(spec_version, "service.deployed", service_id, content, **options)


def environment_modified(
    spec_version: str | SpecRelease,
    *,
    environment_id: str,
    name: str | None = None,
    uri: str | None = None,
    **options: Unpack[EventOptions],
) -> Event:
    """An environment (cluster or namespace) changed."""
    release = release_of(spec_version)
    content = {"name": name, _uri_field(release): uri}
    return build_event(release, "environment.modified", environment_id, content, **options)


__all__ = [
    "CDEventInvalid",
    "Event",
    "EventOptions",
    "Outcome",
    "artifact_published",
    "build_event",
    "change_merged",
    "end_link",
    "environment_modified",
    "format_timestamp",
    "oci_purl",
    "path_link",
    "pipelinerun_finished",
    "pipelinerun_queued",
    "pipelinerun_started",
    "relation_link",
    "release_of",
    "service_deployed",
    "trigger_link",
]
