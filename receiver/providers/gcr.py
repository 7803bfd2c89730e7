"""Google Container Registry / Artifact Registry notifications, delivered by Pub/Sub push.

Authenticity: Pub/Sub sends ``Authorization: Bearer <Google ID token>``. The token must be
an RS256 JWT signed by one of Google's keys, unexpired, with ``aud`` equal to the Secret's
``audience``, ``iss`` ``accounts.google.com`` or ``https://accounts.google.com``, ``email``
equal to the Secret's ``email`` (the push subscription's service account) and
``email_verified`` true. Checking the email without ``email_verified`` is CVE-2026-40109:
all five checks are made, every time.

Keys never block a request. ``verify`` is synchronous and runs on the event loop, so it only
*reads* an in-memory key set. Fetching belongs to a :class:`KeySource`:

* :class:`RemoteKeys` (the default) loads Google's JWKS in a short-lived daemon thread: primed
  when a ``gcr`` Receiver is loaded (``validate``), refreshed when its TTL (the response's
  ``Cache-Control: max-age``, bounded) lapses or when a token names an unknown ``kid``. That
  token is refused with 400 meanwhile, and Pub/Sub redelivers it after its backoff, by which
  time the new key is there. Refreshes are rate-limited, so unknown ``kid``s cannot make the
  receiver hammer Google; a failed fetch keeps the previous keys. A thread rather than an
  asyncio task because ``verify`` is synchronous and may be called with no loop at hand (table
  tests, fuzzers), and a blocking ``urllib`` fetch off the loop needs no HTTP client session
  to own and close.
* :class:`StaticKeys` holds a fixed JWKS: tests inject one made from a generated RSA key, so
  they run offline; an air-gapped installation could mirror Google's keys the same way.

Payload: ``message.data`` is base64 JSON ``{action, digest, tag}`` where ``digest`` and ``tag``
are full references (``host/project/repo/image@sha256:…``, ``…:tag``). The event is the inner
``action`` (``INSERT``, ``DELETE``); the delivery id is ``message.messageId``, which Pub/Sub
keeps across redeliveries.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jwt

from receiver.errors import ConfigError, PayloadInvalid, SignatureInvalid
from receiver.providers import common
from receiver.providers.base import Item, Parsed, Request
from receiver.providers.distribution import artifact, require_json, split_reference
from receiver.receivers import ReceiverSpec

log = logging.getLogger(__name__)

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v3/certs"
ISSUERS = ("accounts.google.com", "https://accounts.google.com")
ALGORITHM = "RS256"
LEEWAY_SECONDS = 30.0
"""Clock skew tolerated on ``exp``/``iat``/``nbf``."""
MAX_JWKS_BYTES = 1 << 20
_MAX_AGE = re.compile(r"max-age=(\d+)")

Fetch = Callable[[str, float], tuple[bytes, float | None]]
"""``(url, timeout) -> (body, max_age_seconds or None)``; blocking, run off the loop."""


class KeySource(Protocol):
    """Where verification keys come from. ``key`` and ``prime`` must never block."""

    def key(self, kid: str) -> Any | None:
        """The public key for ``kid``, or None (a source may then refresh in the background)."""

    def prime(self) -> None:
        """Start loading keys if none are loaded yet; return at once."""


def keys_from_jwks(doc: Any) -> dict[str, Any]:
    """RSA signing keys of a JWKS document, by ``kid``; other keys are skipped."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
        raise ValueError("JWKS: object with a 'keys' array expected")
    keys: dict[str, Any] = {}
    for jwk in doc["keys"]:
        if not isinstance(jwk, Mapping) or jwk.get("kty") != "RSA":
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid or jwk.get("use", "sig") != "sig":
            continue
        if jwk.get("alg", ALGORITHM) != ALGORITHM:
            continue
        keys[kid] = jwt.PyJWK(dict(jwk), algorithm=ALGORITHM).key
    return keys


class StaticKeys:
    """A fixed JWKS (tests, mirrors)."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self._keys = keys_from_jwks(jwks)

    def key(self, kid: str) -> Any | None:
        return self._keys.get(kid)

    def prime(self) -> None:
        """Nothing to load."""


def fetch_url(url: str, timeout: float) -> tuple[bytes, float | None]:
    """GET ``url`` (blocking), at most :data:`MAX_JWKS_BYTES`, with its Cache-Control max-age."""
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"JWKS URL must be http(s): {url!r}")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        body: bytes = response.read(MAX_JWKS_BYTES + 1)
        if len(body) > MAX_JWKS_BYTES:
            raise ValueError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
        match = _MAX_AGE.search(response.headers.get("Cache-Control", ""))
    return body, float(match.group(1)) if match else None


class RemoteKeys:
    """A JWKS fetched over HTTPS in a background thread, cached for its max-age."""

    def __init__(
        self,
        url: str = GOOGLE_CERTS_URL,
        *,
        default_ttl: float = 3600.0,
        min_ttl: float = 60.0,
        max_ttl: float = 86400.0,
        min_interval: float = 30.0,
        timeout: float = 10.0,
        fetch: Fetch = fetch_url,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._default_ttl = default_ttl
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        self._min_interval = min_interval
        self._timeout = timeout
        self._fetch = fetch
        self._clock = clock
        self._keys: dict[str, Any] = {}
        self._expires = float("-inf")
        self._last_attempt = float("-inf")
        self._running = False
        self._lock = threading.Lock()
        self.fetches = 0
        """Completed fetch attempts (successful or not); lets tests wait without sleeping blind."""

    def key(self, kid: str) -> Any | None:
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
        threading.Thread(target=self._refresh, name="gcr-jwks-refresh", daemon=True).start()
        return True

    def _refresh(self) -> None:
        try:
            body, max_age = self._fetch(self.url, self._timeout)
            keys = keys_from_jwks(json.loads(body))
            if not keys:
                raise ValueError("JWKS holds no RSA signing key")
            ttl = min(
                max(max_age if max_age is not None else self._default_ttl, self._min_ttl),
                self._max_ttl,
            )
            with self._lock:
                self._keys = keys
                self._expires = self._clock() + ttl
            log.info("loaded %d signing key(s) from %s, valid %.0fs", len(keys), self.url, ttl)
        except Exception as e:  # a failed refresh keeps the previous keys
            log.warning("could not refresh signing keys from %s: %s", self.url, e)
        finally:
            with self._lock:
                self._running = False
                self.fetches += 1


def _secret_text(spec: ReceiverSpec, key: str) -> str:
    where = f"Receiver {spec.key} (gcr): Secret {spec.namespace}/{spec.secret_name}: key {key!r}"
    try:
        value = spec.secret.get(key, b"").decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where} is not UTF-8") from e
    if not value:
        raise ConfigError(f"{where} required")
    if value != value.strip():
        raise ConfigError(f"{where} has leading or trailing whitespace (a trailing newline?)")
    return value


class GCR:
    """``gcr``: Google ID token checks, then the Pub/Sub push envelope."""

    name = "gcr"

    def __init__(self, keys: KeySource | None = None) -> None:
        self.keys: KeySource = keys if keys is not None else RemoteKeys()

    def validate(self, spec: ReceiverSpec) -> None:
        common.require_secret(spec, "token")
        _secret_text(spec, "email")
        _secret_text(spec, "audience")
        self.keys.prime()

    def verify(self, spec: ReceiverSpec, request: Request) -> None:
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.strip().partition(" ")
        token_bytes = common.wire_bytes(token.strip())
        if scheme.lower() != "bearer" or not token_bytes:
            raise SignatureInvalid("missing Authorization: Bearer <ID token>")
        try:
            header = jwt.get_unverified_header(token_bytes)
        except jwt.PyJWTError as e:
            raise SignatureInvalid("ID token: malformed") from e
        if header.get("alg") != ALGORITHM:
            raise SignatureInvalid(f"ID token: algorithm must be {ALGORITHM}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise SignatureInvalid("ID token: no key id")
        key = self.keys.key(kid)
        if key is None:
            raise SignatureInvalid("ID token: unknown signing key (keys are being refreshed)")
        try:
            claims = jwt.decode(
                token_bytes,
                key,
                algorithms=[ALGORITHM],
                audience=_secret_text(spec, "audience"),
                issuer=ISSUERS,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "iss", "aud"]},
            )
        except jwt.PyJWTError as e:
            raise SignatureInvalid(f"ID token: {e}") from e
        email = claims.get("email")
        if not isinstance(email, str) or not common.equal(email, _secret_text(spec, "email")):
            raise SignatureInvalid("ID token: email is not the configured service account")
        if claims.get("email_verified") is not True:
            raise SignatureInvalid("ID token: email_verified is not true")

    def parse(self, spec: ReceiverSpec, request: Request) -> Parsed:
        require_json(request)
        doc = common.load_object(request.body)
        delivery = common.opt_str(doc, "message.messageId") or common.req_str(
            doc, "message.message_id"
        )
        data = common.req_str(doc, "message.data")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as e:
            raise PayloadInvalid("message.data: invalid base64") from e
        inner = common.load_object(raw, "message.data")
        action = common.req_str(inner, "action")
        digest_ref = common.opt_str(inner, "digest")
        tag_ref = common.opt_str(inner, "tag")
        named = tag_ref or digest_ref
        if not named:
            raise PayloadInvalid("message.data: 'digest' or 'tag' required")
        registry, repository, _, _ = split_reference(named)
        block = artifact(
            repository,
            registry=registry,
            tag=split_reference(tag_ref)[2] if tag_ref else None,
            digest=split_reference(digest_ref)[3] if digest_ref else None,
            what="message.data",
        )
        return Parsed(action, (Item(delivery, {"artifact": block}),), doc)
