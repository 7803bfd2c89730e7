"""The long soak's verdicts: RSS peaks and least-squares slopes, and every pass/fail of a run.

Apart from the run (``long.py``) so that the arithmetic can be tried on made-up samples
(``tests/soak/test_soak_memory.py`` shows it failing a leak and a budget overrun).

Checks (each printed PASS/FAIL, stored, and any FAIL makes the exit code 1):

- lost = 0 and duplicates = 0 over the whole run (``books.py``; a duplicate is one delivery
  requested twice on an object, which at-least-once allows after a lost ack: the segmented
  soak counted up to 27 in one fault, so this check is strict on purpose);
- drained: the backlog is 0 after settling;
- redelivery: every resend answered 202 ``duplicate`` with the same id, 0 new patches;
- every delivery answered 202 in the end (none refused, none given up), no process crashed,
  every fault injected and healed without error, and before the slope window opened;
- every object is current (``currency.py``);
- per fluxrelay process: peak RSS under ``--reconciler-budget-mib`` (250) /
  ``--receiver-budget-mib`` (100), and the least-squares slope of RSS over the slope window
  (samples after the process's last restart) within noise of zero: **slope <= 0.5 MiB/min
  (``--slope-limit``) or |slope| < 2 standard errors**. 0.5 MiB/min is 30 MiB an hour, small
  against the budgets yet far above what the sampling noise of 120 samples allows (a slope
  error of ~0.1 MiB/min for a few MiB of jitter), so a steady leak of that size fails both.

The nats-servers' RSS is summarised (and plotted) but not judged: it follows the stream
blocks they cache. The backlog's own slope over the slope window is stored and printed too:
RSS can be flat while the backlog grows in NATS.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench.soak.plan import LongOptions


@dataclass(frozen=True)
class Trend:
    """Least-squares line of RSS (MiB) over time (min): slope, its standard error, where."""

    slope: float  # MiB/min
    stderr: float  # MiB/min
    intercept: float  # MiB at from_s
    samples: int
    from_s: float
    to_s: float


def trend(points: Sequence[tuple[float, float]]) -> Trend | None:
    """Fit ``(seconds, MiB)`` points; None with fewer than 3 or no spread in time."""
    n = len(points)
    if n < 3:
        return None
    x0 = points[0][0]
    xs = [(t - x0) / 60 for t, _ in points]
    ys = [y for _, y in points]
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = my - slope * mx
    ssr = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    stderr = math.sqrt(ssr / (n - 2) / sxx)
    return Trend(
        round(slope, 4), round(stderr, 4), round(intercept, 2), n, points[0][0], points[-1][0]
    )


def restarts(samples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every change of a process's pid between samples (a restart: its RSS starts again)."""
    last: dict[str, int] = {}
    out: list[dict[str, Any]] = []
    for s in samples:
        for name, pid in s["pids"].items():
            if pid is None:
                continue
            if name in last and last[name] != pid:
                out.append({"process": name, "t": s["t"], "old_pid": last[name], "pid": pid})
            last[name] = pid
    return out


def rss_summary(
    samples: Sequence[dict[str, Any]], window_from: float, window_to: float
) -> dict[str, dict[str, Any]]:
    """Per process: peak RSS (MiB, every pid it had) and the trend over ``[window_from,
    window_to]`` s, from the samples of the pid it had last in that window (after its last
    restart)."""
    names = sorted({name for s in samples for name in s["rss_mib"]}, key=_process_order)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        series = [
            (s["t"], s["pids"].get(name), s["rss_mib"][name])
            for s in samples
            if name in s["rss_mib"]
        ]
        inside = [(t, pid, v) for t, pid, v in series if window_from <= t <= window_to]
        last_pid = inside[-1][1] if inside else None
        fitted = trend([(t, v) for t, pid, v in inside if pid == last_pid])
        out[name] = {
            "peak_mib": max(v for _, _, v in series),
            "end_of_load_mib": inside[-1][2] if inside else None,
            "trend": asdict(fitted) if fitted is not None else None,
        }
    return out


def backlog_trend(
    samples: Sequence[dict[str, Any]], window_from: float, window_to: float
) -> dict[str, Any] | None:
    """The durable's backlog over the slope window (messages/min): above zero, the
    reconcilers are falling behind the load, whatever their RSS does."""
    fitted = trend(
        [
            (s["t"], float(s["backlog"]))
            for s in samples
            if window_from <= s["t"] <= window_to and s["backlog"] is not None
        ]
    )
    return asdict(fitted) if fitted is not None else None


def cpu_summary(
    samples: Sequence[dict[str, Any]], window_from: float, window_to: float
) -> dict[str, float] | None:
    """Mean CPU over ``[window_from, window_to]`` s, in % of one core: per process, summed
    over its pids (a pid first seen between two samples started there, so all its CPU time
    is counted; its predecessor's last moments are not), and for the machine (``machine``;
    a 2-core machine is full at 200 %). None without two samples that carry CPU times."""
    inside = [s for s in samples if "cpu_s" in s and window_from <= s["t"] <= window_to]
    span = inside[-1]["t"] - inside[0]["t"] if len(inside) >= 2 else 0.0
    if span <= 0:
        return None
    used: dict[str, float] = {}
    for before, after in itertools.pairwise(inside):
        for name, seconds in after["cpu_s"].items():
            same = before["cpu_pids"].get(name) == after["cpu_pids"].get(name)
            spent = seconds - before["cpu_s"][name] if same and name in before["cpu_s"] else seconds
            used[name] = used.get(name, 0.0) + max(spent, 0.0)  # < 0: a reused pid
    out = {name: round(100 * v / span, 1) for name, v in sorted(used.items())}
    machine = inside[-1]["machine_cpu_s"] - inside[0]["machine_cpu_s"]
    out["machine"] = round(100 * machine / span, 1)
    return out


def _process_order(name: str) -> tuple[int, str]:
    return (0 if name == "receiver" else 1 if name.startswith("reconciler") else 2, name)


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


def memory_checks(rss: dict[str, dict[str, Any]], options: LongOptions) -> list[Check]:
    """Peak under budget and slope within noise of zero, per fluxrelay process."""
    out: list[Check] = []
    for name, summary in rss.items():
        budget = options.budget(name)
        if budget is None:
            continue
        peak = summary["peak_mib"]
        out.append(Check(f"peak RSS {name}", peak <= budget, f"{peak} MiB (budget {budget:g})"))
        fitted = summary["trend"]
        if fitted is None:
            out.append(Check(f"RSS slope {name}", False, "too few samples in the slope window"))
            continue
        slope, stderr = fitted["slope"], fitted["stderr"]
        flat = slope <= options.slope_limit or abs(slope) < 2 * stderr
        out.append(
            Check(
                f"RSS slope {name}",
                flat,
                f"{slope:+.3f} ± {stderr:.3f} MiB/min over {fitted['samples']} samples "
                f"(pass: <= {options.slope_limit:g} or |slope| < 2 s.e.)",
            )
        )
    return out


def checks(result: dict[str, Any], options: LongOptions) -> list[Check]:
    """Every pass/fail of the run (module docstring)."""
    total = result["books"]["total"]
    redelivery = result["redelivery"]
    objects = result["objects"]
    same = redelivery["answers"].get("202:duplicate:same-id", 0)
    fault_errors = {w["fault"]: w["error"] for w in result["fault_windows"] if w["error"]}
    window_opens = result["times"]["load_end_s"] - options.slope_window
    late = [w["fault"] for w in result["fault_windows"] if w["end_s"] > window_opens]
    return [
        Check(
            "lost",
            total["lost"] == 0,
            f"{total['lost']} of {total['targets']} (delivery, object) pairs"
            + (f", e.g. {total['lost_ids'][:3]}" if total["lost_ids"] else ""),
        ),
        Check(
            "duplicates",
            total["duplicates"] == 0,
            f"{total['duplicates']} (by phase: "
            + ", ".join(f"{p['phase']} {p['duplicates']}" for p in result["books"]["phases"])
            + ")",
        ),
        Check(
            "drained",
            result["drain"]["drained"],
            f"backlog {result['drain']['backlog_after']} after settling for "
            f"{result['drain']['settle_s']} s",
        ),
        Check(
            "redelivery",
            redelivery["new_patches"] == 0 and same == redelivery["sent"] > 0,
            f"{same} of {redelivery['sent']} answered duplicate with the same id, "
            f"{redelivery['new_patches']} new patches"
            if redelivery["new_patches"] is not None
            else "skipped: the backlog did not drain",
        ),
        Check(
            "all accepted",
            total["accepted"] == total["sent"] and total["refused"] == total["gave_up"] == 0,
            f"{total['accepted']} of {total['sent']} (refused {total['refused']}, gave up "
            f"{total['gave_up']})",
        ),
        Check(
            "objects current",
            objects["not_current_count"] == 0 and objects["targeted"] == options.objects,
            f"{objects['current']} of {objects['targeted']} targeted ({options.objects} objects)"
            + (f", e.g. {objects['not_current'][:3]}" if objects["not_current"] else ""),
        ),
        Check("no crash", not result["crashes"], f"{result['crashes'] or 'none'}"),
        Check(
            "faults",
            not fault_errors and not late,
            f"errors {fault_errors or 'none'}; healed inside the slope window: {late or 'none'}",
        ),
        *memory_checks(result["rss"], options),
    ]
