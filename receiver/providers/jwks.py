"""Verifying JWT bearer tokens against JSON Web Key Sets that never block a request.

Shared by the token-checking providers (``gcr``, ``generic-oidc``). Three concerns live here:

* **Keys.** :func:`keys_from_jwks` turns a JWKS into :class:`VerificationKey` objects by
  ``kid``: public asymmetric keys only (RSA, EC, OKP), each with the algorithms it may verify
  (its JWK ``alg`` if it names one, else its family: RSA → RS*/PS*, EC → the ES* of its curve,
  OKP → EdDSA). Symmetric (``oct``) keys and encryption keys are skipped.
* **Sources.** A :class:`KeySource` answers ``key(kid)`` from memory only. :class:`StaticKeys`
  holds a fixed JWKS (tests inject one from a generated key; air-gapped mirrors).
  :class:`RemoteKeys` fetches over HTTP(S) in a short-lived daemon thread, either a JWKS URL
  or an OIDC issuer's discovery document (``<issuer>/.well-known/openid-configuration`` →
  ``jwks_uri``, whose ``issuer`` must be the configured one). It is primed when a Receiver is
  loaded, refreshed when the response's max-age (bounded) lapses or a token names an unknown
  ``kid`` (that token is refused meanwhile; the sender's retry finds the key), rate-limited so
  unknown ``kid``s cannot make it hammer the issuer, and a failed fetch keeps the old keys.
* **Tokens.** :func:`verify_token` checks the header before trusting anything: the algorithm
  must be an asymmetric one the key allows (so ``alg: none`` and HS256-keyed-with-the-public-key
  confusion are refused before PyJWT sees the token), then signature, ``exp``/``nbf``/``iat``
  with a small leeway, ``iss`` and ``aud``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from receiver.errors import SignatureInvalid
from receiver.providers import common
from receiver.providers.base import Request

log = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 1 << 20
LEEWAY_SECONDS = 30.0
"""Clock skew tolerated on ``exp``/``iat``/``nbf``."""
DISCOVERY_PATH = "/.well-known/openid-configuration"
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
OKP_CURVES = frozenset({"Ed25519", "Ed448"})
ASYMMETRIC_ALGORITHMS = RSA_ALGORITHMS | frozenset(EC_ALGORITHMS.values()) | {"EdDSA"}
_MAX_AGE = re.compile(r"max-age=(\d+)")

Fetch = Callable[[str, float], tuple[bytes, float | None]]
"""``(url, timeout) -> (body, max_age_seconds or None)``; blocking, run off the loop."""


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A public key and the JWS algorithms it may verify."""

    key: Any
    kty: str
    algorithms: frozenset[str]


def _family(jwk: Mapping[str, Any]) -> frozenset[str]:
    kty = jwk.get("kty")
    if kty == "RSA":
        return RSA_ALGORITHMS
    if kty == "EC":
        alg = EC_ALGORITHMS.get(str(jwk.get("crv")))
        return frozenset({alg}) if alg else frozenset()
    if kty == "OKP" and jwk.get("crv") in OKP_CURVES:
        return frozenset({"EdDSA"})
    return frozenset()


def keys_from_jwks(
    doc: Any, allowed: Collection[str] = ASYMMETRIC_ALGORITHMS
) -> dict[str, VerificationKey]:
    """Public signing keys of a JWKS document, by ``kid``; unusable keys are skipped."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
        raise ValueError("JWKS: object with a 'keys' array expected")
    keys: dict[str, VerificationKey] = {}
    for jwk in doc["keys"]:
        if not isinstance(jwk, Mapping):
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid or jwk.get("use", "sig") != "sig":
            continue
        algorithms = _family(jwk) & frozenset(allowed)
        named = jwk.get("alg")
        if named is not None:
            algorithms = algorithms & {named} if isinstance(named, str) else frozenset()
        if not algorithms:
            continue
        try:
            key = jwt.PyJWK(dict(jwk), algorithm=sorted(algorithms)[0]).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as e:
            log.warning("skipping JWK %r: %s", kid, e)
            continue
        keys[kid] = VerificationKey(key, str(jwk["kty"]), algorithms)
    return keys


class KeySource(Protocol):
    """Where verification keys come from. ``key`` and ``prime`` must never block."""

    def key(self, kid: str) -> VerificationKey | None:
        """The key for ``kid``, or None (a source may then refresh in the background)."""

    def prime(self) -> None:
        """Start loading keys if none are loaded yet; return at once."""


class StaticKeys:
    """A fixed JWKS (tests, mirrors); keys limited to ``algorithms``."""

    def __init__(
        self, jwks: Mapping[str, Any], algorithms: Collection[str] = ASYMMETRIC_ALGORITHMS
    ) -> None:
        self._keys = keys_from_jwks(jwks, algorithms)

    def key(self, kid: str) -> VerificationKey | None:
        return self._keys.get(kid)

    def prime(self) -> None:
        """Nothing to load."""


def fetch_url(url: str, timeout: float) -> tuple[bytes, float | None]:
    """GET ``url`` (blocking), at most :data:`MAX_DOCUMENT_BYTES`, with its Cache-Control
    max-age."""
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"URL must be http(s): {url!r}")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        body: bytes = response.read(MAX_DOCUMENT_BYTES + 1)
        if len(body) > MAX_DOCUMENT_BYTES:
            raise ValueError(f"document larger than {MAX_DOCUMENT_BYTES} bytes")
        match = _MAX_AGE.search(response.headers.get("Cache-Control", ""))
    return body, float(match.group(1)) if match else None


def discovery_url(issuer: str) -> str:
    """Where an OIDC issuer publishes its configuration."""
    return issuer.rstrip("/") + DISCOVERY_PATH


class RemoteKeys:
    """A JWKS fetched in a background thread and cached for its max-age.

    ``url`` is the JWKS itself, or with ``issuer`` set and ``url`` None, found through that
    issuer's OIDC discovery document on every refresh. Keys are limited to ``algorithms``.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        issuer: str | None = None,
        algorithms: Collection[str] = ASYMMETRIC_ALGORITHMS,
        default_ttl: float = 3600.0,
        min_ttl: float = 60.0,
        max_ttl: float = 86400.0,
        min_interval: float = 30.0,
        timeout: float = 10.0,
        fetch: Fetch = fetch_url,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if url is None and issuer is None:
            raise ValueError("RemoteKeys needs a JWKS url or an issuer to discover it from")
        self.url = url
        self.issuer = issuer
        self._algorithms = frozenset(algorithms)
        self._default_ttl = default_ttl
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        self._min_interval = min_interval
        self._timeout = timeout
        self._fetch = fetch
        self._clock = clock
        self._keys: dict[str, VerificationKey] = {}
        self._expires = float("-inf")
        self._last_attempt = float("-inf")
        self._running = False
        self._lock = threading.Lock()
        self.fetches = 0
        """Completed refresh attempts (successful or not); lets tests wait without sleeping."""

    def key(self, kid: str) -> VerificationKey | None:
        found = self._keys.get(kid)
        if found is None or self._clock() >= self._expires:
            self.refresh_soon()
        return found

    def prime(self) -> None:
        if not self._keys:
            self.refresh_soon()

    def refresh_soon(self) -> bool:
        """Start a background fetch unless one is running or one started too recently."""
        with self._lock:
            now = self._clock()
            if self._running or now - self._last_attempt < self._min_interval:
                return False
            self._running = True
            self._last_attempt = now
        threading.Thread(target=self._refresh, name="jwks-refresh", daemon=True).start()
        return True

    def _jwks_url(self) -> str:
        if self.url is not None:
            return self.url
        assert self.issuer is not None
        body, _ = self._fetch(discovery_url(self.issuer), self._timeout)
        doc = json.loads(body)
        if not isinstance(doc, Mapping):
            raise ValueError("OIDC discovery: JSON object expected")
        if doc.get("issuer") != self.issuer:
            raise ValueError(f"OIDC discovery: issuer {doc.get('issuer')!r} is not {self.issuer!r}")
        jwks_uri = doc.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise ValueError("OIDC discovery: no http(s) jwks_uri")
        return jwks_uri

    def _refresh(self) -> None:
        where = self.url or self.issuer
        try:
            body, max_age = self._fetch(self._jwks_url(), self._timeout)
            keys = keys_from_jwks(json.loads(body), self._algorithms)
            if not keys:
                raise ValueError("JWKS holds no usable signing key")
            ttl = min(
                max(max_age if max_age is not None else self._default_ttl, self._min_ttl),
                self._max_ttl,
            )
            with self._lock:
                self._keys = keys
                self._expires = self._clock() + ttl
            log.info("loaded %d signing key(s) for %s, valid %.0fs", len(keys), where, ttl)
        except Exception as e:  # a failed refresh keeps the previous keys
            log.warning("could not refresh signing keys for %s: %s", where, e)
        finally:
            with self._lock:
                self._running = False
                self.fetches += 1


def bearer_token(request: Request, what: str = "token") -> bytes:
    """The token of ``Authorization: Bearer <token>`` as wire bytes; SignatureInvalid if none."""
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    raw = common.wire_bytes(token.strip())
    if scheme.lower() != "bearer" or not raw:
        raise SignatureInvalid(f"missing Authorization: Bearer <{what}>")
    return raw


def unverified_header(token: bytes, what: str = "token") -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as e:
        raise SignatureInvalid(f"{what}: malformed") from e
    return header


def verify_token(
    token: bytes,
    keys: KeySource,
    *,
    audience: str,
    issuer: str | Collection[str],
    what: str = "token",
    require: Collection[str] = ("exp", "iat", "iss", "aud"),
    leeway: float = LEEWAY_SECONDS,
) -> dict[str, Any]:
    """Verify a JWS-signed JWT with a key from ``keys``; return its claims."""
    header = unverified_header(token, what)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ASYMMETRIC_ALGORITHMS:
        raise SignatureInvalid(f"{what}: algorithm {alg!r} is not accepted")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise SignatureInvalid(f"{what}: no key id")
    key = keys.key(kid)
    if key is None:
        raise SignatureInvalid(f"{what}: unknown signing key (keys are being refreshed)")
    if alg not in key.algorithms:
        raise SignatureInvalid(f"{what}: algorithm {alg} does not match key {kid!r}")
    issuers = [issuer] if isinstance(issuer, str) else list(issuer)
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=[alg],
            audience=audience,
            issuer=issuers,
            leeway=leeway,
            options={"require": list(require)},
        )
    except jwt.PyJWTError as e:
        raise SignatureInvalid(f"{what}: {e}") from e
    return claims
