"""Generic webhooks: ``generic`` (the unguessable path is the only secret) and
``generic-hmac`` (``X-Signature: <sha1|sha256|sha512>=<hex>`` over the raw body).

Neither has an event type (the envelope's ``event`` is empty) or a delivery id: identical
bodies are the same delivery (body digest), as a retry resends the same bytes. The body may
be empty (payload ``null``) or any JSON value, kept as the payload for CEL filters; anything
that is not JSON is a 400. Nothing is normalised: such a delivery only triggers what the
Receiver's ``spec.resources`` name. ``generic-hmac`` accepts an empty body when it is signed
(the HMAC of the empty string), as Flux does.
"""

from __future__ import annotations

from typing import Any

from receiver.providers import common
from receiver.providers.base import Item, Parsed, Request
from receiver.receivers import ReceiverSpec

SIGNATURE_HEADER = "X-Signature"
ALGORITHMS = ("sha1", "sha256", "sha512")


def optional_json(body: bytes) -> Any:
    """None for an empty (or blank) body, else any JSON value; 400 for anything else."""
    if not body.strip():
        return None
    return common.load_json(body)


class Generic:
    """``generic``: no authentication beyond the hook path."""

    name = "generic"

    def validate(self, spec: ReceiverSpec) -> None:
        common.require_secret(spec, "token")

    def verify(self, spec: ReceiverSpec, request: Request) -> None:
        """Nothing to check: knowing the path (sha256 of token, name, namespace) is the proof."""

    def parse(self, spec: ReceiverSpec, request: Request) -> Parsed:
        payload = optional_json(request.body)
        return Parsed("", (Item(common.body_digest(request.body), {}),), payload)


class GenericHmac(Generic):
    """``generic-hmac``: the body's HMAC with the token, algorithm named in the header."""

    name = "generic-hmac"

    def verify(self, spec: ReceiverSpec, request: Request) -> None:
        common.verify_prefixed_hmac(
            request.headers.get(SIGNATURE_HEADER),
            spec.token,
            request.body,
            ALGORITHMS,
            SIGNATURE_HEADER,
        )
