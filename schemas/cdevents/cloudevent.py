"""Mapping CDEvents to CloudEvents 1.0 and back (CDEvents CloudEvents binding).

Owns the attribute mapping (``id`` = ``context.id``, ``source`` = ``context.source``, ``type`` =
``context.type``, ``subject`` = ``subject.id``, ``time`` = ``context.timestamp``,
``datacontenttype`` ``application/json``, data = the whole CDEvent, plus extensions such as
``traceparent``) and HTTP encoding/decoding. Encoding goes through the ``cloudevents`` 2.2 SDK;
decoding checks the raw headers/body first because the SDK silently invents a missing ``id`` and
``time`` (which would defeat de-duplication) and treats any ``ce-`` header as binary mode (here
only ``ce-specversion`` marks it). A body that is a bare CDEvent (no CloudEvents envelope, as
cdviz sends) is accepted too. Decoding does not validate the CDEvent itself: call
``validating.validate`` on the result.

A caller that has already decoded the body (the receiver, which decodes every body once with
its own limits on nesting and text) hands it over as ``document``, and may pass ``loads``, its
decoder for JSON nested in a structured CloudEvent's ``data`` or ``data_base64``: that JSON is
then held to the same limits as the body. Decoding the body a second time doubled the time and
the heap of every delivery (1.3 s and 230 MiB for a 3 MiB body of nested arrays), and ``data``
given as a string escaped the nesting limit: 900 levels were stored, 5,000 raised
``RecursionError``, an unhandled 500.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from urllib.parse import unquote

from cloudevents.core.bindings import http as ce_http
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.v1.event import CloudEvent

from schemas.excerpts import excerpt

CE_SPECVERSION = "1.0"
JSON_CONTENT_TYPE = "application/json"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
CE_HEADER_PREFIX = "ce-"
BINARY_MARKER = "ce-specversion"
"""The header that makes a request binary mode: the HTTP binding identifies binary mode by
it. Other ``ce-`` headers without it (Flux's examples send ``Ce-Type`` alone, next to a bare
CDEvent) leave the body to be read as a bare CDEvent."""
REQUIRED_ATTRIBUTES = ("specversion", "id", "source", "type")
_CORE_ATTRIBUTES = frozenset(
    {*REQUIRED_ATTRIBUTES, "subject", "time", "datacontenttype", "dataschema", "data"}
)
_EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")
_JSON_MEDIA = re.compile(r"^(application|text)/([a-zA-Z0-9.\-]+\+)?json\s*(;.*)?$", re.I)

Mode = Literal["binary", "structured", "bare"]
Loads = Callable[[bytes | str], Any]
"""A JSON decoder: ``json.loads`` by default, or the caller's own, stricter one. It raises
``ValueError`` (``CloudEventDecodeError`` to choose the reason) for what it refuses."""


class CloudEventDecodeError(ValueError):
    """The message is not a CloudEvent carrying a JSON CDEvent (nor a bare CDEvent)."""


@dataclass(frozen=True)
class DecodedCDEvent:
    """What arrived: the CDEvent, the CloudEvent attributes exactly as sent, and the mode."""

    cdevent: dict[str, Any]
    attributes: dict[str, str]
    """CloudEvent attributes and extensions as strings (empty in ``bare`` mode)."""
    mode: Mode
    mismatches: tuple[str, ...] = field(default=())
    """Attributes that disagree with the CDEvent they carry (see ``attribute_mismatches``)."""


# --------------------------------------------------------------------------- attributes


def _check_extensions(extensions: Mapping[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in (extensions or {}).items():
        if not _EXTENSION_NAME.match(name) or name in _CORE_ATTRIBUTES:
            raise ValueError(f"invalid CloudEvents extension name {name!r}")
        out[name] = str(value)
    return out


def cloudevent_attributes(
    cdevent: Mapping[str, Any], *, extensions: Mapping[str, str] | None = None
) -> dict[str, str]:
    """CloudEvent attributes (all strings) for a CDEvent, e.g. for NATS ``ce-*`` headers."""
    context = cdevent["context"]
    attributes = {
        "specversion": CE_SPECVERSION,
        "id": str(context["id"]),
        "source": str(context["source"]),
        "type": str(context["type"]),
        "subject": str(cdevent["subject"]["id"]),
        "time": str(context["timestamp"]),
        "datacontenttype": JSON_CONTENT_TYPE,
    }
    attributes.update(_check_extensions(extensions))
    return attributes


def parse_time(text: str) -> datetime:
    """An RFC 3339 timestamp as a timezone-aware datetime (the SDK refuses naive ones)."""
    moment = datetime.fromisoformat(text.replace("z", "Z"))
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset")
    return moment


def to_cloudevent(
    cdevent: Mapping[str, Any], *, extensions: Mapping[str, str] | None = None
) -> CloudEvent:
    """The CDEvent as a ``cloudevents`` SDK event (data = a copy of the whole CDEvent)."""
    attributes: dict[str, Any] = dict(cloudevent_attributes(cdevent, extensions=extensions))
    attributes["time"] = parse_time(attributes["time"])
    # The constructor mutates the dict it gets: hand it one nobody else holds.
    return CloudEvent(attributes=attributes, data=json.loads(json.dumps(cdevent)))


def to_http_binary(
    cdevent: Mapping[str, Any], *, extensions: Mapping[str, str] | None = None
) -> ce_http.HTTPMessage:
    """HTTP binary mode: ``ce-*`` headers, ``Content-Type: application/json``, body = CDEvent."""
    return ce_http.to_binary_event(to_cloudevent(cdevent, extensions=extensions))


def to_http_structured(
    cdevent: Mapping[str, Any], *, extensions: Mapping[str, str] | None = None
) -> ce_http.HTTPMessage:
    """HTTP structured mode: ``application/cloudevents+json`` with the CDEvent as ``data``."""
    return ce_http.to_structured_event(to_cloudevent(cdevent, extensions=extensions))


def attribute_mismatches(attributes: Mapping[str, str], cdevent: Mapping[str, Any]) -> list[str]:
    """Names of attributes present in ``attributes`` that contradict the CDEvent.

    ``time`` is compared as an instant, so ``Z`` and ``+00:00`` spellings agree.
    """
    context = cdevent.get("context") or {}
    subject = cdevent.get("subject") or {}
    expected = {
        "id": context.get("id"),
        "source": context.get("source"),
        "type": context.get("type"),
        "subject": subject.get("id"),
    }
    wrong = [
        name for name, want in expected.items() if name in attributes and attributes[name] != want
    ]
    if "time" in attributes:
        try:
            same = parse_time(attributes["time"]) == parse_time(str(context.get("timestamp")))
        except ValueError:
            same = False
        if not same:
            wrong.append("time")
    return wrong


def from_cloudevent(event: CloudEvent) -> dict[str, Any]:
    """The CDEvent a ``cloudevents`` SDK event carries (its data, a JSON object)."""
    data = event.get_data()
    if isinstance(data, bytes | str):
        try:
            data = json.loads(data)
        except ValueError as error:
            raise CloudEventDecodeError("CloudEvent data is not JSON") from error
    if not isinstance(data, dict):
        raise CloudEventDecodeError("CloudEvent data is not a JSON object")
    return data


# --------------------------------------------------------------------------- HTTP decoding


def _json_object(raw: bytes | str, what: str, loads: Loads = json.loads) -> dict[str, Any]:
    try:
        value = loads(raw)
    except CloudEventDecodeError:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        # RecursionError: the standard library's answer to deep nesting, not a ValueError.
        raise CloudEventDecodeError(f"{what} is not JSON") from error
    if not isinstance(value, dict):
        raise CloudEventDecodeError(f"{what} is not a JSON object")
    return value


def _decoded_object(document: Any, what: str) -> dict[str, Any]:
    """The caller's already decoded body, held to what :func:`_json_object` checks."""
    if not isinstance(document, dict):
        raise CloudEventDecodeError(f"{what} is not a JSON object")
    return document


def _require(attributes: Mapping[str, str], mode: str) -> None:
    missing = [name for name in REQUIRED_ATTRIBUTES if not attributes.get(name)]
    if missing:
        raise CloudEventDecodeError(f"{mode} CloudEvent lacks {', '.join(missing)}")
    if attributes["specversion"] != CE_SPECVERSION:
        raise CloudEventDecodeError(
            f"unsupported CloudEvents specversion {excerpt(attributes['specversion'])}"
        )


def _decode_binary(
    headers: Mapping[str, str], body: bytes, document: Any, loads: Loads
) -> DecodedCDEvent:
    attributes = {
        name[len(CE_HEADER_PREFIX) :]: unquote(value)
        for name, value in headers.items()
        if name.startswith(CE_HEADER_PREFIX)
    }
    _require(attributes, "binary-mode")
    content_type = headers.get("content-type", JSON_CONTENT_TYPE)
    if not _JSON_MEDIA.match(content_type):
        raise CloudEventDecodeError(f"binary-mode data is {content_type!r}, not JSON")
    attributes["datacontenttype"] = content_type
    try:  # let the SDK judge the attribute values (time syntax, extension names)
        ce_http.from_binary_event(ce_http.HTTPMessage(headers=dict(headers), body=b""))
    except (BaseCloudEventException, ValueError) as error:
        raise CloudEventDecodeError(f"invalid CloudEvent attributes: {error}") from error
    if document is None:
        cdevent = _json_object(body, "binary-mode body", loads)
    else:
        cdevent = _decoded_object(document, "binary-mode body")
    return DecodedCDEvent(
        cdevent, attributes, "binary", tuple(attribute_mismatches(attributes, cdevent))
    )


def _decode_structured(
    content_type: str, body: bytes, document: Any, loads: Loads
) -> DecodedCDEvent:
    if not content_type.lower().startswith(STRUCTURED_CONTENT_TYPE):
        raise CloudEventDecodeError(f"unsupported structured format {content_type!r}")
    if document is None:
        envelope = _json_object(body, "structured-mode body", loads)
    else:  # a shallow copy: the members taken out below stay in the caller's document
        envelope = dict(_decoded_object(document, "structured-mode body"))
    data = envelope.pop("data", None)
    data_base64 = envelope.pop("data_base64", None)
    attributes = {name: str(value) for name, value in envelope.items() if value is not None}
    _require(attributes, "structured-mode")
    if isinstance(data, dict):
        cdevent = data
    elif isinstance(data, str):
        cdevent = _json_object(data, "structured-mode data", loads)
    elif isinstance(data_base64, str):
        try:
            raw = base64.b64decode(data_base64, validate=True)
        except (binascii.Error, ValueError) as error:
            raise CloudEventDecodeError("data_base64 is not base64") from error
        cdevent = _json_object(raw, "structured-mode data_base64", loads)
    else:
        raise CloudEventDecodeError("structured-mode CloudEvent carries no CDEvent data")
    return DecodedCDEvent(
        cdevent, attributes, "structured", tuple(attribute_mismatches(attributes, cdevent))
    )


def decode_http(
    headers: Mapping[str, str],
    body: bytes,
    *,
    document: Any = None,
    loads: Loads = json.loads,
) -> DecodedCDEvent:
    """Decode an HTTP request carrying a CDEvent: binary mode, structured mode or a bare CDEvent.

    Binary mode is a request with ``ce-specversion``; from there every required attribute
    must be sent. Header names are matched case-insensitively. Raises
    ``CloudEventDecodeError`` when the body is not JSON or a CloudEvent lacks a required
    attribute (never invented here).
    ``document`` is the body already decoded (then ``body`` is not decoded again; the
    CDEvent returned may be that very object, or a member of it), ``loads`` the decoder of
    the body (when no ``document`` is given) and of JSON nested in ``data``/``data_base64``.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    content_type = lowered.get("content-type", "").strip()
    if content_type.lower().startswith("application/cloudevents"):
        return _decode_structured(content_type, body, document, loads)
    if BINARY_MARKER in lowered:
        return _decode_binary(lowered, body, document, loads)
    if document is None:
        return DecodedCDEvent(_json_object(body, "body", loads), {}, "bare")
    return DecodedCDEvent(_decoded_object(document, "body"), {}, "bare")
