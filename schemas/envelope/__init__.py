"""The event envelope: the one record the receiver stores and the reconciler consumes.

The JSON Schema next to this module (``v1.schema.json``) is the source of truth; the
``Envelope`` TypedDict mirrors it for type checking, and :func:`validate` is compiled once
(fastjsonschema) because the reconciler checks every message it consumes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any, NotRequired, TypedDict

import fastjsonschema

ENVELOPE_SPECVERSION = "1"
CLOUDEVENT_TYPE = "io.fluxrelay.delivery.v1"
"""CloudEvents ``type`` of a stored envelope (the bus carries envelopes as CloudEvents)."""


class ReceiverRef(TypedDict):
    namespace: str
    name: str


class RepositoryRef(TypedDict, total=False):
    urls: list[str]
    http: str | None
    ssh: str | None
    web: str | None
    full_name: str | None


class ArtifactRef(TypedDict, total=False):
    registry: str | None
    repository: str
    tag: str | None
    digest: str | None
    media_type: str | None
    url: str | None


class Envelope(TypedDict):
    specversion: str
    id: str
    receiver: ReceiverRef
    provider: str
    event: str
    delivery_id: str
    received_at: str
    payload: Any
    traceparent: NotRequired[str]
    repository: NotRequired[RepositoryRef | None]
    ref: NotRequired[str | None]
    revision: NotRequired[str | None]
    previous_revision: NotRequired[str | None]
    created: NotRequired[bool]
    deleted: NotRequired[bool]
    forced: NotRequired[bool]
    changed_paths: NotRequired[list[str]]
    paths_complete: NotRequired[bool]
    artifact: NotRequired[ArtifactRef | None]
    cdevent: NotRequired[dict[str, Any] | None]
    claims: NotRequired[dict[str, Any] | None]


class EnvelopeInvalid(ValueError):
    """A message on the bus is not a valid envelope (a bug or a foreign publisher)."""


def schema() -> dict[str, Any]:
    """The envelope JSON Schema as a dict."""
    text = resources.files(__package__).joinpath("v1.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def _compiled() -> Callable[[Any], Any]:
    return fastjsonschema.compile(schema(), formats={"date-time": _is_datetime})


def _is_datetime(value: str) -> bool:
    from rfc3339_validator import validate_rfc3339

    return bool(validate_rfc3339(value))


def validate(doc: Any) -> Envelope:
    """Check ``doc`` against the envelope schema and return it typed."""
    try:
        _compiled()(doc)
    except fastjsonschema.JsonSchemaException as e:
        raise EnvelopeInvalid(str(e)) from e
    result: Envelope = doc
    return result
