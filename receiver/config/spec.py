"""Receivers as the ingress serves them: a parsed Flux Receiver plus its resolved Secret.

A ``generic-oidc`` Receiver in Flux's form references no Secret: it is served with an empty
one, so its hook path is ``/hook/`` + sha256("" + name + namespace), as notification-controller
computes it, and the token length check does not apply (it has no token).

Everything a request needs (provider, allowed events, secret values, suspension) is
resolved here once, at load time, so the request path does no lookups and a broken Receiver
fails loudly before it is served. Manifest parsing itself is shared (``schemas.receivers``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from receiver import addressing
from receiver.config.hooks import hook_digest
from receiver.config.rotation import (
    PREVIOUS_TOKEN,
    Rotation,
    deadline,
    previous_secret,
    previous_token,
)
from receiver.settings import Network
from schemas.receivers import (
    ConfigError,
    Documents,
    OIDCProvider,
    ReceiverDef,
    read_documents,
    split_documents,
)

MIN_TOKEN_BYTES = 16
"""Shortest ``token`` (and ``previous-token``) served. The token is the whole secret of a
Receiver whose provider signs nothing (its hook path is derived from it) and the HMAC key of
the others; Flux's documentation generates 40 hex characters. Notification-controller takes
any length; a one-character token is guessed in a few hundred requests."""


class SecretMissing(ConfigError):
    """The Receiver's Secret does not exist (yet): reported apart, as it is usually a matter
    of applying the Secret, not of fixing the Receiver."""

    reason = "secret_missing"


class WeakToken(ConfigError):
    """The token is shorter than :data:`MIN_TOKEN_BYTES`: the Receiver is not served (Flux
    would serve it), and is reported under its own reason so the refusal is easy to find."""

    reason = "weak_token"


def unserved_reason(error: ConfigError) -> str:
    """The ``reason`` label a Receiver that failed with ``error`` is reported under."""
    reason: str = getattr(error, "reason", "invalid")
    return reason


def check_token(token: bytes, where: str, key: str = "token") -> None:
    """WeakToken for a token shorter than :data:`MIN_TOKEN_BYTES` (white space aside);
    the message gives the length required, never the token."""
    if len(token.strip()) < MIN_TOKEN_BYTES:
        raise WeakToken(
            f"{where}: key {key!r} is shorter than {MIN_TOKEN_BYTES} bytes; generate one with "
            "e.g. `head -c 32 /dev/urandom | sha256sum | cut -d' ' -f1`"
        )


@dataclass(frozen=True, slots=True)
class ReceiverSpec:
    """A Receiver ready to serve: its definition and every key of its Secret."""

    definition: ReceiverDef
    secret: Mapping[str, bytes] = field(repr=False)
    """Every key of the referenced Secret, as raw bytes (a trailing newline is kept); empty
    when the Receiver references none (``generic-oidc`` in Flux's form)."""
    digest: str = field(default="", compare=False)
    allowed_sources: tuple[Network, ...] = field(default=(), init=False, compare=False)
    """From the ``fluxrelay.io/allowed-sources`` annotation; empty allows every source."""
    rotation: Rotation | None = field(default=None, init=False, compare=False)
    """The previous token still honoured, from ``previous-token``/``previous-token-expires``."""
    namespace: str = field(default="", init=False, compare=False)
    name: str = field(default="", init=False, compare=False)
    type: str = field(default="", init=False, compare=False)
    """The provider."""
    key: str = field(default="", init=False, compare=False)
    """``namespace/name``."""
    suspend: bool = field(default=False, init=False, compare=False)

    def __post_init__(self) -> None:
        """Derive the hook path, the allow-list and the rotation; ConfigError when the
        annotation or the rotation keys are malformed."""
        d = self.definition
        # Copied out of the definition once: read several times per request.
        for attribute in ("namespace", "name", "type", "key", "suspend"):
            object.__setattr__(self, attribute, getattr(d, attribute))
        object.__setattr__(self, "digest", hook_digest(self.token, d.name, d.namespace))
        where = f"Receiver {d.key}"
        object.__setattr__(
            self, "allowed_sources", addressing.allowed_sources(dict(d.annotations), where)
        )
        object.__setattr__(self, "rotation", self._rotation(f"{where}: Secret {d.secret_name}"))

    def _rotation(self, where: str) -> Rotation | None:
        """The previous token's Receiver, when the Secret rotates (``receiver.config.rotation``);
        the previous token must be as strong as the current one."""
        previous = previous_token(self.secret, where)
        if previous is None:
            return None
        check_token(previous, where, PREVIOUS_TOKEN)
        expires = deadline(self.secret, where)
        before = ReceiverSpec(self.definition, previous_secret(self.secret, previous))
        return Rotation(before, before.digest, expires)

    @property
    def secret_name(self) -> str | None:
        return self.definition.secret_name

    @property
    def token(self) -> bytes:
        return self.secret.get("token", b"")

    @property
    def oidc_providers(self) -> tuple[OIDCProvider, ...]:
        return self.definition.oidc_providers

    def allows(self, event: str) -> bool:
        return self.definition.allows(event)


def resolve(
    definition: ReceiverDef, secrets: Mapping[tuple[str, str], Mapping[str, bytes]], where: str
) -> ReceiverSpec:
    """Attach the Receiver's Secret; a missing Secret or token is a ConfigError. A Receiver
    without a ``secretRef`` (only ``generic-oidc`` may have none) gets an empty one."""
    d = definition
    if d.secret_name is None:
        return ReceiverSpec(d, {})
    secret = secrets.get((d.namespace, d.secret_name))
    if secret is None:
        raise SecretMissing(
            f"{where}: spec.secretRef: Secret {d.namespace}/{d.secret_name} not found"
        )
    if not secret.get("token"):
        raise ConfigError(f"{where}: Secret {d.namespace}/{d.secret_name}: key 'token' required")
    check_token(secret["token"], f"{where}: Secret {d.namespace}/{d.secret_name}")
    return ReceiverSpec(d, dict(secret))


def specs_from_documents(docs: Iterable[Any], source: str) -> list[ReceiverSpec]:
    """Resolve Receivers against the Secrets among ``docs`` (order does not matter)."""
    return resolve_all(split_documents(docs, source))


def load_file(path: Path) -> list[ReceiverSpec]:
    """Read a multi-document YAML file of Receiver and Secret manifests."""
    return resolve_all(read_documents(path))


def resolve_all(found: Documents) -> list[ReceiverSpec]:
    """Every Receiver of ``found`` with its Secret; the first unresolvable one is an error."""
    return [
        resolve(d, found.secrets, f"{where} (Receiver {d.key})") for where, d in found.receivers
    ]
