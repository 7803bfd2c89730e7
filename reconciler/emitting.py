"""Emitting: fan planned CDEvents out to every configured sink, each in its own spec version.

A planned event (``reconciler.chaining.Planned``) is built once per spec release that some sink
speaks (0.5.1 by default, 0.4.1 for consumers such as Flux's ``cdevents`` Receiver); every
build is validated against the project's schemas by the builders, and a build that fails is a
bug: counted, logged, and that event skipped, never a crash of reconciliation. Handing an event
to a sink only puts it in the sink's bounded outbox (``Sink.offer``), so emitting never waits
for the network.

Encoding is left to the sinks: the bytes depend on the transport, not only on the release
(JetStream gets compact UTF-8 JSON and NATS headers, HTTP the SDK's ``json.dumps`` spacing,
its header spelling and the sink's own auth), so a build shared here would still be encoded
per sink. Each sink encodes it once, when it queues it (``reconciler.sinks.outbox``).

Ids this process emitted recently are remembered, so a redelivered message that re-plans the
same chain does not re-post it to HTTP sinks (the JetStream sink would drop it by
``Nats-Msg-Id`` anyway).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence

from reconciler.chaining import Planned
from reconciler.outcome_metrics import OutcomeMetrics
from reconciler.sinks.base import Sink
from schemas.cdevents import Event, SpecRelease

log = logging.getLogger(__name__)

RECENT_MEMORY = 20_000


class Emitter:
    """Builds each planned event per spec release and offers it to every sink."""

    def __init__(self, sinks: Sequence[Sink], metrics: OutcomeMetrics) -> None:
        self.sinks = tuple(sinks)
        self._metrics = metrics
        self._recent: OrderedDict[str, None] = OrderedDict()

    async def start(self) -> None:
        for sink in self.sinks:
            await sink.start()

    async def close(self, grace: float) -> None:
        """Give every sink ``grace`` seconds (together) to deliver its outbox, then stop."""
        await asyncio.gather(*(sink.close(grace) for sink in self.sinks))

    def emit(self, planned: Planned) -> None:
        """Offer ``planned`` to every sink; never blocks, never raises."""
        if planned.id in self._recent:
            self._recent.move_to_end(planned.id)
            return
        self._recent[planned.id] = None
        while len(self._recent) > RECENT_MEMORY:
            self._recent.popitem(last=False)
        built: dict[str, Event | None] = {}
        for sink in self.sinks:
            version = sink.release.version
            if version not in built:
                built[version] = self._build(planned, sink.release)
            event = built[version]
            if event is not None:
                sink.offer(event, planned.extensions)
        if any(event is not None for event in built.values()):
            self._metrics.emitted.labels(planned.type_key).inc()

    def _build(self, planned: Planned, release: SpecRelease) -> Event | None:
        try:
            return planned.build(release)
        except Exception:
            self._metrics.build_errors.labels(planned.type_key).inc()
            log.exception(
                "cannot build %s %s for spec %s",
                planned.type_key,
                planned.id,
                release.version,
                extra={"delivery_id": planned.delivery_id},
            )
            return None
