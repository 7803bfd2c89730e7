"""bench/soak: fluxrelay under steady signed load while faults are injected, books reconciled.

For each fault of the plan, a fresh segment (see ``system.py``) runs: load at ``--rate`` for
``--pre`` seconds, the fault for its length (times ``--scale``), ``--post`` seconds more of
load; then the load stops, the system settles (every message acked, no new patch for a few
seconds, sink outboxes empty), every accepted delivery is sent again with the same delivery id
(promise 2: no new reconcile request may follow), and the books are reconciled per delivery id
(``books.py``): lost, duplicates, latency before/during/after the fault, CDEvents per stage,
RSS of the receiver and reconcilers after warm-up and at the end, crashes. Results go to
``results.md`` and ``results.json`` beside this file (or ``--out``).

Loopback only, bounded in time and count, stops by itself.

    python -m bench.soak.run [--rate 500] [--faults nats-kill,...,all-together] [--scale 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.soak.books import Window, reconcile
from bench.soak.driving import Driver
from bench.soak.faulting import FAULTS, Fault
from bench.soak.observing import read_cdevents_stream
from bench.soak.system import CDEVENTS_STREAM, SoakSettings, SoakSystem
from tests.support.kubeapi import KubeAPI

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class SoakOptions:
    """One soak run's knobs (the CI version uses small ones)."""

    rate: float = 500.0
    pre: float = 30.0
    post: float = 60.0
    scale: float = 1.0  # multiplies every fault's length
    settle_timeout: float = 300.0
    quiet: float = 5.0
    retry_deadline: float = 180.0
    redeliver_max: int = 100_000
    junk_fraction: float = 0.02
    settings: SoakSettings = field(default_factory=SoakSettings)
    workdir: Path | None = None


async def _sample_rss(system: SoakSystem, peaks: dict[str, int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for name, rss in (await system.rss()).items():
            if rss is not None:
                peaks[name] = max(peaks.get(name, 0), rss)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)


def _mib(values: dict[str, int | None]) -> dict[str, float | None]:
    return {k: (round(v / 2**20, 1) if v else None) for k, v in values.items()}


async def run_segment(kube: KubeAPI, fault: Fault, options: SoakOptions) -> dict[str, Any]:
    """One fault's segment, start to books."""
    settings = replace(options.settings, nats=fault.topology)
    base = options.workdir or Path(tempfile.mkdtemp(prefix="fluxrelay-soak-"))
    length = fault.length * options.scale
    result: dict[str, Any] = {"fault": fault.name, "topology": fault.topology, "rate": options.rate}
    async with SoakSystem(kube, settings, base / fault.name) as system:
        assert system.watcher is not None
        peaks: dict[str, int] = {}
        stop_sampling = asyncio.Event()
        sampler = asyncio.create_task(_sample_rss(system, peaks, stop_sampling))
        async with Driver(
            system.hooks,
            options.rate,
            retry_deadline=options.retry_deadline,
            junk_fraction=options.junk_fraction,
        ) as driver:
            load_start = time.monotonic()
            load = asyncio.create_task(driver.run(options.pre + length + options.post))
            await asyncio.sleep(options.pre)
            rss_before = await system.rss()
            notes: dict[str, Any] = {}
            fault_start = time.monotonic()
            await fault.inject(system, length, notes)
            fault_end = time.monotonic()
            await load
            load_end = time.monotonic()
            sent = len(driver.deliveries)
            await driver.settle(options.retry_deadline)
            settled_s = await system.settle(options.settle_timeout, options.quiet)
            rss_after = await system.rss()
            system.check_processes()

            accepted = driver.accepted[: options.redeliver_max]
            patches_before = len(system.watcher.patches)
            await driver.redeliver(accepted)
            await system.settle(options.settle_timeout, options.quiet)
            redelivery_patches = len(system.watcher.patches) - patches_before

            nats_events = await read_cdevents_stream(system.nats_url, CDEVENTS_STREAM)
            books = reconcile(
                driver.deliveries,
                dict(system.watcher.by_object),
                nats_events,
                await system.sink.events(),
                Window(load_start, fault_start, fault_end, load_end),
            )
            stop_sampling.set()
            await sampler
            system.check_processes()
            procs = [*system.procs, *system.helpers]
            result.update(
                fault_seconds=round(fault_end - fault_start, 1),
                notes=notes,
                achieved_rate=round(sent / max(load_end - load_start, 1e-9), 1),
                sender_stalls=driver.stalls,
                settle_seconds=round(settled_s, 1),
                books=books.as_dict(),
                redelivery={
                    "sent": len(accepted),
                    "answers": dict(driver.redelivered),
                    "new_patches": redelivery_patches,
                },
                junk=dict(driver.junk),
                rss_mib_before=_mib(rss_before),
                rss_mib_after=_mib(rss_after),
                rss_mib_peak=_mib(dict(peaks)),
                crashes={p.name: p.unexpected_exits for p in procs if p.unexpected_exits},
                killed_by_fault={p.name: p.killed_by_us for p in procs if p.killed_by_us},
                watch_gaps=system.watcher.gaps,
                proxy_requests=sum((await system.proxy.counts()).values()),
            )
    return result


async def run_soak(
    kube: KubeAPI, faults: list[str], options: SoakOptions, partial: Path | None = None
) -> list[dict[str, Any]]:
    """Every segment in turn; after each, the results so far go to ``partial`` (if given)."""
    out = []
    for name in faults:
        log.info("soak segment %s", name)
        out.append(await run_segment(kube, FAULTS[name], options))
        print(json.dumps(_summary(out[-1])), flush=True)
        if partial is not None:
            await asyncio.to_thread(partial.write_text, json.dumps(out, indent=2) + "\n")
    return out


def _summary(r: dict[str, Any]) -> dict[str, Any]:
    b = r["books"]
    return {
        "fault": r["fault"],
        "accepted": b["accepted"],
        "lost": b["lost"],
        "duplicates": b["duplicates"],
        "redelivery_new_patches": r["redelivery"]["new_patches"],
        "max_during_s": b["latency_during"]["max_s"],
        "max_after_s": b["latency_after"]["max_s"],
    }


def _fmt(value: Any) -> str:
    return "-" if value is None else str(value)


def render(results: list[dict[str, Any]], options: SoakOptions, wall_s: float) -> str:
    s = options.settings
    lines = [
        "# bench/soak results",
        "",
        f"Generated by `python -m bench.soak.run` in {wall_s / 60:.1f} min on this 2-core machine "
        f"(every process of the system, the servers and the load driver share the two cores). "
        f"Rate {options.rate:g}/s, {options.pre:g} s before each fault, fault lengths x "
        f"{options.scale:g}, {options.post:g} s after; {s.receivers} Receivers (github, HMAC), "
        f"{s.objects} GitRepositories, {s.targets} objects per delivery, {s.reconcilers} "
        f"reconciler replicas on one durable (ack wait {s.ack_wait:g} s, coalescing "
        f"{s.coalesce_window:g} s, {s.qps} QPS), Flux stand-in. Latency: first send → the "
        f"delivery's own reconcile request seen on its last object.",
        "",
        "| fault | fault s | sent | 202 | lost | covered only | dup. | redelivery: new patches "
        "| p99 / max during s | p99 / max after s | deliveries per patch | receiver MiB before → "
        "after (peak) | reconcilers MiB before → after | crashes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        b = r["books"]
        rb, ra, rp = r["rss_mib_before"], r["rss_mib_after"], r["rss_mib_peak"]
        recs = ", ".join(
            f"{_fmt(rb.get(n))} → {_fmt(ra.get(n))}" for n in sorted(rb) if n.startswith("reconc")
        )
        lines.append(
            f"| {r['fault']} | {r['fault_seconds']} | {b['sent']} | {b['accepted']} | {b['lost']} "
            f"| {b['covered']} | {b['duplicates']} | {r['redelivery']['new_patches']} of "
            f"{r['redelivery']['sent']} resent | {_fmt(b['latency_during']['p99_s'])} / "
            f"{_fmt(b['latency_during']['max_s'])} | {_fmt(b['latency_after']['p99_s'])} / "
            f"{_fmt(b['latency_after']['max_s'])} | {_fmt(b['deliveries_per_patch'])} | "
            f"{_fmt(rb.get('receiver'))} → {_fmt(ra.get('receiver'))} ({_fmt(rp.get('receiver'))})"
            f" | {recs} | {r['crashes'] or 'none'} |"
        )
    lines += ["", "## CDEvents per stage (unique ids for deliveries answered 202)", ""]
    lines += [
        "| fault | expected merged / queued / finished | NATS stream | HTTP sink |",
        "|---|---|---|---|",
    ]
    for r in results:
        c = r["books"]["cdevents"]
        e = c["expected"]

        def stages(d: dict[str, int]) -> str:
            return (
                f"{d.get('change.merged', 0)} / {d.get('pipelinerun.queued', 0)} / "
                f"{d.get('pipelinerun.finished', 0)} (repeated ids {d.get('repeated_ids', 0)})"
            )

        lines.append(
            f"| {r['fault']} | {e['change.merged']} / {e['pipelinerun.queued']} / "
            f"{e['pipelinerun.finished']} | {stages(c['nats'])} | {stages(c['http'])} |"
        )
    lines += ["", "## Notes per fault", ""]
    for r in results:
        lines.append(
            f"- **{r['fault']}** ({r['topology']} NATS): {json.dumps(r['notes'])}; achieved rate "
            f"{r['achieved_rate']}/s; answers {json.dumps(r['books']['answers'])}; redelivery "
            f"answers {json.dumps(r['redelivery']['answers'])}; junk {json.dumps(r['junk'])}; "
            f"settled in {r['settle_seconds']} s; unexplained patches "
            f"{r['books']['unexplained_patches']}; watch gaps {r['watch_gaps']}."
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--pre", type=float, default=30.0)
    parser.add_argument("--post", type=float, default=60.0)
    parser.add_argument("--scale", type=float, default=1.0, help="fault length multiplier")
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--receivers", type=int, default=20)
    parser.add_argument("--objects", type=int, default=20)
    parser.add_argument("--targets", type=int, default=2)
    parser.add_argument("--ack-wait", type=float, default=30.0)
    parser.add_argument("--redeliver-max", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=os.environ.get("SOAK_LOG", "WARNING"))
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        parser.error(f"unknown fault(s) {unknown}; known: {', '.join(FAULTS)}")
    options = SoakOptions(
        rate=args.rate,
        pre=args.pre,
        post=args.post,
        scale=args.scale,
        redeliver_max=args.redeliver_max,
        settings=SoakSettings(
            receivers=args.receivers,
            objects=args.objects,
            targets=args.targets,
            ack_wait=args.ack_wait,
        ),
        workdir=args.workdir,
    )
    # pkill (SIGTERM) ends the run as Ctrl-C does: the servers and processes it started are
    # stopped on the way out instead of being left behind.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    kube = KubeAPI()
    kube.start()
    started = time.monotonic()
    try:
        kube.apply_crds()
        args.out.mkdir(parents=True, exist_ok=True)
        results = asyncio.run(run_soak(kube, faults, options, args.out / "partial.json"))
    finally:
        kube.stop()
    wall = time.monotonic() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(render(results, options, wall))
    bad = [r["fault"] for r in results if r["books"]["lost"] or r["redelivery"]["new_patches"]]
    print(f"wrote {args.out / 'results.md'}; segments breaking a promise: {bad or 'none'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
