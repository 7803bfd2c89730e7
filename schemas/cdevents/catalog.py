"""The CDEvents catalogue: every event type of spec v0.4.1 and v0.5.1 as a compact table.

This table is the single source the JSON Schema generator (``generate.py``) reads, and the
builders and validator use it to map ``subject.predicate`` to the event version of each spec
release. It records the facts of the official schemas (field names, JSON types, formats,
``required`` lists, enums, closed objects) including their irregularities, so the generated
schemas accept exactly what the official ones accept. A test compares the two.

Field shorthands: ``STR`` a string, ``STR1`` a non-empty string, ``URI`` a string with
``format: uri``, ``URIREF1`` a non-empty ``uri-reference``, ``REF`` a closed ``{id, source}``
reference to another subject (``id`` required), ``LOOSE_REF`` the same with an unchecked
``source`` (the testing events use it), ``Obj`` a nested object, ``Enum``/``OpenEnum`` closed
and open string vocabularies, ``STRLIST`` an array of strings.
"""

# ruff: noqa: E501 - the tables below read best one row per line

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType

# --------------------------------------------------------------------------- field kinds


@dataclass(frozen=True)
class Str:
    """A JSON string, optionally non-empty, with a ``format`` or a closed ``enum``."""

    min_length: int | None = None
    format: str | None = None
    enum: tuple[str, ...] | None = None
    example: str | None = None


@dataclass(frozen=True)
class OpenEnum:
    """A string that is usually one of ``values`` but may be any (non-empty) string."""

    values: tuple[str, ...]
    min_length: int | None = None


@dataclass(frozen=True)
class StrList:
    """A JSON array of strings."""


@dataclass(frozen=True)
class Ref:
    """A reference to another subject: ``{"id": ..., "source": ...}``, ``id`` required."""

    loose: bool = False
    """``source`` is then any string instead of a non-empty ``uri-reference``."""


@dataclass(frozen=True)
class Obj:
    """A nested object. ``additional``: ``False`` closes it, ``True`` opens it, ``None`` says
    nothing (JSON Schema's default: open)."""

    fields: Mapping[str, FieldKind] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    additional: bool | None = False


FieldKind = Str | OpenEnum | StrList | Ref | Obj

STR = Str()
STR1 = Str(min_length=1)
URI = Str(format="uri")
URI1 = Str(min_length=1, format="uri")
URIREF1 = Str(min_length=1, format="uri-reference")
DATETIME = Str(format="date-time")
STRLIST = StrList()
REF = Ref()
LOOSE_REF = Ref(loose=True)


def Enum(*values: str) -> Str:
    """A closed string vocabulary."""
    return Str(enum=values)


# --------------------------------------------------------------------------- event rows


@dataclass(frozen=True)
class EventSpec:
    """One event type of one spec release."""

    subject: str
    """Subject as it appears in the type string (lower case), e.g. ``pipelinerun``."""
    predicate: str
    version: str
    """The event's own version (not the spec's), e.g. ``0.3.0``."""
    content: Mapping[str, FieldKind]
    required: tuple[str, ...] = ()
    explicit_empty_required: bool = False
    """The official schema spells ``"required": []`` (no effect on validation)."""

    @property
    def key(self) -> str:
        """``<subject>.<predicate>``, the version-independent name."""
        return f"{self.subject}.{self.predicate}"

    @property
    def type(self) -> str:
        """The full CDEvent type string."""
        return f"dev.cdevents.{self.subject}.{self.predicate}.{self.version}"

    @property
    def filename(self) -> str:
        """File name of the generated schema inside the version directory."""
        return f"{self.subject}_{self.predicate}.json"


@dataclass(frozen=True)
class SpecRelease:
    """Envelope rules of one spec release plus its event rows."""

    version: str
    """The spec version, e.g. ``0.5.1``."""
    version_field: str
    """``version`` (0.4) or ``specversion`` (0.5): the context field carrying the spec version."""
    subject_type: bool
    """0.4 carries ``subject.type`` (required, fixed per subject); 0.5 dropped it."""
    events: tuple[EventSpec, ...]

    @property
    def dirname(self) -> str:
        """Directory of the generated schemas, e.g. ``v0_5_1``."""
        return "v" + self.version.replace(".", "_")

    @property
    def base_uri(self) -> str:
        """Base of every schema ``$id`` of the release (the official identifiers)."""
        return f"https://cdevents.dev/{self.version}/schema/"

    @cached_property
    def by_type(self) -> Mapping[str, EventSpec]:
        """Event rows keyed by full type string."""
        return {e.type: e for e in self.events}

    @cached_property
    def by_key(self) -> Mapping[str, EventSpec]:
        """Event rows keyed by ``subject.predicate``."""
        return {e.key: e for e in self.events}


# Subject-type names (0.4 ``subject.type``): lower-case subjects in type strings are camelCase
# here. Subjects not listed are spelled the same.
SUBJECT_TYPE_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "pipelinerun": "pipelineRun",
        "taskrun": "taskRun",
        "testcaserun": "testCaseRun",
        "testsuiterun": "testSuiteRun",
        "testoutput": "testOutput",
    }
)

# Testing events (their own spec chapter) leave ``context.source`` without ``format`` and
# ``subject.source`` as any string.
LOOSE_SOURCE_SUBJECTS = frozenset({"testcaserun", "testsuiterun", "testoutput"})

# v0.5.1 ``ticket.closed`` (only that one) still lists ``subject.type`` as an optional property.
OPTIONAL_SUBJECT_TYPE_0_5 = frozenset({"ticket.closed"})


def schema_id_stem(release: str, subject: str, predicate: str) -> str:
    """Last segment of the official ``$id``: the naming changed between releases."""
    if subject == "testoutput":
        name = "test-output"
    elif release.startswith("0.4."):
        camel = SUBJECT_TYPE_NAMES.get(subject, subject)
        name = "".join("-" + c.lower() if c.isupper() else c for c in camel)
    else:
        name = subject
    return f"{name}-{predicate}-event"


# --------------------------------------------------------------------------- shared shapes

_SBOM = Obj({"uri": URIREF1}, required=("uri",))
_TEST_CASE = Obj(
    {
        "id": STR1,
        "version": STR,
        "name": STR,
        "type": Enum(
            "performance",
            "functional",
            "unit",
            "security",
            "compliance",
            "integration",
            "e2e",
            "other",
        ),
        "uri": URI,
    },
    required=("id",),
)
_TEST_SUITE = Obj({"id": STR1, "version": STR, "name": STR, "uri": URI}, required=("id",))
_TEST_SUITE_URL = Obj({"id": STR1, "version": STR, "name": STR, "url": URI}, required=("id",))
_TRIGGER = Obj(
    {"type": Enum("manual", "pipeline", "event", "schedule", "other"), "uri": URI},
    additional=None,
)
_SEVERITY = Enum("low", "medium", "high", "critical")
_TEST_OUTCOME_0_4 = Enum("pass", "fail", "cancel", "error")
OUTCOMES_0_5 = ("success", "failure", "cancel", "error")
_OUTCOME_0_5 = Enum(*OUTCOMES_0_5)
_TICKET_TYPE = OpenEnum(("bug", "enhancement", "incident", "task", "question"))
_PRIORITY = OpenEnum(("low", "medium", "high"))
_RESOLUTION = OpenEnum(("completed", "withdrawn", "duplicate"), min_length=1)
_TICKET_HEAD: dict[str, FieldKind] = {
    "summary": STR,
    "ticketType": _TICKET_TYPE,
    "group": STR,
    "creator": STR1,
    "assignees": STRLIST,
    "priority": _PRIORITY,
    "labels": STRLIST,
    "milestone": STR,
}
_INCIDENT: dict[str, FieldKind] = {
    "description": STR,
    "environment": REF,
    "service": REF,
    "artifactId": STR1,
}
_INCIDENT_REPORTED: dict[str, FieldKind] = {
    "description": STR,
    "environment": REF,
    "ticketURI": URI1,
    "service": REF,
    "artifactId": STR1,
}
_DEPLOYED: dict[str, FieldKind] = {"environment": REF, "artifactId": STR1}
_RUN_ENV = ("environment",)


Row = tuple[str, Mapping[str, FieldKind], tuple[str, ...]]
"""``(subject.predicate, content fields, required content fields)``."""


def E(key: str, content: Mapping[str, FieldKind], required: Sequence[str] = ()) -> Row:
    """One table row: ``subject.predicate``, its content fields, the required ones."""
    return key, content, tuple(required)


def _events(version_of: Mapping[str, str], rows: list[Row]) -> tuple[EventSpec, ...]:
    specs = []
    for row in rows:
        key, content, required = row
        subject, predicate = key.split(".")
        specs.append(
            EventSpec(
                subject=subject,
                predicate=predicate,
                version=version_of[key],
                content=MappingProxyType(dict(content)),
                required=required,
                explicit_empty_required=key == "testcaserun.skipped",
            )
        )
    return tuple(specs)


# --------------------------------------------------------------------------- v0.4.1

_VERSIONS_0_4_1 = {
    "artifact.deleted": "0.1.0",
    "artifact.downloaded": "0.1.0",
    "artifact.packaged": "0.2.0",
    "artifact.published": "0.2.0",
    "artifact.signed": "0.2.0",
    "branch.created": "0.2.0",
    "branch.deleted": "0.2.0",
    "build.finished": "0.2.0",
    "build.queued": "0.2.0",
    "build.started": "0.2.0",
    "change.abandoned": "0.2.0",
    "change.created": "0.3.0",
    "change.merged": "0.2.0",
    "change.reviewed": "0.2.0",
    "change.updated": "0.2.0",
    "environment.created": "0.2.0",
    "environment.deleted": "0.2.0",
    "environment.modified": "0.2.0",
    "incident.detected": "0.2.0",
    "incident.reported": "0.2.0",
    "incident.resolved": "0.2.0",
    "pipelinerun.finished": "0.2.0",
    "pipelinerun.queued": "0.2.0",
    "pipelinerun.started": "0.2.0",
    "repository.created": "0.2.0",
    "repository.deleted": "0.2.0",
    "repository.modified": "0.2.0",
    "service.deployed": "0.2.0",
    "service.published": "0.2.0",
    "service.removed": "0.2.0",
    "service.rolledback": "0.2.0",
    "service.upgraded": "0.2.0",
    "taskrun.finished": "0.2.0",
    "taskrun.started": "0.2.0",
    "testcaserun.finished": "0.2.0",
    "testcaserun.queued": "0.2.0",
    "testcaserun.skipped": "0.1.0",
    "testcaserun.started": "0.2.0",
    "testoutput.published": "0.2.0",
    "testsuiterun.finished": "0.2.0",
    "testsuiterun.queued": "0.2.0",
    "testsuiterun.started": "0.2.0",
    "ticket.closed": "0.1.0",
    "ticket.created": "0.1.0",
    "ticket.updated": "0.1.0",
}

#   subject.predicate          content                                           required
_ROWS_0_4_1: list[Row] = [
    E("artifact.deleted",      {"user": STR1}),
    E("artifact.downloaded",   {"user": STR1}),
    E("artifact.packaged",     {"change": REF, "sbom": _SBOM},                    ["change"]),
    E("artifact.published",    {"sbom": _SBOM, "user": STR1}),
    E("artifact.signed",       {"signature": STR1},                              ["signature"]),
    E("branch.created",        {"repository": REF}),
    E("branch.deleted",        {"repository": REF}),
    E("build.finished",        {"artifactId": STR}),
    E("build.queued",          {}),
    E("build.started",         {}),
    E("change.abandoned",      {"repository": REF}),
    E("change.created",        {"description": STR1, "repository": REF}),
    E("change.merged",         {"repository": REF}),
    E("change.reviewed",       {"repository": REF}),
    E("change.updated",        {"repository": REF}),
    E("environment.created",   {"name": STR, "url": STR}),
    E("environment.deleted",   {"name": STR}),
    E("environment.modified",  {"name": STR, "url": STR}),
    E("incident.detected",     _INCIDENT,                                        _RUN_ENV),
    E("incident.reported",     _INCIDENT_REPORTED,                     ["environment", "ticketURI"]),
    E("incident.resolved",     _INCIDENT,                                        _RUN_ENV),
    E("pipelinerun.finished",  {"pipelineName": STR, "url": STR, "outcome": STR, "errors": STR}),
    E("pipelinerun.queued",    {"pipelineName": STR, "url": STR}),
    E("pipelinerun.started",   {"pipelineName": STR, "url": STR},             ["pipelineName", "url"]),
    E("repository.created",    {"name": STR1, "owner": STR, "url": STR1, "viewUrl": STR}, ["name", "url"]),
    E("repository.deleted",    {"name": STR, "owner": STR, "url": STR, "viewUrl": STR}),
    E("repository.modified",   {"name": STR, "owner": STR, "url": STR, "viewUrl": STR}),
    E("service.deployed",      _DEPLOYED,                                ["environment", "artifactId"]),
    E("service.published",     {"environment": REF}),
    E("service.removed",       {"environment": REF}),
    E("service.rolledback",    _DEPLOYED,                                ["environment", "artifactId"]),
    E("service.upgraded",      _DEPLOYED,                                ["environment", "artifactId"]),
    E("taskrun.finished",      {"taskName": STR, "url": STR, "pipelineRun": REF, "outcome": STR, "errors": STR}),
    E("taskrun.started",       {"taskName": STR, "url": STR, "pipelineRun": REF}),
    E("testcaserun.finished",  {"outcome": _TEST_OUTCOME_0_4, "severity": _SEVERITY, "reason": STR, "environment": REF, "testSuiteRun": LOOSE_REF, "testCase": _TEST_CASE}, ["outcome", "environment"]),
    E("testcaserun.queued",    {"trigger": _TRIGGER, "environment": REF, "testSuiteRun": LOOSE_REF, "testCase": _TEST_CASE}, _RUN_ENV),
    E("testcaserun.skipped",   {"reason": STR, "environment": REF, "testSuiteRun": LOOSE_REF, "testCase": _TEST_CASE}),
    E("testcaserun.started",   {"trigger": _TRIGGER, "environment": REF, "testSuiteRun": LOOSE_REF, "testCase": _TEST_CASE}, _RUN_ENV),
    E("testoutput.published",  {"outputType": Enum("report", "video", "image", "log", "other"), "format": Str(example="application/pdf"), "uri": URI, "testCaseRun": LOOSE_REF}, ["outputType", "format"]),
    E("testsuiterun.finished", {"environment": REF, "testSuite": _TEST_SUITE, "outcome": _TEST_OUTCOME_0_4, "severity": _SEVERITY, "reason": STR}, ["outcome", "environment"]),
    E("testsuiterun.queued",   {"trigger": _TRIGGER, "environment": REF, "testSuite": _TEST_SUITE_URL}, _RUN_ENV),
    E("testsuiterun.started",  {"trigger": _TRIGGER, "environment": REF, "testSuite": _TEST_SUITE}, _RUN_ENV),
    E("ticket.closed",         {**_TICKET_HEAD, "uri": URIREF1, "resolution": _RESOLUTION, "updatedBy": STR}, ["uri", "resolution"]),
    E("ticket.created",        {**_TICKET_HEAD, "uri": URIREF1},             ["summary", "creator", "uri"]),
    E("ticket.updated",        {**_TICKET_HEAD, "updatedBy": STR, "uri": URIREF1},          ["uri"]),
]  # fmt: skip

# --------------------------------------------------------------------------- v0.5.1
# Every event version moved one minor step; ``url`` became ``uri`` (format uri); run outcomes
# became an enum.

_VERSIONS_0_5_1 = {
    key: f"0.{int(version.split('.')[1]) + 1}.0" for key, version in _VERSIONS_0_4_1.items()
}

_ROWS_0_5_1: list[Row] = [
    E("artifact.deleted",      {"user": STR1}),
    E("artifact.downloaded",   {"user": STR1}),
    E("artifact.packaged",     {"change": REF, "sbom": _SBOM},                    ["change"]),
    E("artifact.published",    {"sbom": _SBOM, "user": STR1}),
    E("artifact.signed",       {"signature": STR1},                              ["signature"]),
    E("branch.created",        {"repository": REF}),
    E("branch.deleted",        {"repository": REF}),
    E("build.finished",        {"artifactId": STR}),
    E("build.queued",          {}),
    E("build.started",         {}),
    E("change.abandoned",      {"repository": REF}),
    E("change.created",        {"description": STR1, "repository": REF}),
    E("change.merged",         {"repository": REF}),
    E("change.reviewed",       {"repository": REF}),
    E("change.updated",        {"repository": REF}),
    E("environment.created",   {"name": STR, "uri": URI}),
    E("environment.deleted",   {"name": STR}),
    E("environment.modified",  {"name": STR, "uri": URI}),
    E("incident.detected",     _INCIDENT,                                        _RUN_ENV),
    E("incident.reported",     _INCIDENT_REPORTED,                     ["environment", "ticketURI"]),
    E("incident.resolved",     _INCIDENT,                                        _RUN_ENV),
    E("pipelinerun.finished",  {"pipelineName": STR, "uri": URI, "outcome": _OUTCOME_0_5, "errors": STR}),
    E("pipelinerun.queued",    {"pipelineName": STR, "uri": URI}),
    E("pipelinerun.started",   {"pipelineName": STR, "uri": URI},             ["pipelineName", "uri"]),
    E("repository.created",    {"name": STR1, "owner": STR, "uri": URI, "viewUrl": URI}, ["name", "uri"]),
    E("repository.deleted",    {"name": STR, "owner": STR, "uri": URI, "viewUrl": URI}),
    E("repository.modified",   {"name": STR, "owner": STR, "uri": URI, "viewUrl": URI}),
    E("service.deployed",      _DEPLOYED,                                ["environment", "artifactId"]),
    E("service.published",     {"environment": REF}),
    E("service.removed",       {"environment": REF}),
    E("service.rolledback",    _DEPLOYED,                                ["environment", "artifactId"]),
    E("service.upgraded",      _DEPLOYED,                                ["environment", "artifactId"]),
    E("taskrun.finished",      {"taskName": STR, "uri": URI, "pipelineRun": REF, "outcome": STR, "errors": STR}),
    E("taskrun.started",       {"taskName": STR, "uri": URI, "pipelineRun": REF}),
    E("testcaserun.finished",  {"outcome": _OUTCOME_0_5, "severity": _SEVERITY, "reason": STR, "environment": REF, "testSuiteRun": LOOSE_REF, "testCase": _TEST_CASE}, ["outcome", "environment"]),
    E("testcaserun.queued",    {"trigger": _TRIGGER, "environment": REF, "testSuiteRun": LOOSE_REF, "testCase": _TEST_CASE}, _RUN_ENV),
    E("testcaserun.skipped",   {"reason": STR, "environment": REF, "testSuiteRun": LOOSE_REF, "testCase": _TEST_CASE}),
    E("testcaserun.started",   {"trigger": _TRIGGER, "environment": REF, "testSuiteRun": LOOSE_REF, "testCase": _TEST_CASE}, _RUN_ENV),
    E("testoutput.published",  {"outputType": Enum("report", "video", "image", "log", "other"), "format": Str(example="application/pdf"), "uri": URI, "testCaseRun": LOOSE_REF}, ["outputType", "format"]),
    E("testsuiterun.finished", {"environment": REF, "testSuite": _TEST_SUITE, "outcome": _OUTCOME_0_5, "severity": _SEVERITY, "reason": STR}, ["outcome", "environment"]),
    E("testsuiterun.queued",   {"trigger": _TRIGGER, "environment": REF, "testSuite": _TEST_SUITE}, _RUN_ENV),
    E("testsuiterun.started",  {"trigger": _TRIGGER, "environment": REF, "testSuite": _TEST_SUITE}, _RUN_ENV),
    E("ticket.closed",         {**_TICKET_HEAD, "uri": URIREF1, "resolution": _RESOLUTION, "updatedBy": STR}, ["uri", "resolution"]),
    E("ticket.created",        {**_TICKET_HEAD, "uri": URIREF1},             ["summary", "creator", "uri"]),
    E("ticket.updated",        {**_TICKET_HEAD, "updatedBy": STR, "uri": URIREF1},          ["uri"]),
]  # fmt: skip

V0_4_1 = SpecRelease(
    version="0.4.1",
    version_field="version",
    subject_type=True,
    events=_events(_VERSIONS_0_4_1, _ROWS_0_4_1),
)
V0_5_1 = SpecRelease(
    version="0.5.1",
    version_field="specversion",
    subject_type=False,
    events=_events(_VERSIONS_0_5_1, _ROWS_0_5_1),
)
RELEASES: tuple[SpecRelease, ...] = (V0_4_1, V0_5_1)
"""Supported spec releases, oldest first."""
RELEASES_BY_VERSION: Mapping[str, SpecRelease] = MappingProxyType({r.version: r for r in RELEASES})

# --------------------------------------------------------------------------- links
# Link schemas (identical in both releases). The ``embedded*`` ones are what ``context.links``
# holds; the others describe stand-alone link records for a links service.

_CONTEXT_ID = Obj({"contextId": STR1}, required=("contextId",), additional=None)
_OPEN_CONTEXT_ID = Obj({"contextId": STR1}, additional=None)
_TAGS = Obj(additional=True)

LINK_SCHEMAS: Mapping[str, Obj] = MappingProxyType(
    {
        "embeddedlinkend": Obj(
            {"linkType": Enum("END"), "from": _CONTEXT_ID, "tags": _TAGS},
            required=("linkType",),
        ),
        "embeddedlinkpath": Obj(
            {"linkType": Enum("PATH"), "from": _CONTEXT_ID, "tags": _TAGS},
            required=("linkType", "from"),
        ),
        "embeddedlinkrelation": Obj(
            {"linkType": Enum("RELATION"), "linkKind": STR1, "target": _OPEN_CONTEXT_ID,
             "tags": _TAGS},
            required=("linkType", "linkKind", "target"),
        ),
        "linkend": Obj(
            {"chainId": STR1, "linkType": Enum("END"), "timestamp": DATETIME,
             "from": _CONTEXT_ID, "end": _CONTEXT_ID, "tags": _TAGS},
            required=("chainId", "linkType", "timestamp", "from", "end"),
        ),
        "linkpath": Obj(
            {"chainId": STR1, "timestamp": DATETIME, "linkType": Enum("PATH"),
             "from": _CONTEXT_ID, "to": _CONTEXT_ID, "tags": _TAGS},
            required=("chainId", "linkType", "timestamp", "from", "to"),
        ),
        "linkrelation": Obj(
            {"chainId": STR1, "linkType": Enum("RELATION"), "linkKind": STR1,
             "timestamp": DATETIME, "source": _CONTEXT_ID, "target": _CONTEXT_ID,
             "tags": _TAGS},
            required=("chainId", "linkType", "timestamp", "source", "target"),
        ),
        "linkstart": Obj(
            {"chainId": STR1, "linkType": Enum("START"), "timestamp": DATETIME,
             "start": _CONTEXT_ID, "tags": _TAGS},
            required=("chainId", "linkType", "timestamp", "start"),
        ),
    }
)  # fmt: skip
EMBEDDED_LINKS_ARRAY = "embeddedlinksarray"
EMBEDDED_LINK_KINDS = ("embeddedlinkend", "embeddedlinkpath", "embeddedlinkrelation")
"""Members of the ``anyOf`` that ``context.links`` items must match."""

# --------------------------------------------------------------------------- custom events

CUSTOM_TYPE_PATTERN = r"^dev\.cdeventsx\.[a-zA-Z0-9]+-[a-zA-Z]+\.[a-zA-Z]+\.[0-9]\.[0-9]\.[0-9]$"
"""``dev.cdeventsx.<tool>-<subject>.<predicate>.<M.m.p>`` (single-digit version parts)."""
CUSTOM_SUBJECT_TYPE_PATTERN = r"^[a-zA-Z0-9]+-[a-zA-Z]+$"
"""0.4 only: ``subject.type`` of a custom event, ``<tool>-<subject>``."""
CUSTOM_SCHEMA_NAME = "custom"
