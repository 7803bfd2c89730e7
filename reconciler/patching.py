"""Requesting a reconcile: the merge patch of ``reconcile.fluxcd.io/requestedAt``.

Flux reconciles an object when this annotation changes and reports the value it handled in
``status.lastHandledReconcileAt``, so every patch must carry a value no earlier patch of
this process carried: timestamps are RFC 3339 with nanoseconds from a strictly increasing
clock. The patch is a JSON merge patch (``application/merge-patch+json``): kubernetes-asyncio
would otherwise send a json-patch content type the API server refuses for a dict body. A
second annotation records the envelope id that caused the request, and a third the newest
message it carried (:class:`Position`, ``fluxrelay.io/stored-through``): every message the
stream stored up to that one is older than the request, which lets any replica tell a
redelivery its request already covers without comparing clocks (``reconciler.coalescing``).

The :class:`Patched` result goes back to the caller (through the coalescer to each delivery
it covered); the consumer hands it to the reporter, so nothing here knows who reports.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from kubernetes_asyncio import client as k8s

from reconciler.errors import Conflict
from reconciler.kinds import DELIVERY_ANNOTATION, REQUESTED_AT, THROUGH_ANNOTATION, ObjectRef
from reconciler.metrics import ReconcilerMetrics
from reconciler.throttling import ApiGate, Ticket
from schemas.envelope import Envelope

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
CONTENT_TYPE: dict[str, Any] = {"_content_type": MERGE_PATCH}
"""Passed as keywords: the generated client's stubs do not declare ``_content_type``."""


@dataclass(frozen=True, slots=True)
class Patched:
    """One reconcile request the API server accepted."""

    ref: ObjectRef
    requested_at: str
    envelope_ids: tuple[str, ...]
    """Every delivery the patch carried (coalesced), in the order they joined it."""
    covered: bool = False
    """No patch was sent: ``requested_at`` is a request someone else (another replica) made
    after every one of these deliveries was stored (``reconciler.coalescing``)."""


def rfc3339_nano(ns: int) -> str:
    """``2025-01-02T03:04:05.123456789Z`` for a Unix time in nanoseconds."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")


def parse_rfc3339(value: str) -> float | None:
    """Unix seconds of an RFC 3339 time with up to nanoseconds (what fluxrelay and the flux
    CLI write into ``requestedAt``, UTC or with an offset); ``None`` for anything else (Flux
    accepts any string there)."""
    found = _RFC3339.fullmatch(value)
    if found is None:
        return None
    base, fraction, zone = found.groups()
    try:
        stamp = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    except ValueError:
        return None
    return stamp.timestamp() + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a message sits: its sequence in the events stream, and which stream that is (the
    stream's creation time, :func:`stream_identity`: a stream created anew starts its
    sequences at 1 again, and another installation's stream has sequences of its own)."""

    seq: int
    stream: str

    def annotation(self) -> str:
        """``<seq>@<stream identity>``."""
        return f"{self.seq}@{self.stream}"

    @classmethod
    def parse(cls, value: object) -> Position | None:
        """The position an annotation names; ``None`` for anything else (anyone who may edit
        the object may write there: a value that is not one covers nothing)."""
        if not isinstance(value, str) or len(value) > 64:
            return None
        seq, at, stream = value.partition("@")
        if not (at and seq.isascii() and seq.isdigit() and parse_rfc3339(stream) is not None):
            return None
        return cls(int(seq), stream)

    def covers(self, other: Position) -> bool:
        """``other`` was stored no later than this message, in the same stream."""
        return other.stream == self.stream and other.seq <= self.seq


def stream_identity(created: datetime) -> str:
    """A stream's identity in :class:`Position`: its creation time as JetStream reports it
    (RFC 3339, microseconds as nats-py decodes it; the same for every replica)."""
    micros = round(created.timestamp() * 1e6)
    return rfc3339_nano(micros * 1000)


class LastRequest(NamedTuple):
    """An object's reconcile request as last seen: ``requestedAt``, the newest message it
    carried when fluxrelay made it, and the object's resource version then (``None`` when
    not there)."""

    requested_at: str | None
    through: str | None
    resource_version: str | None = None

    @classmethod
    def of(cls, metadata: Mapping[str, Any]) -> LastRequest:
        """What an object's metadata (as listed, watched or read) says."""
        annotations = metadata.get("annotations") or {}
        values = (
            annotations.get(REQUESTED_AT),
            annotations.get(THROUGH_ANNOTATION),
            metadata.get("resourceVersion"),
        )
        requested, through, version = (v if isinstance(v, str) else None for v in values)
        return cls(requested, through, version)


class RequestClock:
    """Wall-clock nanoseconds that never repeat or go back within this process."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> str:
        self._last = max(time.time_ns(), self._last + 1)
        return rfc3339_nano(self._last)


def patch_body(
    requested_at: str,
    envelope_id: str,
    through: Position | None = None,
    expect: str | None = None,
) -> dict[str, Any]:
    """The merge patch; without ``through`` the object keeps the one it has (still true: an
    older request's). ``expect``: the resource version the object must still have (the API
    server answers 409 otherwise)."""
    annotations = {REQUESTED_AT: requested_at, DELIVERY_ANNOTATION: envelope_id}
    if through is not None:
        annotations[THROUGH_ANNOTATION] = through.annotation()
    metadata: dict[str, Any] = {"annotations": annotations}
    if expect is not None:
        metadata["resourceVersion"] = expect
    return {"metadata": metadata}


Seen = Callable[[ObjectRef, Mapping[str, Any]], None]
"""Told the object as a request left it (``MetadataCache.saw``), so the next request for it
is conditioned on the version this one made, not on one the watch has not replaced yet."""


class Patcher:
    """Sends reconcile requests through the shared :class:`ApiGate`."""

    def __init__(
        self,
        api: k8s.ApiClient,
        gate: ApiGate,
        metrics: ReconcilerMetrics,
        seen: Seen | None = None,
    ) -> None:
        self._custom = k8s.CustomObjectsApi(api)
        self._gate = gate
        self._metrics = metrics
        self._clock = RequestClock()
        self._seen = seen

    async def patch(
        self,
        ref: ObjectRef,
        envelopes: Sequence[Envelope],
        *,
        ticket: Ticket | None = None,
        through: Position | None = None,
        expect: str | None = None,
    ) -> Patched:
        """Request a reconcile of ``ref`` for ``envelopes`` (the last one is recorded).

        ``ticket``: admission the caller already obtained from the gate (``ApiGate.admit``);
        ``through``: the newest message the request carries; ``expect``: the resource version
        the caller decided on (the request is sent only if the object still has it). Raises
        TemporaryError / PermanentError from the gate, and :class:`Conflict` with the object
        as it is now when it changed since ``expect``.
        """
        started = time.monotonic()
        requested_at = self._clock.next()
        body = patch_body(requested_at, envelopes[-1]["id"], through, expect)

        async def send() -> Any:
            return await self._custom.patch_namespaced_custom_object(
                ref.group,
                ref.version,
                ref.namespace,
                ref.plural,
                ref.name,
                body,
                **CONTENT_TYPE,
            )

        try:
            result = await self._gate.call(
                "patch", ref.key, send, ticket=ticket, conditional=expect is not None
            )
        except Conflict as e:
            self._metrics.patches.labels(ref.kind, "conflict").inc()
            current = await self._read(ref)
            raise Conflict(f"{ref.key}: changed since last seen", current=current) from e
        except Exception as e:
            self._metrics.patches.labels(ref.kind, getattr(e, "reason", "error")).inc()
            raise
        self._metrics.patches.labels(ref.kind, "ok").inc()
        self._metrics.patch_seconds.observe(time.monotonic() - started)
        self._saw(ref, result)
        log.info(
            "requested reconcile at %s for %d delivery(ies)",
            requested_at,
            len(envelopes),
            extra={"object": ref.key, "kind": ref.kind, "event_id": envelopes[-1]["id"]},
        )
        return Patched(ref, requested_at, tuple(env["id"] for env in envelopes))

    async def _read(self, ref: ObjectRef) -> dict[str, Any]:
        """The object's metadata now (after a conflict: who changed it, and to what)."""

        async def get() -> Any:
            return await self._custom.get_namespaced_custom_object(
                ref.group, ref.version, ref.namespace, ref.plural, ref.name
            )

        obj = await self._gate.call("get", ref.key, get)
        self._saw(ref, obj)
        metadata = obj.get("metadata") if isinstance(obj, dict) else None
        return metadata if isinstance(metadata, dict) else {}

    def _saw(self, ref: ObjectRef, obj: Any) -> None:
        if self._seen is not None and isinstance(obj, dict):
            self._seen(ref, obj)
