"""One log line now and then for something that can happen once per request or event.

Why: a line per occurrence lets whoever sets the input rate set the log volume. The long
soak's CDEvents outboxes, full at 500 deliveries/s, logged 710,962 "dropped" warnings from
one replica in nine minutes (140 MB); the receiver's malformed-request lines were the same
kind of risk before they were spaced out. What happens per occurrence is counted in a
metric; the log says that it is happening, and how many occurrences went unlogged since its
last line.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Spaced:
    """Allows one line per ``every`` seconds and counts the occurrences in between."""

    def __init__(self, every: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self._clock = clock
        self._last = float("-inf")
        self._skipped = 0

    def due(self) -> int | None:
        """``None``: stay quiet (counted). Otherwise log now: the occurrences not logged
        since the last line."""
        now = self._clock()
        if now - self._last < self.every:
            self._skipped += 1
            return None
        skipped, self._skipped, self._last = self._skipped, 0, now
        return skipped


def since_last(skipped: int, what: str) -> str:
    """The tail of a spaced line: ``"; 12 more <what> since the last such line"``, or nothing."""
    return f"; {skipped} more {what} since the last such line" if skipped else ""
