"""bench/soak/long: one system for half an hour, faults in turn then together, RSS sampled.

``run.py`` starts a fresh system per fault, so a process's RSS starts again every segment and
no run shows whether memory levels off. Here ONE :class:`~bench.soak.system.SoakSystem` lives
through the whole plan, on the 3-node NATS cluster so that every fault of
``faulting.FAULTS`` applies (``nats-kill`` kills all three nodes there: the whole NATS service
dies and comes back on its stores; no fault is skipped), while every process's RSS is sampled
every 5 s; the books and the memory are judged at the end. The options, the load's shape and
the schedule of the faults are in ``plan.py``; this module is the run and its command line.

Every 5 s (``memory.sample``): each process's pid and RSS (receiver, reconcilers, the three
nats-servers; a new pid is a restart, whose RSS starts again), the durable's backlog
(``num_pending + num_ack_pending``), the reconcilers' gauges of in-memory state, and the CPU
time used so far by every process the soak started (kube-apiserver, etcd, the fault proxy,
the HTTP sink and the driver too) and by the machine.

After the load: the driver's retries end, the system settles (all acked, no patch for 5 s,
outboxes empty; at most 600 s), every object must become *current* (``currency.py``), every
accepted delivery is sent again with its delivery id (no new reconcile request may follow;
the receiver deduplicates for its default 3600 s duplicate window, so ``--duration`` is capped
at 3000 s), the CDEvents are read back and the books are reconciled (``books.reconcile``) for
the whole run and per phase (``phases.py``). If the backlog has not drained by then, the
reconcilers fell behind the load for good: the resend is skipped (patches from the backlog
would land during it) and the books' ``lost`` counts what was not reconciled yet. The checks
and the RSS arithmetic are in ``verdicts.py``.

Written: ``results-long.json`` (commit and whether the tree was dirty, options, schedule,
samples, restarts, peaks and slopes, mean CPU per process under load, books, checks) and
``results-long.png`` (``plotting.py``) beside this file, or in ``--out``. Samples also go to
``<workdir>/samples.jsonl`` as they are taken. Loopback only, stops by itself; after the load
come the drain, the resend (~1,500/s here) and the CDEvents read back (~16,000/s), so a full
run takes well over the 30 minutes of load. The NATS stores take a few GB in the temp folder
(three replicas of every event and CDEvent).

    python -m bench.soak.long [--duration 1800] [--rate 500] [--objects 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.ingress.run import git_state
from bench.soak.books import Window, reconcile
from bench.soak.currency import currency
from bench.soak.driving import Delivery, Driver
from bench.soak.faulting import FAULTS
from bench.soak.memory import sample
from bench.soak.observing import ReconcileState, read_cdevents_stream
from bench.soak.phases import phase_books, phase_windows
from bench.soak.plan import FaultWindow, LongOptions, Slot, schedule
from bench.soak.plotting import plot
from bench.soak.system import CDEVENTS_STREAM, SoakSystem
from bench.soak.verdicts import backlog_trend, checks, cpu_summary, restarts, rss_summary
from tests.support.kubeapi import KubeAPI

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
REDELIVERY_CHUNK = 10_000  # resends in flight at most as tasks (the driver bounds sockets)


async def _inject_in_turn(
    system: SoakSystem, slots: Sequence[Slot], started: float, out: list[FaultWindow]
) -> None:
    for slot in slots:
        await asyncio.sleep(max(0.0, started + slot.start - time.monotonic()))
        window = FaultWindow(slot.fault, slot.start, time.monotonic() - started, 0.0)
        out.append(window)
        print(f"[{window.start_s:7.1f} s] fault {slot.fault} for {slot.length:g} s", flush=True)
        try:
            await FAULTS[slot.fault].inject(system, slot.length, window.notes)
        except Exception as e:  # the run goes on; the check "faults" fails
            log.exception("fault %s", slot.fault)
            window.error = repr(e)
        window.end_s = time.monotonic() - started
        print(f"[{window.end_s:7.1f} s] fault {slot.fault} healed", flush=True)


async def _sample_every(
    system: SoakSystem,
    driver: Driver,
    started: float,
    every: float,
    out: list[dict[str, Any]],
    journal: Path,
    stop: asyncio.Event,
) -> None:
    """One :func:`memory.sample` every ``every`` s until ``stop``; a progress line a minute."""
    last_print = -60.0
    with journal.open("a") as f:
        while not stop.is_set():
            tick = time.monotonic()
            try:
                taken = await asyncio.wait_for(sample(system, driver, started), 2 * every)
            except TimeoutError:
                taken = None
            if taken is not None:
                out.append(taken)
                f.write(json.dumps(taken) + "\n")
                f.flush()
                if taken["t"] - last_print >= 60:
                    last_print = taken["t"]
                    print(
                        f"[{taken['t']:7.1f} s] sent {taken['sent']} accepted "
                        f"{taken['accepted']} backlog {taken['backlog']} RSS MiB "
                        f"{taken['rss_mib']}",
                        flush=True,
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, every - (time.monotonic() - tick)))


async def _wait_current(
    system: SoakSystem, deliveries: Sequence[Delivery], within: float
) -> dict[str, ReconcileState]:
    """The objects' states once Flux handled the last request of every targeted one (or
    after ``within`` s: the check says which are not)."""
    targeted = {obj for d in deliveries if d.accepted_at is not None for obj in d.hook.targets}
    deadline = time.monotonic() + within
    while True:
        states = await system.object_states()
        behind = [
            obj
            for obj in targeted
            if obj not in states or states[obj].requested_at != states[obj].handled_at
        ]
        if not behind or time.monotonic() >= deadline:
            return states
        await asyncio.sleep(2.0)


async def _drain_and_redeliver(
    system: SoakSystem,
    driver: Driver,
    options: LongOptions,
    started: float,
    times: dict[str, float],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, ReconcileState]]:
    """After the load: retries end, the system settles, the objects become current, every
    accepted delivery is resent. When the backlog does not drain within the settle timeout
    (the reconcilers fell behind the load for good) the resend is skipped: patches from the
    backlog would land during it and tell nothing about promise 2."""
    assert system.watcher is not None
    await driver.settle(options.retry_deadline)
    settle_s = await system.settle(options.settle_timeout, options.quiet)
    backlog = await system.backlog()
    times["settled_s"] = time.monotonic() - started
    drain = {"drained": backlog == 0, "settle_s": round(settle_s, 1), "backlog_after": backlog}
    print(f"[{times['settled_s']:7.1f} s] settle: {drain}", flush=True)
    accepted = driver.accepted
    redelivery: dict[str, Any] = {"sent": 0, "answers": {}, "new_patches": None}
    if not drain["drained"]:
        return drain, redelivery, await system.object_states()
    states = await _wait_current(system, driver.deliveries, options.current_within)
    times["current_s"] = time.monotonic() - started
    patches_before = len(system.watcher.patches)
    for i in range(0, len(accepted), REDELIVERY_CHUNK):
        await driver.redeliver(accepted[i : i + REDELIVERY_CHUNK])
    times["redelivered_s"] = time.monotonic() - started
    await system.settle(options.settle_timeout, options.quiet)
    redelivery = {
        "sent": len(accepted),
        "answers": dict(driver.redelivered),
        "new_patches": len(system.watcher.patches) - patches_before,
    }
    times["redelivery_settled_s"] = time.monotonic() - started
    print(f"[{times['redelivery_settled_s']:7.1f} s] resent: {redelivery}", flush=True)
    return drain, redelivery, states


async def run_long(kube: KubeAPI, options: LongOptions) -> dict[str, Any]:
    """The whole run, start to books; the result :func:`main` writes (without the plot)."""
    slots = schedule(options)
    base = options.workdir or Path(tempfile.mkdtemp(prefix="fluxrelay-long-"))
    base.mkdir(parents=True, exist_ok=True)
    print(f"workdir {base}", flush=True)
    samples: list[dict[str, Any]] = []
    windows: list[FaultWindow] = []
    times: dict[str, float] = {}
    result: dict[str, Any] = {}
    async with (
        SoakSystem(kube, options.settings(), base / "system") as system,
        Driver(
            system.hooks,
            options.rate,
            retry_deadline=options.retry_deadline,
            junk_fraction=options.junk_fraction,
        ) as driver,
    ):
        assert system.watcher is not None
        started = time.monotonic()
        stop = asyncio.Event()
        sampler = asyncio.create_task(
            _sample_every(
                system, driver, started, options.every, samples, base / "samples.jsonl", stop
            )
        )
        faults = asyncio.create_task(_inject_in_turn(system, slots, started, windows))
        try:
            await driver.run(options.duration)
            times["load_end_s"] = time.monotonic() - started
            await faults
            drain, redelivery, states = await _drain_and_redeliver(
                system, driver, options, started, times
            )
        finally:
            stop.set()
            await sampler
            if not faults.done():
                faults.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await faults
        system.check_processes()
        nats_events = await read_cdevents_stream(system.nats_url, CDEVENTS_STREAM, within=1800)
        http_events = await system.sink.events()
        patches = dict(system.watcher.by_object)
        load_end = started + times["load_end_s"]
        phases = phase_windows(windows, started, load_end, options.slope_window)
        total = reconcile(
            driver.deliveries,
            patches,
            nats_events,
            http_events,
            Window(
                started,
                started + (windows[0].start_s if windows else 0.0),
                started + (windows[-1].end_s if windows else 0.0),
                load_end,
            ),
        ).as_dict()
        result.update(
            options=_jsonable(asdict(options)),
            settings=asdict(options.settings()),
            schedule=[asdict(s) for s in slots],
            fault_windows=[asdict(w) for w in windows],
            times={k: round(v, 1) for k, v in times.items()},
            achieved_rate=round(len(driver.deliveries) / max(times["load_end_s"], 1e-9), 1),
            junk=dict(driver.junk),
            sender_stalls=driver.stalls,
            books={
                "total": total,
                "phases": phase_books(
                    driver.deliveries, patches, nats_events, http_events, phases, started
                ),
            },
            drain=drain,
            redelivery=redelivery,
            objects=currency(
                driver.deliveries, states, patches, itertools.chain(nats_events, http_events)
            ),
            crashes={
                p.name: p.unexpected_exits
                for p in [*system.procs, *system.helpers]
                if p.unexpected_exits
            },
            killed_by_fault={p.name: p.killed_by_us for p in system.procs if p.killed_by_us},
            watch_gaps=system.watcher.gaps,
            samples=samples,
            restarts=restarts(samples),
            rss=rss_summary(
                samples, times["load_end_s"] - options.slope_window, times["load_end_s"]
            ),
            backlog_trend=backlog_trend(
                samples, times["load_end_s"] - options.slope_window, times["load_end_s"]
            ),
            cpu_percent=cpu_summary(samples, 0.0, times["load_end_s"]),
        )
    result["checks"] = [asdict(c) for c in checks(result, options)]
    result["passed"] = all(c["passed"] for c in result["checks"])
    return result


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _faults(raw: str) -> tuple[str, ...]:
    return tuple(f.strip() for f in raw.split(",") if f.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = LongOptions()
    parser.add_argument("--duration", type=float, default=defaults.duration)
    parser.add_argument("--rate", type=float, default=defaults.rate)
    parser.add_argument("--objects", type=int, default=defaults.objects)
    parser.add_argument(
        "--faults",
        type=_faults,
        default=defaults.faults,
        help="comma-separated, in turn; all-together always last",
    )
    parser.add_argument(
        "--scale", type=float, default=defaults.scale, help="fault length multiplier"
    )
    parser.add_argument("--warmup", type=float, default=defaults.warmup)
    parser.add_argument("--slope-window", type=float, default=defaults.slope_window)
    parser.add_argument(
        "--slope-limit",
        type=float,
        default=defaults.slope_limit,
        help="MiB/min a process's RSS may still grow in the slope window",
    )
    parser.add_argument(
        "--reconciler-budget-mib", type=float, default=defaults.reconciler_budget_mib
    )
    parser.add_argument("--receiver-budget-mib", type=float, default=defaults.receiver_budget_mib)
    parser.add_argument(
        "--settle-timeout",
        type=float,
        default=defaults.settle_timeout,
        help="seconds the backlog may take to drain after the load",
    )
    parser.add_argument(
        "--out", type=Path, default=HERE, help="folder for results-long.json and results-long.png"
    )
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("SOAK_LOG", "WARNING"))
    options = LongOptions(
        duration=args.duration,
        rate=args.rate,
        objects=args.objects,
        faults=args.faults,
        scale=args.scale,
        warmup=args.warmup,
        slope_window=args.slope_window,
        slope_limit=args.slope_limit,
        reconciler_budget_mib=args.reconciler_budget_mib,
        receiver_budget_mib=args.receiver_budget_mib,
        settle_timeout=args.settle_timeout,
        workdir=args.workdir,
    )
    try:
        slots = schedule(options)
    except ValueError as e:
        parser.error(str(e))
    for slot in slots:
        print(f"planned: {slot.fault} at {slot.start:.0f} s for {slot.length:g} s", flush=True)
    # pkill (SIGTERM) ends the run as Ctrl-C does: the servers and processes it started are
    # stopped on the way out instead of being left behind.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    git = git_state()
    kube = KubeAPI()
    kube.start()
    started = time.monotonic()
    try:
        kube.apply_crds()
        result = asyncio.run(run_long(kube, options))
    finally:
        kube.stop()
    result = {"git": git, "wall_s": round(time.monotonic() - started, 1), **result}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results-long.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out / "results-long.png")
    for check in result["checks"]:
        print(f"{'PASS' if check['passed'] else 'FAIL'} {check['name']}: {check['detail']}")
    for name, summary in result["rss"].items():
        print(f"{name}: peak {summary['peak_mib']} MiB, trend {summary['trend']}")
    print(f"backlog over the slope window, messages/min: {result['backlog_trend']}")
    print(f"CPU under load, % of a core: {result['cpu_percent']}")
    for phase in result["books"]["phases"]:
        print(
            f"phase {phase['phase']}: accepted {phase['accepted']}, lost {phase['lost']}, "
            f"duplicates {phase['duplicates']}, latency during/after max "
            f"{phase['latency_during']['max_s']} / {phase['latency_after']['max_s']} s"
        )
    print(
        f"wrote {args.out / 'results-long.json'} and results-long.png; "
        f"{'PASSED' if result['passed'] else 'FAILED'} in {result['wall_s'] / 60:.1f} min"
    )
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
