"""Harbor webhooks (the "Default" JSON payload format).

Harbor sends the endpoint's configured auth header value as ``Authorization``; it must equal
the Secret's ``token`` (compared in constant time, as bytes). The event is the body's
``type`` (``PUSH_ARTIFACT``, ``DELETE_ARTIFACT``, ``SCANNING_COMPLETED``…), and every entry of
``event_data.resources`` becomes its own message, with the artifact's registry host taken
from its ``resource_url``. Harbor gives no delivery id: the body digest is the id (suffixed
with the resource's index when there are several).

Flux checks the Authorization header and never reads the body, whatever its Content-Type: an
empty body, or JSON that is no object (``null``), is accepted too, stored with no artifact, so
it concerns every resource of the Receiver. Bytes that are not JSON are a 400 (the envelope
carries the payload as JSON).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from receiver.errors import PayloadInvalid, SignatureInvalid
from receiver.providers import common
from receiver.providers.artifacts import artifact, split_reference
from receiver.providers.base import Credentials, Item, Parsed, Request


class Harbor:
    """``harbor``: Authorization equals the token; one message per pushed resource."""

    name = "harbor"
    filters_events = False

    def validate(self, spec: Credentials) -> None:
        common.require_secret(spec, "token")

    def verify(self, spec: Credentials, request: Request) -> None:
        given = request.headers.get("Authorization")
        if given is None:
            raise SignatureInvalid("missing Authorization header")
        if not common.equal(common.wire_bytes(given), spec.token):
            raise SignatureInvalid("Authorization: does not match the token")

    def parse(self, spec: Credentials, request: Request) -> Parsed:
        base = common.body_digest(request.body)
        doc, payload = common.load_unread(request.body)
        if not doc:
            return Parsed("", (Item(base, {"artifact": None}),), payload)
        event = common.opt_str(doc, "type") or ""
        full_name = common.opt_str(doc, "event_data.repository.repo_full_name")
        resources = common.opt_items(doc, "event_data.resources")
        blocks: list[dict[str, Any] | None] = []
        for i, resource in enumerate(resources):
            if not isinstance(resource, Mapping):
                raise PayloadInvalid(f"event_data.resources[{i}]: object expected")
            url = common.opt_str(resource, "resource_url")
            registry, from_url, _, _ = split_reference(url)
            blocks.append(
                artifact(
                    full_name or from_url,
                    registry=registry,
                    tag=common.opt_str(resource, "tag"),
                    digest=common.opt_str(resource, "digest"),
                    url=url,
                    what="event_data.repository.repo_full_name",
                )
            )
        if not blocks:
            blocks.append(artifact(full_name) if full_name else None)
        items = common.items_per_change(base, [{"artifact": block} for block in blocks])
        return Parsed(event, items, doc)
