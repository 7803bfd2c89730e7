"""What a provider is: a pure, synchronous verify-then-parse pair over raw bytes.

Providers see no aiohttp types, so they are table-tested and fuzzed without a server, and
the ingress can call them on the raw body before anything is parsed. ``verify`` proves
authenticity (and nothing else); ``parse`` turns the verified body into one or more
envelope fragments. Both raise :mod:`receiver.errors` types only.

Providers see no Receiver either, only :class:`Credentials`: the keys of its Secret and the
names a load-time refusal quotes. So the provider package imports nothing of
``receiver.config.spec``, and which keys to try is the ingress's choice, not the provider's
(:mod:`receiver.config.rotation` also tries the previous token's during a rotation).

The value types here are built on every delivery and never changed after; they are plain
slotted dataclasses, not frozen ones, because a frozen dataclass's ``__init__`` goes through
``object.__setattr__`` per field (four times the cost, measured on the hot path).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from multidict import CIMultiDict, CIMultiDictProxy

from schemas.receivers import OIDCProvider


def media_type(header: str | None) -> str:
    """The media type as sent, lower-cased, without parameters; "" when there is no header.

    aiohttp's ``content_type`` reports a missing header as ``application/octet-stream``
    (RFC 9110's default for a recipient guessing), so providers that accept a body without
    one, as Flux does for most of them, would refuse it as octet-stream.
    """
    if header is None:
        return ""
    return header.split(";", 1)[0].strip().lower()


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
        return cls(proxy, body, media_type(proxy.get("Content-Type")), remote)


class Credentials(Protocol):
    """What a provider may read of the Receiver it serves (``receiver.config.spec.ReceiverSpec``
    is one): the keys of its Secret, and the names its load-time refusals quote.

    Read-only properties, which a frozen dataclass's fields satisfy. During a rotation the
    ingress also hands over the same Receiver with its previous token; a provider verifies
    whichever it is given and cannot tell the two apart.
    """

    @property
    def secret(self) -> Mapping[str, bytes]:
        """Every key of the Receiver's Secret, raw bytes as stored."""

    @property
    def token(self) -> bytes:
        """The Secret's ``token``: the HMAC key, or the value compared, of most providers."""

    @property
    def key(self) -> str:
        """``namespace/name`` of the Receiver."""

    @property
    def type(self) -> str:
        """The provider's name, as ``spec.type`` gives it."""

    @property
    def namespace(self) -> str: ...

    @property
    def secret_name(self) -> str | None: ...

    @property
    def oidc_providers(self) -> tuple[OIDCProvider, ...]:
        """``spec.oidcProviders`` (``generic-oidc`` in Flux's form); empty for the others."""


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

    def validate(self, spec: Credentials) -> None:
        """Raise ConfigError if ``spec`` lacks what this provider needs (Secret keys...)."""

    def verify(self, spec: Credentials, request: Request) -> None:
        """Raise SignatureInvalid unless the request is proven to come from the provider."""

    def parse(self, spec: Credentials, request: Request) -> Parsed:
        """Normalise a verified request; raise PayloadInvalid/UnsupportedMediaType, or
        DeadLetter for a body to keep on the dead-letter stream before it is refused."""
