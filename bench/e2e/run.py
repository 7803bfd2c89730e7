"""bench/e2e: fluxrelay end to end on real parts, side by side with webhook + kubectl.

Real processes throughout: etcd + kube-apiserver (Flux CRDs, Kustomizations), nats-server,
``python -m receiver``, ``python -m reconciler``; the peer is Debian's ``webhook`` running
``kubectl annotate`` per hook. Load comes from a separate process (``bench.e2e.load``);
this process watches the objects and, for the write-rate checks, runs the fault proxy
(``tests.support.faultproxy``) in front of the API server to record every request.

Scenarios (each run starts every system afresh; systems alternate within a run):

* ``latency``: ``--latency-rate`` deliveries/s, each for a different object; per delivery the
  time from the webhook's response (and from the send) until a watch sees the annotation.
  fluxrelay runs with its default coalescing window and with ``--coalesce-window 0``.
* ``burst``: ``--burst-rate`` deliveries/s for ``--burst-seconds`` over ``--burst-objects``
  objects at ``--qps``/``--api-burst``: every object's last delivery reaches it within
  objects/QPS + window + 1 s after the burst ends, API requests never exceed the client's
  bound, nothing is lost (JetStream drained, no dead letters). webhook + kubectl gets the
  same schedule with the same in-flight cap; what it achieves is reported.
* ``fanout``: one push whose Receiver matches ``--fanout-objects`` Kustomizations by label:
  time from the 202 to the last patch, against objects/QPS.

    python -m bench.e2e.run [--scenario all] [--runs 3]

Writes ``results.json`` (every run and the medians) and ``results.md`` to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from bench.e2e.analysing import (
    Delivery,
    burst_summary,
    first_seen,
    latency_summary,
    median_of,
    ms,
    rate_summary,
    writes_summary,
)
from bench.e2e.reporting import markdown
from bench.e2e.stacks import (
    KUBECTL,
    TOKEN,
    WARM,
    WEBHOOK,
    FluxRelay,
    Layout,
    WebhookKubectl,
    receivers_config,
    start_cluster,
)
from bench.e2e.watching import AnnotationWatcher
from tests.support.faultproxy import FaultProxy
from tests.support.ingress import hmac_hex
from tests.support.kubeapi import KubeAPI

log = logging.getLogger("bench.e2e")

ROOT = Path(__file__).resolve().parents[2]
PUSH = ROOT / "tests" / "receiver" / "fixtures" / "github_push.json"
SCENARIOS = ("latency", "burst", "fanout")
SETTLE_S = 120.0
"""Seconds past the burst bound a system gets to bring every object up to date (the wait
also ends after 5 s without any write, when nothing more is coming)."""


@dataclass(frozen=True)
class Options:
    scenarios: tuple[str, ...]
    runs: int
    deliveries: int
    latency_rate: float
    burst_rate: float
    burst_seconds: float
    burst_objects: int
    fanout_objects: int
    qps: float
    api_burst: int
    window: float
    max_in_flight: int
    out_dir: Path
    reconciler_args: tuple[str, ...] = ()


class System(Protocol):
    name: str
    attribution: str

    def hook_url(self, namespace: str, name: str) -> str: ...
    def rss(self) -> dict[str, float | None]: ...
    def stop(self) -> None: ...


@dataclass
class Bench:
    """The shared cluster and the files every run reads."""

    opts: Options
    kube: KubeAPI
    layout: Layout
    workdir: Path
    config: Path
    body: Path
    headers: dict[str, str]
    counter: int = 0

    def rundir(self, label: str) -> Path:
        self.counter += 1
        path = self.workdir / f"{self.counter:03d}-{label}"
        path.mkdir(parents=True)
        return path

    def watcher(self, namespace: str) -> AnnotationWatcher:
        return AnnotationWatcher(self.kube.url, self.kube.token, str(self.kube.ca_file), namespace)

    def kubeconfig(self, where: Path, server: str | None = None) -> Path:
        return self.kube.write_kubeconfig(where / "kubeconfig", server=server)


# ------------------------------------------------------------------------------- helpers


async def until(check: Callable[[], bool], within: float, step: float = 0.05) -> bool:
    """Poll ``check`` until it holds (True) or ``within`` seconds passed (False)."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step)
    return True


async def warm_up(bench: Bench, system: System, watcher: AnnotationWatcher, ns: str) -> None:
    """One delivery to the namespace's ``warm`` object, seen by the watch, before measuring."""
    delivery = f"warm-{time.monotonic_ns()}"
    headers = {**bench.headers, "X-GitHub-Delivery": delivery}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            system.hook_url(ns, WARM), data=bench.body.read_bytes(), headers=headers
        ) as resp,
    ):
        text = await resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"{system.name} warm-up answered {resp.status}: {text[:300]!r}")
        expected = json.loads(text)["id"] if system.attribution == "envelope-id" else delivery
    if not await until(lambda: (WARM, expected) in first_seen(watcher.events), 30):
        raise RuntimeError(f"{system.name}: warm-up annotation never seen")


def api_summary(bench: Bench, proxy: FaultProxy, ns: str, where: Path) -> dict[str, Any]:
    """The reconciler's API traffic as the proxy saw it (watches excluded), kept on disk too."""
    records = [r for r in proxy.requests if "watch=" not in r.query]
    path = f"/namespaces/{ns}/kustomizations/"
    patches = [r.at for r in records if r.method == "PATCH" and path in r.path]
    dump = [{"method": r.method, "path": r.path, "query": r.query, "at": r.at} for r in records]
    (where / "api-requests.json").write_text(json.dumps(dump))
    summary = rate_summary(patches, [r.at for r in records], bench.opts.qps, bench.opts.api_burst)
    by_method: dict[str, int] = {}
    for r in records:
        by_method[r.method] = by_method.get(r.method, 0) + 1
    summary["by_method"] = by_method
    return summary


async def run_load(
    bench: Bench, system: System, where: Path, ns: str, names: tuple[str, ...], **plan: Any
) -> tuple[list[Delivery], int]:
    """Run the load generator process on ``names`` (round robin) and read what it recorded."""
    spec = {
        "targets": [{"object": n, "url": system.hook_url(ns, n)} for n in names],
        "body_file": str(bench.body),
        "headers": bench.headers,
        "attribution": system.attribution,
        "prefix": f"{where.name}-{time.monotonic_ns()}",
        "max_in_flight": bench.opts.max_in_flight,
        **plan,
    }
    plan_file, out_file = where / "plan.json", where / "deliveries.json"
    plan_file.write_text(json.dumps(spec))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.e2e.load", str(plan_file), str(out_file), cwd=ROOT
    )
    if await proc.wait() != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode})")
    result = json.loads(out_file.read_text())
    return [Delivery.from_json(d) for d in result["deliveries"]], int(result["not_sent"])


def make_bench(opts: Options, kube: KubeAPI, layout: Layout, workdir: Path) -> Bench:
    """The files every run reads (the Receivers, the signed push) in ``workdir``."""
    config = workdir / "receivers.yaml"
    config.write_text(receivers_config(layout))
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-Hub-Signature-256": "sha256=" + hmac_hex(TOKEN, PUSH.read_bytes()),
    }
    return Bench(opts, kube, layout, workdir, config, PUSH, headers)


async def start(system: Any) -> Any:
    return await asyncio.to_thread(system.start)


def fluxrelay(bench: Bench, where: Path, kubeconfig: Path, window: float) -> FluxRelay:
    opts = bench.opts
    return FluxRelay(
        where,
        bench.config,
        kubeconfig,
        qps=opts.qps,
        burst=opts.api_burst,
        window=window,
        extra_args=opts.reconciler_args,
    )


# ------------------------------------------------------------------------------ scenarios


async def latency(bench: Bench, system: System, where: Path) -> dict[str, Any]:
    ns = "bench-lat"
    names = bench.layout.latency[: bench.opts.deliveries]
    watcher = await bench.watcher(ns).start()
    try:
        await warm_up(bench, system, watcher, ns)
        watcher.clear()
        deliveries, _ = await run_load(
            bench,
            system,
            where,
            ns,
            names,
            rate=bench.opts.latency_rate,
            count=bench.opts.deliveries,
        )
        wanted = {(d.object, d.attribution) for d in deliveries if d.accepted}
        await until(lambda: wanted <= set(first_seen(watcher.events)), 30)
        return {**latency_summary(deliveries, watcher.events), **system.rss()}
    finally:
        await watcher.stop()


async def burst(
    bench: Bench,
    system: System,
    where: Path,
    proxy: FaultProxy | None,
    drain: Callable[[], Any] | None,
) -> dict[str, Any]:
    ns = "bench-burst"
    opts = bench.opts
    names = bench.layout.burst
    watcher = await bench.watcher(ns).start()
    try:
        await warm_up(bench, system, watcher, ns)
        watcher.clear()
        if proxy is not None:
            proxy.reset_records()
        count = round(opts.burst_rate * opts.burst_seconds)
        deliveries, not_sent = await run_load(
            bench,
            system,
            where,
            ns,
            names,
            rate=opts.burst_rate,
            count=count,
            slack=1.0,
        )
        last: dict[str, str | None] = {}
        for d in sorted((d for d in deliveries if d.accepted), key=lambda d: d.sent or 0.0):
            last[d.object] = d.attribution
        bound = len(names) / opts.qps + opts.window + 1.0

        def current() -> bool:
            seen = first_seen(watcher.events)
            return all((name, attr) in seen for name, attr in last.items())

        def quiet() -> bool:
            return not watcher.events or time.monotonic() - watcher.events[-1].at > 5.0

        await until(lambda: current() or quiet(), bound + SETTLE_S, step=0.1)
        summary = burst_summary(deliveries, watcher.events, await watcher.current(), bound)
        summary["deliveries_not_sent"] = not_sent
        summary["writes_seen"] = writes_summary(watcher.events)
        if proxy is not None:
            summary["api"] = api_summary(bench, proxy, ns, where)
        summary.update(system.rss())
        if drain is not None:
            state = await drain()
            summary["jetstream"] = state
            summary["nothing_lost"] = (
                summary["deliveries_failed"] == 0
                and state["stored"] == summary["deliveries_accepted"] + 1  # + the warm-up
                and state["pending"] == 0
                and state["ack_pending"] == 0
                and state["dead_letters"] == 0
                and summary["objects_current"] == summary["objects"]
            )
        else:
            summary["nothing_lost"] = (
                summary["deliveries_failed"] == 0
                and summary["objects_current"] == summary["objects"]
            )
        return summary
    finally:
        await watcher.stop()


async def fanout(bench: Bench, system: FluxRelay, where: Path, proxy: FaultProxy) -> dict[str, Any]:
    ns = "bench-fan"
    opts = bench.opts
    names = bench.layout.fanout
    watcher = await bench.watcher(ns).start()
    try:
        await warm_up(bench, system, watcher, ns)
        watcher.clear()
        proxy.reset_records()
        deliveries, _ = await run_load(
            bench,
            system,
            where,
            ns,
            ("fanout",),
            rate=1.0,
            count=1,
        )
        (push,) = deliveries
        if not push.accepted or push.done is None:
            raise RuntimeError(f"fan-out push not accepted ({push.status})")

        def all_seen() -> bool:
            seen = first_seen(watcher.events)
            return all((n, push.attribution) in seen for n in names)

        await until(all_seen, len(names) / opts.qps * 3 + 30, step=0.1)
        seen = first_seen(watcher.events)
        times = [seen[(n, push.attribution or "")] for n in names if (n, push.attribution) in seen]
        path = f"/namespaces/{ns}/kustomizations/"
        patches = sorted(r.at for r in proxy.requests if r.method == "PATCH" and path in r.path)
        ideal = len(names) / opts.qps
        to_last_patch = patches[-1] - push.done if len(patches) >= len(names) else None
        to_all_seen = max(times) - push.done if len(times) == len(names) else None
        return {
            "objects": len(names),
            "objects_patched": len(set(n for n in names if (n, push.attribution) in seen)),
            "patches": len(patches),
            "response_ms": ms(push.done - push.sent if push.sent else None),
            "to_last_patch_s": round(to_last_patch, 3) if to_last_patch is not None else None,
            "to_all_seen_s": round(to_all_seen, 3) if to_all_seen is not None else None,
            "qps_bound_s": ideal,
            "goal_s": round(ideal * 1.1, 3),
            "within_goal": to_all_seen is not None and to_all_seen <= ideal * 1.1,
            "api": api_summary(bench, proxy, ns, where),
            **system.rss(),
        }
    finally:
        await watcher.stop()


# ----------------------------------------------------------------------------- run matrix


async def one_run(bench: Bench, run: int, results: dict[str, dict[str, list[Any]]]) -> None:
    opts = bench.opts

    def record(scenario: str, system: str, summary: dict[str, Any]) -> None:
        results.setdefault(scenario, {}).setdefault(system, []).append(summary)
        summary["loadavg_1m"] = round(os.getloadavg()[0], 2)
        print(f"run {run + 1} {scenario:8s} {system:22s} {json.dumps(summary)}", flush=True)

    if "latency" in opts.scenarios:
        variants: list[tuple[str, float | None]] = [
            ("fluxrelay", opts.window),
            ("webhook-kubectl", None),
            ("fluxrelay-window-0", 0.0),
        ]
        for label, window in variants:
            where = bench.rundir(f"latency-{label}")
            kubeconfig = bench.kubeconfig(where)
            system: FluxRelay | WebhookKubectl = (
                fluxrelay(bench, where, kubeconfig, window)
                if window is not None
                else WebhookKubectl(where, kubeconfig)
            )
            await start(system)
            try:
                record("latency", label, await latency(bench, system, where))
            finally:
                await asyncio.to_thread(system.stop)

    if "burst" in opts.scenarios:
        for label in ("fluxrelay", "webhook-kubectl"):
            where = bench.rundir(f"burst-{label}")
            if label == "fluxrelay":
                async with FaultProxy(bench.kube.url, bench.kube.ca_file) as proxy:
                    kubeconfig = bench.kubeconfig(where, proxy.url)
                    relay = fluxrelay(bench, where, kubeconfig, opts.window)
                    await start(relay)
                    try:
                        drain = functools.partial(relay.drained, 30)
                        summary = await burst(bench, relay, where, proxy, drain)
                    finally:
                        await asyncio.to_thread(relay.stop)
            else:
                # kubectl sends no bearer token over plain HTTP, so it cannot go through the
                # proxy; its writes are counted from the watch (one event per annotate).
                hook = WebhookKubectl(where, bench.kubeconfig(where))
                await start(hook)
                try:
                    summary = await burst(bench, hook, where, None, None)
                finally:
                    await asyncio.to_thread(hook.stop)
            record("burst", label, summary)

    if "fanout" in opts.scenarios:
        where = bench.rundir("fanout-fluxrelay")
        async with FaultProxy(bench.kube.url, bench.kube.ca_file) as proxy:
            relay = fluxrelay(bench, where, bench.kubeconfig(where, proxy.url), opts.window)
            await start(relay)
            try:
                record("fanout", "fluxrelay", await fanout(bench, relay, where, proxy))
            finally:
                await asyncio.to_thread(relay.stop)


async def bench_main(opts: Options) -> dict[str, Any]:
    layout = Layout.sized(
        opts.deliveries if "latency" in opts.scenarios else 0,
        opts.burst_objects if "burst" in opts.scenarios else 0,
        opts.fanout_objects if "fanout" in opts.scenarios else 0,
    )
    workdir = Path(tempfile.mkdtemp(prefix="fluxrelay-bench-e2e-"))
    started = time.monotonic()
    kube = await asyncio.to_thread(start_cluster, layout)
    setup_s = time.monotonic() - started
    results: dict[str, dict[str, list[Any]]] = {}
    try:
        bench = make_bench(opts, kube, layout, workdir)
        for run in range(opts.runs):
            await one_run(bench, run, results)
    finally:
        await asyncio.to_thread(kube.stop)
        if os.environ.get("BENCH_E2E_KEEP") is None:
            shutil.rmtree(workdir, ignore_errors=True)
    meta = {
        "commit": git("rev-parse", "--short", "HEAD"),
        "code_under_test_modified": bool(git("status", "--porcelain", *CODE_UNDER_TEST)),
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "cpus": os.cpu_count(),
        "cluster_setup_s": round(setup_s, 1),
        "total_s": round(time.monotonic() - started, 1),
        "coalesce_window_s": opts.window,
    }
    return {
        "meta": meta,
        "scenarios": {
            scenario: {
                system: {"median": median_of(runs), "runs": runs}
                for system, runs in systems.items()
            }
            for scenario, systems in results.items()
        },
    }


CODE_UNDER_TEST = ("receiver", "reconciler", "schemas")


def git(*args: str) -> str:
    """A git answer about the tree measured (empty when git is unavailable)."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def parse(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", choices=(*SCENARIOS, "all"), default="all")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--deliveries", type=int, default=200, help="latency deliveries per run")
    p.add_argument("--latency-rate", type=float, default=20.0)
    p.add_argument("--burst-rate", type=float, default=1000.0)
    p.add_argument("--burst-seconds", type=float, default=10.0)
    p.add_argument("--burst-objects", type=int, default=100)
    p.add_argument("--fanout-objects", type=int, default=500)
    p.add_argument("--qps", type=float, default=50.0)
    p.add_argument("--api-burst", type=int, default=100)
    p.add_argument("--coalesce-window", type=float, default=0.2)
    p.add_argument("--max-in-flight", type=int, default=64, help="load generator cap")
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "e2e")
    p.add_argument(
        "--reconciler-args",
        default="",
        help="extra reconciler flags, space-separated (e.g. '--max-in-flight 4096')",
    )
    a = p.parse_args(argv)
    return Options(
        scenarios=SCENARIOS if a.scenario == "all" else (a.scenario,),
        runs=a.runs,
        deliveries=a.deliveries,
        latency_rate=a.latency_rate,
        burst_rate=a.burst_rate,
        burst_seconds=a.burst_seconds,
        burst_objects=a.burst_objects,
        fanout_objects=a.fanout_objects,
        qps=a.qps,
        api_burst=a.api_burst,
        window=a.coalesce_window,
        max_in_flight=a.max_in_flight,
        out_dir=a.out_dir,
        reconciler_args=tuple(a.reconciler_args.split()),
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    for tool in (WEBHOOK, KUBECTL):
        if not Path(tool).exists():
            print(f"{tool} is required (Debian packages webhook, kubectl)", file=sys.stderr)
            return 2
    results = asyncio.run(bench_main(opts))
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    (opts.out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (opts.out_dir / "results.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
