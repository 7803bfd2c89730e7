"""Stream and subject names: the addresses both sides agree on.

Kept in one place so the receiver (publisher), the reconciler (consumer) and operators'
NATS subscriptions cannot drift apart. Kubernetes names may contain dots, which NATS uses as
token separators, so names are escaped into single tokens before they go into a subject.
"""

from __future__ import annotations

import re

EVENTS_STREAM = "FLUXRELAY_EVENTS"
"""Default JetStream stream that stores accepted deliveries."""
EVENTS_PREFIX = "fluxrelay.events"
DEAD_STREAM = "FLUXRELAY_DEAD"
"""Default stream for dead letters: unparseable ingress bodies and poison messages."""
DEAD_PREFIX = "fluxrelay.dead"
DONE_BUCKET = "FLUXRELAY_DONE"
"""Default key-value bucket where the reconciler shares the targets it patched for a message
it nak'd (``reconciler.done``); its stream is ``KV_FLUXRELAY_DONE``."""
CDEVENTS_STREAM = "CDEVENTS"
"""Default stream for emitted CDEvents; subjects equal the CloudEvent type."""
CDEVENTS_SUBJECTS = ("dev.cdevents.>", "dev.cdeventsx.>")

RECEIVER_INBOX_PREFIX = "_INBOX.fluxrelay-receiver"
"""Where the receiver's replies (PubAcks, JetStream API answers) come back.

Each process takes replies under its own prefix so that NATS permissions can let it
subscribe there and nowhere else: with the common ``_INBOX.>`` any user could subscribe to
every other client's replies, which include the messages JetStream delivers to the
reconciler's pull requests, i.e. the stored webhook bodies. Both prefixes stay under
``_INBOX.`` so a server that grants ``_INBOX.>`` keeps working. deploy/nats/single/auth.conf
grants exactly these."""
RECONCILER_INBOX_PREFIX = "_INBOX.fluxrelay-reconciler"
"""Where the reconciler's replies come back: consumer deliveries, PubAcks of dead letters
and CDEvents, JetStream API answers (see :data:`RECEIVER_INBOX_PREFIX`)."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def token(value: str) -> str:
    """Escape ``value`` into one NATS subject token (dots, wildcards, spaces removed).

    The escape is only for routing and filtering: the envelope carries the true names.
    """
    escaped = _UNSAFE.sub("_", value)
    return escaped or "_"


def event_subject(provider: str, namespace: str, name: str, prefix: str = EVENTS_PREFIX) -> str:
    """Subject of a stored delivery: ``fluxrelay.events.<provider>.<namespace>.<receiver>``."""
    return f"{prefix}.{token(provider)}.{token(namespace)}.{token(name)}"


def dead_subject(stage: str, reason: str, prefix: str = DEAD_PREFIX) -> str:
    """Subject of a dead letter: ``fluxrelay.dead.<stage>.<reason>``."""
    return f"{prefix}.{token(stage)}.{token(reason)}"


def cdevent_subject(event_type: str) -> str:
    """Subject of an emitted CDEvent: its CloudEvent type, as subscribers expect.

    ``dev.cdevents.pipelinerun.finished.0.2.0`` stays as is, so ``dev.cdevents.pipelinerun.>``
    selects every version of that subject's events.
    """
    return ".".join(token(part) for part in event_type.split("."))
