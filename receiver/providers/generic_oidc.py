"""The ``generic-oidc`` receiver (Flux 1.9): a generic webhook whose sender proves itself with
an OIDC ID token (a CI job's workload identity, a Kubernetes service account token...).

Secret keys, besides ``token`` (which only forms the hook path, as for every Receiver):

* ``issuers``: the accepted issuer URLs, separated by commas or newlines; the token's ``iss``
  must equal one of them exactly (a trailing slash matters, as in OIDC).
* ``audience``: the value the token's ``aud`` must contain.
* ``jwks-url`` (optional): where the keys are, instead of each issuer's OIDC discovery
  document (``<issuer>/.well-known/openid-configuration`` → ``jwks_uri``). With one issuer the
  value is a URL; with several, one ``<issuer> <jwks-url>`` pair per line (issuers not listed
  use discovery).

Authenticity: ``Authorization: Bearer <JWT>``, signed with an asymmetric algorithm
(RS*/PS*/ES*/EdDSA, matching the key's type; ``none`` and HMAC algorithms are refused, which
rules out algorithm confusion), by a key of the issuer the token names, unexpired (``exp``
and ``iat`` required, 30 s leeway), with the configured audience. The issuer is checked
against the configured list *before* any key lookup, so a token cannot make the receiver
fetch keys from anywhere else. Keys are cached per issuer by :mod:`receiver.providers.jwks`
and fetched in the background: ``verify`` never waits on the network, and a token naming a
key not yet loaded is refused (400) while that key is fetched.

Payload: like ``generic``, the body is empty or any JSON value, kept as the payload; there is
no event type. The verified claims go to the envelope's ``claims`` (CEL filters read them as
``claims``). Delivery id: ``<jti>/<body digest>`` when the token has a ``jti`` (a token may
be reused for several deliveries within its lifetime, so the ``jti`` alone would merge them),
else the body digest.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

import jwt

from receiver.errors import ConfigError, SignatureInvalid
from receiver.providers import common, jwks
from receiver.providers.base import Item, Parsed, Request
from receiver.providers.generic import optional_json
from receiver.receivers import ReceiverSpec

KeysFor = Callable[[str, str | None], jwks.KeySource]
"""``(issuer, jwks_url or None) -> KeySource``: how the provider gets an issuer's keys."""
_SEPARATORS = re.compile(r"[,\s]+")


def remote_keys(issuer: str, jwks_url: str | None) -> jwks.KeySource:
    """The production key source: the configured JWKS URL, else OIDC discovery."""
    if jwks_url is not None:
        return jwks.RemoteKeys(jwks_url)
    return jwks.RemoteKeys(issuer=issuer)


def _text(spec: ReceiverSpec, key: str, required: bool = True) -> str:
    where = f"Receiver {spec.key} (generic-oidc): Secret {spec.namespace}/{spec.secret_name}: "
    try:
        value = spec.secret.get(key, b"").decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where}key {key!r} is not UTF-8") from e
    if required and not value:
        raise ConfigError(f"{where}key {key!r} required")
    return value


def _is_url(value: str) -> bool:
    return value.startswith(("https://", "http://")) and len(value) > len("https://")


def issuers_of(spec: ReceiverSpec) -> dict[str, str | None]:
    """Configured issuers and each one's JWKS URL (None: OIDC discovery); ConfigError if bad."""
    where = f"Receiver {spec.key} (generic-oidc): Secret {spec.namespace}/{spec.secret_name}"
    names = [n for n in _SEPARATORS.split(_text(spec, "issuers")) if n]
    for name in names:
        if not _is_url(name):
            raise ConfigError(f"{where}: issuer {name!r} is not an http(s) URL")
    issuers: dict[str, str | None] = dict.fromkeys(names)
    lines = [line.split() for line in _text(spec, "jwks-url", required=False).splitlines()]
    for words in filter(None, lines):
        if len(words) == 1 and len(issuers) == 1:
            issuer, url = names[0], words[0]
        elif len(words) == 2:
            issuer, url = words
        else:
            raise ConfigError(
                f"{where}: jwks-url: one URL for a single issuer, else '<issuer> <url>' per line"
            )
        if issuer not in issuers:
            raise ConfigError(f"{where}: jwks-url names {issuer!r}, which is not in issuers")
        if not _is_url(url):
            raise ConfigError(f"{where}: jwks-url {url!r} is not an http(s) URL")
        issuers[issuer] = url
    return issuers


class GenericOIDC:
    """``generic-oidc``: an OIDC bearer token from a configured issuer, claims kept."""

    name = "generic-oidc"

    def __init__(self, keys_for: KeysFor = remote_keys) -> None:
        self._keys_for = keys_for
        self._sources: dict[tuple[str, str | None], jwks.KeySource] = {}
        self._lock = threading.Lock()

    def source(self, issuer: str, jwks_url: str | None) -> jwks.KeySource:
        """One cached key source per (issuer, JWKS URL), shared by Receivers and reloads."""
        with self._lock:
            source = self._sources.get((issuer, jwks_url))
            if source is None:
                source = self._sources[(issuer, jwks_url)] = self._keys_for(issuer, jwks_url)
        return source

    def validate(self, spec: ReceiverSpec) -> None:
        common.require_secret(spec, "token")
        _text(spec, "audience")
        for issuer, url in issuers_of(spec).items():
            self.source(issuer, url).prime()

    def claims(self, spec: ReceiverSpec, request: Request) -> dict[str, object]:
        """The verified claims of the request's token; SignatureInvalid otherwise."""
        token = jwks.bearer_token(request, "ID token")
        issuers = issuers_of(spec)
        jwks.unverified_header(token, "ID token")  # malformed tokens stop here
        try:  # the claimed issuer, read only to choose whose keys verify the signature
            claimed = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError as e:
            raise SignatureInvalid("ID token: malformed") from e
        if not isinstance(claimed, str) or claimed not in issuers:
            raise SignatureInvalid("ID token: issuer is not one this Receiver accepts")
        return jwks.verify_token(
            token,
            self.source(claimed, issuers[claimed]),
            audience=_text(spec, "audience"),
            issuer=claimed,
            what="ID token",
        )

    def verify(self, spec: ReceiverSpec, request: Request) -> None:
        self.claims(spec, request)

    def parse(self, spec: ReceiverSpec, request: Request) -> Parsed:
        claims = self.claims(spec, request)
        payload = optional_json(request.body)
        digest = common.body_digest(request.body)
        jti = claims.get("jti")
        delivery = f"{jti}/{digest}" if isinstance(jti, str) and jti else digest
        return Parsed("", (Item(delivery, {"claims": dict(claims)}),), payload)
