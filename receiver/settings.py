"""Receiver settings: one frozen tree, built once from flags and ``FLUXRELAY_*`` variables.

Every field documents itself; ``receiver.cli``'s option table fills it and also renders
``--help`` and ``docs/configuration.md``, so the three cannot drift.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from runtime.natsauth import NatsAuth
from schemas import subjects

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MiB = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class StreamSettings:
    """The JetStream stream the receiver creates or updates at start."""

    name: str = subjects.EVENTS_STREAM
    """Stream name."""
    subject_prefix: str = subjects.EVENTS_PREFIX
    """Deliveries go to ``<prefix>.<provider>.<namespace>.<receiver>``; the stream binds
    ``<prefix>.>``."""
    storage: Literal["file", "memory"] = "file"
    """``file`` survives a nats-server restart; ``memory`` does not (tests, benchmarks)."""
    replicas: int = 1
    """Stream replicas; 3 on a NATS cluster so losing a node loses no event."""
    max_age: float = 7 * 24 * 3600.0
    """Seconds a stored delivery is kept (it is also the replay horizon)."""
    duplicate_window: float = 3600.0
    """Seconds in which a redelivered webhook (same receiver + delivery id) is stored once."""
    max_bytes: int = -1
    """Byte cap of the stream (-1: unlimited); the oldest events go first when reached."""
    dead_name: str = subjects.DEAD_STREAM
    """Stream of dead letters (unparseable CDEvents bodies, poison messages)."""
    dead_subject_prefix: str = subjects.DEAD_PREFIX
    """Subjects of dead letters: ``<prefix>.<stage>.<reason>``."""


@dataclass(frozen=True, slots=True)
class Rate:
    """A token bucket: ``per_second`` refill rate, ``burst`` capacity."""

    per_second: float
    burst: float

    @classmethod
    def parse(cls, raw: str) -> Rate:
        """``RATE[/BURST]``, RATE in requests per second (> 0); BURST defaults to
        max(1, RATE). Raises ValueError."""
        rate_text, sep, burst_text = raw.strip().partition("/")
        per_second = float(rate_text)
        burst = float(burst_text) if sep else max(1.0, per_second)
        if not per_second > 0 or not burst >= 1 or per_second == float("inf"):
            raise ValueError(f"rate must be > 0 and burst >= 1: {raw!r}")
        return cls(per_second, burst)


def parse_networks(raw: str) -> tuple[Network, ...]:
    """Comma- or space-separated addresses and CIDRs (a bare address is a /32 or /128).
    Raises ValueError naming the bad entry."""
    out: list[Network] = []
    for part in raw.replace(",", " ").split():
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError as e:
            raise ValueError(f"not an address or CIDR: {part!r}") from e
    return tuple(out)


@dataclass(frozen=True, kw_only=True)
class ReceiverSettings:
    """Everything ``fluxrelay-receiver`` needs to serve."""

    config: Path | None = None
    """YAML file of Flux Receiver and Secret manifests (reloaded on change and SIGHUP)."""
    kubernetes: bool = False
    """Read Receivers and Secrets from the Kubernetes API instead of a file."""
    kubeconfig: Path | None = None
    """Kubeconfig for --kubernetes; in-cluster service account when absent."""
    namespace: str | None = None
    """Only watch Receivers in this namespace (--kubernetes); all namespaces when absent."""
    label_selector: str | None = None
    """Only serve Receivers matching this label selector (--kubernetes)."""
    nats_url: str = "nats://127.0.0.1:4222"
    """NATS server URL(s), comma-separated for a cluster."""
    listen_host: str = "0.0.0.0"
    listen_port: int = 9292
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9090
    body_limit: int = 3 * MiB
    """Largest accepted body in bytes (Flux: 3 MiB); larger gets 413 before it is read."""
    max_delivery_bytes: int = 4 * MiB
    """Bytes a delivery of several items may store in all, since each of its messages
    carries the payload (past it: 413); a one-item delivery is bounded by ``body_limit``."""
    publish_timeout: float = 5.0
    """Seconds to wait for JetStream's PubAck before answering 503."""
    retry_after: int = 5
    """``Retry-After`` seconds sent with a 503 when the event could not be stored."""
    reload_interval: float = 2.0
    """Seconds between checks of the config file (and the TLS files) for changes."""
    tls_cert: Path | None = None
    """Certificate chain (PEM) of the hook listener; HTTPS when set (with ``tls_key``).
    Both files are re-read when either changes; new handshakes use the new pair."""
    tls_key: Path | None = None
    """Private key (PEM) of ``tls_cert``."""
    header_timeout: float = 15.0
    """Seconds a connection may take to send a complete request head, counted from its
    opening or from the previous answer on it (slow-header clients are closed)."""
    read_timeout: float = 30.0
    """Seconds the request body may take to arrive; a slower body is cut off with 408."""
    rate_limit_receiver: Rate | None = None
    """Token bucket per Receiver (429 with ``Retry-After`` when empty); none when absent."""
    rate_limit_source: Rate | None = None
    """Token bucket per source address, checked before the hook path is looked up."""
    rate_limit_sources_max: int = 65536
    """Source addresses tracked at most (least recently seen forgotten first)."""
    trusted_proxies: tuple[Network, ...] = ()
    """Peers whose ``X-Forwarded-For`` is believed (the client is the rightmost address not
    itself a trusted proxy); other peers are the source themselves."""
    nats_auth: NatsAuth = field(default_factory=NatsAuth)
    """TLS and credentials for the NATS connection."""
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    stream: StreamSettings = field(default_factory=StreamSettings)
