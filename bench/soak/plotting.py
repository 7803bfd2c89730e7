"""The long soak's picture: ``results-long.png``, RSS per process and the backlog over time.

Apart from the run (``long.py``) because it is the one place matplotlib (Agg backend) is
needed, and it draws from a stored result alone (the dict ``run_long`` returns, or a
``results-long.json`` read back): fault windows shaded, restarts marked, the budgets, the
slope window and its fitted lines, and the reconcilers' in-flight messages under the backlog.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def plot(result: dict[str, Any], path: Path) -> None:
    """RSS per process (top) and the durable's backlog (bottom) over time, faults shaded,
    restarts marked, the slope window and its fitted lines drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    options = result["options"]
    minutes = [s["t"] / 60 for s in samples]
    fig, (top, bottom) = plt.subplots(
        2, 1, sharex=True, figsize=(13, 8), height_ratios=(3, 2), layout="constrained"
    )
    for name, summary in result["rss"].items():
        values = [s["rss_mib"].get(name, math.nan) for s in samples]
        ours = not name.startswith("nats")
        (line,) = top.plot(
            minutes, values, label=name, linewidth=1.4 if ours else 0.8, alpha=1 if ours else 0.6
        )
        fitted = summary["trend"]
        if fitted is not None and ours:
            span = (fitted["to_s"] - fitted["from_s"]) / 60
            top.plot(
                [fitted["from_s"] / 60, fitted["to_s"] / 60],
                [fitted["intercept"], fitted["intercept"] + fitted["slope"] * span],
                color=line.get_color(),
                linestyle="--",
                linewidth=1,
            )
    restarted: dict[float, list[str]] = {}
    for restart in result["restarts"]:
        restarted.setdefault(restart["t"], []).append(restart["process"])
    for t, names in restarted.items():
        top.axvline(t / 60, color="black", linestyle=":", linewidth=0.8)
        top.annotate(
            f"{', '.join(names)} restarted",
            (t / 60, 0.02),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=7,
            va="bottom",
        )
    for budget, label in (
        (options["reconciler_budget_mib"], "reconciler budget"),
        (options["receiver_budget_mib"], "receiver budget"),
    ):
        top.axhline(budget, color="grey", linestyle="--", linewidth=0.8)
        top.annotate(label, (0.005, budget), xycoords=("axes fraction", "data"), fontsize=7)
    bottom.plot(
        minutes,
        [math.nan if s["backlog"] is None else s["backlog"] for s in samples],
        color="tab:purple",
        label="backlog (num_pending + num_ack_pending)",
    )
    held = [
        [g["in_flight"] for g in s["reconcilers"].values() if "in_flight" in g] for s in samples
    ]
    if any(held):
        bottom.plot(
            minutes,
            [sum(h) if h else math.nan for h in held],
            color="tab:orange",
            linewidth=0.9,
            label="messages worked on (in_flight, all reconcilers)",
        )
    load_end = result["times"]["load_end_s"] / 60
    for ax in (top, bottom):
        for w in result["fault_windows"]:
            ax.axvspan(w["start_s"] / 60, w["end_s"] / 60, color="tab:red", alpha=0.15)
        ax.axvspan(load_end - options["slope_window"] / 60, load_end, color="tab:green", alpha=0.07)
        ax.axvline(load_end, color="black", linewidth=0.8)
        ax.grid(alpha=0.3)
    for w in result["fault_windows"]:
        top.annotate(
            w["fault"],
            ((w["start_s"] + w["end_s"]) / 120, 0.98),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=8,
            va="top",
            ha="center",
        )
    top.annotate(
        "slope window",
        (load_end - options["slope_window"] / 60, 0.98),
        xycoords=("data", "axes fraction"),
        fontsize=8,
        va="top",
    )
    top.annotate("load stops", (load_end, 0.5), xycoords=("data", "axes fraction"), fontsize=8)
    top.set_ylabel("RSS (MiB)")
    top.set_ylim(bottom=0)
    top.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    bottom.set_ylabel("messages not acked")
    bottom.set_xlabel("minutes since the load started")
    bottom.set_ylim(bottom=0)
    bottom.legend(loc="upper left", fontsize=8)
    git = result.get("git") or {}
    commit = (git.get("commit") or "?")[:10] + (" (dirty tree)" if git.get("dirty") else "")
    verdict = "PASS" if result["passed"] else "FAIL"
    top.set_title(
        f"bench/soak/long at {commit}: {options['rate']:g}/s over {options['objects']} objects, "
        f"{options['duration'] / 60:g} min, default reconciler flags: {verdict}"
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
