"""Receiver settings: one frozen tree, built once from flags and ``FLUXRELAY_*`` variables.

Every field documents itself; ``receiver.cli`` turns the same table into ``--help`` and the
README's configuration reference, so the three cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from schemas import subjects

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
    publish_timeout: float = 5.0
    """Seconds to wait for JetStream's PubAck before answering 503."""
    retry_after: int = 5
    """``Retry-After`` seconds sent with a 503 when the event could not be stored."""
    reload_interval: float = 2.0
    """Seconds between checks of the config file for changes."""
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    stream: StreamSettings = field(default_factory=StreamSettings)
