"""Who sent a request: the peer address, or the client a trusted proxy forwarded for, and
whether a Receiver's ``fluxrelay.io/allowed-sources`` annotation lets that address in.

``X-Forwarded-For`` is only believed from peers listed in ``--trusted-proxies``: anyone else
could write any address there. From a trusted peer the list is walked from the right (the
entry the nearest proxy appended) past every trusted proxy; the first address that is not a
trusted proxy is the client. This serves providers that sign nothing (dockerhub, quay, acr),
whose only other proof is the hook path.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

from receiver.errors import ConfigError
from receiver.settings import Network, parse_networks

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_SOURCES_ANNOTATION = "fluxrelay.io/allowed-sources"
"""Receiver annotation: comma-separated addresses/CIDRs; absent means every source."""


MAX_ADDRESS_TEXT = 80
"""Longest entry read as an address: the longest IPv6 text (45 characters) with a zone id,
brackets and a port fits in it. Longer entries are no address, and are not cached."""


def parse_address(text: str | None) -> Address | None:
    """An address from a peer name or a forwarded entry (``[v6]`` and ``v4:port`` accepted).

    Cached by the stripped text: a handful of peers (providers' webhook senders, the
    ingress controller) make nearly every request, and parsing is a visible share of a
    request's cost. A forwarded entry is whatever a client wrote, up to a whole header line
    (8 KB); an entry too long to be an address is refused before the cache, which would
    otherwise keep thousands of them (8,192 x 8 KB: 64 MiB).
    """
    if not text:
        return None
    value = text.strip()
    if len(value) > MAX_ADDRESS_TEXT:
        return None
    return _parse_address(value)


@functools.lru_cache(maxsize=8192)
def _parse_address(value: str) -> Address | None:
    if value.startswith("["):
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=8192)
def text(address: Address) -> str:
    """``str(address)``, cached for the same reason as :func:`parse_address`."""
    return str(address)


def _within(address: Address, networks: Sequence[Network]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


def client_address(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]
) -> Address | None:
    """The request's source: ``peer`` unless it is a trusted proxy, then the rightmost
    forwarded address that is not one (an unparseable entry stops the walk at the hop that
    added it). None when the peer address is unknown."""
    address = parse_address(peer)
    if address is None or not trusted or not _within(address, trusted):
        return address
    entries = [e for header in forwarded_for for e in header.split(",") if e.strip()]
    for entry in reversed(entries):
        hop = parse_address(entry)
        if hop is None:
            return address
        address = hop
        if not _within(address, trusted):
            return address
    return address


def allowed_sources(annotations: dict[str, str] | None, where: str) -> tuple[Network, ...]:
    """The Receiver's allow-list; empty when not annotated. ConfigError when malformed (an
    annotation that is present but empty is refused too: it would read as "allow all")."""
    if not annotations or ALLOWED_SOURCES_ANNOTATION not in annotations:
        return ()
    try:
        networks = parse_networks(annotations[ALLOWED_SOURCES_ANNOTATION])
    except ValueError as e:
        raise ConfigError(f"{where}: annotation {ALLOWED_SOURCES_ANNOTATION}: {e}") from e
    if not networks:
        raise ConfigError(f"{where}: annotation {ALLOWED_SOURCES_ANNOTATION}: empty")
    return networks


def source_allowed(address: Address | None, networks: Sequence[Network]) -> bool:
    """True when no allow-list is set, or ``address`` is in it (unknown addresses are not)."""
    if not networks:
        return True
    return address is not None and _within(address, networks)
