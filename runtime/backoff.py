"""Retry delays: capped exponential backoff with equal jitter, the one every retry loop uses.

Try ``n`` (1-based) waits a uniformly random time between half and all of
``min(cap, initial * 2**(n-1))`` ("equal jitter"): never less than half the nominal delay,
so a failing dependency is not hammered, and spread enough that replicas restarted together
do not retry in step. ``random`` is the right generator: jitter needs spread, not secrecy.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


def delay(attempt: int, initial: float, cap: float) -> float:
    """Seconds to wait before try number ``attempt`` (1-based) of something that failed."""
    ceiling = min(cap, initial * 2 ** max(attempt - 1, 0))
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not a secret


@dataclass
class Backoff:
    """The delays of one retry loop: :meth:`next` after a failure, :meth:`reset` once the
    thing works again."""

    initial: float
    cap: float
    _attempts: int = field(default=0, init=False)

    def next(self) -> float:
        """The delay before the next try; each call doubles the nominal delay up to ``cap``."""
        self._attempts += 1
        return delay(self._attempts, self.initial, self.cap)

    @property
    def attempts(self) -> int:
        """Delays handed out since the last reset."""
        return self._attempts

    def reset(self) -> None:
        self._attempts = 0
