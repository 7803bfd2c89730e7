"""The long soak's books per phase: which deliveries and events each fault answers for.

``books.reconcile`` judges one segment with one fault; the long run has all its faults on one
system, so its books are kept for the whole run (by ``long.py``) and, here, per phase: from
the load's start, each fault's phase runs to halfway through the quiet after it (and from
halfway through the quiet before it); the slope window is a phase of its own. A delivery
belongs to the phase it was first sent in, an event to its delivery's phase. Per-phase books
leave out the patch counts (a patch of one phase may explain deliveries of another); the
totals have them.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from bench.soak.books import Window, chain_id_of, reconcile
from bench.soak.driving import Delivery
from bench.soak.observing import SeenEvent, SeenPatch
from bench.soak.plan import FaultWindow


def phase_windows(
    windows: Sequence[FaultWindow], started: float, load_end: float, slope_window: float
) -> list[tuple[str, Window]]:
    """Each fault's phase, from halfway through the quiet before it to halfway through the
    quiet after it (the first from the load's start), and the slope window on its own."""
    tail = max(started, load_end - slope_window)
    out: list[tuple[str, Window]] = []
    for i, w in enumerate(windows):
        begin = started if i == 0 else started + (windows[i - 1].end_s + w.start_s) / 2
        end = tail if i == len(windows) - 1 else started + (w.end_s + windows[i + 1].start_s) / 2
        out.append((w.fault, Window(begin, started + w.start_s, started + w.end_s, end)))
    out.append(("slope window (quiet)", Window(tail, tail, tail, load_end)))
    return out


PATCH_FIELDS = ("patches", "unexplained_patches", "deliveries_per_patch")


def phase_books(
    deliveries: Sequence[Delivery],
    patches: dict[str, list[SeenPatch]],
    nats_events: Sequence[SeenEvent],
    http_events: Sequence[SeenEvent],
    phases: Sequence[tuple[str, Window]],
    started: float,
) -> list[dict[str, Any]]:
    """``books.reconcile`` per phase: the deliveries first sent in it and their events."""
    starts = [w.load_start for _, w in phases]
    by_phase: list[list[Delivery]] = [[] for _ in phases]
    chain_phase: dict[str, int] = {}
    for d in deliveries:
        i = max(0, bisect.bisect_right(starts, d.first_sent) - 1)
        by_phase[i].append(d)
        if d.envelope_id:
            chain_phase[chain_id_of(d.envelope_id)] = i

    def split(events: Sequence[SeenEvent]) -> list[list[SeenEvent]]:
        out: list[list[SeenEvent]] = [[] for _ in phases]
        for event in events:
            i = chain_phase.get(event.chain_id or "")
            if i is not None:
                out[i].append(event)
        return out

    nats_by, http_by = split(nats_events), split(http_events)
    out: list[dict[str, Any]] = []
    for i, (name, window) in enumerate(phases):
        books = reconcile(by_phase[i], patches, nats_by[i], http_by[i], window).as_dict()
        for key in PATCH_FIELDS:
            books.pop(key)
        out.append(
            {
                "phase": name,
                "from_s": round(window.load_start - started, 1),
                "to_s": round(window.load_end - started, 1),
                **books,
            }
        )
    return out
