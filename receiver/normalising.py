"""From a verified, parsed delivery to stored messages: envelope, ids, trace context, headers.

The message id is derived from receiver + provider delivery id, so a provider's redelivery
maps to the same ``Nats-Msg-Id`` (stored once) and the same envelope ``id`` (the 202 body is
identical too). Each message is a CloudEvent in NATS binary mode, its headers encoded here
as NATS header lines (:mod:`runtime.natsheaders`): the Receiver's constant ones once, the
per-event ones from values that cannot break a line (hex ids, an ISO timestamp, a validated
or generated traceparent, a percent-encoded delivery id).
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson

from receiver.config.spec import ReceiverSpec
from receiver.errors import DeliveryTooLarge, PayloadInvalid
from receiver.providers.base import Item, Parsed
from runtime import natsheaders
from schemas import envelope, natsbinding, subjects

_TRACEPARENT = re.compile(r"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")


@dataclass(slots=True)
class Message:
    """One message ready to publish; ``headers`` are NATS header lines. (Not frozen: built
    per event, never changed, and a frozen ``__init__`` costs four times as much.)"""

    id: str
    subject: str
    payload: bytes
    headers: bytes
    delivery: str
    """The item's :func:`delivery_key`, worked out once: the ingress logs it too."""


MAX_DELIVERY_ID = 256
"""Characters of a provider's delivery id kept as is. Ids come from the sender (a header, a
body field: ACR's ``id``, a CDEvent's ``context.id``) and are copied into the envelope and
the ``ce-subject`` header; a 3 MiB id made a message NATS refused by dropping the connection.
Real ids are UUIDs, hashes or short numbers."""


def delivery_key(delivery_id: str) -> str:
    """The delivery id as stored: itself, or ``sha256:<hex>`` of it when longer than
    :data:`MAX_DELIVERY_ID` (a redelivery of the same id maps to the same key, so dedup
    still holds)."""
    if len(delivery_id) <= MAX_DELIVERY_ID:
        return delivery_id
    return "sha256:" + hashlib.sha256(delivery_id.encode("utf-8", "surrogatepass")).hexdigest()


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


def timestamp(seconds: float) -> str:
    """``seconds`` since the epoch as RFC 3339 UTC with microseconds (``...T10:54:18.011742Z``).

    The date and time of day are formatted once per second: ``datetime.now(UTC).isoformat()``
    costs two and a half times as much per delivery, and drops the fraction when it is zero
    (this always writes six digits, so stamps sort as text).
    """
    whole = int(seconds)
    return f"{_second(whole)}.{int((seconds - whole) * 1_000_000):06d}Z"


@functools.lru_cache(maxsize=2)
def _second(whole: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


def messages(
    spec: ReceiverSpec,
    parsed: Parsed,
    received: str,
    trace: str,
    stream_prefix: str = subjects.EVENTS_PREFIX,
    max_bytes: int | None = None,
) -> list[Message]:
    """Envelope every item of ``parsed`` and wrap it as a binary-mode CloudEvent;
    ``received`` is the :func:`timestamp` of its arrival.

    A delivery of several items stores the payload once per item, so what it stores in all
    is bounded by ``max_bytes``: past it the delivery is refused (413) before anything is
    published, and no more than that is ever held (each message is counted as it is built).
    """
    subject = event_subject(spec.type, spec.namespace, spec.name, stream_prefix)
    constant = constant_headers(spec.namespace, spec.name)
    out: list[Message] = []
    budget = max_bytes if max_bytes is not None and len(parsed.items) > 1 else None
    for item in parsed.items:
        delivery = delivery_key(item.delivery_id)
        doc = build(spec, parsed, item, received, trace, delivery)
        payload = encode(doc, parsed.raw_payload)
        ident = doc["id"]
        headers = (
            constant
            + (
                f"ce-id: {ident}\r\nce-subject: {natsbinding.encode_value(delivery)}\r\n"
                f"ce-time: {received}\r\nce-traceparent: {trace}\r\nNats-Msg-Id: {ident}\r\n"
            ).encode()
        )
        out.append(Message(ident, subject, payload, headers, delivery))
        if budget is not None:
            budget -= len(payload) + len(headers)
            if budget < 0:
                raise DeliveryTooLarge(
                    f"{len(parsed.items)} items of this delivery would store more than "
                    f"{max_bytes} bytes (each message carries the payload)"
                )
    return out


event_subject = functools.lru_cache(maxsize=4096)(subjects.event_subject)
"""The Receiver's subject, escaped once (three regex substitutions otherwise, per event)."""


@functools.lru_cache(maxsize=4096)
def constant_headers(namespace: str, name: str) -> bytes:
    """The binary-mode header lines that are the same for every event of a Receiver,
    encoded once, not per event (``ce-id`` is per event and added by the caller)."""
    headers = natsbinding.to_headers(
        {
            "specversion": "1.0",
            "id": "-",
            "source": f"/fluxrelay/receivers/{namespace}/{name}",
            "type": envelope.CLOUDEVENT_TYPE,
        }
    )
    del headers["ce-id"]
    return natsheaders.lines(headers)


def encode(doc: dict[str, Any], raw_payload: bytes | None) -> bytes:
    """The envelope as compact JSON; a verbatim JSON body is spliced in, not re-encoded
    (``doc`` then has no ``payload`` of its own: :func:`build` leaves it out).

    orjson writes the same compact UTF-8 JSON as ``json.dumps(separators=(",", ":"),
    ensure_ascii=False)``, several times faster; what it cannot write (integers past 64
    bits from a payload the standard library decoded) falls back to the standard library.
    """
    try:
        text = orjson.dumps(doc)
    except orjson.JSONEncodeError:
        try:
            text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        except UnicodeEncodeError as e:  # a lone surrogate a provider let through
            raise PayloadInvalid("payload: text is not valid Unicode") from e
    if raw_payload is None:
        return text
    return b"".join((text[:-1], b',"payload":', raw_payload.strip(), b"}"))


def build(
    spec: ReceiverSpec,
    parsed: Parsed,
    item: Item,
    received: str,
    trace: str,
    delivery: str,
) -> dict[str, Any]:
    """The envelope document (see ``schemas/envelope/v1.schema.json``); ``delivery`` is the
    item's :func:`delivery_key`."""
    doc: dict[str, Any] = {
        "specversion": envelope.ENVELOPE_SPECVERSION,
        "id": event_id(spec, delivery),
        "receiver": {"namespace": spec.namespace, "name": spec.name},
        "provider": spec.type,
        "event": parsed.event,
        "delivery_id": delivery,
        "received_at": received,
        "traceparent": trace,
    }
    doc.update(item.fields)
    if item.event is not None:
        doc["event"] = item.event
    if parsed.raw_payload is None:  # else :func:`encode` splices the body's own bytes in
        doc["payload"] = parsed.payload
    return doc
