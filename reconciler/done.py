"""What a delivery already caused: the targets patched for it, kept past its attempt.

A message comes back (a nak after some of its targets failed, an ack lost with its
connection, a nak'd message whose delay ran out) and must patch only what is still missing.
Two memories answer "which of this delivery's targets were patched for already?":

- **local**: the targets this replica patched for its last :data:`LOCAL_ENTRIES` deliveries,
  oldest out. It answers for a redelivery that comes back to the same replica soon enough.
- **shared**: when a message goes back with some targets patched, their keys are put in a
  JetStream key-value bucket under the envelope id, which whichever replica takes the
  redelivery reads. Without it, another replica (or this one, once a burst of new deliveries
  pushed the entry out) patched those targets a second time: the 30-minute soak counted 113
  double requests after an API outage, where deliveries with two targets were nak'd
  because one of them could not be patched.

Only a redelivery reads the bucket (``num_delivered > 1``), and only a partial failure
writes it, so the steady state costs nothing. It is best effort: a bucket that cannot be
reached costs a double request, which at-least-once delivery allows, never a skipped one
(a target is recorded only once its patch was accepted). Entries expire after
:data:`SHARED_TTL`, and the bucket is bounded in bytes (:data:`SHARED_MAX_BYTES`): a full
bucket refuses new entries (the key-value store's discard policy), which costs the same.

The bucket is nats-py's key-value store (``js.create_key_value``), created at start by the
first replica that finds it missing, as replicated as the events stream; nothing in it is
secret (envelope ids and object keys, which the CDEvents carry too).
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from collections.abc import Iterable

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.errors import Error as JetStreamError
from nats.js.kv import KeyValue

from reconciler.metrics import ReconcilerMetrics

log = logging.getLogger(__name__)

LOCAL_ENTRIES = 10_000
"""Deliveries whose patched targets this replica remembers, oldest out."""
SHARED_TTL = 3600.0
"""Seconds an entry lives in the bucket: far longer than a message keeps coming back (10
deliveries with nak delays up to 60 s and 30 s ack waits take minutes), and the receiver's
default duplicate window, so a resent webhook within it is covered too."""
SHARED_MAX_BYTES = 64 * 1024 * 1024
"""Bytes the bucket may hold (~200 bytes an entry with two targets: 300,000 entries)."""
SHARED_MAX_VALUE = 64 * 1024
"""An entry larger than this (a wildcard delivery with hundreds of targets done) is not
shared: its redelivery patches them again."""
_KEY = re.compile(r"^[-/_=.a-zA-Z0-9]+$")  # what a key-value key may hold

_NOTHING: frozenset[str] = frozenset()


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
    """Which targets (``ObjectRef.key``) were patched for each delivery (envelope id)."""

    def __init__(self, metrics: ReconcilerMetrics, local_entries: int = LOCAL_ENTRIES) -> None:
        self.metrics = metrics
        self.local_entries = local_entries
        self.bucket: KeyValue | None = None
        """Shared memory; ``None`` until bound (and when it cannot be), local only then."""
        self._local: OrderedDict[str, set[str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._local)

    async def recall(self, envelope_id: str, num_delivered: int) -> frozenset[str] | set[str]:
        """The targets patched for this delivery so far: what this replica remembers and, for
        a redelivery, what the replica that last nak'd it shared (read even when this replica
        remembers some: with three targets, each replica may have done a different one)."""
        known = self._local.get(envelope_id, _NOTHING)
        if num_delivered <= 1 or self.bucket is None or not _KEY.match(envelope_id):
            return known
        try:
            entry = await self.bucket.get(envelope_id)
        except KeyNotFoundError:
            self.metrics.done_shared.labels("absent").inc()
            return known
        except (NatsError, JetStreamError, TimeoutError) as e:
            self.metrics.done_shared.labels("failed").inc()
            log.debug("cannot read what was done for %s: %s", envelope_id, e)
            return known
        try:
            keys = json.loads(entry.value or b"[]")
            recalled = {k for k in keys if isinstance(k, str)}
        except (ValueError, TypeError):  # not ours (the bucket is writable by the reconciler)
            self.metrics.done_shared.labels("failed").inc()
            return known
        self.metrics.done_shared.labels("recalled").inc()
        self._store(envelope_id, recalled)
        return recalled | known

    def remember(self, envelope_id: str, key: str) -> None:
        """``key`` was patched for this delivery (its patch was accepted)."""
        self._store(envelope_id, (key,))

    async def share(self, envelope_id: str, done: Iterable[str]) -> None:
        """Before this delivery goes back: let the replica that takes it know what is done
        (``done``: every target patched for it so far, passed in rather than read back from
        the local memory, which a burst may have moved past it meanwhile)."""
        done = set(done)
        if not done or self.bucket is None or not _KEY.match(envelope_id):
            return
        value = json.dumps(sorted(done), separators=(",", ":")).encode()
        if len(value) > SHARED_MAX_VALUE:
            self.metrics.done_shared.labels("too_large").inc()
            return
        try:
            await self.bucket.put(envelope_id, value)
        except (NatsError, JetStreamError, TimeoutError) as e:
            self.metrics.done_shared.labels("failed").inc()
            log.debug("cannot share what was done for %s: %s", envelope_id, e)
            return
        self.metrics.done_shared.labels("shared").inc()

    def _store(self, envelope_id: str, keys: Iterable[str]) -> None:
        self._local.setdefault(envelope_id, set()).update(keys)
        self._local.move_to_end(envelope_id)
        while len(self._local) > self.local_entries:
            self._local.popitem(last=False)
