"""Receivers as the ingress serves them: a parsed Flux Receiver plus its resolved Secret.

Everything a request needs (provider, allowed events, secret values, suspension) is
resolved here once, at load time, so the request path does no lookups and a broken Receiver
fails loudly before it is served. Manifest parsing itself is shared (``schemas.receivers``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from receiver.hooks import hook_digest
from schemas.receivers import (
    ConfigError,
    Documents,
    ReceiverDef,
    read_documents,
    split_documents,
)


@dataclass(frozen=True, slots=True)
class ReceiverSpec:
    """A Receiver ready to serve: its definition and every key of its Secret."""

    definition: ReceiverDef
    secret: Mapping[str, bytes] = field(repr=False)
    """Every key of the referenced Secret, as raw bytes (a trailing newline is kept)."""
    digest: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "digest", hook_digest(self.token, self.definition.name, self.definition.namespace)
        )

    @property
    def namespace(self) -> str:
        return self.definition.namespace

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def type(self) -> str:
        return self.definition.type

    @property
    def key(self) -> str:
        return self.definition.key

    @property
    def secret_name(self) -> str:
        return self.definition.secret_name

    @property
    def suspend(self) -> bool:
        return self.definition.suspend

    @property
    def token(self) -> bytes:
        return self.secret.get("token", b"")

    def allows(self, event: str) -> bool:
        return self.definition.allows(event)


def resolve(
    definition: ReceiverDef, secrets: Mapping[tuple[str, str], Mapping[str, bytes]], where: str
) -> ReceiverSpec:
    """Attach the Receiver's Secret; a missing Secret or token is a ConfigError."""
    d = definition
    secret = secrets.get((d.namespace, d.secret_name))
    if secret is None:
        raise ConfigError(
            f"{where}: spec.secretRef: Secret {d.namespace}/{d.secret_name} not found"
        )
    if not secret.get("token"):
        raise ConfigError(f"{where}: Secret {d.namespace}/{d.secret_name}: key 'token' required")
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
