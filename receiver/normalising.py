"""From a verified, parsed delivery to stored messages: envelope, ids, trace context, headers.

The message id is derived from receiver + provider delivery id, so a provider's redelivery
maps to the same ``Nats-Msg-Id`` (stored once) and the same envelope ``id`` (the 202 body is
identical too). Each message is a CloudEvent in NATS binary mode.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from receiver.errors import PayloadInvalid
from receiver.providers.base import Item, Parsed
from receiver.receivers import ReceiverSpec
from schemas import envelope, natsbinding, subjects

_TRACEPARENT = re.compile(r"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")


@dataclass(frozen=True, slots=True)
class Message:
    """One message ready to publish."""

    id: str
    subject: str
    payload: bytes
    headers: dict[str, str]


def event_id(spec: ReceiverSpec, delivery_id: str) -> str:
    """Stable id of a stored event: same receiver + delivery id, same id."""
    digest = hashlib.sha256(f"{spec.namespace}/{spec.name}\x00{delivery_id}".encode())
    return digest.hexdigest()[:32]


def traceparent(incoming: str | None) -> str:
    """Continue the caller's W3C trace when it sent a valid one, else start a new trace."""
    if incoming:
        candidate = incoming.strip().lower()
        if _TRACEPARENT.match(candidate):
            return candidate
    # Trace ids need uniqueness, not secrecy: the PRNG avoids a getrandom syscall per event.
    trace_id = random.getrandbits(128) or 1
    span_id = random.getrandbits(64) or 1
    return f"00-{trace_id:032x}-{span_id:016x}-01"


def messages(
    spec: ReceiverSpec,
    parsed: Parsed,
    received_at: datetime,
    trace: str,
    stream_prefix: str = subjects.EVENTS_PREFIX,
) -> list[Message]:
    """Envelope every item of ``parsed`` and wrap it as a binary-mode CloudEvent."""
    received = received_at.isoformat().replace("+00:00", "Z")
    subject = subjects.event_subject(spec.type, spec.namespace, spec.name, stream_prefix)
    out: list[Message] = []
    for item in parsed.items:
        doc = build(spec, parsed, item, received, trace)
        payload = encode(doc, parsed.raw_payload)
        headers = natsbinding.to_headers(
            {
                "specversion": "1.0",
                "id": doc["id"],
                "source": f"/fluxrelay/receivers/{spec.namespace}/{spec.name}",
                "type": envelope.CLOUDEVENT_TYPE,
                "subject": item.delivery_id,
                "time": received,
                "traceparent": trace,
            }
        )
        headers["Nats-Msg-Id"] = doc["id"]
        out.append(Message(doc["id"], subject, payload, headers))
    return out


def encode(doc: dict[str, Any], raw_payload: bytes | None) -> bytes:
    """The envelope as compact JSON; a verbatim JSON body is spliced in, not re-encoded."""
    if raw_payload is None:
        try:
            return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        except UnicodeEncodeError as e:  # a lone surrogate a provider let through
            raise PayloadInvalid("payload: text is not valid Unicode") from e
    head = dict(doc)
    del head["payload"]
    text = json.dumps(head, separators=(",", ":"), ensure_ascii=False).encode()
    return text[:-1] + b',"payload":' + raw_payload.strip() + b"}"


def build(
    spec: ReceiverSpec, parsed: Parsed, item: Item, received: str, trace: str
) -> dict[str, Any]:
    """The envelope document (see ``schemas/envelope/v1.schema.json``)."""
    doc: dict[str, Any] = {
        "specversion": envelope.ENVELOPE_SPECVERSION,
        "id": event_id(spec, item.delivery_id),
        "receiver": {"namespace": spec.namespace, "name": spec.name},
        "provider": spec.type,
        "event": parsed.event,
        "delivery_id": item.delivery_id,
        "received_at": received,
        "traceparent": trace,
    }
    doc.update(item.fields)
    if item.event is not None:
        doc["event"] = item.event
    doc["payload"] = parsed.payload
    return doc
