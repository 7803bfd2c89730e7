"""Requesting a reconcile: the merge patch of ``reconcile.fluxcd.io/requestedAt``.

Flux reconciles an object when this annotation changes and reports the value it handled in
``status.lastHandledReconcileAt``, so every patch must carry a value no earlier patch of
this process carried: timestamps are RFC 3339 with nanoseconds from a strictly increasing
clock. The patch is a JSON merge patch (``application/merge-patch+json``): kubernetes-asyncio
would otherwise send a json-patch content type the API server refuses for a dict body. A
second annotation records the envelope id that caused the request.

The :class:`Patched` result goes back to the caller (through the coalescer to each delivery
it covered); the consumer hands it to the reporter, so nothing here knows who reports.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubernetes_asyncio import client as k8s

from reconciler.kinds import DELIVERY_ANNOTATION, REQUESTED_AT, ObjectRef
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


class RequestClock:
    """Wall-clock nanoseconds that never repeat or go back within this process."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> str:
        self._last = max(time.time_ns(), self._last + 1)
        return rfc3339_nano(self._last)


def patch_body(requested_at: str, envelope_id: str) -> dict[str, Any]:
    return {
        "metadata": {"annotations": {REQUESTED_AT: requested_at, DELIVERY_ANNOTATION: envelope_id}}
    }


class Patcher:
    """Sends reconcile requests through the shared :class:`ApiGate`."""

    def __init__(self, api: k8s.ApiClient, gate: ApiGate, metrics: ReconcilerMetrics) -> None:
        self._custom = k8s.CustomObjectsApi(api)
        self._gate = gate
        self._metrics = metrics
        self._clock = RequestClock()

    async def patch(
        self, ref: ObjectRef, envelopes: Sequence[Envelope], *, ticket: Ticket | None = None
    ) -> Patched:
        """Request a reconcile of ``ref`` for ``envelopes`` (the last one is recorded).

        ``ticket``: admission the caller already obtained from the gate (``ApiGate.admit``).
        Raises TemporaryError / PermanentError from the gate.
        """
        started = time.monotonic()
        requested_at = self._clock.next()
        body = patch_body(requested_at, envelopes[-1]["id"])

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
            await self._gate.call("patch", ref.key, send, ticket=ticket)
        except Exception as e:
            self._metrics.patches.labels(ref.kind, getattr(e, "reason", "error")).inc()
            raise
        self._metrics.patches.labels(ref.kind, "ok").inc()
        self._metrics.patch_seconds.observe(time.monotonic() - started)
        log.info(
            "requested reconcile at %s for %d delivery(ies)",
            requested_at,
            len(envelopes),
            extra={"object": ref.key, "kind": ref.kind, "event_id": envelopes[-1]["id"]},
        )
        return Patched(ref, requested_at, tuple(env["id"] for env in envelopes))
