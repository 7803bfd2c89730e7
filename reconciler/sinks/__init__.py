"""Sinks: delivering emitted CDEvents to JetStream and to HTTP endpoints, without ever
holding up reconciliation and without losing an event silently.

- :mod:`~reconciler.sinks.base`: :class:`Sink`, what the emitter sees of every sink, and the
  two ways a try fails (:class:`Retry`, :class:`Rejected`);
- :mod:`~reconciler.sinks.outbox`: the bounded outbox, its ordered, windowed, retrying worker
  and the drop accounting every sink shares; an event is encoded once, when it is queued;
- :mod:`~reconciler.sinks.jetstream`: :class:`NatsSink`, CloudEvents NATS binary mode,
  counted sent on the PubAck;
- :mod:`~reconciler.sinks.http`: :class:`HttpSink`, CloudEvents HTTP binary mode with
  optional bearer or HMAC auth;
- :mod:`~reconciler.sinks.options`: ``--cdevents-sink`` values to settings (start-up only).

:func:`build_sinks` is the one place that knows which sinks exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.outcome_metrics import OutcomeMetrics
from reconciler.settings import CDEventsSettings
from reconciler.sinks.http import HttpSink, signature
from reconciler.sinks.jetstream import NatsSink, stream_config
from reconciler.sinks.options import parse_sink_option
from reconciler.sinks.outbox import OutboxSink, RetryPolicy

__all__ = [
    "HttpSink",
    "NatsSink",
    "OutboxSink",
    "RetryPolicy",
    "build_sinks",
    "parse_sink_option",
    "signature",
    "stream_config",
]


def build_sinks(
    nats_url: str,
    settings: CDEventsSettings,
    metrics: OutcomeMetrics,
    connect_options: Mapping[str, Any] | None = None,
) -> list[OutboxSink[Any]]:
    """The sinks ``settings`` asks for (JetStream first, then HTTP in the given order);
    ``connect_options`` carry the process's NATS TLS and credentials."""
    out: list[OutboxSink[Any]] = []
    if settings.nats:
        out.append(NatsSink(nats_url, settings, metrics, connect_options=connect_options))
    out.extend(HttpSink(sink, settings, metrics) for sink in settings.sinks)
    return out
