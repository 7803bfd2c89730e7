"""Turning raw records (deliveries, watch events, API requests) into benchmark numbers.

Everything here is pure: the harness collects what the load generator, the watcher and the
fault proxy recorded, and these functions decide what was seen when. Times are
``time.monotonic()`` values, which on Linux share one clock across processes, so the load
generator's send and response times compare directly with the watcher's event times.

Attribution: each delivery carries the value it expects in the ``fluxrelay.io/delivery``
annotation (fluxrelay's envelope id from the 202 body; for webhook+kubectl the
``X-GitHub-Delivery`` the script writes), so a watch event is matched to the delivery that
caused it, never guessed from timing.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Delivery:
    """One webhook delivery as the load generator saw it."""

    index: int
    object: str
    attribution: str | None  # expected fluxrelay.io/delivery value; None when not accepted
    due: float
    sent: float | None
    done: float | None
    status: int | None

    @property
    def accepted(self) -> bool:
        return self.status is not None and 200 <= self.status < 300 and self.sent is not None

    @staticmethod
    def from_json(raw: Mapping[str, Any]) -> Delivery:
        return Delivery(
            index=int(raw["index"]),
            object=str(raw["object"]),
            attribution=raw.get("attribution"),
            due=float(raw["due"]),
            sent=raw.get("sent"),
            done=raw.get("done"),
            status=raw.get("status"),
        )


@dataclass(frozen=True)
class Seen:
    """One watch event on a watched object: when it arrived and the two annotations."""

    at: float
    object: str
    requested_at: str | None
    delivery: str | None


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (``p`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def first_seen(events: Iterable[Seen]) -> dict[tuple[str, str], float]:
    """``(object, delivery annotation) -> first time a watch event carried it``."""
    out: dict[tuple[str, str], float] = {}
    for event in events:
        if event.delivery is None:
            continue
        key = (event.object, event.delivery)
        if key not in out or event.at < out[key]:
            out[key] = event.at
    return out


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def statuses(deliveries: Sequence[Delivery]) -> dict[str, int]:
    """How the sent deliveries were answered (``"error"``: no answer)."""
    out: dict[str, int] = {}
    for d in deliveries:
        if d.sent is not None:
            key = str(d.status) if d.status is not None else "error"
            out[key] = out.get(key, 0) + 1
    return out


def latency_summary(deliveries: Sequence[Delivery], events: Sequence[Seen]) -> dict[str, Any]:
    """Per delivery: response -> annotation seen, and send -> annotation seen (p50/p99, ms)."""
    seen = first_seen(events)
    from_response: list[float] = []
    from_send: list[float] = []
    missing = 0
    for d in deliveries:
        if not d.accepted or d.attribution is None:
            continue
        at = seen.get((d.object, d.attribution))
        if at is None:
            missing += 1
            continue
        assert d.sent is not None and d.done is not None
        from_response.append(at - d.done)
        from_send.append(at - d.sent)
    response_times = [d.done - d.sent for d in deliveries if d.accepted and d.done and d.sent]
    return {
        "statuses": statuses(deliveries),
        "deliveries": len(deliveries),
        "accepted": sum(d.accepted for d in deliveries),
        "seen": len(from_send),
        "missing": missing,
        "response_to_annotation_p50_ms": ms(percentile(from_response, 50)),
        "response_to_annotation_p99_ms": ms(percentile(from_response, 99)),
        "send_to_annotation_p50_ms": ms(percentile(from_send, 50)),
        "send_to_annotation_p99_ms": ms(percentile(from_send, 99)),
        "response_time_p50_ms": ms(percentile(response_times, 50)),
        "response_time_p99_ms": ms(percentile(response_times, 99)),
    }


def max_in_window(times: Sequence[float], window: float = 1.0) -> int:
    """The most timestamps inside any half-open interval ``[t, t + window)``."""
    ordered = sorted(times)
    best = 0
    start = 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


WINDOWS_S = (1.0, 2.0, 5.0, 10.0)
JITTER_S = 0.1
"""Timing slack of the bound check: the fault proxy stamps a request when the API server's
answer starts, so stamps carry the server's latency (tens of ms when 100 requests arrive at
once) and a window may hold up to ``qps * JITTER_S`` more than the bucket released in it."""


def rate_summary(
    patch_times: Sequence[float], request_times: Sequence[float], qps: float, burst: int
) -> dict[str, Any]:
    """API requests against the client's token bucket: at most ``burst + qps * T`` in any
    window of ``T`` seconds (checked for 1, 2, 5 and 10 s), give or take :data:`JITTER_S`."""
    out: dict[str, Any] = {
        "patches": len(patch_times),
        "requests": len(request_times),
        "bound_per_1s": burst + qps,
        "max_patches_1s": max_in_window(patch_times),
        "max_requests_1s": max_in_window(request_times),
    }
    worst = 0.0
    for window in WINDOWS_S:
        bound = burst + qps * window
        seen = max_in_window(request_times, window)
        out[f"max_requests_{window:g}s"] = seen
        worst = max(worst, seen / bound)
        if seen > bound + qps * JITTER_S:
            out["within_bound"] = False
    out.setdefault("within_bound", True)
    out["worst_window_vs_bound"] = round(worst, 3)
    if len(request_times) >= 2:
        first, last = min(request_times), max(request_times)
        out["mean_requests_per_s"] = round(len(request_times) / max(last - first, 1e-9), 1)
    if len(patch_times) >= 2:
        first, last = min(patch_times), max(patch_times)
        out["mean_patches_per_s"] = round(len(patch_times) / max(last - first, 1e-9), 1)
    return out


def writes_summary(events: Sequence[Seen]) -> dict[str, Any]:
    """Annotation writes as the watch saw them: events whose delivery annotation changed."""
    previous: dict[str, str | None] = {}
    times: list[float] = []
    for event in sorted(events, key=lambda e: e.at):
        if event.delivery is not None and previous.get(event.object) != event.delivery:
            times.append(event.at)
        previous[event.object] = event.delivery
    return {"writes": len(times), "max_writes_1s": max_in_window(times)}


def burst_summary(
    deliveries: Sequence[Delivery],
    events: Sequence[Seen],
    final: Mapping[str, tuple[str | None, str | None]],
    bound_s: float,
) -> dict[str, Any]:
    """Did every object's last delivery reach it, and how long after the burst ended?

    An object is current once the watch saw its last accepted delivery's annotation; the
    burst ends when the load generator sent its last delivery. ``final`` holds each object's
    annotations (requestedAt, delivery) read back after the run, for the record.
    """
    seen = first_seen(events)
    accepted = [d for d in deliveries if d.accepted]
    last: dict[str, Delivery] = {}
    for d in accepted:
        assert d.sent is not None
        if d.object not in last or d.sent > (last[d.object].sent or 0.0):
            last[d.object] = d
    objects = sorted({d.object for d in deliveries})
    burst_end = max((d.sent for d in accepted if d.sent is not None), default=None)
    first_sent = min((d.sent for d in accepted if d.sent is not None), default=None)
    lags: list[float] = []
    stale: list[str] = []
    for name in objects:
        latest = last.get(name)
        at = seen.get((name, latest.attribution)) if latest and latest.attribution else None
        if at is None or burst_end is None:
            stale.append(name)
            continue
        lags.append(at - burst_end)
    sent = [d for d in deliveries if d.sent is not None]
    worst = max(lags) if lags else None
    final_is_last = sum(
        1 for name, x in last.items() if final.get(name, (None, None))[1] == x.attribution
    )
    return {
        "statuses": statuses(deliveries),
        "deliveries_planned": len(deliveries),
        "deliveries_sent": len(sent),
        "deliveries_accepted": len(accepted),
        "deliveries_failed": len(sent) - len(accepted),
        "send_rate_per_s": (
            round(len(accepted) / (burst_end - first_sent), 1)
            if burst_end is not None and first_sent is not None and burst_end > first_sent
            else None
        ),
        "objects": len(objects),
        "objects_current": len(objects) - len(stale),
        "objects_final_annotation_is_last_delivery": final_is_last,
        "last_object_current_after_burst_s": round(worst, 3) if worst is not None else None,
        "median_object_current_after_burst_s": (
            round(statistics.median(lags), 3) if lags else None
        ),
        "bound_after_burst_s": bound_s,
        "all_current_within_bound": not stale and worst is not None and worst <= bound_s,
    }


def median_of(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Key by key: the median of numbers, ``"k/n"`` runs for verdicts, the first of the rest."""
    out: dict[str, Any] = {}
    keys: list[str] = []
    for run in runs:
        keys.extend(k for k in run if k not in keys)
    for key in keys:
        values = [run[key] for run in runs if key in run and run[key] is not None]
        if not values:
            out[key] = None
        elif all(isinstance(v, bool) for v in values):
            out[key] = f"{sum(values)}/{len(values)}"
        elif all(isinstance(v, int | float) for v in values):
            out[key] = round(statistics.median(values), 3)
        elif all(isinstance(v, Mapping) for v in values):
            out[key] = median_of(values)
        else:
            out[key] = values[0]
    return out
