"""GitHub webhooks: HMAC-signed (X-Hub-Signature-256, legacy X-Hub-Signature), JSON or form.

The format (signature headers, body decoding, the push's fields) is GitHub's own and shared
with the forges that copy it, in :mod:`receiver.providers.hub`; what is GitHub's alone is
read here: the event (``X-GitHub-Event``, ``ping`` answered 200 and never stored) and the
delivery id (``X-GitHub-Delivery``).
"""

from __future__ import annotations

from receiver.providers import common
from receiver.providers.base import Credentials, Item, Parsed, Request
from receiver.providers.hub import (
    FORM,
    decode_hub_payload,
    other_fields,
    push_fields,
    verify_hub_signature,
)


class GitHub:
    """``github``: Flux-compatible, including form-encoded payloads and sha1/sha512 fallbacks."""

    name = "github"
    filters_events = True
    event_header = "X-GitHub-Event"
    delivery_header = "X-GitHub-Delivery"

    def validate(self, spec: Credentials) -> None:
        common.require_secret(spec, "token")

    def verify(self, spec: Credentials, request: Request) -> None:
        verify_hub_signature(spec, request)

    def parse(self, spec: Credentials, request: Request) -> Parsed:
        """Flux checks the signature and reads nothing else (the event header only for
        ``spec.events``): a verified payload that is no object, or a push without ``ref``,
        is stored without the fields it lacks, and only the Receiver's own resources react."""
        event = common.header_text(request, self.event_header)
        payload = decode_hub_payload(request)
        doc = payload if isinstance(payload, dict) else {}
        delivery = common.header_text(request, self.delivery_header) or common.body_digest(
            request.body
        )
        if event == "ping":
            return Parsed(event, (), payload, ping=True, named=True)
        if event == "push" and doc.get("ref") is not None:
            fields = push_fields(doc)
        else:
            fields = other_fields(doc, event)
        raw = request.body if request.content_type != FORM else None
        return Parsed(
            event, (Item(delivery, fields),), payload, raw_payload=common.verbatim(raw), named=True
        )
