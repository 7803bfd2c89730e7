"""CNCF Distribution registry notifications.

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
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from receiver.errors import ConfigError, PayloadInvalid, SignatureInvalid
from receiver.providers import common
from receiver.providers.artifacts import artifact
from receiver.providers.base import Credentials, Item, Parsed, Request

CONTENT_TYPES = (
    "application/vnd.docker.distribution.events.v1+json",
    "application/vnd.docker.distribution.events.v2+json",
    "application/json",
)
DEFAULT_HEADER = "Authorization"
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class Distribution:
    """``distribution``: one stored message per event of the envelope."""

    name = "distribution"
    filters_events = True

    def header_name(self, spec: Credentials) -> str:
        return (common.secret_text(spec, "header") or DEFAULT_HEADER).strip()

    def validate(self, spec: Credentials) -> None:
        common.require_secret(spec, "token")
        header = self.header_name(spec)
        if not _HEADER_NAME.match(header):
            raise ConfigError(
                f"{common.secret_where(spec)}: key 'header' is not an HTTP header name"
            )

    def verify(self, spec: Credentials, request: Request) -> None:
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

    def parse(self, spec: Credentials, request: Request) -> Parsed:
        common.require_json(request, CONTENT_TYPES)
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
