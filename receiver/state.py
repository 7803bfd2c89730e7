"""Process state the handlers share, held in typed aiohttp ``AppKey``s (no module globals)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from receiver.metrics import IngressMetrics
from receiver.publishing import Publisher
from receiver.registry import ReceiverTable
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


STATE = web.AppKey("fluxrelay_ingress_state", IngressState)
