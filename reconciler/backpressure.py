"""Backpressure: when a replica stops pulling, so that what it holds has a ceiling.

JetStream is the buffer: a delivery left in the stream costs the reconciler nothing, one
pulled costs memory until its patch is done. So before every pull the consumer asks
:meth:`Backpressure.room` how many messages it may take, and takes none while a bound is
reached. Every bound is independent of the input rate (the README's memory budget table
lists them with their bytes per entry):

``in_flight``
    deliveries held (``--max-in-flight``);
``in_flight_bytes``
    bytes held (``--max-in-flight-bytes``): a message is charged :data:`DECODED_FACTOR`
    times its stored size while its body is needed (decoded for CEL filters and targeting),
    then :data:`ROUTED_BYTES` once the body is dropped and only routing fields remain. A pull
    asks the server for no more bytes than that room holds (``max_bytes``, see
    ``reconciler.pulling``), so one pull cannot overshoot; with nothing held, one message of
    any size the server allows is always let through;
``objects_waiting``
    Flux objects waiting for a patch (``--max-objects-waiting``, by default what the API
    budget can patch within one ack wait, ``qps x ack_wait``: a delivery for an object
    beyond that could not be patched before the server wants its ack);
``memory``
    the process's RSS at or above the high-water mark of ``--memory-limit`` (by default the
    container's cgroup limit): pulling drops to a trickle of one fetch batch in flight rather
    than to zero, because a Python heap seldom returns memory to the system and a full stop
    might never end.

Each reason is exported as ``fluxrelay_reconciler_paused{reason}`` (1 while it holds pulling
back), with the held counts and the memory figures beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from reconciler.metrics import ReconcilerMetrics
from runtime import memory

log = logging.getLogger(__name__)

REASONS = ("in_flight", "in_flight_bytes", "objects_waiting", "memory")

DECODED_FACTOR = 5
"""A stored body is charged this many times its size while it is decoded: the JSON of the
providers' documented payloads (tests/receiver/fixtures) takes 2.6 to 4.9 times its text as
Python objects, measured with tracemalloc. Crafted JSON (a body of empty objects) takes ~24
times; the receiver's body limit bounds one such message (3 MiB -> ~72 MiB), and only a
sender holding the Receiver's secret gets one stored."""

MIN_PULL_BYTES = 64 * 1024
"""Below this much room a pull waits: smaller pulls would mostly come back empty (409)."""

ROUTED_BYTES = 8192
"""What one delivery held after its body is dropped is charged: an upper bound of what it
costs, its message handle, decoded routing fields, the task working on it and its place in
its object's batch (5.9 KB measured by ``tests/reconciler/test_memory_budget.py``, which
fails if it grows past this)."""


@dataclass(frozen=True)
class Room:
    """What the next pull may ask for."""

    count: int
    max_bytes: int

    def __bool__(self) -> bool:
        return self.count > 0 and self.max_bytes > 0


@dataclass(frozen=True)
class Limits:
    """The bounds one replica pulls within (resolved from the settings)."""

    max_in_flight: int
    max_in_flight_bytes: int
    max_objects_waiting: int
    memory_limit: int | None
    """Bytes; None when neither ``--memory-limit`` nor a cgroup limit is known."""
    high_water: float = 0.8
    """Fraction of ``memory_limit`` at which pulling drops to a trickle."""
    trickle: int = 128
    """Deliveries held at most while memory is above the high-water mark."""

    @property
    def high_water_bytes(self) -> int | None:
        return None if self.memory_limit is None else int(self.memory_limit * self.high_water)


class Backpressure:
    """Counts what the consumer holds and says how much more it may pull."""

    def __init__(
        self,
        limits: Limits,
        metrics: ReconcilerMetrics,
        objects_waiting: Callable[[], int] = lambda: 0,
        *,
        rss: Callable[[], int | None] = memory.rss,
    ) -> None:
        self.limits = limits
        self._metrics = metrics
        self._objects_waiting = objects_waiting
        self._rss = rss
        self.held = 0
        self.held_bytes = 0
        self.max_message = 1024 * 1024
        """The server's ``max_payload`` (set once connected): the most one message can add."""
        self.over_memory = False
        self._paused: dict[str, bool] = dict.fromkeys(REASONS, False)
        for reason in REASONS:
            metrics.paused.labels(reason).set(0)
        if limits.memory_limit is not None:
            metrics.memory_limit.set(limits.memory_limit)

    # ------------------------------------------------------------------------- accounting

    def hold(self, charge: int) -> None:
        """A message was pulled; it is charged ``charge`` bytes until released."""
        self.held += 1
        self.held_bytes += charge

    def recharge(self, old: int, new: int) -> None:
        """A held message now costs ``new`` bytes instead of ``old`` (its body was dropped)."""
        self.held_bytes += new - old

    def release(self, charge: int) -> None:
        """A held message was settled."""
        self.held -= 1
        self.held_bytes -= charge

    # ---------------------------------------------------------------------------- deciding

    def room(self, wanted: int) -> Room:
        """How many of ``wanted`` messages, and how many stored bytes, may be pulled now
        (none: paused, see the reasons)."""
        limits = self.limits
        count_cap = limits.trickle if self.over_memory else limits.max_in_flight
        count = max(0, min(wanted, count_cap - self.held))
        bytes_left = limits.max_in_flight_bytes - self.held_bytes - count * ROUTED_BYTES
        max_bytes = max(0, bytes_left // DECODED_FACTOR)
        if self.held == 0:  # one message the server allows always gets through
            max_bytes = max(max_bytes, self.max_message)
        waiting = self._objects_waiting()
        self._set("in_flight", self.held >= limits.max_in_flight)
        self._set("in_flight_bytes", max_bytes < MIN_PULL_BYTES)
        self._set("objects_waiting", waiting >= limits.max_objects_waiting)
        self._set("memory", self.over_memory and self.held >= count_cap)
        self._metrics.in_flight.set(self.held)
        self._metrics.in_flight_bytes.set(self.held_bytes)
        self._metrics.objects_waiting.set(waiting)
        if waiting >= limits.max_objects_waiting or max_bytes < MIN_PULL_BYTES:
            return Room(0, 0)
        return Room(count, max_bytes)

    @property
    def paused(self) -> tuple[str, ...]:
        """The reasons holding pulling back right now."""
        return tuple(reason for reason, on in self._paused.items() if on)

    def _set(self, reason: str, on: bool) -> None:
        if self._paused[reason] != on:
            self._paused[reason] = on
            self._metrics.paused.labels(reason).set(1 if on else 0)
            if on:
                log.info("pulling paused: %s", reason, extra={"reason": reason})
            else:
                log.info("pulling resumed: %s", reason, extra={"reason": reason})

    # ------------------------------------------------------------------------------ memory

    def check_memory(self) -> None:
        """Sample RSS against the high-water mark (a one-line read of /proc)."""
        resident = self._rss()
        if resident is None:
            return
        self._metrics.resident_bytes.set(resident)
        high = self.limits.high_water_bytes
        over = high is not None and resident >= high
        if over != self.over_memory:
            self.over_memory = over
            if over:
                log.warning(
                    "memory at %d MiB, over the high-water mark of %d MiB: pulling slows to "
                    "%d deliveries in flight",
                    resident >> 20,
                    (high or 0) >> 20,
                    self.limits.trickle,
                )

    async def watch_memory(self, interval: float = 1.0) -> None:
        """Sample memory every ``interval`` seconds until cancelled."""
        while True:
            with contextlib.suppress(OSError):
                self.check_memory()
            await asyncio.sleep(interval)
