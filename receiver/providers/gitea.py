"""Gitea and Forgejo webhooks: one implementation, two providers differing in header names.

Both sign the raw body with HMAC-SHA256 and send the bare hex digest (no ``sha256=`` prefix,
either case accepted) in ``X-Gitea-Signature`` / ``X-Forgejo-Signature``, the event in
``X-Gitea-Event`` / ``X-Forgejo-Event`` and a delivery UUID in ``X-Gitea-Delivery`` /
``X-Forgejo-Delivery``. They also send GitHub-style headers, but Flux users pointing them at
a ``github`` Receiver get no Gitea-specific handling; here each has its own type.

The push payload is GitHub-shaped, so :func:`receiver.providers.hub.push_fields` reads it,
told the pushed commit count (``total_commits``) so completeness of the path list is known.
Gitea has no ``created``/``deleted`` flags: they are derived from all-zero ``before`` /
``after`` ids. Only JSON bodies are read: the form content type Gitea offers is answered 415
(configure the webhook with ``application/json``), as the MAC over a form body is not
documented.
"""

from __future__ import annotations

from typing import Any

from receiver.errors import PayloadInvalid, SignatureInvalid
from receiver.providers import common, hub
from receiver.providers.base import Credentials, Item, Parsed, Request


def push_fields(doc: dict[str, Any]) -> dict[str, Any]:
    """GitHub-shaped push fields with Gitea's commit count and zero-id created/deleted."""
    fields = hub.push_fields(doc, common.opt_int(doc, "total_commits"))
    created = fields["created"] or common.is_zero_id(fields["previous_revision"])
    deleted = fields["deleted"] or common.is_zero_id(fields["revision"])
    fields["created"] = created
    fields["deleted"] = deleted
    fields["paths_complete"] = fields["paths_complete"] and not (created or deleted)
    return fields


class GiteaLike:
    """A Gitea-family forge whose headers are prefixed ``X-<brand>-``."""

    def __init__(self, name: str, brand: str) -> None:
        self.name = name
        self.filters_events = True
        self.signature_header = f"X-{brand}-Signature"
        self.event_header = f"X-{brand}-Event"
        self.delivery_header = f"X-{brand}-Delivery"

    def validate(self, spec: Credentials) -> None:
        common.require_secret(spec, "token")

    def verify(self, spec: Credentials, request: Request) -> None:
        given = request.headers.get(self.signature_header, "").strip()
        if not given:
            raise SignatureInvalid(f"missing {self.signature_header} header")
        if not common.hmac_hex_matches(spec.token, request.body, "sha256", given):
            raise SignatureInvalid(f"{self.signature_header}: signature does not match")

    def parse(self, spec: Credentials, request: Request) -> Parsed:
        event = common.header_text(request, self.event_header)
        if not event:
            raise PayloadInvalid(f"missing {self.event_header} header")
        common.require_json(request)
        doc = common.load_object(request.body)
        delivery = common.header_text(request, self.delivery_header)
        delivery = delivery or common.body_digest(request.body)
        fields = push_fields(doc) if event == "push" else hub.other_fields(doc, event)
        raw = common.verbatim(request.body)
        return Parsed(event, (Item(delivery, fields),), doc, raw_payload=raw)


GITEA = GiteaLike("gitea", "Gitea")
FORGEJO = GiteaLike("forgejo", "Forgejo")
