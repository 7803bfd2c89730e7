"""CloudEvents over NATS, binary content mode (NATS protocol binding 1.0.3).

The cloudevents SDK (2.x) has HTTP and Kafka bindings but none for NATS, so the bus codec
lives here. Every context attribute and extension travels as a ``ce-<name>`` header with its
value percent-encoded; the data is the message payload, described by ``Content-Type``.
Header names are matched case-insensitively because nats-py hands them over with the
sender's casing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

CE_PREFIX = "ce-"
REQUIRED = ("specversion", "id", "source", "type")
_NEEDS_ENCODING = re.compile(r'[^\x21-\x7e]|["%]')
_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')


class BindingError(ValueError):
    """The message is not a valid CloudEvent in NATS binary mode."""


@dataclass(frozen=True, slots=True)
class NatsCloudEvent:
    """A CloudEvent as carried on NATS: attributes (incl. extensions) and raw data bytes."""

    attributes: dict[str, str]
    data: bytes
    datacontenttype: str | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)


def encode_value(value: str) -> str:
    """Percent-encode a header value: space, ``"``, ``%`` and anything outside U+0021-U+007E.

    Most values (ids, types, timestamps) need nothing: a C-speed scan skips ``quote``.
    """
    if _NEEDS_ENCODING.search(value) is None:
        return value
    return quote(value, safe=_SAFE)


def to_headers(
    attributes: Mapping[str, str], datacontenttype: str | None = "application/json"
) -> dict[str, str]:
    """Headers for binary mode. ``datacontenttype`` becomes ``Content-Type``."""
    missing = [name for name in REQUIRED if not attributes.get(name)]
    if missing:
        raise BindingError(f"missing required attribute(s): {', '.join(missing)}")
    headers = {CE_PREFIX + name.lower(): encode_value(str(v)) for name, v in attributes.items()}
    if datacontenttype:
        headers["Content-Type"] = datacontenttype
    return headers


def from_message(headers: Mapping[str, str] | None, data: bytes) -> NatsCloudEvent:
    """Decode a binary-mode message; raises :class:`BindingError` if it is not one.

    Required attributes are checked on the raw headers, never invented.
    """
    attributes: dict[str, str] = {}
    content_type: str | None = None
    extra: dict[str, str] = {}
    for name, value in (headers or {}).items():
        lowered = name.lower()
        if lowered.startswith(CE_PREFIX):
            attributes[lowered[len(CE_PREFIX) :]] = unquote(value)
        elif lowered == "content-type":
            content_type = value
        else:
            extra[name] = value
    if content_type and content_type.lower().startswith("application/cloudevents"):
        raise BindingError("structured-mode CloudEvent where binary mode was expected")
    missing = [name for name in REQUIRED if not attributes.get(name)]
    if missing:
        raise BindingError(f"missing required attribute(s): {', '.join(missing)}")
    if attributes["specversion"] != "1.0":
        raise BindingError(f"unsupported specversion {attributes['specversion']!r}")
    return NatsCloudEvent(attributes, data, content_type, extra)
