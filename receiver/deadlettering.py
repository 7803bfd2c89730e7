"""Keeping bodies nobody can parse: the ingress half of the dead-letter stream.

Some senders post what no provider understands (Jenkins' HTTP sink posts a plain string to a
CDEvents endpoint). Refusing such a body with a 400 alone would lose it, so a provider raises
:class:`~receiver.errors.DeadLetter` and the ingress calls :func:`store` before answering: the
raw body goes to ``<dead prefix>.ingress.<reason>`` with headers naming the Receiver, its
provider and the reason, with the same PubAck guarantee as events. A failed store raises
:class:`~receiver.errors.NotStored` (503), so the sender retries instead of the body vanishing.

The ``Nats-Msg-Id`` is derived from the Receiver and the body digest, so a sender retrying
the same bytes leaves one dead letter. A body larger than the server's ``max_payload`` is
stored truncated (``Fluxrelay-Truncated`` carries the original size) rather than refused
with 503, which would make the sender retry something that can never fit.
"""

from __future__ import annotations

import logging

from receiver.config.spec import ReceiverSpec
from receiver.errors import DeadLetter
from receiver.normalising import event_id
from receiver.providers.base import Request
from receiver.providers.common import body_digest
from receiver.state import IngressState
from schemas.subjects import dead_subject

log = logging.getLogger(__name__)

STAGE = "ingress"
HEADER_ROOM = 8192
"""Bytes of ``max_payload`` left for headers and subject when a body must be truncated."""


def _header_safe(value: str, limit: int = 256) -> str:
    """A header value that cannot break the NATS header block (printable ASCII, bounded)."""
    return "".join(c if " " <= c <= "~" else "?" for c in value[:limit])


def dead_letter_headers(
    spec: ReceiverSpec, request: Request, error: DeadLetter, size: int
) -> dict[str, str]:
    """Headers of a dead letter: who received it, why it was refused, what it claimed to be."""
    headers = {
        "Nats-Msg-Id": event_id(spec, "dead:" + body_digest(request.body)),
        "Fluxrelay-Receiver": spec.key,
        "Fluxrelay-Provider": spec.type,
        "Fluxrelay-Reason": error.dead_reason,
        "Fluxrelay-Detail": _header_safe(error.reason),
        "Fluxrelay-Body-Size": str(size),
    }
    content_type = request.headers.get("Content-Type")
    if content_type:
        headers["Content-Type"] = _header_safe(content_type)
    return headers


async def store(
    state: IngressState, spec: ReceiverSpec, request: Request, error: DeadLetter
) -> None:
    """Store ``request``'s raw body as a dead letter; raise NotStored if JetStream did not ack."""
    subject = dead_subject(STAGE, error.dead_reason, state.settings.stream.dead_subject_prefix)
    body = request.body
    headers = dead_letter_headers(spec, request, error, len(body))
    room = max(state.publisher.max_payload - HEADER_ROOM, 0)
    if len(body) > room:
        body = body[:room]
        headers["Fluxrelay-Truncated"] = str(len(request.body))
    stored = await state.publisher.publish_dead(subject, body, headers)
    log.info(
        "stored unparseable body as a dead letter",
        extra={
            "receiver": spec.key,
            "provider": spec.type,
            "reason": error.dead_reason,
            "stream": stored.stream,
            "seq": stored.seq,
        },
    )
