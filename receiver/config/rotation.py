"""Token rotation without downtime: a Secret may keep its previous token for a while.

Flux serves a Receiver at a path derived from its token, so changing the token moves the
hook and every sender still configured with the old URL or the old key gets 404 or 400 until
it is updated. Here a Secret may carry, next to the new ``token``:

* ``previous-token``: the token being retired (bytes as stored, like ``token``);
* ``previous-token-expires``: an RFC 3339 time with a zone offset, after which it is gone.

Until that time the Receiver is also served at the previous token's path, and a delivery
proven with the previous token (its HMAC key, or its value for providers that compare a
token) is accepted, on either path. Both keys are always tried, each in constant time, so
timing does not tell which one matched. After the deadline the old path is 404 and the old
signature 400, without any reload.

This module is rotation's one home. :func:`previous_token` and :func:`deadline` read and
check the two keys when a Receiver is resolved (``receiver.config.spec``), so a malformed pair
fails at load; the :class:`Rotation` they make rides on the Receiver; :func:`verify` is what
the ingress calls instead of the provider's ``verify``, before anything is parsed. Providers
verify whichever credentials they are handed and know nothing of rotation. The routing table
(``receiver.config.table``) serves :attr:`Rotation.digest` as an alias path until the deadline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from receiver.errors import ConfigError, Rejected, SignatureInvalid
from receiver.providers.base import Credentials, Provider, Request

PREVIOUS_TOKEN = "previous-token"  # noqa: S105  (a Secret key name, not a value)
PREVIOUS_TOKEN_EXPIRES = "previous-token-expires"  # noqa: S105
KEYS = (PREVIOUS_TOKEN, PREVIOUS_TOKEN_EXPIRES)


def previous_token(secret: Mapping[str, bytes], where: str) -> bytes | None:
    """The Secret's ``previous-token``, None when it rotates nothing; ConfigError when only
    one of the two keys is given (a previous token is never honoured forever)."""
    previous = secret.get(PREVIOUS_TOKEN)
    expires = secret.get(PREVIOUS_TOKEN_EXPIRES)
    if previous is None and expires is None:
        return None
    if not previous:
        raise ConfigError(f"{where}: {PREVIOUS_TOKEN_EXPIRES!r} given without {PREVIOUS_TOKEN!r}")
    if expires is None:
        raise ConfigError(
            f"{where}: {PREVIOUS_TOKEN!r} needs {PREVIOUS_TOKEN_EXPIRES!r} "
            "(an RFC 3339 deadline): a previous token is never honoured forever"
        )
    return previous


def previous_secret(secret: Mapping[str, bytes], previous: bytes) -> dict[str, bytes]:
    """The Secret as it was before the rotation: ``previous`` as its token, the rest kept."""
    kept = {k: v for k, v in secret.items() if k not in KEYS}
    return {**kept, "token": previous}


def deadline(secret: Mapping[str, bytes], where: str) -> float:
    """Seconds since the epoch of ``previous-token-expires``, an RFC 3339 time (offset or
    ``Z`` required); call after :func:`previous_token` found one."""
    raw = secret[PREVIOUS_TOKEN_EXPIRES]
    try:
        text = raw.decode("ascii").strip()
        when = datetime.fromisoformat(text)
    except (UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{where}: {PREVIOUS_TOKEN_EXPIRES!r}: not an RFC 3339 time") from e
    if when.tzinfo is None or "T" not in text.upper():
        raise ConfigError(
            f"{where}: {PREVIOUS_TOKEN_EXPIRES!r}: RFC 3339 date-time with an offset expected "
            "(e.g. 2026-05-01T12:00:00Z)"
        )
    return when.timestamp()


@dataclass(frozen=True, slots=True)
class Rotation:
    """A previous token still honoured until ``expires`` (epoch seconds)."""

    previous: Credentials
    """The same Receiver as it was with the previous token, as providers verify it."""
    digest: str
    """The previous token's hook path (``/hook/<digest>``), still served until ``expires``."""
    expires: float

    def active(self, now: float) -> bool:
        return now < self.expires


def verify(
    provider: Provider,
    spec: Credentials,
    rotation: Rotation | None,
    request: Request,
    now: float,
) -> bool:
    """Verify with the current token and, while ``rotation`` is active, the previous one.

    Returns True when only the previous token proved the request. Raises the current
    token's refusal when neither does. A refusal other than a signature mismatch (e.g. a
    malformed header) does not depend on the key and is raised as is.
    """
    if rotation is None or not rotation.active(now):
        provider.verify(spec, request)
        return False
    current: SignatureInvalid | None = None
    try:
        provider.verify(spec, request)
    except SignatureInvalid as e:
        current = e
    try:
        provider.verify(rotation.previous, request)
        previous_ok = True
    except Rejected:
        previous_ok = False
    if current is None:
        return False
    if previous_ok:
        return True
    raise current
