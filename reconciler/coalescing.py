"""Coalescing: many deliveries for one object inside a short window become one patch.

A push storm (a monorepo merge train, a registry pushing every tag) names the same Flux
object many times a second; Flux would reconcile once anyway, so one reconcile request is
enough. The first delivery for an object opens a batch and its window; every delivery for the
same object joins it until the window ends and the batch's patch starts. Patches for one
object never overlap: while one is in flight (waiting for the rate limit, retrying) the next
batch keeps gathering, so a slow API server means more coalescing, not more requests.

Every delivery waits for the patch that covered it and gets its outcome (success with the
``requestedAt`` value, or the error), so a message is acked only when its own patch is done;
the patch carries all envelope ids it covered for the outcome stage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from reconciler.kinds import ObjectRef
from reconciler.metrics import ReconcilerMetrics
from reconciler.patching import Patched
from schemas.envelope import Envelope

log = logging.getLogger(__name__)

PatchFn = Callable[[ObjectRef, Sequence[Envelope]], Awaitable[Patched]]


@dataclass
class _Batch:
    ref: ObjectRef
    envelopes: dict[str, Envelope] = field(default_factory=dict)
    waiters: list[asyncio.Future[Patched]] = field(default_factory=list)
    closed: bool = False


class Coalescer:
    """Gathers deliveries per object for ``window`` seconds, then patches once."""

    def __init__(self, patch: PatchFn, window: float, metrics: ReconcilerMetrics) -> None:
        self._patch = patch
        self.window = window
        self._metrics = metrics
        self._open: dict[str, _Batch] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def open_batches(self) -> int:
        return len(self._open)

    async def submit(self, ref: ObjectRef, envelope: Envelope) -> Patched:
        """Wait until a patch covering ``envelope`` is done; raise its error if it failed."""
        batch = self._open.get(ref.key)
        if batch is None or batch.closed:
            batch = _Batch(ref)
            self._open[ref.key] = batch
            task = asyncio.create_task(self._flush(batch), name=f"coalesce:{ref.key}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._metrics.coalesced.inc()
        batch.envelopes[envelope["id"]] = envelope
        waiter: asyncio.Future[Patched] = asyncio.get_running_loop().create_future()
        batch.waiters.append(waiter)
        return await asyncio.shield(waiter)

    async def _flush(self, batch: _Batch) -> None:
        await asyncio.sleep(self.window)
        key = batch.ref.key
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            batch.closed = True
            if self._open.get(key) is batch:
                del self._open[key]
            try:
                result = await self._patch(batch.ref, list(batch.envelopes.values()))
            except asyncio.CancelledError:
                for waiter in batch.waiters:
                    waiter.cancel()
                raise
            except Exception as e:
                for waiter in batch.waiters:
                    if not waiter.done():
                        waiter.set_exception(e)
            else:
                for waiter in batch.waiters:
                    if not waiter.done():
                        waiter.set_result(result)
        if key not in self._open and not lock.locked():
            self._locks.pop(key, None)

    async def close(self) -> None:
        """Cancel batches still waiting (their messages are redelivered, never acked)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for batch in self._open.values():
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.cancel()
        self._open.clear()
