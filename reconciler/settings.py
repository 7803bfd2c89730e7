"""Reconciler settings: one frozen tree, built once from flags and ``FLUXRELAY_*`` variables.

Every field documents itself; ``reconciler.cli``'s option table fills it and also renders
``--help`` and ``docs/configuration.md``. The stream names default to the ones the receiver
creates (``schemas.subjects``): the reconciler never creates or changes streams, only its own
durable consumer on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from runtime.natsauth import NatsAuth
from schemas import subjects

DURABLE_BASE = "fluxrelay-reconciler"


@dataclass(frozen=True, kw_only=True)
class ConsumerSettings:
    """The durable pull consumer on the events stream and how deliveries are retried."""

    stream: str = subjects.EVENTS_STREAM
    """Stream of stored deliveries (created by the receiver)."""
    subject_prefix: str = subjects.EVENTS_PREFIX
    """The consumer filters ``<prefix>.>``."""
    dead_stream: str = subjects.DEAD_STREAM
    """Stream of dead letters (created by the receiver)."""
    dead_subject_prefix: str = subjects.DEAD_PREFIX
    """Dead letters go to ``<prefix>.reconciler.<reason>``."""
    done_bucket: str = subjects.DONE_BUCKET
    """Key-value bucket where a replica shares the targets it patched for a message it
    nak'd, so the replica that takes the redelivery patches only the rest
    (``reconciler.done``); created when missing. Empty: not shared."""
    durable: str | None = None
    """Durable name; ``fluxrelay-reconciler`` or ``fluxrelay-reconciler-<shard>`` when unset.
    Replicas of one shard share it (work sharing), shards have their own."""
    ack_wait: float = 30.0
    """Seconds the server waits for an ack before redelivering (a crashed replica's messages
    go to another replica after this). Long work is kept alive with ``in_progress``."""
    max_deliver: int = 10
    """Deliveries of one message before it goes to the dead-letter stream."""
    backoff: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
    """``nak`` delay by delivery count (the last value repeats) when a temporary error gives no
    delay of its own; a ``Retry-After`` from the API server wins when longer."""
    fetch_batch: int = 128
    """Messages asked for per pull request."""
    fetch_timeout: float = 1.0
    """Seconds one pull request waits for messages."""
    max_in_flight: int = 4096
    """Deliveries this replica holds at once (the server bounds all replicas together with
    ``max_ack_pending``). Held deliveries are cheap (routing fields only, see
    ``reconciler.backpressure``) and coalescing needs them: a patch carries every delivery
    waiting for its object, so keeping N objects current at R deliveries/s needs about
    R x N / qps of them in hand."""
    max_in_flight_bytes: int = 64 * 1024 * 1024
    """Bytes the deliveries held may be charged (bodies while they are needed, a fixed
    routing size after); pulling pauses at this bound."""
    max_objects_waiting: int | None = None
    """Flux objects waiting for a patch before pulling pauses. Unset: what the API budget can
    patch within one ack wait, ``qps x ack_wait`` (1,500 at the defaults)."""
    max_ack_pending: int = 16384
    """Unacknowledged messages the server allows across all replicas of the durable."""
    lag_interval: float = 5.0
    """Seconds between consumer-info polls for the lag and redelivery metrics."""

    def durable_name(self, shard: str | None) -> str:
        if self.durable:
            return self.durable
        return f"{DURABLE_BASE}-{subjects.token(shard)}" if shard else DURABLE_BASE

    def nak_delay(self, num_delivered: int) -> float:
        """The configured delay after the ``num_delivered``-th delivery failed."""
        if not self.backoff:
            return 1.0
        return self.backoff[min(max(num_delivered, 1), len(self.backoff)) - 1]


@dataclass(frozen=True, kw_only=True)
class PatchSettings:
    """Kubernetes API discipline for every request the reconciler makes."""

    qps: float = 50.0
    """Client-side requests per second (Flux's controllers default to 50)."""
    burst: int = 100
    """Requests allowed at once above the steady rate (Flux's default 100)."""
    max_concurrency: int = 32
    """Requests in flight at most; the AIMD limiter starts here."""
    min_concurrency: int = 1
    """The limiter never shrinks below this on 429s."""
    attempts: int = 4
    """Tries of one request on 409/429/5xx/connection errors before the message is nak'ed."""
    retry_base: float = 0.2
    """Seconds of the first jittered backoff between tries (doubling, capped by retry_max)."""
    retry_max: float = 5.0
    """Longest backoff between tries of one request."""
    request_timeout: float = 10.0
    """Seconds one API request may take."""
    object_cache_ttl: float = 10.0
    """Seconds a fetched target object is reused by later deliveries. Reads share the QPS
    budget with patches: under a burst, per-delivery GETs would starve the patches (measured
    in bench/e2e). Only successful reads are kept; a target deleted meanwhile answers the
    patch 404, reported like any missing target."""


@dataclass(frozen=True, kw_only=True)
class HttpSinkSettings:
    """One HTTP endpoint CDEvents are POSTed to (CloudEvents binary mode)."""

    url: str = field(repr=False)
    """Where to POST; kept out of reprs because a Flux hook path is itself a secret."""
    name: str
    """Label in metrics and logs (``http-<n>`` unless named)."""
    spec_version: str = "0.5.1"
    """CDEvents spec release this sink speaks (0.4.1 for Flux's ``cdevents`` Receiver)."""
    auth: Literal["none", "bearer", "hmac"] = "none"
    """``bearer``: ``Authorization: Bearer <secret>``; ``hmac``: ``X-Signature: sha256=<hex>``
    over the body."""
    secret: str = field(default="", repr=False)
    """Token or HMAC key, read from a file or variable (never given on the command line)."""


@dataclass(frozen=True, kw_only=True)
class CDEventsSettings:
    """Where the CDEvents the reconciler emits go, and how hard it tries."""

    nats: bool = False
    """Publish to JetStream (subjects = event types, CloudEvents NATS binary mode)."""
    stream: str = subjects.CDEVENTS_STREAM
    """Stream for emitted CDEvents (created on ``dev.cdevents.>`` + ``dev.cdeventsx.>`` if
    missing, left as it is otherwise)."""
    nats_spec_version: str = "0.5.1"
    """CDEvents spec release published to NATS."""
    sinks: tuple[HttpSinkSettings, ...] = ()
    """HTTP sinks (``--cdevents-sink``, repeatable)."""
    source: str = "/fluxrelay/reconciler"
    """``context.source`` of emitted events."""
    outbox_size: int = 10_000
    """Events one sink holds while it cannot deliver; more are dropped and counted."""
    send_window: int = 32
    """Events one sink has in flight at once (concurrent PubAcks or POSTs; events within one
    window may arrive in any order). One at a time, a sink could not keep up with a few
    hundred deliveries/s (each costs about five events); see ``reconciler.sinks``."""
    retry_initial: float = 0.5
    """First delay between tries of one event (doubling with jitter)."""
    retry_max: float = 30.0
    """Longest delay between tries."""
    give_up_after: float = 3600.0
    """Seconds an event is retried before it is counted as failed (expired)."""
    request_timeout: float = 10.0
    """Seconds one POST or PubAck may take."""
    duplicate_window: float = 600.0
    """Duplicate window of a stream this process creates (redeliveries re-emit the same ids)."""
    drain_timeout: float = 10.0
    """Seconds a stopping process gives its sinks to deliver their outboxes."""

    @property
    def enabled(self) -> bool:
        return self.nats or bool(self.sinks)


@dataclass(frozen=True, kw_only=True)
class ReconcilerSettings:
    """Everything ``fluxrelay-reconciler`` needs to run."""

    nats_url: str = "nats://127.0.0.1:4222"
    """NATS server URL(s), comma-separated for a cluster."""
    nats_auth: NatsAuth = field(default_factory=NatsAuth)
    """TLS and credentials for NATS (shared with the receiver: ``runtime.natsauth``)."""
    kubeconfig: Path | None = None
    """Kubeconfig file; the in-cluster service account when absent."""
    config: Path | None = None
    """YAML file of Flux Receiver manifests (Secrets in it are ignored); re-read on change."""
    kubernetes: bool = False
    """Read Receivers from the Kubernetes API (list+watch; never Secrets)."""
    namespace: str | None = None
    """Only Receivers in this namespace (--kubernetes); all namespaces when absent."""
    label_selector: str | None = None
    """Only Receivers matching this label selector (--kubernetes)."""
    shard: str | None = None
    """Act only on objects labelled ``sharding.fluxcd.io/key=<shard>``; without it, only on
    objects that have no such label (Flux's sharding)."""
    allow_cross_namespace: bool = True
    """Let a Receiver target objects in other namespaces (Flux's default; Flux's
    ``--no-cross-namespace-refs`` is ``--no-cross-namespace-refs`` here too)."""
    coalesce_window: float = 0.2
    """At most one patch per object per window: an idle object is patched at once, events
    arriving within the window of its last patch are gathered into the next one."""
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9090
    reload_interval: float = 2.0
    """Seconds between checks of the config file for changes."""
    watch_timeout: int = 300
    """Seconds one Receiver watch request lasts before it is renewed."""
    drain_timeout: float = 20.0
    """Seconds SIGTERM waits for messages in flight before closing (the rest are redelivered)."""
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    consumer: ConsumerSettings = field(default_factory=ConsumerSettings)
    patch: PatchSettings = field(default_factory=PatchSettings)
    memory_limit: int | None = None
    """Bytes of RSS whose high-water mark (80%) slows pulling to a trickle; unset: the
    container's cgroup limit when there is one; 0: off."""
    max_followed: int = 20_000
    """Deliveries whose reconcile requests are followed to their outcome at once; past it the
    oldest request gives up with an ``error`` outcome (counted, reported, never silent)."""
    outcome_timeout: float = 600.0
    """Seconds a reconcile request is followed before its outcome is an error (timed out);
    0 turns outcome watching (and with it MTTP and finished events) off."""
    cdevents: CDEventsSettings = field(default_factory=CDEventsSettings)

    @property
    def durable(self) -> str:
        return self.consumer.durable_name(self.shard)

    @property
    def objects_waiting_limit(self) -> int:
        """``max_objects_waiting``, or the objects the API budget patches in one ack wait."""
        if self.consumer.max_objects_waiting is not None:
            return self.consumer.max_objects_waiting
        return max(1, math.ceil(self.patch.qps * self.consumer.ack_wait))
