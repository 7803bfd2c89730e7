"""Process state the handlers share, held in typed aiohttp ``AppKey``s (no module globals)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from receiver.config.table import ReceiverTable
from receiver.limiting import Limiter
from receiver.metrics import IngressMetrics
from receiver.publishing import Publisher
from receiver.settings import ReceiverSettings


@dataclass
class IngressState:
    """The current receiver table (swapped whole on reload) and the shared services."""

    settings: ReceiverSettings
    publisher: Publisher
    metrics: IngressMetrics
    table: ReceiverTable = field(default_factory=lambda: ReceiverTable({}))
    loaded: bool = False
    """True once a table was loaded from the configured source (readiness)."""
    receiver_limiter: Limiter | None = None
    """Token buckets per Receiver (``--rate-limit-receiver``); made from the settings."""
    source_limiter: Limiter | None = None
    """Token buckets per source address (``--rate-limit-source``); made from the settings."""
    previous_token_warned: set[tuple[str, str]] = field(default_factory=set)
    """(Receiver, previous hook path) pairs already logged as still in use."""

    def __post_init__(self) -> None:
        s = self.settings
        if self.receiver_limiter is None and s.rate_limit_receiver is not None:
            self.receiver_limiter = Limiter(s.rate_limit_receiver, s.rate_limit_sources_max)
        if self.source_limiter is None and s.rate_limit_source is not None:
            self.source_limiter = Limiter(s.rate_limit_source, s.rate_limit_sources_max)


STATE = web.AppKey("fluxrelay_ingress_state", IngressState)
