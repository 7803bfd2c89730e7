"""CNCF Distribution registry notifications, and the artifact helpers every registry shares.

The registry (``registry``/``docker-registry``, Distribution v2 and v3) POSTs an *envelope*
``{"events": [...]}`` with media type ``application/vnd.docker.distribution.events.v1+json``
(v2 ``…events.v2+json`` since Distribution 3; ``application/json`` is accepted too, anything
else is 415). Every event becomes its own stored message, its delivery id being the event's
``id``, so a redelivered envelope (the registry retries until it gets a 2xx) is stored once
per event.

Authenticity: the registry signs nothing; it sends the static headers of its endpoint
configuration. The Receiver's Secret names the header (key ``header``, default
``Authorization``) and its ``token``; the header must carry ``Bearer <token>`` or exactly
``<token>`` (for a full value such as ``Basic …``), compared in constant time::

    notifications:
      endpoints:
        - name: fluxrelay
          url: https://relay.example/hook/<digest>
          headers: {Authorization: [Bearer <token>]}
          ignore: {mediatypes: [application/octet-stream], actions: [pull]}

Event filtering: ``spec.events`` is matched against each event's ``action``; the events not
allowed are left out, and an envelope with none allowed is answered 200 "ignored" (a 400
would make the registry retry the envelope forever). The endpoint's ``ignore.actions`` saves
the registry sending them at all.

The artifact helpers (:func:`artifact`, :func:`split_reference`) live here because
Distribution defines the reference grammar the other registry providers reuse.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from receiver.errors import ConfigError, PayloadInvalid, SignatureInvalid, UnsupportedMediaType
from receiver.providers import common
from receiver.providers.base import Item, Parsed, Request
from receiver.receivers import ReceiverSpec

CONTENT_TYPES = (
    "application/vnd.docker.distribution.events.v1+json",
    "application/vnd.docker.distribution.events.v2+json",
    "application/json",
)
DEFAULT_HEADER = "Authorization"
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def split_reference(ref: str) -> tuple[str | None, str, str | None, str | None]:
    """``(registry, repository, tag, digest)`` of ``[host[:port]/]path[:tag][@digest]``.

    The first path component is a registry host only if it contains ``.`` or ``:`` or is
    ``localhost`` (the Docker reference grammar); otherwise the registry is None.
    """
    name, _, digest = ref.strip().partition("@")
    tag: str | None = None
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        name, tag = name[:colon], name[colon + 1 :]
    registry: str | None = None
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, name = first, rest
    return registry, name, tag or None, digest or None


def artifact(
    repository: str | None,
    *,
    registry: str | None = None,
    tag: str | None = None,
    digest: str | None = None,
    media_type: str | None = None,
    url: str | None = None,
    what: str = "repository",
) -> dict[str, Any]:
    """The envelope's ``artifact`` block; a missing or empty repository is a 400."""
    if not repository:
        raise PayloadInvalid(f"{what}: required")
    return {
        "registry": registry or None,
        "repository": repository,
        "tag": tag or None,
        "digest": digest or None,
        "media_type": media_type or None,
        "url": url or None,
    }


def require_json(request: Request, allowed: tuple[str, ...] = ("application/json",)) -> None:
    """415 unless the media type is one of ``allowed`` (an absent Content-Type is tolerated)."""
    if request.content_type and request.content_type not in allowed:
        raise UnsupportedMediaType(
            f"content type {request.content_type!r} not supported; use {' or '.join(allowed)}"
        )


def _secret_text(spec: ReceiverSpec, key: str) -> str | None:
    raw = spec.secret.get(key)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"Receiver {spec.key} ({spec.type}): Secret {spec.namespace}/{spec.secret_name}: "
            f"key {key!r} is not UTF-8"
        ) from e


class Distribution:
    """``distribution``: one stored message per event of the envelope."""

    name = "distribution"
    filters_events = True

    def header_name(self, spec: ReceiverSpec) -> str:
        return (_secret_text(spec, "header") or DEFAULT_HEADER).strip()

    def validate(self, spec: ReceiverSpec) -> None:
        common.require_secret(spec, "token")
        header = self.header_name(spec)
        if not _HEADER_NAME.match(header):
            raise ConfigError(
                f"Receiver {spec.key} (distribution): Secret {spec.namespace}/"
                f"{spec.secret_name}: key 'header' is not an HTTP header name"
            )

    def verify(self, spec: ReceiverSpec, request: Request) -> None:
        header = self.header_name(spec)
        given = request.headers.getall(header, [])
        if not given:
            raise SignatureInvalid(f"missing {header} header")
        token = spec.token
        matched = False
        for value in given:
            raw = common.wire_bytes(value)
            # Both forms are always compared, so timing does not tell which one is in use.
            bearer = common.equal(raw, b"Bearer " + token)
            full = common.equal(raw, token)
            matched = matched or bearer or full
        if not matched:
            raise SignatureInvalid(f"{header}: does not match the configured token")

    def parse(self, spec: ReceiverSpec, request: Request) -> Parsed:
        require_json(request, CONTENT_TYPES)
        doc = common.load_object(request.body)
        events = common.opt_items(doc, "events")
        if not events:
            raise PayloadInvalid("events: at least one event expected")
        items: list[Item] = []
        seen: set[str] = set()
        for i, event in enumerate(events):
            where = f"events[{i}]"
            if not isinstance(event, Mapping):
                raise PayloadInvalid(f"{where}: object expected")
            event_id = common.req_str(event, "id")
            if event_id in seen:
                continue
            seen.add(event_id)
            action = common.req_str(event, "action")
            fields = {
                "artifact": artifact(
                    common.opt_str(event, "target.repository"),
                    registry=common.opt_str(event, "request.host"),
                    tag=common.opt_str(event, "target.tag"),
                    digest=common.opt_str(event, "target.digest"),
                    media_type=common.opt_str(event, "target.mediaType"),
                    url=common.opt_str(event, "target.url"),
                    what=f"{where}.target.repository",
                ),
            }
            items.append(Item(event_id, fields, event=action))
        return Parsed(items[0].event or "", tuple(items), doc)
