"""Generic webhooks: ``generic`` (the unguessable path is the only secret) and
``generic-hmac`` (``X-Signature: <sha1|sha256|sha512>=<hex>`` over the raw body).

Neither has an event type (the envelope's ``event`` is empty) or a delivery id: identical
bodies are the same delivery (body digest), as a retry resends the same bytes. The body may
be empty (payload ``null``) or any JSON value, kept as the payload for CEL filters; anything
that is not JSON is a 400. Nothing is normalised: such a delivery only triggers what the
Receiver's ``spec.resources`` name. ``generic-hmac`` accepts an empty body when it is signed
(the HMAC of the empty string), as Flux does.

``generic`` may also ask for a bearer token or an HMAC header through the Secret's ``auth``
key (see :mod:`receiver.providers.authenticating`); without that key it behaves as Flux's.
``generic-hmac`` ignores ``auth``: it always checks its own signature.
"""

from __future__ import annotations

from receiver.providers import common
from receiver.providers.authenticating import OptionalAuth
from receiver.providers.base import Credentials, Item, Parsed, Request

SIGNATURE_HEADER = "X-Signature"
ALGORITHMS = ("sha1", "sha256", "sha512")


class Generic(OptionalAuth):
    """``generic``: the hook path, plus the Secret's optional ``auth`` (bearer or HMAC)."""

    name = "generic"
    filters_events = True

    def parse(self, spec: Credentials, request: Request) -> Parsed:
        payload = common.optional_json(request.body)
        raw = common.verbatim(request.body) if payload is not None else None
        return Parsed("", (Item(common.body_digest(request.body), {}),), payload, raw_payload=raw)


class GenericHmac(Generic):
    """``generic-hmac``: the body's HMAC with the token, algorithm named in the header."""

    name = "generic-hmac"
    filters_events = True

    def validate(self, spec: Credentials) -> None:
        common.require_secret(spec, "token")

    def verify(self, spec: Credentials, request: Request) -> None:
        common.verify_prefixed_hmac(
            request.headers.get(SIGNATURE_HEADER),
            spec.token,
            request.body,
            ALGORITHMS,
            SIGNATURE_HEADER,
        )
