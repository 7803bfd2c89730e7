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
signature 400, without any reload. The keys are validated at load time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from receiver.errors import ConfigError, Rejected, SignatureInvalid

if TYPE_CHECKING:
    from receiver.providers.base import Provider, Request
    from receiver.receivers import ReceiverSpec

PREVIOUS_TOKEN = "previous-token"  # noqa: S105  (a Secret key name, not a value)
PREVIOUS_TOKEN_EXPIRES = "previous-token-expires"  # noqa: S105


def parse_deadline(raw: bytes, where: str) -> float:
    """Seconds since the epoch of an RFC 3339 time (offset or ``Z`` required)."""
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

    previous: ReceiverSpec
    """The same Receiver as it was with the previous token (its ``digest`` is the old path)."""
    expires: float

    def active(self, now: float) -> bool:
        return now < self.expires


def verify(provider: Provider, spec: ReceiverSpec, request: Request, now: float) -> bool:
    """Verify with the current token and, while a rotation is active, the previous one.

    Returns True when only the previous token proved the request. Raises the current
    token's refusal when neither does. A refusal other than a signature mismatch (e.g. a
    malformed header) does not depend on the key and is raised as is.
    """
    rotation = spec.rotation
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
