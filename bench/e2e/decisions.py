"""bench/e2e/decisions: what recording targeting decisions costs the reconciler per delivery.

Issue #19 allows recording the decisions (``reconciler.decisions``) under 5% of the
reconciler's CPU per delivery. Measured the only way that answers it: the same end-to-end
system as ``bench/e2e`` (real kube-apiserver, nats-server, receiver and reconciler
processes, the latency scenario's load), in pairs, one reconciler as shipped and one whose
``Decisions.add`` does nothing (``bench/e2e/nodecisions/sitecustomize.py`` on its
PYTHONPATH), the order alternating within the run. The reconciler's CPU time (user + system,
from /proc) over the load, divided by the deliveries it handled, is compared pair by pair.

Default reconciler flags; the load is ``--deliveries`` at ``--rate`` (1,000 at 100/s by
default, above bench/e2e's 20/s so that the per-delivery cost dominates the idle cost).

    python -m bench.e2e.decisions [--pairs 5] [--deliveries 1000] [--rate 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.e2e.run import ROOT, Bench, git, latency, make_bench, parse, start
from bench.e2e.stacks import FluxRelay, Layout, start_cluster

TICKS = os.sysconf("SC_CLK_TCK")
OFF_PATH = str(Path(__file__).resolve().parent / "nodecisions")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (``/proc/<pid>/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def one(bench: Bench, label: str, recording: bool) -> dict[str, float]:
    where = bench.rundir(label)
    env = None if recording else {"PYTHONPATH": os.pathsep.join([OFF_PATH, str(ROOT)])}
    opts = bench.opts
    system = FluxRelay(
        where, bench.config, bench.kubeconfig(where), qps=opts.qps, burst=opts.api_burst,
        window=opts.window, reconciler_env=env,
    )  # fmt: skip
    await start(system)
    try:
        assert system.reconciler is not None
        before = cpu_seconds(system.reconciler.pid)
        await latency(bench, system, where)
        used = cpu_seconds(system.reconciler.pid) - before
    finally:
        await asyncio.to_thread(system.stop)
    handled = opts.deliveries + 1  # and the warm-up delivery
    return {
        "cpu_ms_per_delivery": round(1000 * used / handled, 4),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    opts = parse(
        ["--scenario", "latency", "--deliveries", str(args.deliveries),
         "--latency-rate", str(args.rate)]
    )  # fmt: skip
    layout = Layout.sized(opts.deliveries, 0, 0)
    workdir = Path(tempfile.mkdtemp(prefix="fluxrelay-bench-decisions-"))
    kube = await asyncio.to_thread(start_cluster, layout)
    try:
        bench = make_bench(opts, kube, layout, workdir)
        pairs: list[dict[str, Any]] = []
        costs: list[float] = []
        for i in range(args.pairs):
            order = (True, False) if i % 2 == 0 else (False, True)
            got = {rec: await one(bench, f"{'on' if rec else 'off'}-{i}", rec) for rec in order}
            on, off = got[True]["cpu_ms_per_delivery"], got[False]["cpu_ms_per_delivery"]
            costs.append(round(on / off - 1, 4))
            pairs.append({"recording": got[True], "not_recording": got[False],
                          "cost": costs[-1]})  # fmt: skip
            print(json.dumps(pairs[-1]), flush=True)
    finally:
        await asyncio.to_thread(kube.stop)
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "meta": {
            "commit": git("rev-parse", "--short", "HEAD"),
            "code_under_test_modified": bool(git("status", "--porcelain", "reconciler")),
            "deliveries": args.deliveries,
            "rate": args.rate,
            "cpus": os.cpu_count(),
        },
        "pairs": pairs,
        "median_cost": round(statistics.median(costs), 4),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--deliveries", type=int, default=1000)
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "e2e" / "decisions-results.json")
    args = p.parse_args(argv)
    result = asyncio.run(main_async(args))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"median cost of recording: {100 * result['median_cost']:+.2f}% CPU per delivery")
    return 0


if __name__ == "__main__":
    sys.exit(main())
