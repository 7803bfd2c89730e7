"""Google Container Registry / Artifact Registry notifications, delivered by Pub/Sub push.

Authenticity: Pub/Sub sends ``Authorization: Bearer <Google ID token>``. The token must be
an RS256 JWT signed by one of Google's keys, unexpired, with ``aud`` equal to the Secret's
``audience``, ``iss`` ``accounts.google.com`` or ``https://accounts.google.com``, ``email``
equal to the Secret's ``email`` (the push subscription's service account) and
``email_verified`` true. Checking the email without ``email_verified`` is CVE-2026-40109:
all five checks are made, every time.

Keys never block a request: ``verify`` only reads an in-memory key set held by a
:class:`~receiver.providers.jwks.KeySource` (see :mod:`receiver.providers.jwks` for the
background refresh, its TTL and rate limit). :class:`RemoteKeys` is that module's source
pointed at Google's JWKS and limited to RS256, primed when a ``gcr`` Receiver is loaded;
:class:`StaticKeys` holds a fixed JWKS, so tests run offline with a generated key and an
air-gapped installation can mirror Google's keys.

Payload: ``message.data`` is base64 JSON ``{action, digest, tag}`` where ``digest`` and ``tag``
are full references (``host/project/repo/image@sha256:…``, ``…:tag``). The event is the inner
``action`` (``INSERT``, ``DELETE``); the delivery id is ``message.messageId``, which Pub/Sub
keeps across redeliveries. Flux requires no more than a ``message.data`` that decodes to a
JSON object (or ``null``) and checks no Content-Type; so does this: no ``messageId`` falls
back to the body digest, no ``action`` is no event type, no ``digest``/``tag`` no artifact.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from receiver.errors import ConfigError, PayloadInvalid, SignatureInvalid
from receiver.providers import common, jwks
from receiver.providers.artifacts import artifact, split_reference
from receiver.providers.base import Credentials, Item, Parsed, Request
from receiver.providers.jwks import KeySource, fetch_url

__all__ = ["GCR", "KeySource", "RemoteKeys", "StaticKeys", "fetch_url"]

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v3/certs"
ISSUERS = ("accounts.google.com", "https://accounts.google.com")
ALGORITHM = "RS256"


class StaticKeys(jwks.StaticKeys):
    """A fixed JWKS of RS256 keys (tests, mirrors)."""

    def __init__(self, doc: Any) -> None:
        super().__init__(doc, algorithms=(ALGORITHM,))


class RemoteKeys(jwks.RemoteKeys):
    """Google's JWKS (or ``url``), fetched in the background, RS256 keys only."""

    def __init__(self, url: str = GOOGLE_CERTS_URL, **options: Any) -> None:
        super().__init__(url, algorithms=(ALGORITHM,), **options)


def _secret_text(spec: Credentials, key: str) -> str:
    value = common.secret_text(spec, key)
    if not value:
        raise ConfigError(f"{common.secret_where(spec)}: key {key!r} required")
    if value != value.strip():
        raise ConfigError(
            f"{common.secret_where(spec)}: key {key!r} has leading or trailing whitespace "
            "(a trailing newline?)"
        )
    return value


class GCR:
    """``gcr``: Google ID token checks, then the Pub/Sub push envelope."""

    name = "gcr"
    filters_events = False

    def __init__(self, keys: KeySource | None = None) -> None:
        self.keys: KeySource = keys if keys is not None else RemoteKeys()

    def validate(self, spec: Credentials) -> None:
        common.require_secret(spec, "token")
        _secret_text(spec, "email")
        _secret_text(spec, "audience")
        self.keys.prime()

    def verify(self, spec: Credentials, request: Request) -> None:
        claims = jwks.verify_token(
            jwks.bearer_token(request, "ID token"),
            self.keys,
            audience=_secret_text(spec, "audience"),
            issuer=ISSUERS,
            what="ID token",
        )
        email = claims.get("email")
        if not isinstance(email, str) or not common.equal(email, _secret_text(spec, "email")):
            raise SignatureInvalid("ID token: email is not the configured service account")
        if claims.get("email_verified") is not True:
            raise SignatureInvalid("ID token: email_verified is not true")

    def parse(self, spec: Credentials, request: Request) -> Parsed:
        doc = common.load_object(request.body)
        delivery = (
            common.opt_str(doc, "message.messageId")
            or common.opt_str(doc, "message.message_id")
            or common.body_digest(request.body)
        )
        data = common.req_str(doc, "message.data")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as e:
            raise PayloadInvalid("message.data: invalid base64") from e
        inner, _ = common.load_struct(raw, "message.data")
        action = common.opt_str(inner, "action") or ""
        digest_ref = common.opt_str(inner, "digest")
        tag_ref = common.opt_str(inner, "tag")
        named = tag_ref or digest_ref
        block = None
        if named:
            registry, repository, _, _ = split_reference(named)
            block = artifact(
                repository,
                registry=registry,
                tag=split_reference(tag_ref)[2],
                digest=split_reference(digest_ref)[3],
                what="message.data",
            )
        return Parsed(action, (Item(delivery, {"artifact": block}),), doc)
