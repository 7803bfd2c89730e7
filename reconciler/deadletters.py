"""Dead letters: a message the reconciler gives up on, stored with why, never dropped.

The dead-letter stream keeps the message as it was stored (headers and bytes, from the
message itself or, once the consumer dropped its body, from the events stream by sequence)
with the reason, the error, the stream sequence and the delivery count in headers. Messages
that run out of deliveries without a replica seeing their last one (a replica crashing
repeatedly on it) are announced by the server's MAX_DELIVERIES advisory and dead-lettered
from the stream copy; a ``Nats-Msg-Id`` per stream sequence keeps that to one dead letter
when several replicas hear the advisory, or when a replica and the advisory both store it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import Error as JetStreamError

from reconciler.metrics import ReconcilerMetrics
from reconciler.settings import ConsumerSettings
from schemas import subjects

log = logging.getLogger(__name__)

STAGE = "reconciler"
REASON_HEADER = "Fluxrelay-Dead-Reason"
ERROR_HEADER = "Fluxrelay-Dead-Error"
SEQ_HEADER = "Fluxrelay-Stream-Seq"
DELIVERIES_HEADER = "Fluxrelay-Deliveries"
MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"


def _header_text(text: str, limit: int = 512) -> str:
    """One safe header line (NATS headers cannot carry line breaks)."""
    return " ".join(text.split())[:limit]


class DeadLetters:
    """Stores the dead letters of one durable consumer."""

    def __init__(
        self,
        js: JetStreamContext,
        settings: ConsumerSettings,
        durable: str,
        metrics: ReconcilerMetrics,
    ) -> None:
        self.js = js
        self.settings = settings
        self.durable = durable
        self.metrics = metrics

    async def store(self, msg: Msg, reason: str, error: str) -> None:
        """Dead-letter a message this replica holds (raises when it cannot be stored)."""
        headers, data = msg.headers, msg.data
        if not data:  # dropped once targeted: the stream has the stored copy
            stored = await self.js.get_msg(self.settings.stream, msg.metadata.sequence.stream)
            headers, data = stored.headers, stored.data or b""
        await self._publish(
            headers, data, reason, error, msg.metadata.sequence.stream, msg.metadata.num_delivered
        )

    def advisory_subject(self) -> str:
        return f"{MAX_DELIVERIES_ADVISORY}.{self.settings.stream}.{self.durable}"

    async def on_max_deliveries(self, advisory: Msg) -> None:
        """A message ran out of deliveries without a final settle here: dead-letter it."""
        try:
            doc: dict[str, Any] = json.loads(advisory.data)
            seq = int(doc["stream_seq"])
            stored = await self.js.get_msg(self.settings.stream, seq)
            await self._publish(
                stored.headers,
                stored.data or b"",
                "max_deliveries",
                f"no acknowledgement after {doc.get('deliveries')} deliveries",
                seq,
            )
        except (ValueError, KeyError, NatsError, JetStreamError, TimeoutError) as e:
            log.warning("cannot dead-letter after max deliveries: %s", e)

    async def _publish(
        self,
        headers: Mapping[str, str] | None,
        data: bytes,
        reason: str,
        error: str,
        seq: int,
        deliveries: int | None = None,
    ) -> None:
        out: dict[str, str] = {
            k: v for k, v in (headers or {}).items() if k.lower() != "nats-msg-id"
        }
        out[REASON_HEADER] = reason
        out[ERROR_HEADER] = _header_text(error)
        out[SEQ_HEADER] = str(seq)
        if deliveries is not None:
            out[DELIVERIES_HEADER] = str(deliveries)
        out["Nats-Msg-Id"] = f"{self.settings.stream}:{self.durable}:{seq}"
        await self.js.publish(
            subjects.dead_subject(STAGE, reason, self.settings.dead_subject_prefix),
            data,
            stream=self.settings.dead_stream,
            headers=out,
        )
        self.metrics.dead_letters.labels(reason).inc()
