"""Whether every object the long soak's load named is *current* once the system settled.

The books (``books.py``) say each delivery got a reconcile request; they do not say Flux got
to the last one. An object is current when its last ``requestedAt`` equals its
``status.lastHandledReconcileAt`` (the Flux stand-in handled it) and that request came after
the last delivery accepted for the object (seen by the watch after the 202, or named by that
delivery's own ``pipelinerun.queued`` event).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from bench.soak.books import QUEUED
from bench.soak.driving import Delivery
from bench.soak.observing import ReconcileState, SeenEvent, SeenPatch


def currency(
    deliveries: Sequence[Delivery],
    states: dict[str, ReconcileState],
    patches: dict[str, list[SeenPatch]],
    events: Iterable[SeenEvent],
) -> dict[str, Any]:
    """Which targeted objects are current after the drain (see the module docstring).

    The watch time of the last request against the driver's time of the last 202 settles
    almost every object; an object whose last request landed in the same turn of the
    harness's event loop as that 202 is settled by the delivery's own ``queued`` event naming
    that request instead.
    """
    last: dict[str, Delivery] = {}
    for d in deliveries:
        if d.accepted_at is None:
            continue
        for obj in d.hook.targets:
            before = last.get(obj)
            if before is None or (before.accepted_at or 0.0) < d.accepted_at:
                last[obj] = d
    seen = {obj: {p.requested_at: p.seen_at for p in ps} for obj, ps in patches.items()}
    doubtful: dict[str, str] = {}  # object -> the reconcile request its last delivery needs
    reasons: dict[str, str] = {}
    for obj, d in last.items():
        state = states.get(obj)
        if state is None or state.requested_at is None:
            reasons[obj] = "no reconcile request on the object"
        elif state.handled_at != state.requested_at:
            reasons[obj] = f"Flux handled {state.handled_at}, last request {state.requested_at}"
        elif (seen_at := seen.get(obj, {}).get(state.requested_at)) is None:
            reasons[obj] = f"last request {state.requested_at} never seen by the watch"
        elif seen_at < (d.accepted_at or 0.0):
            doubtful[obj] = state.requested_at
    if doubtful:
        named = {
            (e.delivery_id, e.run_id)
            for e in events
            if e.type.startswith(QUEUED) and e.run_id and e.run_id.rpartition("@")[0] in doubtful
        }
        for obj, requested_at in doubtful.items():
            if (last[obj].delivery_id, f"{obj}@{requested_at}") not in named:
                reasons[obj] = (
                    f"last request {requested_at} came before the last delivery "
                    f"{last[obj].delivery_id} was accepted"
                )
    return {
        "objects": len(states),
        "targeted": len(last),
        "current": len(last) - len(reasons),
        "settled_by_event": len(doubtful) - sum(1 for obj in doubtful if obj in reasons),
        "not_current": [f"{obj}: {why}" for obj, why in sorted(reasons.items())[:20]],
        "not_current_count": len(reasons),
    }
