"""Sonatype Nexus Repository webhooks (repository component and asset events).

``X-Nexus-Webhook-Signature`` is the lowercase hex HMAC-SHA1 of the raw body keyed with the
Secret's ``token``, no prefix. It is compared as a string, as Flux does: upper-case hex is
rejected. The event is the body's ``action`` (``CREATED``, ``UPDATED``, ``DELETED``); the
artifact is the component (``component.name``, version as tag) or else the asset
(``asset.name``); the Nexus repository's name stays in the payload. Nexus gives no delivery id
that is unique per delivery (``nodeId`` + ``timestamp`` can repeat across a component and its
assets), so the body digest is the id. Flux only decodes the body (an object, or ``null``) and
checks no Content-Type; neither does this (no ``action`` is no event type).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from receiver.errors import SignatureInvalid
from receiver.providers import common
from receiver.providers.artifacts import artifact
from receiver.providers.base import Credentials, Item, Parsed, Request

HEADER = "X-Nexus-Webhook-Signature"


class Nexus:
    """``nexus``: HMAC-SHA1, lowercase hex only."""

    name = "nexus"
    filters_events = False

    def validate(self, spec: Credentials) -> None:
        common.require_secret(spec, "token")

    def verify(self, spec: Credentials, request: Request) -> None:
        given = request.headers.get(HEADER)
        if not given:
            raise SignatureInvalid(f"missing {HEADER} header")
        expected = hmac.new(spec.token, request.body, hashlib.sha1).hexdigest()
        if not common.equal(common.wire_bytes(given), expected.encode()):
            raise SignatureInvalid(f"{HEADER}: signature does not match")

    def parse(self, spec: Credentials, request: Request) -> Parsed:
        doc, payload = common.load_struct(request.body)
        event = common.opt_str(doc, "action") or ""
        component = common.opt_str(doc, "component.name")
        asset = common.opt_str(doc, "asset.name")
        block: dict[str, Any] | None = None
        if component:
            block = artifact(component, tag=common.opt_str(doc, "component.version"))
        elif asset:
            block = artifact(asset)
        return Parsed(
            event, (Item(common.body_digest(request.body), {"artifact": block}),), payload
        )
