"""The table of served hook paths, swapped whole on every reload.

A request looks its Receiver up once and keeps that object, so a reload (file change,
SIGHUP, Kubernetes watch event) never affects a request in flight and never exposes a
half-built table.

A Receiver whose Secret carries a previous token (``receiver.config.rotation``) is also served at
that token's path until the deadline: an alias entry, checked against the clock at lookup
time so it stops by itself. Current paths always win over aliases.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from receiver.config.spec import ReceiverSpec, unserved_reason
from receiver.errors import ConfigError
from receiver.providers import PROVIDERS

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Route:
    """What a hook path leads to: the Receiver, and whether the path is its previous one."""

    spec: ReceiverSpec
    previous: bool = False


class ReceiverTable:
    """Immutable digest -> Receiver mapping, validated against the provider registry."""

    __slots__ = ("_aliases", "_by_digest", "_clock", "_routes")

    def __init__(
        self,
        by_digest: Mapping[str, ReceiverSpec],
        *,
        clock: Callable[[], float] = time.time,
        strict: bool = True,
    ) -> None:
        self._by_digest = dict(by_digest)
        self._routes = {digest: Route(spec) for digest, spec in self._by_digest.items()}
        """Built once: the lookup on every request allocates nothing."""
        self._clock = clock
        self._aliases: dict[str, ReceiverSpec] = {}
        for spec in self._by_digest.values():
            rotation = spec.rotation
            if rotation is None or rotation.digest == spec.digest:
                continue
            old = rotation.digest
            other = self._by_digest.get(old) or self._aliases.get(old)
            if other is not None:
                message = (
                    f"Receiver {spec.key}: the previous token's hook path is "
                    f"{other.key}'s: change a token"  # (the path itself is a credential)
                )
                if strict:
                    raise ConfigError(message)
                log.warning("not serving a previous hook path: %s", message)
                continue
            self._aliases[old] = spec

    @classmethod
    def build(
        cls, specs: Iterable[ReceiverSpec], *, clock: Callable[[], float] = time.time
    ) -> ReceiverTable:
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
                    "(not shown: it is a credential): change one token"
                )
            by_digest[spec.digest] = spec
        return cls(by_digest, clock=clock)

    def lookup(self, digest: str) -> ReceiverSpec | None:
        route = self.route(digest)
        return route.spec if route is not None else None

    def now(self) -> float:
        """The table's clock (wall time, seconds since the epoch): rotation deadlines."""
        return self._clock()

    def route(self, digest: str) -> Route | None:
        """The Receiver served at ``/hook/<digest>``, by its current or (until the rotation
        deadline) its previous token's path."""
        route = self._routes.get(digest)
        if route is not None:
            return route
        spec = self._aliases.get(digest)
        if spec is not None and spec.rotation is not None and spec.rotation.active(self._clock()):
            return Route(spec, previous=True)
        return None

    def __len__(self) -> int:
        return len(self._by_digest)

    def __iter__(self) -> Iterator[ReceiverSpec]:
        return iter(self._by_digest.values())

    @classmethod
    def build_lenient(
        cls, specs: Iterable[ReceiverSpec], *, clock: Callable[[], float] = time.time
    ) -> tuple[ReceiverTable, list[Unserved]]:
        """Serve every valid Receiver and report the rest (used by both sources: one broken
        object must not take the others down). Colliding paths: neither is
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
                unserved.append(Unserved(spec.key, unserved_reason(e), str(e)))
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
        return cls(by_digest, clock=clock, strict=False), unserved


@dataclass(frozen=True, slots=True)
class Unserved:
    """A Receiver that is known but not served, and why (logged and exported as a metric)."""

    key: str
    reason: str
    message: str
