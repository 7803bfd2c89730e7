"""bench/soak/memory: the reconcilers' RSS under steady load, no fault, with what holds it.

One soak system (``system.py``: real kube-apiserver and nats-server, the receiver, two
reconciler replicas, the Flux stand-in, the HTTP CDEvents sink) under signed load at
``--rate`` for ``--duration`` seconds. Every ``--every`` seconds one JSON line
(:func:`sample`, which ``long.py`` takes every 5 s too): each process's RSS (the NATS
servers' as well) and pid, the durable's backlog, and per reconciler the gauges that follow
in-memory state (sink outboxes, CDEvents sent, reconcile requests followed, messages pending,
unacked and worked on), and the CPU time used so far by every process the soak started and
by the machine. Written to find where the memory went (it was the sink outboxes:
``reconciler.sinks``); the RSS figures in
``docs/reliability.md`` come from it::

    python -m bench.soak.memory --rate 500 --duration 240 [--outbox 200000]

For allocation sites, run the reconcilers under ``tracemalloc`` (e.g. a ``sitecustomize`` on
``PYTHONPATH`` that starts it and dumps snapshots from a thread) and compare snapshots by
traceback; the processes inherit this one's environment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.soak.driving import Driver
from bench.soak.observing import machine_cpu_seconds, process_cpu_seconds, process_rss, scrape
from bench.soak.system import SoakSettings, SoakSystem
from tests.support.kubeapi import KubeAPI

GAUGES = (
    "sink_outbox",
    "sink_sent_total",
    "sink_dropped_total",
    "outcome_waiting",
    "consumer_pending",
    "consumer_ack_pending",
    # Messages worked on at once, their bytes, and 1 while fetching is paused at a bound:
    # newer reconcilers only (a name the page lacks is simply absent from the sample).
    "in_flight",
    "paused",
    # Deliveries another request covered, and conditional patches refused (409) because the
    # object changed since they were decided on: counters, per process (a restart resets).
    "covered_deliveries_total",
    "patch_conflicts_total",
)
"""Prefixes (after ``fluxrelay_reconciler_``) of the reconciler metrics a sample keeps."""


def gauges(metrics: dict[str, float]) -> dict[str, float]:
    """The :data:`GAUGES` series of one scraped page, keyed without the common prefix."""
    prefix = "fluxrelay_reconciler_"
    return {
        k.removeprefix(prefix): v
        for k, v in metrics.items()
        if any(k.removeprefix(prefix).startswith(g) for g in GAUGES)
    }


async def sample(system: SoakSystem, driver: Driver, started: float) -> dict[str, Any]:
    """One look at the system: ``t`` (s since ``started``), deliveries sent and accepted so
    far, every process's pid (None while down; a new one is a restart) and RSS in MiB, the
    durable's backlog (None while NATS cannot say), each reconciler's :data:`GAUGES`, and the
    CPU seconds used so far by every process on the machine that the soak started (``cpu_s``,
    with their pids in ``cpu_pids``) and by the machine (``machine_cpu_s``)."""
    t = time.monotonic() - started
    pids = system.pids()
    rss = {name: process_rss(pid) for name, pid in pids.items()}
    cpu_pids = system.all_pids()
    cpu = {name: process_cpu_seconds(pid) for name, pid in cpu_pids.items()}
    scraped = [p for p in system.reconcilers if p.metrics_url]
    pages, backlog = await asyncio.gather(
        asyncio.gather(*(scrape(p.metrics_url) for p in scraped if p.metrics_url)),
        system.backlog(),
    )
    return {
        "t": round(t, 1),
        "sent": len(driver.deliveries),
        "accepted": sum(1 for d in driver.deliveries if d.accepted_at is not None),
        "pids": pids,
        "rss_mib": {k: round(v / 2**20, 1) for k, v in rss.items() if v},
        "backlog": backlog,
        "reconcilers": {p.name: gauges(page) for p, page in zip(scraped, pages, strict=True)},
        "cpu_pids": cpu_pids,
        "cpu_s": {k: round(v, 2) for k, v in cpu.items() if v is not None},
        "machine_cpu_s": round(machine_cpu_seconds(), 2),
    }


async def run(kube: KubeAPI, rate: float, duration: float, every: float, outbox: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="fluxrelay-memory-"))
    settings = replace(SoakSettings(), cdevents_outbox=outbox)
    async with (
        SoakSystem(kube, settings, workdir) as system,
        Driver(system.hooks, rate, junk_fraction=0.0) as driver,
    ):
        started = time.monotonic()
        load = asyncio.create_task(driver.run(duration))
        while not load.done():
            await asyncio.wait({load}, timeout=every)
            print(json.dumps(await sample(system, driver, started)), flush=True)
        await load
        system.check_processes()
        crashed = {p.name: p.unexpected_exits for p in system.reconcilers if p.unexpected_exits}
        print(json.dumps({"crashes": crashed, "workdir": str(workdir)}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--duration", type=float, default=240.0)
    parser.add_argument("--every", type=float, default=20.0)
    parser.add_argument("--outbox", type=int, default=SoakSettings().cdevents_outbox)
    args = parser.parse_args()
    logging.basicConfig(level=os.environ.get("SOAK_LOG", "WARNING"))
    kube = KubeAPI()
    kube.start()
    try:
        kube.apply_crds()
        asyncio.run(run(kube, args.rate, args.duration, args.every, args.outbox))
    finally:
        kube.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
