"""Faults around the real servers, injected by the proxy in front of the kube-apiserver or by
killing a reconciler process: a 429 storm with Retry-After (concurrency shrinks, nothing is
lost, every target is patched once it clears), 500s (retried), the API server down for 30 s
(messages redelivered, all patched after) and a reconciler SIGKILLed mid-batch (its messages
are redelivered to the other replica sharing the durable, every target patched)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from reconciler.running import Reconciler
from tests.reconciler.conftest import (
    Bus,
    Fleet,
    flux_object,
    make_envelope,
    receiver_manifest,
    requested_at,
    wait_for,
)
from tests.support.faultproxy import FaultProxy
from tests.support.kubeapi import REPO_ROOT, KubeAPI
from tests.support.natsd import free_port, wait_port


async def settled(reconciler: Reconciler) -> bool:
    assert reconciler.consumer is not None
    info = await reconciler.consumer.js.consumer_info(
        reconciler.consumer.settings.stream, reconciler.consumer.durable
    )
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


def setup_targets(kube: KubeAPI, fleet: Fleet, namespace: str, count: int) -> Path:
    """``count`` Kustomizations and one Receiver per object (one message, one target)."""
    manifests = []
    for i in range(count):
        kube.apply(flux_object("Kustomization", f"ks-{i}"), namespace=namespace)
        manifests.append(
            receiver_manifest(
                f"hook-{i}",
                namespace,
                [
                    {
                        "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
                        "kind": "Kustomization",
                        "name": f"ks-{i}",
                    }
                ],
            )
        )
    return fleet.write_receivers(manifests)


async def publish_all(bus: Bus, namespace: str, count: int) -> None:
    for i in range(count):
        await bus.publish(make_envelope(namespace, f"hook-{i}"))


def all_patched(kube: KubeAPI, namespace: str, count: int) -> bool:
    return all(
        requested_at(kube, namespace, "Kustomization", f"ks-{i}") is not None for i in range(count)
    )


async def test_a_429_storm_shrinks_concurrency_and_loses_nothing(
    kube: KubeAPI, kube_namespace: str, fleet: Fleet, bus: Bus, kube_proxy: FaultProxy
) -> None:
    count = 20
    receivers = setup_targets(kube, fleet, kube_namespace, count)
    kube_proxy.fail(429, times=None, retry_after=1, method="PATCH")
    settings = fleet.settings(
        receivers,
        server=kube_proxy.url,
        consumer={"max_deliver": 50},
        patch={"max_concurrency": 8, "min_concurrency": 1},
    )
    reconciler = await fleet.start(settings)
    await publish_all(bus, kube_namespace, count)
    await wait_for(lambda: reconciler.metrics.throttled._value.get() >= 30, "a 429 storm")
    assert kube_proxy.count("PATCH", forwarded=False) >= 30
    assert reconciler.metrics.concurrency._value.get() < 8
    assert not all_patched(kube, kube_namespace, 1)
    kube_proxy.clear_faults()
    await wait_for(lambda: settled(reconciler), "all messages settled after the storm")
    assert all_patched(kube, kube_namespace, count)
    for i in range(count):  # each object patched once, by a request that got through
        assert kube_proxy.count("PATCH", f"/kustomizations/ks-{i}$", forwarded=True) == 1
    assert await bus.dead() == []
    assert reconciler.metrics.messages.labels("ack")._value.get() == count


async def test_server_errors_are_retried_until_every_target_is_patched(
    kube: KubeAPI, kube_namespace: str, fleet: Fleet, bus: Bus, kube_proxy: FaultProxy
) -> None:
    count = 10
    receivers = setup_targets(kube, fleet, kube_namespace, count)
    kube_proxy.fail(500, times=25, method="PATCH")
    kube_proxy.fail(503, times=5, method="GET")
    reconciler = await fleet.start(
        fleet.settings(receivers, server=kube_proxy.url, consumer={"max_deliver": 20})
    )
    await publish_all(bus, kube_namespace, count)
    await wait_for(lambda: settled(reconciler), "all messages settled")
    assert all_patched(kube, kube_namespace, count)
    assert kube_proxy.count("PATCH", forwarded=False) == 25
    assert reconciler.metrics.api_requests.labels("patch", "500")._value.get() == 25
    assert await bus.dead() == []


@pytest.mark.slow
async def test_api_server_down_for_30_seconds_then_everything_is_patched(
    kube: KubeAPI, kube_namespace: str, fleet: Fleet, bus: Bus, kube_proxy: FaultProxy
) -> None:
    count = 10
    receivers = setup_targets(kube, fleet, kube_namespace, count)
    reconciler = await fleet.start(
        fleet.settings(
            receivers,
            server=kube_proxy.url,
            consumer={"max_deliver": 10, "backoff": (1.0, 2.0, 5.0, 10.0)},
        )
    )
    await kube_proxy.go_down()
    await publish_all(bus, kube_namespace, count)
    await wait_for(lambda: reconciler.metrics.redeliveries._value.get() >= count, "redeliveries")
    await asyncio.sleep(30)  # the outage itself (not an assertion on time)
    assert not all_patched(kube, kube_namespace, 1)
    await kube_proxy.come_up()
    await wait_for(lambda: settled(reconciler), "all settled after the outage", limit=90)
    assert all_patched(kube, kube_namespace, count)
    assert await bus.dead() == []
    assert reconciler.metrics.messages.labels("ack")._value.get() == count


def scrape(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as rsp:
        text = rsp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )


def start_process(fleet: Fleet, receivers: Path, server: str, port: int) -> subprocess.Popen[bytes]:
    kubeconfig = fleet.kube.write_kubeconfig(fleet.tmp / f"kubeconfig-{port}", server=server)
    stream = fleet.bus.stream
    args = [
        sys.executable, "-m", "reconciler",
        "--nats-url", fleet.bus.url,
        "--kubeconfig", str(kubeconfig),
        "--config", str(receivers),
        "--stream", stream.name,
        "--stream-subject-prefix", stream.subject_prefix,
        "--dead-stream", stream.dead_name,
        "--dead-subject-prefix", stream.dead_subject_prefix,
        "--ack-wait", "3",
        "--fetch-batch", "8",
        "--backoff", "0.2,0.5",
        "--coalesce-window", "0.05",
        "--metrics-listen", f"127.0.0.1:{port}",
    ]  # fmt: skip
    with open(fleet.tmp / f"reconciler-{port}.log", "wb") as log:  # the child keeps its copy
        return subprocess.Popen(args, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})  # fmt: skip


async def test_a_reconciler_killed_mid_batch_loses_nothing(
    kube: KubeAPI, kube_namespace: str, fleet: Fleet, bus: Bus, kube_proxy: FaultProxy
) -> None:
    count = 40
    receivers = setup_targets(kube, fleet, kube_namespace, count)
    kube_proxy.delay(0.5, method="PATCH")  # keeps patches in flight when the kill comes
    ports = [free_port(), free_port()]
    procs = [start_process(fleet, receivers, kube_proxy.url, port) for port in ports]
    try:
        for port in ports:
            await asyncio.to_thread(wait_port, port, 30.0)
        await publish_all(bus, kube_namespace, count)

        def unacked(port: int) -> float:
            """One message, one target: targeted and not yet acked = held unacked (its patch
            is in flight behind the proxy's delay)."""
            acked = scrape(port, 'fluxrelay_reconciler_messages_total{outcome="ack"}')
            return scrape(port, "fluxrelay_reconciler_targets_total") - acked

        # Kill a replica while it holds unacked messages (either may have pulled them all).
        held = [0.0, 0.0]
        victim_index = 0  # until one is chosen

        def holding() -> bool:
            held[:] = [unacked(port) for port in ports]
            return max(held) >= 1

        await wait_for(holding, "a replica holding unacked messages")
        victim_index = held.index(max(held))
        victim, survivor_port = procs[victim_index], ports[1 - victim_index]
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        kube_proxy.clear_faults()
        await wait_for(lambda: all_patched(kube, kube_namespace, count), "every target patched")

        async def drained() -> bool:
            info = await bus.js.consumer_info(bus.stream.name, "fluxrelay-reconciler")
            return bool(info.num_pending == 0 and info.num_ack_pending == 0)

        await wait_for(drained, "every message acked by the survivor")
        assert scrape(survivor_port, "fluxrelay_reconciler_redeliveries_total") >= 1
        assert await bus.dead() == []
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    survivor = procs[1 - victim_index]
    assert survivor.returncode == 0  # the survivor drained and exited cleanly on SIGTERM
