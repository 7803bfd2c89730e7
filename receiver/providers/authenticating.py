"""How the providers whose senders sign nothing prove a delivery: by the hook path alone
(:class:`PathOnly`: ``dockerhub``, ``quay``, ``acr``), or by the path plus an optional bearer
token or HMAC signature chosen in the Secret (:class:`OptionalAuth`: ``generic``,
``cdevents``).

Flux serves these providers with the hook path as the only secret. Some senders can add a
header, and then the Receiver's Secret may ask for it with the key ``auth``:

* absent: no check (Flux's behaviour; the unguessable path is the proof);
* ``bearer``: ``Authorization: Bearer <value>`` must carry the Secret's ``bearer-token`` key,
  or its ``token`` key when there is none (scheme case-insensitive, value compared in
  constant time);
* ``hmac``: ``X-Signature: sha256=<hex>`` (or ``sha512=``) must be the HMAC of the raw body
  keyed with the Secret's ``hmac-key``, or ``token`` when there is none, as ``generic-hmac``
  checks it (prefix case-sensitive, hex either case). SHA-1 is not offered here.

The value of ``auth`` is read case-insensitively with surrounding whitespace ignored (a
``--from-file`` Secret ends with a newline); any other value is a load-time error, as is a
bearer token with surrounding whitespace (no header could ever carry it). Verification
happens in ``verify``, before anything of the body is parsed.
"""

from __future__ import annotations

from typing import Literal

from receiver.errors import ConfigError, SignatureInvalid
from receiver.providers import common
from receiver.providers.base import Credentials, Request

AUTH_KEY = "auth"
BEARER_KEY = "bearer-token"
HMAC_KEY = "hmac-key"
SIGNATURE_HEADER = "X-Signature"
HMAC_ALGORITHMS = ("sha256", "sha512")

Mode = Literal["none", "bearer", "hmac"]


def _where(spec: Credentials, key: str) -> str:
    return f"{common.secret_where(spec)}: {key!r}"


def auth_mode(spec: Credentials) -> Mode:
    """The mode the Secret asks for; ConfigError for an unknown one."""
    raw = spec.secret.get(AUTH_KEY)
    if raw is None:
        return "none"
    try:
        value = raw.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        value = ""
    if value == "bearer":
        return "bearer"
    if value == "hmac":
        return "hmac"
    raise ConfigError(f"{_where(spec, AUTH_KEY)} must be 'bearer' or 'hmac'")


def _secret(spec: Credentials, preferred: str) -> bytes:
    value = spec.secret.get(preferred)
    return value if value else spec.token


def validate_auth(spec: Credentials) -> None:
    """Load-time checks of the optional authentication settings."""
    mode = auth_mode(spec)
    if mode == "bearer":
        key = BEARER_KEY if spec.secret.get(BEARER_KEY) else "token"
        value = _secret(spec, BEARER_KEY)
        if not value:
            raise ConfigError(f"{_where(spec, key)} required with auth=bearer")
        if value != value.strip():
            raise ConfigError(
                f"{_where(spec, key)} has leading or trailing whitespace (a trailing newline?): "
                "no Authorization header can carry it"
            )
    elif mode == "hmac" and not _secret(spec, HMAC_KEY):
        raise ConfigError(f"{_where(spec, HMAC_KEY)} or 'token' required with auth=hmac")


def verify_auth(spec: Credentials, request: Request) -> None:
    """Raise SignatureInvalid unless the request satisfies the Secret's ``auth`` mode."""
    mode = auth_mode(spec)
    if mode == "bearer":
        scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            raise SignatureInvalid("missing Authorization: Bearer <token>")
        if not common.equal(given, _secret(spec, BEARER_KEY)):
            raise SignatureInvalid("bearer token does not match")
    elif mode == "hmac":
        common.verify_prefixed_hmac(
            request.headers.get(SIGNATURE_HEADER),
            _secret(spec, HMAC_KEY),
            request.body,
            HMAC_ALGORITHMS,
            SIGNATURE_HEADER,
        )


class PathOnly:
    """A provider whose sender signs nothing and sends no secret: the hook path (sha256 of
    token, name and namespace) is the only proof, so keep it out of logs and rotate the
    token if it leaks."""

    def validate(self, spec: Credentials) -> None:
        common.require_secret(spec, "token")

    def verify(self, spec: Credentials, request: Request) -> None:
        """Nothing to check: the sender offers no signature; knowing the path is the proof."""


class OptionalAuth:
    """A provider checked as Flux checks it (by the hook path), plus whatever the Secret's
    ``auth`` asks for."""

    def validate(self, spec: Credentials) -> None:
        common.require_secret(spec, "token")
        validate_auth(spec)

    def verify(self, spec: Credentials, request: Request) -> None:
        """Without ``auth`` in the Secret nothing to check: knowing the path (sha256 of token,
        name, namespace) is the proof; with it, the bearer token or HMAC it asks for."""
        verify_auth(spec, request)
