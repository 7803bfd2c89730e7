"""What a provider is: a pure, synchronous verify-then-parse pair over raw bytes.

Providers see no aiohttp types, so they are table-tested and fuzzed without a server, and
the ingress can call them on the raw body before anything is parsed. ``verify`` proves
authenticity (and nothing else); ``parse`` turns the verified body into one or more
envelope fragments. Both raise :mod:`receiver.errors` types only.

The value types here are built on every delivery and never changed after; they are plain
slotted dataclasses, not frozen ones, because a frozen dataclass's ``__init__`` goes through
``object.__setattr__`` per field (four times the cost, measured on the hot path).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from multidict import CIMultiDict, CIMultiDictProxy

from receiver.receivers import ReceiverSpec


@dataclass(slots=True)
class Request:
    """The parts of an HTTP request a provider may look at."""

    headers: CIMultiDictProxy[str]
    body: bytes = field(repr=False)
    content_type: str = ""
    """Media type, lower-cased, without parameters."""
    remote: str | None = None

    @classmethod
    def of(cls, headers: Mapping[str, str], body: bytes, remote: str | None = None) -> Request:
        """Build from plain values (tests, fuzzers, the ``send`` helper)."""
        proxy = CIMultiDictProxy(CIMultiDict(headers))
        content_type = proxy.get("Content-Type", "").split(";", 1)[0].strip().lower()
        return cls(proxy, body, content_type, remote)


@dataclass(slots=True)
class Item:
    """One message to store: its dedup id and the envelope fields the provider extracted."""

    delivery_id: str
    fields: dict[str, Any]
    event: str | None = None
    """This item's own event type when a delivery bundles several (a registry envelope of
    push and pull events); ``spec.events`` then filters item by item."""


@dataclass(slots=True)
class Parsed:
    """A verified delivery, understood.

    ``event`` is matched against ``spec.events``, and so are its ``aliases`` (other names the
    same event may be listed under, e.g. a CDEvents type without its version suffix); ``ping``
    deliveries are answered 200 and never stored; ``items`` is usually one, several for
    envelopes of events (distribution).
    """

    event: str
    items: tuple[Item, ...]
    payload: Any
    ping: bool = False
    aliases: tuple[str, ...] = ()
    raw_payload: bytes | None = None
    """The body's exact JSON text when ``payload`` is that body parsed: the envelope then
    embeds these bytes instead of re-encoding the payload (the costliest step per event)."""
    named: bool = False
    """The provider names its event in a header (GitHub, GitLab, Bitbucket, CDEvents'
    ``Ce-Type``): ``spec.events`` then applies even when that header was absent (the empty
    name is in no list), as Flux applies it. For the others an empty ``event`` means the
    delivery has no event type, and ``spec.events`` does not apply to it."""


class Provider(Protocol):
    """A webhook source. Instances are stateless and shared by all requests."""

    name: str
    filters_events: bool
    """Whether ``spec.events`` applies to this provider's event types. notification-controller
    applies it to github, gitlab, bitbucket and cdevents only and ignores it for the registries
    (harbor, quay, dockerhub, acr, nexus, gcr); fluxrelay's own providers apply it."""

    def validate(self, spec: ReceiverSpec) -> None:
        """Raise ConfigError if ``spec`` lacks what this provider needs (Secret keys...)."""

    def verify(self, spec: ReceiverSpec, request: Request) -> None:
        """Raise SignatureInvalid unless the request is proven to come from the provider."""

    def parse(self, spec: ReceiverSpec, request: Request) -> Parsed:
        """Normalise a verified request; raise PayloadInvalid/UnsupportedMediaType, or
        DeadLetter for a body to keep on the dead-letter stream before it is refused."""
