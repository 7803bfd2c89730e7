"""Rate limits of the hook endpoint: a token bucket per Receiver and per source address.

Buckets (``runtime.tokenbucket``, the one the reconciler paces its API calls with) live in a
bounded least-recently-used map, so a flood from many addresses costs bounded memory (the
address seen least recently is forgotten first: forgetting a bucket only ever lets a client
start again with a full one). A refused request is told, in whole seconds and at least 1,
when its bucket will have a token again; it is refused before its body is read.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict

from receiver.settings import Rate
from runtime.tokenbucket import Clock, TokenBucket


class Limiter:
    """Token buckets keyed by any hashable, at most ``max_keys`` of them."""

    def __init__(self, rate: Rate, max_keys: int, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[object, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: object) -> float:
        """Take one token for ``key``: 0.0 when allowed, else seconds until one is there."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.rate.per_second, self.rate.burst, clock=self._clock)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take()


def retry_after(wait: float) -> str:
    """``Retry-After`` for a wait in seconds: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(wait)))
