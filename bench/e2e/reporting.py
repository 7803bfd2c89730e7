"""``results.md``: the medians of bench/e2e as tables, fluxrelay beside webhook + kubectl.

Rows are chosen here (label, where the value lives in a system's median, unit); a missing
value prints as a dash. The goals come from the issue and TESTING.md and are printed beside
the numbers, never used to hide a number that misses them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Row = tuple[str, str]  # label, dotted key in a system's median

LATENCY_ROWS: Sequence[Row] = (
    ("deliveries / accepted / seen", "deliveries,accepted,seen"),
    ("response -> annotation p50 (ms)", "response_to_annotation_p50_ms"),
    ("response -> annotation p99 (ms)", "response_to_annotation_p99_ms"),
    ("send -> annotation p50 (ms)", "send_to_annotation_p50_ms"),
    ("send -> annotation p99 (ms)", "send_to_annotation_p99_ms"),
    ("response time p50 (ms)", "response_time_p50_ms"),
    ("response time p99 (ms)", "response_time_p99_ms"),
)
BURST_ROWS: Sequence[Row] = (
    (
        "deliveries planned / sent / accepted",
        "deliveries_planned,deliveries_sent,deliveries_accepted",
    ),
    ("achieved delivery rate (/s)", "send_rate_per_s"),
    ("objects current / objects", "objects_current,objects"),
    ("last object current after burst (s)", "last_object_current_after_burst_s"),
    ("median object current after burst (s)", "median_object_current_after_burst_s"),
    ("bound after burst (s)", "bound_after_burst_s"),
    ("all current within bound", "all_current_within_bound"),
    ("PATCHes", "api.patches"),
    ("max PATCHes in 1 s", "api.max_patches_1s"),
    ("max API requests in 1 s (bound)", "api.max_requests_1s,api.bound_per_1s"),
    ("max API requests in 10 s (bound 600)", "api.max_requests_10s"),
    ("API requests GET / PATCH", "api.by_method.GET,api.by_method.PATCH"),
    ("mean API requests/s", "api.mean_requests_per_s"),
    ("API within QPS/burst bound", "api.within_bound"),
    ("annotation writes seen / max in 1 s", "writes_seen.writes,writes_seen.max_writes_1s"),
    ("nothing lost", "nothing_lost"),
    ("receiver peak RSS (MiB)", "receiver_peak_rss_mib"),
    ("reconciler peak RSS (MiB)", "reconciler_peak_rss_mib"),
    ("webhook peak RSS (MiB)", "webhook_peak_rss_mib"),
)
FANOUT_ROWS: Sequence[Row] = (
    ("objects patched / objects", "objects_patched,objects"),
    ("202 -> last PATCH at the API (s)", "to_last_patch_s"),
    ("202 -> all annotations seen (s)", "to_all_seen_s"),
    ("QPS bound objects/QPS (s) / goal", "qps_bound_s,goal_s"),
    ("within goal", "within_goal"),
    ("max API requests in 1 s (bound)", "api.max_requests_1s,api.bound_per_1s"),
    ("reconciler peak RSS (MiB)", "reconciler_peak_rss_mib"),
)
TITLES = {
    "latency": (
        "(a) latency",
        LATENCY_ROWS,
        "Goal: p99 under 50 ms from the response to the annotation.",
    ),
    "burst": (
        "(b) burst",
        BURST_ROWS,
        "Goal: every object current within objects/QPS + window + 1 s after the burst; "
        "API requests within QPS + burst in any 1 s; nothing lost.",
    ),
    "fanout": ("(c) fan-out", FANOUT_ROWS, "Goal: within 10% of objects/QPS."),
}
NOTES = (
    "How to read these tables:",
    "",
    "- *response* is the webhook's answer: fluxrelay's 202 (stored on JetStream); webhook's "
    "200 after `kubectl annotate` exited, which is why its response -> annotation is negative "
    "(the watch sees the write before webhook answers). *send -> annotation* is the end-to-end "
    "time a pusher sees for both.",
    "- fluxrelay's coalescing window (default 0.2 s) delays no lone delivery: an object not "
    "patched within the window is patched at once, and only deliveries arriving within the "
    "window of its last patch gather into the next one. In (a) every delivery is for another "
    "object, so the default row pays no window; the `fluxrelay-window-0` row is the same "
    "path with `--coalesce-window 0`. In (b) the window is what makes many deliveries to one "
    "object few patches.",
    "- burst: the load generator keeps at most `max_in_flight` requests open (like wrk's "
    "connections), so webhook + kubectl, which holds each request for a kubectl run, is "
    "offered the same schedule but can only take what that cap lets through; deliveries "
    "still waiting 1 s after the schedule ended are not sent. Objects count as current "
    "when the watch sees their last accepted delivery's annotation.",
    "- API requests: fluxrelay's reconciler talks to the API server through the fault proxy, "
    "which records every request (watches excluded); kubectl sends no bearer token over "
    "plain HTTP, so webhook + kubectl goes direct and its writes are counted from the watch. "
    "The bound check allows `qps x 0.1 s` of timing slack (the proxy stamps a request when "
    "the server's answer starts).",
    "- Medians are per metric over runs; verdicts (yes/no per run) show as runs passing / "
    "runs. *nothing lost*: every delivery sent was accepted, stored once, consumed and acked "
    "(no backlog, no dead letter) and every object reached its last delivery; deliveries the "
    "load generator could not send are counted separately.",
    "",
)


def lookup(median: Mapping[str, Any], dotted: str) -> Any:
    value: Any = median
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def cell(median: Mapping[str, Any] | None, keys: str) -> str:
    if median is None:
        return "-"
    parts = []
    for key in keys.split(","):
        value = lookup(median, key)
        if value is None:
            parts.append("-")
        elif isinstance(value, bool):
            parts.append("yes" if value else "NO")
        elif isinstance(value, float) and value.is_integer():
            parts.append(str(int(value)))
        else:
            parts.append(str(value))
    if all(p == "-" for p in parts):
        return "-"
    return " / ".join(parts)


PER_RUN: Mapping[str, Sequence[Row]] = {
    "latency": (
        ("accepted", "accepted"),
        ("send -> annotation p99 ms", "send_to_annotation_p99_ms"),
    ),
    "burst": (
        ("sent", "deliveries_sent"),
        ("last current after burst s", "last_object_current_after_burst_s"),
        ("max API req in 1 s", "api.max_requests_1s"),
    ),
    "fanout": (("all seen s", "to_all_seen_s"), ("max API req in 1 s", "api.max_requests_1s")),
}


def per_run(results: Mapping[str, Any]) -> list[str]:
    """Each run's key numbers and the machine's load: medians hide runs that differ."""
    lines = [
        "## Per run",
        "",
        "The load average (1 min, 2 CPUs) shows how busy the shared machine was; in the burst, "
        "a busy machine also lowers what the load generator manages to send, so runs with "
        "fewer deliveries sent are lighter runs, not faster systems.",
        "",
    ]
    for scenario, systems in results["scenarios"].items():
        for name, result in systems.items():
            cells = []
            for run in result["runs"]:
                values = ", ".join(
                    f"{label} {cell(run, key)}" for label, key in PER_RUN.get(scenario, ())
                )
                cells.append(f"[{values}; load {run.get('loadavg_1m')}]")
            lines.append(f"- {scenario} / {name}: " + " ".join(cells))
    lines.append("")
    return lines


def markdown(results: Mapping[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        "# bench/e2e results",
        "",
        f"Medians of {meta['runs']} runs on {meta['cpus']} CPUs (shared machine), generated by "
        "`python -m bench.e2e.run`. Real etcd + kube-apiserver, nats-server (file store), "
        "receiver and reconciler processes; load from a separate process; the peer is "
        "Debian's `webhook` running `kubectl annotate` per hook (waiting for the command). "
        f"QPS {meta['qps']:g} / burst {meta['api_burst']}, coalescing window "
        f"{meta['coalesce_window_s']:g} s, load generator in-flight cap {meta['max_in_flight']}. "
        "Every other receiver and reconciler flag at its default (INFO text logs to a file).",
        "",
    ]
    if meta.get("commit"):
        dirty = " (with uncommitted changes)" if meta.get("code_under_test_modified") else ""
        lines += [f"Code measured: commit `{meta['commit']}`{dirty}.", ""]
    if meta.get("reconciler_args"):
        lines += [f"Extra reconciler flags: `{' '.join(meta['reconciler_args'])}`.", ""]
    lines += NOTES
    for scenario, (title, rows, goal) in TITLES.items():
        systems: Mapping[str, Any] = results["scenarios"].get(scenario) or {}
        if not systems:
            continue
        names = list(systems)
        lines += [f"## {title}", "", goal, ""]
        lines.append("| metric | " + " | ".join(names) + " |")
        lines.append("|---|" + "---|" * len(names))
        for label, keys in rows:
            cells = [cell(systems[n].get("median"), keys) for n in names]
            if all(c == "-" for c in cells):
                continue
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += per_run(results)
    return "\n".join(lines)
