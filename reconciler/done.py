"""What a delivery already caused: the targets patched for it, kept past its attempt.

A message comes back (a nak after some of its targets failed, an ack lost with its
connection, a nak'd message whose delay ran out) and must patch only what is still missing.
Two memories answer "which of this delivery's targets were patched for already?":

- **local**: the targets this replica patched for its last :data:`LOCAL_ENTRIES` messages,
  oldest out. It answers for a redelivery that comes back to the same replica soon enough.
- **shared**: when a message goes back with some targets patched, their keys are put in a
  JetStream key-value bucket under ``<durable>.<stream sequence>``, which whichever replica
  of that durable takes the redelivery reads. Without it, another replica (or this one,
  once a burst of new deliveries pushed the entry out) patched those targets a second time:
  the 30-minute soak counted 113 double requests after an API outage, where deliveries with
  two targets were nak'd because one of them could not be patched.

Only a redelivery reads the bucket (``num_delivered > 1``), and only a partial failure
writes it, so the steady state costs nothing. It is best effort: a bucket that cannot be
reached costs a double request, which at-least-once delivery allows, never a skipped one
(a target is recorded only once its patch was accepted). Entries expire after
:data:`SHARED_TTL`, and the bucket is bounded in bytes (:data:`SHARED_MAX_BYTES`): a full
bucket refuses new entries (the key-value store's discard policy), which costs the same.

A message is known by its stream sequence and the envelope id it carries, both checked:
the envelope id alone is not unique to a message (a generic webhook's delivery id is its
body's digest, so the same body sent again after the stream's duplicate window is a new
message with the same id, and must be patched for), and the durable in the key keeps shards,
which take the same message through their own durables, apart.

The bucket is nats-py's key-value store (``js.create_key_value``), created at start by the
first replica that finds it missing, as replicated as the events stream, and bound again
later when it could not be then; nothing in it is secret (envelope ids and object keys,
which the CDEvents carry too).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.errors import Error as JetStreamError
from nats.js.kv import KeyValue

from reconciler.metrics import ReconcilerMetrics

log = logging.getLogger(__name__)

LOCAL_ENTRIES = 10_000
"""Messages whose patched targets this replica remembers, oldest out."""
SHARED_TTL = 3600.0
"""Seconds an entry lives in the bucket: far longer than a message keeps coming back (10
deliveries with nak delays up to 60 s and 30 s ack waits take minutes)."""
SHARED_MAX_BYTES = 64 * 1024 * 1024
"""Bytes the bucket may hold (~250 bytes an entry with two targets: 250,000 entries)."""
SHARED_MAX_VALUE = 64 * 1024
"""An entry larger than this (a wildcard delivery with hundreds of targets done) is not
shared: its redelivery patches them again."""
BIND_RETRY = 30.0
"""Seconds between attempts to bind a bucket that could not be bound."""
_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")  # what a key-value key may hold (fullmatch)

_NOTHING: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Stored:
    """One stored message: its sequence in the events stream and the envelope id it carries."""

    seq: int
    envelope_id: str


async def open_bucket(js: JetStreamContext, bucket: str, events_stream: str) -> KeyValue:
    """Bind the bucket, creating it (as replicated as ``events_stream``) when missing."""
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        pass
    replicas = (await js.stream_info(events_stream)).config.num_replicas or 1
    config = KeyValueConfig(
        bucket=bucket,
        description="fluxrelay reconciler: targets already patched for a redelivered message",
        history=1,
        ttl=SHARED_TTL,
        max_bytes=SHARED_MAX_BYTES,
        storage=StorageType.FILE,
        replicas=replicas,
        direct=True,
    )
    try:
        kv = await js.create_key_value(config)
    except (NatsError, JetStreamError) as e:  # another replica created it at the same time
        try:
            return await js.key_value(bucket)
        except BucketNotFoundError:
            raise e from None
    log.info("created key-value bucket %s (%d replica(s))", bucket, replicas)
    return kv


class DoneMemory:
    """Which targets (``ObjectRef.key``) were patched for each message of one durable."""

    def __init__(
        self,
        metrics: ReconcilerMetrics,
        durable: str = "",
        opener: Callable[[], Awaitable[KeyValue]] | None = None,
        local_entries: int = LOCAL_ENTRIES,
    ) -> None:
        """``opener`` binds the shared bucket (``None``: local only); ``durable`` prefixes
        its keys."""
        self.metrics = metrics
        self.local_entries = local_entries
        self.durable = durable
        self.bucket: KeyValue | None = None
        """The shared memory once bound."""
        self._opener = opener if _KEY.fullmatch(durable) else None
        self._bind_after = 0.0
        self._warned = False
        self._local: OrderedDict[Stored, set[str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._local)

    async def bind(self) -> KeyValue | None:
        """The bucket, bound now if it is not yet (at most every :data:`BIND_RETRY` s)."""
        if self.bucket is not None or self._opener is None:
            return self.bucket
        if time.monotonic() < self._bind_after:
            return None
        try:
            self.bucket = await self._opener()
        except (NatsError, JetStreamError, TimeoutError) as e:
            self._bind_after = time.monotonic() + BIND_RETRY
            level = logging.DEBUG if self._warned else logging.WARNING
            self._warned = True
            log.log(
                level,
                "no shared done memory yet (%s): a message redelivered to another replica "
                "may patch its done targets again",
                e,
            )
        return self.bucket

    async def recall(self, stored: Stored, num_delivered: int) -> frozenset[str] | set[str]:
        """The targets patched for this message so far: what this replica remembers and, for
        a redelivery, what the replica that last nak'd it shared (read even when this replica
        remembers some: with three targets, each replica may have done a different one)."""
        known = self._local.get(stored, _NOTHING)
        if num_delivered <= 1:
            return known
        bucket = await self.bind()
        if bucket is None:
            return known
        try:
            entry = await bucket.get(self._key(stored))
        except KeyNotFoundError:
            self.metrics.done_shared.labels("absent").inc()
            return known
        except (NatsError, JetStreamError, TimeoutError) as e:
            self.metrics.done_shared.labels("failed").inc()
            log.debug("cannot read what was done for message %d: %s", stored.seq, e)
            return known
        try:
            doc = json.loads(entry.value or b"{}")
            keys = doc["done"] if doc.get("id") == stored.envelope_id else None
            recalled = {k for k in keys if isinstance(k, str)} if keys is not None else None
        except (ValueError, TypeError, KeyError, AttributeError):  # not what share() writes
            self.metrics.done_shared.labels("failed").inc()
            return known
        if recalled is None:  # another message under a reused sequence (a recreated stream)
            self.metrics.done_shared.labels("absent").inc()
            return known
        self.metrics.done_shared.labels("recalled").inc()
        self._store(stored, recalled)
        return recalled | known

    def remember(self, stored: Stored, key: str) -> None:
        """``key`` was patched for this message (its patch was accepted)."""
        self._store(stored, (key,))

    async def share(self, stored: Stored, done: Iterable[str]) -> None:
        """Before this message goes back: let the replica that takes it know what is done
        (``done``: every target patched for it so far, passed in rather than read back from
        the local memory, which a burst may have moved past it meanwhile)."""
        done = set(done)
        if not done:
            return
        value = json.dumps(
            {"id": stored.envelope_id, "done": sorted(done)}, separators=(",", ":")
        ).encode()
        if len(value) > SHARED_MAX_VALUE:
            self.metrics.done_shared.labels("too_large").inc()
            return
        bucket = await self.bind()
        if bucket is None:
            return
        try:
            await bucket.put(self._key(stored), value)
        except (NatsError, JetStreamError, TimeoutError) as e:
            self.metrics.done_shared.labels("failed").inc()
            log.debug("cannot share what was done for message %d: %s", stored.seq, e)
            return
        self.metrics.done_shared.labels("shared").inc()

    def _key(self, stored: Stored) -> str:
        return f"{self.durable}.{stored.seq}"

    def _store(self, stored: Stored, keys: Iterable[str]) -> None:
        self._local.setdefault(stored, set()).update(keys)
        self._local.move_to_end(stored)
        while len(self._local) > self.local_entries:
            self._local.popitem(last=False)
