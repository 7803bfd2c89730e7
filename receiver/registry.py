"""The table of served hook paths, swapped whole on every reload.

A request looks its Receiver up once and keeps that object, so a reload (file change,
SIGHUP, Kubernetes watch event) never affects a request in flight and never exposes a
half-built table.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from receiver.errors import ConfigError
from receiver.providers import PROVIDERS
from receiver.receivers import ReceiverSpec


class ReceiverTable:
    """Immutable digest -> Receiver mapping, validated against the provider registry."""

    __slots__ = ("_by_digest",)

    def __init__(self, by_digest: Mapping[str, ReceiverSpec]) -> None:
        self._by_digest = dict(by_digest)

    @classmethod
    def build(cls, specs: Iterable[ReceiverSpec]) -> ReceiverTable:
        """Validate every Receiver and refuse path collisions instead of serving one of two."""
        by_digest: dict[str, ReceiverSpec] = {}
        keys: set[str] = set()
        for spec in specs:
            provider = PROVIDERS.get(spec.type)
            if provider is None:
                raise ConfigError(
                    f"Receiver {spec.key}: spec.type: unknown provider {spec.type!r} "
                    f"(known: {', '.join(sorted(PROVIDERS))})"
                )
            provider.validate(spec)
            if spec.key in keys:
                raise ConfigError(f"Receiver {spec.key}: defined twice")
            keys.add(spec.key)
            other = by_digest.get(spec.digest)
            if other is not None:
                raise ConfigError(
                    f"Receivers {other.key} and {spec.key} hash to the same hook path "
                    f"/hook/{spec.digest}: change one token"
                )
            by_digest[spec.digest] = spec
        return cls(by_digest)

    def lookup(self, digest: str) -> ReceiverSpec | None:
        return self._by_digest.get(digest)

    def __len__(self) -> int:
        return len(self._by_digest)

    def __iter__(self) -> Iterator[ReceiverSpec]:
        return iter(self._by_digest.values())

    @classmethod
    def build_lenient(cls, specs: Iterable[ReceiverSpec]) -> tuple[ReceiverTable, list[Unserved]]:
        """Serve every valid Receiver and report the rest (used with a live Kubernetes source,
        where one broken object must not take the others down). Colliding paths: neither is
        served, since serving one would route the other's deliveries to it."""
        unserved: list[Unserved] = []
        valid: dict[str, list[ReceiverSpec]] = {}
        for spec in specs:
            provider = PROVIDERS.get(spec.type)
            try:
                if provider is None:
                    raise ConfigError(
                        f"Receiver {spec.key}: spec.type: unknown provider {spec.type!r}"
                    )
                provider.validate(spec)
            except ConfigError as e:
                unserved.append(Unserved(spec.key, "invalid", str(e)))
                continue
            valid.setdefault(spec.digest, []).append(spec)
        by_digest: dict[str, ReceiverSpec] = {}
        for digest, group in valid.items():
            if len(group) > 1:
                names = ", ".join(s.key for s in group)
                unserved.extend(
                    Unserved(s.key, "collision", f"hook path shared by {names}") for s in group
                )
            else:
                by_digest[digest] = group[0]
        return cls(by_digest), unserved


@dataclass(frozen=True, slots=True)
class Unserved:
    """A Receiver that is known but not served, and why (logged and exported as a metric)."""

    key: str
    reason: str
    message: str
