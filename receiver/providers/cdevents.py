"""The ``cdevents`` receiver: CDEvents over HTTP, validated against their spec's schema and kept
as they arrived.

Accepted shapes (see :func:`schemas.cdevents.decode_http`): CloudEvents HTTP binary mode
(``ce-specversion`` and the other ``ce-*`` headers, body = the CDEvent), structured mode
(``application/cloudevents+json``, the CDEvent in ``data``) and a bare CDEvent body with no
CloudEvents attributes at all (what Flux and cdviz send). In binary and structured mode the
CloudEvents attributes are read as sent: a missing ``ce-id``, ``ce-type``, ``ce-source`` or
``ce-specversion`` is a 400, never invented (an invented id would defeat de-duplication).
Attributes that contradict the CDEvent they carry (``id``, ``source``, ``type``, ``subject``
against ``context.id``, ``context.source``, ``context.type``, ``subject.id``) are a 400 too;
``time`` is not cross-checked, as senders legitimately round it.

The CDEvent must satisfy the schema of its spec release (0.4.1 if ``context.version``, 0.5.1
if ``context.specversion``); a violation is a 400 whose JSON answer carries ``path``, the JSON
Pointer of the culprit. A body that is no CDEvent at all (not JSON, not an object, no
``context`` object) is stored on the dead-letter stream (``<dead>.ingress.cdevents-unparseable``)
and then refused with a JSON 400, so it is never dropped silently.

Event type and filter: the event is the ``Ce-Type`` header when one is sent (what Flux matches
``spec.events`` against: ``Ce-Type`` without ``ce-specversion`` is not binary mode, the body is
then read as a bare CDEvent, as Flux reads it), else ``context.type`` in full
(``dev.cdevents.change.merged.0.2.0``); ``context.type`` and its alias without the version
suffix (``dev.cdevents.change.merged``) are matched too, so ``spec.events`` may name a type
with or without version, case-insensitively. The delivery id is ``context.id``
(equal to ``ce-id`` when one was sent). The envelope carries the CDEvent untouched in
``cdevent``; ``payload`` is the request body as parsed (the CloudEvent envelope in structured
mode, the CDEvent otherwise), for CEL filters.

Authentication: none by default (Flux's behaviour); the Secret's ``auth`` key turns on a
bearer token or an HMAC header (:mod:`receiver.providers.authenticating`).

Cost: the body is decoded once, by :func:`receiver.providers.common.load_json`, and that
document is what the CloudEvents decoding reads; JSON nested in a structured ``data`` string
or in ``data_base64`` goes through the same decoder, so its nesting is bounded like the
body's (it used to be decoded by the standard library with no bound: 5,000 levels in a 10 KB
request were an unhandled ``RecursionError``). Every step is linear in the body, the version
suffix included (see :func:`unversioned`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from receiver.errors import DeadLetter, PayloadInvalid
from receiver.providers import common
from receiver.providers.authenticating import OptionalAuth
from receiver.providers.base import Credentials, Item, Parsed, Request
from schemas import cdevents
from schemas.excerpts import clipped

DEAD_REASON = "cdevents-unparseable"
CHECKED_ATTRIBUTES = ("id", "source", "type", "subject")
"""Attributes that must agree with the CDEvent (``time`` is left alone)."""
_SUFFIX_CHARACTERS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz.-"
"""What a version suffix is made of: digits and dots, then a pre-release of ``[0-9A-Za-z.-]``."""
_VERSION_START = re.compile(r"\.\d+\.\d+\.\d+(?:-.|\Z)", re.ASCII | re.DOTALL)


def unversioned(event_type: str) -> str | None:
    r"""``dev.cdevents.change.merged.0.2.0`` → ``dev.cdevents.change.merged``; None if the type
    carries no ``M.m.p`` version suffix (optionally ``-<pre-release>``) at its end.

    The suffix is the leftmost ``.M.m.p`` from which the rest of the type is made of suffix
    characters only; so it lies in the longest tail of such characters (found by one
    ``rstrip``), where a bounded look at each candidate decides it. The pattern this
    replaces, ``\.\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?$`` searched over the whole type,
    re-scanned the tail from every candidate: quadratic, 8.7 s for ``".1.1.1-" * 16000``.
    ``$`` also matched before a final newline, which this keeps; its ``\d`` also took
    non-ASCII digits, which no version has (semver's are ASCII), and this does not.
    """
    text = event_type[:-1] if event_type.endswith("\n") else event_type
    tail = len(text.rstrip(_SUFFIX_CHARACTERS))
    match = _VERSION_START.search(text, tail)
    if match is None or match.start() == 0:
        return None
    return event_type[: match.start()]


def _unparseable(reason: str) -> DeadLetter:
    return DeadLetter(reason, dead_reason=DEAD_REASON)


def _nested_json(raw: bytes | str) -> Any:
    """JSON carried in a structured CloudEvent's ``data`` string or ``data_base64``, decoded
    with the body's own limits (nesting, strict text) instead of the standard library's."""
    try:
        return common.load_json(raw, "structured-mode data")
    except PayloadInvalid as e:
        raise cdevents.CloudEventDecodeError(e.reason) from e


def decode(request: Request) -> tuple[Any, cdevents.DecodedCDEvent]:
    """The body as parsed and the CDEvent it carries; DeadLetter when it is no CDEvent at all,
    PayloadInvalid when the CloudEvents framing is broken."""
    try:
        body = common.load_json(request.body)
    except PayloadInvalid as e:
        raise _unparseable(e.reason) from e
    if not isinstance(body, dict):
        raise _unparseable("body: a JSON object (a CDEvent or a CloudEvent) expected")
    try:
        decoded = cdevents.decode_http(
            request.headers, request.body, document=body, loads=_nested_json
        )
    except cdevents.CloudEventDecodeError as e:
        raise PayloadInvalid(str(e)) from e
    if not isinstance(decoded.cdevent.get("context"), Mapping):
        raise _unparseable(f"{decoded.mode}-mode body: no CDEvent (no 'context' object)")
    return body, decoded


class CDEvents(OptionalAuth):
    """``cdevents``: CloudEvents-framed or bare CDEvents, schema-validated; the Secret's
    optional ``auth``, else the hook path is the proof (as Flux)."""

    name = "cdevents"
    filters_events = True

    def parse(self, spec: Credentials, request: Request) -> Parsed:
        body, decoded = decode(request)
        wrong = [name for name in decoded.mismatches if name in CHECKED_ATTRIBUTES]
        if wrong:
            raise PayloadInvalid(
                "CloudEvent attribute(s) contradict the CDEvent: "
                + ", ".join(f"ce-{name}" for name in wrong)
            )
        event = decoded.cdevent
        try:
            cdevents.validate(event)
        except cdevents.CDEventInvalid as e:
            # The pointer names a member the sender chose (a 3 MiB key is a 3 MiB pointer):
            # whole in the answer's ``path``, clipped in the reason, which is also logged.
            path = e.path or "/"
            raise PayloadInvalid(
                f"invalid CDEvent: {clipped(path)}: {e.message}", details={"path": path}
            ) from None
        context = event["context"]
        event_type: str = context["type"]
        delivery: str = context["id"]
        aliases = [event_type]
        alias = unversioned(event_type)
        if alias:
            aliases.append(alias)
        # Flux matches spec.events against the Ce-Type header alone; the CDEvent's own type
        # (with or without its version) is matched too, so a bare CDEvent sent without
        # Ce-Type can still be filtered.
        named = common.header_text(request, "Ce-Type") or event_type
        return Parsed(
            named,
            (Item(delivery, {"cdevent": event}),),
            body,
            aliases=tuple(aliases),
            named=True,
        )
