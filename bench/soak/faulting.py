"""The faults of the soak, one at a time or together, each injected and then healed.

Every fault acts on a running :class:`~bench.soak.system.SoakSystem` for a given length and
leaves the system whole again when it returns (servers restarted on their stores, proxy rules
cleared, sink fast again). What each one does:

- ``nats-kill``: SIGKILL the single ``nats-server``, restart it on the same store and port.
  On the 3-node cluster (the long soak runs every fault on one) it is the whole service that
  dies: every node is SIGKILLed, all restart on their stores, and the fault ends once the
  events stream has a leader and every replica is current again.
- ``cluster-node``: SIGKILL the node of the 3-node cluster that leads the events stream (R3),
  restart it on its store, wait until every replica is current again.
- ``reconciler-kill``: SIGKILL one reconciler replica while it holds unacked messages; the
  other replica shares the durable; the killed one is started again after the length.
- ``api-down``: the fault proxy stops listening and resets open connections (the API server is
  unreachable for the reconcilers), then listens again.
- ``429-storm``: the proxy answers every request 429 with ``Retry-After: 1``.
- ``slow-sink``: the HTTP CDEvents sink takes 2 s per POST.
- ``all-together``: on the 3-node cluster, all of the above overlapping (a node instead of the
  single server).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from bench.soak.observing import metric_sum, scrape
from bench.soak.system import EVENTS_STREAM, SoakSystem

log = logging.getLogger(__name__)

Notes = dict[str, Any]
Inject = Callable[[SoakSystem, float, Notes], Awaitable[None]]
SLOW_SINK_SECONDS = 2.0


@dataclass(frozen=True)
class Fault:
    name: str
    topology: Literal["single", "cluster"]
    length: float  # seconds the fault lasts in the full soak
    inject: Inject


async def _nats_kill(system: SoakSystem, length: float, notes: Notes) -> None:
    if system.cluster is not None:
        await _cluster_kill(system, length, notes)
        return
    assert system.single is not None
    server = system.single
    await asyncio.to_thread(server.kill)
    notes["killed"] = "nats-server (SIGKILL)"
    await asyncio.sleep(length)
    await asyncio.to_thread(server.start)


async def _cluster_kill(system: SoakSystem, length: float, notes: Notes) -> None:
    cluster = system.cluster
    assert cluster is not None
    for node in cluster.nodes:
        await asyncio.to_thread(node.kill)
    notes["killed"] = "every node of the cluster (SIGKILL)"
    await asyncio.sleep(length)
    t0 = time.monotonic()
    for node in cluster.nodes:
        await asyncio.to_thread(node.start)
    await cluster.wait_meta_leader(within=60)
    await cluster.wait_stream_current(EVENTS_STREAM, within=60)
    notes["stream_current_after_restart_s"] = round(time.monotonic() - t0, 1)


async def _cluster_node(system: SoakSystem, length: float, notes: Notes) -> None:
    cluster = system.cluster
    assert cluster is not None
    leader = await cluster.stream_leader(EVENTS_STREAM) or cluster.nodes[0].name
    node = cluster.node(leader)
    await asyncio.to_thread(node.kill)
    notes["killed"] = f"stream leader {leader} (SIGKILL)"
    t0 = time.monotonic()
    new_leader = None
    while time.monotonic() - t0 < length:
        if new_leader is None:
            try:
                new_leader = await asyncio.wait_for(cluster.stream_leader(EVENTS_STREAM), 2)
                if new_leader and new_leader != leader:
                    notes["new_leader_after_s"] = round(time.monotonic() - t0, 1)
                else:
                    new_leader = None
            except Exception:  # no leader yet
                new_leader = None
        await asyncio.sleep(0.5)
    await asyncio.to_thread(cluster.restart, node.index)
    await cluster.wait_stream_current(EVENTS_STREAM, within=60)


async def _reconciler_kill(system: SoakSystem, length: float, notes: Notes) -> None:
    victim = system.reconcilers[0]
    if victim.metrics_url:
        metrics = await scrape(victim.metrics_url)
        notes["durable_ack_pending_at_kill"] = metric_sum(
            metrics, "fluxrelay_reconciler_consumer_ack_pending"
        )
    await asyncio.to_thread(victim.kill)
    notes["killed"] = f"{victim.name} (SIGKILL)"
    await asyncio.sleep(length)
    victim.start()
    await victim.wait_ready()


async def _api_down(system: SoakSystem, length: float, notes: Notes) -> None:
    await system.proxy.go_down()
    notes["api"] = "unreachable via the proxy (refused, open connections reset)"
    try:
        await asyncio.sleep(length)
    finally:
        await system.proxy.come_up()


async def _storm(system: SoakSystem, length: float, notes: Notes) -> None:
    before = (await system.proxy.counts()).get("status:429", 0)
    await system.proxy.fail(429, retry_after=1)
    try:
        await asyncio.sleep(length)
    finally:
        await system.proxy.clear_faults()
    notes["answered_429"] = (await system.proxy.counts()).get("status:429", 0) - before


async def _slow_sink(system: SoakSystem, length: float, notes: Notes) -> None:
    await system.sink.slow(SLOW_SINK_SECONDS)
    notes["sink"] = f"{SLOW_SINK_SECONDS:.0f} s per POST"
    try:
        await asyncio.sleep(length)
    finally:
        await system.sink.slow(0.0)


async def _all_together(system: SoakSystem, length: float, notes: Notes) -> None:
    """Overlapping: storm [0, L/3], node [L/12, 7L/12], reconciler [L/6, L/6+L/9],
    API down [L/3, L] (60 s at L=90), slow sink [0, L]."""

    async def later(delay: float, inject: Inject, span: float, key: str) -> None:
        await asyncio.sleep(delay)
        sub: Notes = {}
        await inject(system, span, sub)
        notes[key] = sub

    await asyncio.gather(
        later(0, _storm, length / 3, "429-storm"),
        later(length / 12, _cluster_node, length / 2, "cluster-node"),
        later(length / 6, _reconciler_kill, length / 9, "reconciler-kill"),
        later(length / 3, _api_down, length * 2 / 3, "api-down"),
        later(0, _slow_sink, length, "slow-sink"),
    )


FAULTS: dict[str, Fault] = {
    f.name: f
    for f in (
        Fault("nats-kill", "single", 10.0, _nats_kill),
        Fault("cluster-node", "cluster", 30.0, _cluster_node),
        Fault("reconciler-kill", "single", 10.0, _reconciler_kill),
        Fault("api-down", "single", 60.0, _api_down),
        Fault("429-storm", "single", 30.0, _storm),
        Fault("slow-sink", "single", 60.0, _slow_sink),
        Fault("all-together", "cluster", 90.0, _all_together),
    )
}
