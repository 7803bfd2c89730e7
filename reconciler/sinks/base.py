"""The abstract sink: what the emitter and the process see of every CDEvents sink, and the two
ways one try of a send can fail.

:class:`Sink` is a Protocol rather than a base class so that the emitter's tests can hand it a
plain recording object; the sinks themselves share their machinery through
:class:`reconciler.sinks.outbox.OutboxSink`, which satisfies it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from schemas.cdevents import Event, SpecRelease


class Sink(Protocol):
    """A destination for CDEvents with a bounded outbox."""

    name: str
    """Label in metrics and logs."""
    release: SpecRelease
    """The CDEvents spec release this sink speaks: the emitter builds each event in it."""

    def offer(self, event: Event, extensions: Mapping[str, str]) -> bool:
        """Queue ``event``; False (counted and logged by the sink) when it cannot be queued.

        Never blocks and never raises: the emitter calls it from the reconciliation path.
        """
        ...

    async def start(self) -> None:
        """Open connections and start delivering."""
        ...

    async def close(self, grace: float) -> None:
        """Deliver what is queued for up to ``grace`` seconds, then stop."""
        ...


class Retry(Exception):
    """This try failed; try again (after ``delay`` seconds at least, if given)."""

    def __init__(self, message: str, delay: float = 0.0) -> None:
        super().__init__(message)
        self.delay = delay


class Rejected(Exception):
    """The sink refused the event for good (retrying would not help)."""
