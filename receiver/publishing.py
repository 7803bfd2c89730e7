"""Storing events on JetStream: the stream is ensured at start, every publish awaits PubAck.

The receiver answers 202 only after this module returns, so "accepted" always means "on
disk in the stream". ``Nats-Msg-Id`` lets the stream drop a provider's redelivery inside the
duplicate window. While NATS is unreachable publishing fails fast (no buffering that could
later store what was already answered 503; a retried delivery is deduplicated anyway).

PubAcks are awaited with :class:`runtime.pubacks.AckedPublisher` (one reply subscription,
counter tokens, orjson), which costs about half of nats-py's ``JetStreamContext.publish``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping
from typing import Any

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import Error as JetStreamError
from nats.js.errors import NotFoundError

from receiver.errors import DeliveryTooLarge, NotStored
from receiver.settings import StreamSettings
from runtime import backoff, natsconn
from runtime.natsauth import NatsAuth
from runtime.pubacks import AckedPublisher, NotAcknowledged, Stored
from schemas.subjects import RECEIVER_INBOX_PREFIX

__all__ = ["Publisher", "Stored", "ensure_streams", "stream_configs"]

log = logging.getLogger(__name__)


def stream_configs(settings: StreamSettings) -> list[StreamConfig]:
    """The events stream and the dead-letter stream, as configured."""
    storage = StorageType.FILE if settings.storage == "file" else StorageType.MEMORY

    def config(name: str, prefix: str) -> StreamConfig:
        return StreamConfig(
            name=name,
            subjects=[f"{prefix}.>"],
            storage=storage,
            num_replicas=settings.replicas,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            max_age=settings.max_age,
            duplicate_window=settings.duplicate_window,
            max_bytes=settings.max_bytes,
        )

    return [
        config(settings.name, settings.subject_prefix),
        config(settings.dead_name, settings.dead_subject_prefix),
    ]


async def ensure_streams(js: nats.js.JetStreamContext, settings: StreamSettings) -> None:
    """Create the streams, or update them to the configured settings."""
    for config in stream_configs(settings):
        try:
            await js.stream_info(config.name or "")
        except NotFoundError:
            await js.add_stream(config)
            log.info("created stream %s", config.name)
        else:
            await js.update_stream(config)
            log.info("updated stream %s", config.name)


def _not_stored(e: NotAcknowledged) -> NotStored:
    return NotStored(f"event store did not acknowledge: {e}")


class Publisher:
    """A NATS connection that stays up across server restarts and stores with PubAck."""

    def __init__(
        self,
        servers: str,
        settings: StreamSettings,
        timeout: float,
        auth: NatsAuth | None = None,
    ) -> None:
        self._servers = natsconn.servers(servers)
        self._auth = auth or NatsAuth()
        self._settings = settings
        self._timeout = timeout
        self._nc: Client | None = None
        self._streams_ready = asyncio.Event()
        self._ensure_task: asyncio.Task[None] | None = None
        self.max_payload = 1024 * 1024
        self._connect_options: dict[str, Any] = {}
        self._acks = AckedPublisher(failure=_not_stored)

    @property
    def ready(self) -> bool:
        return self.connected and self._streams_ready.is_set()

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def start(self) -> None:
        """Connect and ensure the streams; if NATS is not up yet, keep trying in the
        background (readiness stays false until both are done). Unusable TLS or credential
        files raise ConfigError here, before anything is served."""
        self._connect_options = self._auth.connect_options()
        self._ensure_task = asyncio.create_task(self._connect_and_ensure(), name="nats-connect")
        await asyncio.sleep(0)

    async def _connect_and_ensure(self) -> None:
        self._nc = await natsconn.connect(
            self._servers,
            # Replies under the receiver's own prefix: NATS permissions let it subscribe
            # there only (schemas.subjects, deploy/nats/single/auth.conf).
            {**self._connect_options, "inbox_prefix": RECEIVER_INBOX_PREFIX},
            # A memory-backed stream is gone after a server restart: recreate it.
            on_reconnected=self._schedule_ensure,
        )
        await self._ensure_loop()

    async def _schedule_ensure(self) -> None:
        if self._ensure_task is None or self._ensure_task.done():
            self._ensure_task = asyncio.create_task(self._ensure_loop(), name="ensure-streams")

    async def _ensure_loop(self) -> None:
        delays = backoff.Backoff(0.2, 5.0)
        while True:
            nc = self._nc
            if nc is not None and nc.is_connected:
                try:
                    if not self._acks.attached:  # once: nats-py renews it on reconnect
                        await self._acks.attach(nc)
                    await ensure_streams(nc.jetstream(timeout=self._timeout), self._settings)
                    self.max_payload = nc.max_payload
                    self._streams_ready.set()
                    return
                except (NatsError, JetStreamError, TimeoutError) as e:
                    log.warning("cannot ensure streams yet: %s", e)
            await asyncio.sleep(delays.next())

    def publish(
        self, subject: str, payload: bytes, headers: Mapping[str, str] | bytes
    ) -> Awaitable[Stored]:
        """Store one event or raise :class:`NotStored`; never returns without a PubAck.

        (Plain functions down to :meth:`AckedPublisher.publish`, which raises ``NotStored``
        itself: one coroutine per delivery instead of three.)"""
        return self._store(self._settings.name, subject, payload, headers)

    def publish_dead(
        self, subject: str, payload: bytes, headers: Mapping[str, str]
    ) -> Awaitable[Stored]:
        """Store a dead letter, with the same guarantee, on the dead-letter stream."""
        return self._store(self._settings.dead_name, subject, payload, headers)

    def _store(
        self, stream: str, subject: str, payload: bytes, headers: Mapping[str, str] | bytes
    ) -> Awaitable[Stored]:
        nc = self._nc
        if nc is None or not nc.is_connected or not self._acks.attached:
            raise NotStored("event store unavailable")
        size = len(payload) + (
            len(headers)
            if isinstance(headers, bytes)
            else sum(len(k) + len(v) + 4 for k, v in headers.items())
        )
        if size > nc.max_payload:
            # Never handed to nats-py: the server answers an oversized message by closing the
            # connection. A retry cannot succeed either, so this is a 413, not a 503.
            raise DeliveryTooLarge(
                f"stored message of {size} bytes exceeds the event store's limit per message "
                f"({nc.max_payload} bytes, NATS max_payload)"
            )
        return self._acks.publish(subject, payload, headers, stream, self._timeout)

    async def close(self) -> None:
        if self._ensure_task is not None:
            self._ensure_task.cancel()
        if self._nc is not None and not self._nc.is_closed:
            try:
                await self._nc.drain()
            except (NatsError, TimeoutError):
                await self._nc.close()
