"""The system under soak: every fluxrelay process and real server, wired as in production.

One :class:`SoakSystem` is one segment of a soak: a fresh namespace of GitRepository objects on
the shared real kube-apiserver, a fresh NATS (one ``nats-server``, or a 3-node cluster with R3
streams), the fault proxy in front of the API server (the reconcilers' kubeconfig points at it;
the Flux stand-in and the soak's own watch talk to the server directly, so the proxy's faults
hit only fluxrelay), the receiver and two reconciler replicas as subprocesses (``python -m``,
sharing one durable, so killing one leaves the other), and an HTTP CDEvents sink. The proxy
and the sink are processes of their own too (``sidecars.py``), so the driver's event loop
carries only the load, the stand-in and the watch. It owns
starting all of that, the handles the faults act on, what the soak asks of it while it runs
(process ids, the durable's backlog, settling, the objects' reconcile state) and stopping
everything it started.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kubernetes_asyncio import client as k8s_client

from bench.soak.driving import Hook
from bench.soak.observing import (
    PatchWatcher,
    ReconcileState,
    consumer_backlog,
    metric_sum,
    reconcile_states,
    scrape,
)
from bench.soak.processes import Proc
from bench.soak.sidecars import ProxyProcess, SinkProcess
from receiver.config.hooks import hook_path
from reconciler.settings import CDEventsSettings
from reconciler.sinks import stream_config
from tests.support.fluxstandin import GIT_REPOSITORY, FluxStandIn
from tests.support.ingress import dump_yaml, receiver_docs
from tests.support.kubeapi import KubeAPI
from tests.support.natscluster import NatsCluster
from tests.support.natsd import NatsServer, free_port

log = logging.getLogger(__name__)

EVENTS_STREAM = "FLUXRELAY_EVENTS"
CDEVENTS_STREAM = "CDEVENTS"
DURABLE = "fluxrelay-reconciler"  # the reconcilers' default durable (no --shard)


@dataclass(frozen=True)
class SoakSettings:
    """Shape of one soak segment.

    Receiver ``r`` targets objects ``r .. r+targets-1`` (modulo ``objects``), so every object
    is named by some Receiver only when ``receivers >= objects``. The reconciler flags below
    are passed only when not None: None leaves the reconciler's own default, which is what a
    run that claims "default flags" (``plan.py``) needs; the segmented soak and its CI version
    keep explicit values.
    """

    receivers: int = 20
    objects: int = 20
    targets: int = 2  # objects per delivery (receiver r targets objects r .. r+targets-1)
    nats: Literal["single", "cluster"] = "single"
    reconcilers: int = 2
    ack_wait: float | None = 30.0
    coalesce_window: float | None = 0.2
    qps: int | None = 50
    burst: int | None = 100
    cdevents_outbox: int | None = 200_000
    log_format: str | None = "json"  # both services
    standin_delay: float = 0.0


class SoakSystem:
    """Everything one soak segment runs; ``async with SoakSystem(...) as system``."""

    def __init__(self, kube: KubeAPI, settings: SoakSettings, workdir: Path) -> None:
        self.kube = kube
        self.settings = settings
        self.workdir = workdir
        self.namespace = f"soak-{uuid.uuid4().hex[:8]}"
        self.single: NatsServer | None = None
        self.cluster: NatsCluster | None = None
        self.proxy = ProxyProcess(kube.url, kube.ca_file, workdir)
        self.sink = SinkProcess(workdir)
        self.receiver: Proc | None = None
        self.reconcilers: list[Proc] = []
        self.hooks: list[Hook] = []
        self.watcher: PatchWatcher | None = None
        self._api: k8s_client.ApiClient | None = None
        self._standin: FluxStandIn | None = None

    # --------------------------------------------------------------------------- wiring

    @property
    def nats_url(self) -> str:
        if self.cluster is not None:
            return self.cluster.url
        assert self.single is not None
        return self.single.url

    def object_key(self, index: int) -> str:
        return f"GitRepository/{self.namespace}/src-{index}"

    async def __aenter__(self) -> SoakSystem:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        s = self.settings
        self.workdir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._create_objects)
        if s.nats == "cluster":
            self.cluster = await asyncio.to_thread(NatsCluster(name="soak").start)
            await self.cluster.wait_meta_leader()
            await self._create_cdevents_stream(replicas=3)
        else:
            self.single = await asyncio.to_thread(NatsServer(name="soak").start)
        await self.proxy.start()
        await self.sink.start()
        kubeconfig = self.kube.write_kubeconfig(self.workdir / "kubeconfig", server=self.proxy.url)
        config = self.workdir / "receivers.yaml"
        config.write_text(self._receivers_yaml())
        self.receiver = self._receiver_proc(config)
        self.receiver.start()
        await self.receiver.wait_ready()
        if self.cluster is not None:
            await self.cluster.wait_stream_current(EVENTS_STREAM)
        for i in range(s.reconcilers):
            proc = self._reconciler_proc(i, config, kubeconfig)
            self.reconcilers.append(proc)
            proc.start()
        for proc in self.reconcilers:
            await proc.wait_ready()
        self._api = await self.kube.api_client()
        self._standin = FluxStandIn(
            self._api, self.namespace, (GIT_REPOSITORY,), delay=s.standin_delay
        )
        await self._standin.start()
        self.watcher = await PatchWatcher(
            self._api,
            self.namespace,
            GIT_REPOSITORY.group,
            GIT_REPOSITORY.version,
            GIT_REPOSITORY.plural,
            GIT_REPOSITORY.kind,
        ).start()

    async def stop(self) -> None:
        """Stop everything that was started, each step whatever became of the others (a
        failing step is logged): the processes and servers would outlive the soak."""
        if self.watcher is not None:
            await _step("patch watch", self.watcher.stop())
        if self._standin is not None:
            await _step("Flux stand-in", self._standin.stop())
            self._standin = None
        for proc in [*self.procs, *self.helpers]:
            await _step(proc.name, asyncio.to_thread(proc.stop))
        if self._api is not None:
            await _step("API client", self._api.close())
            self._api = None
        if self.cluster is not None:
            await _step("NATS cluster", asyncio.to_thread(self.cluster.cleanup))
        if self.single is not None:
            await _step("nats-server", asyncio.to_thread(self.single.cleanup))
        await _step("namespace", asyncio.to_thread(self.kube.delete_namespace, self.namespace))

    def _create_objects(self) -> None:
        self.kube.create_namespace(self.namespace)
        manifests: list[dict[str, Any]] = [
            {
                "apiVersion": GIT_REPOSITORY.api_version,
                "kind": GIT_REPOSITORY.kind,
                "metadata": {"name": f"src-{i}", "namespace": self.namespace},
                "spec": {
                    "url": f"https://github.com/example/soak-{i}.git",
                    "interval": "10m",
                    "ref": {"branch": "main"},
                },
            }
            for i in range(self.settings.objects)
        ]
        self.kube.apply_manifests(manifests, namespace=self.namespace)

    async def _create_cdevents_stream(self, replicas: int) -> None:
        """In a cluster, the CDEvents stream is made R3 up front (the sink keeps an existing
        stream as it is; left to the sink it would be R1 and die with its node)."""
        import nats

        assert self.cluster is not None
        config = stream_config(CDEventsSettings(stream=CDEVENTS_STREAM))
        config.num_replicas = replicas
        nc = await nats.connect(servers=self.cluster.urls)
        try:
            await nc.jetstream(timeout=10).add_stream(config)
        finally:
            await nc.close()

    def _receivers_yaml(self) -> str:
        s = self.settings
        docs: list[dict[str, Any]] = []
        self.hooks = []
        port = free_port()
        self._hook_port = port
        for r in range(s.receivers):
            token = f"soak-token-{r}-5f1c2a9e"
            name = f"soak-{r}"
            indexes = [(r + k) % s.objects for k in range(s.targets)]
            resources = [{"kind": "GitRepository", "name": f"src-{i}"} for i in indexes]
            docs += receiver_docs(
                name, "github", token=token, namespace=self.namespace, resources=resources
            )
            path = hook_path(token.encode(), name, self.namespace)
            targets = tuple(self.object_key(i) for i in indexes)
            self.hooks.append(Hook(r, f"http://127.0.0.1:{port}{path}", token, targets))
        return dump_yaml(docs)

    def _receiver_proc(self, config: Path) -> Proc:
        metrics = free_port()
        cmd = [
            sys.executable, "-m", "receiver",
            "--config", str(config),
            "--nats-url", self.nats_url,
            "--listen", f"127.0.0.1:{self._hook_port}",
            "--metrics-listen", f"127.0.0.1:{metrics}",
            "--retry-after", "1",
            *_flag("--log-format", self.settings.log_format),
        ]  # fmt: skip
        if self.settings.nats == "cluster":
            cmd += ["--stream-replicas", "3"]
        return Proc(
            "receiver", cmd, self.workdir / "receiver.log", f"http://127.0.0.1:{metrics}/readyz"
        )

    def _reconciler_proc(self, index: int, config: Path, kubeconfig: Path) -> Proc:
        s = self.settings
        metrics = free_port()
        cmd = [
            sys.executable, "-m", "reconciler",
            "--config", str(config),
            "--namespace", self.namespace,
            "--nats-url", self.nats_url,
            "--kubeconfig", str(kubeconfig),
            "--metrics-listen", f"127.0.0.1:{metrics}",
            "--cdevents-nats",
            "--cdevents-stream", CDEVENTS_STREAM,
            "--cdevents-sink", f"{self.sink.url},name=http",
            *_flag("--log-format", s.log_format),
            *_flag("--ack-wait", s.ack_wait),
            *_flag("--coalesce-window", s.coalesce_window),
            *_flag("--qps", s.qps),
            *_flag("--burst", s.burst),
            *_flag("--cdevents-outbox", s.cdevents_outbox),
        ]  # fmt: skip
        return Proc(
            f"reconciler-{index}",
            cmd,
            self.workdir / f"reconciler-{index}.log",
            f"http://127.0.0.1:{metrics}/readyz",
            f"http://127.0.0.1:{metrics}/metrics",
        )

    def check_processes(self) -> None:
        for proc in [*self.procs, *self.helpers]:
            proc.check()

    @property
    def helpers(self) -> list[Proc]:
        """The soak's own processes: the fault proxy and the HTTP sink (a crash of either
        spoils the run as much as a crash of fluxrelay's)."""
        return [self.proxy.proc, self.sink.proc]

    @property
    def procs(self) -> list[Proc]:
        """fluxrelay's processes: the receiver, then the reconcilers."""
        return [*([self.receiver] if self.receiver else []), *self.reconcilers]

    async def rss(self) -> dict[str, int | None]:
        return {p.name: p.rss() for p in self.procs}

    def pids(self) -> dict[str, int | None]:
        """Every process of the system by name (fluxrelay's, then ``nats``/``nats-n1``..),
        None while it is down; a new pid under a name is a restart."""
        out = {p.name: p.pid for p in self.procs}
        if self.single is not None:
            proc = self.single.proc
            out["nats"] = proc.pid if proc is not None and proc.poll() is None else None
        if self.cluster is not None:
            out |= {f"nats-{node.name}": node.pid for node in self.cluster.nodes}
        return out

    def all_pids(self) -> dict[str, int | None]:
        """:meth:`pids`, and what else runs on the machine for the soak: kube-apiserver,
        etcd, the fault proxy, the HTTP sink and the driver (this process), by name."""
        return {
            **self.pids(),
            "kube-apiserver": self.kube.apiserver_pid,
            "etcd": self.kube.etcd_pid,
            "fault-proxy": self.proxy.proc.pid,
            "http-sink": self.sink.proc.pid,
            "driver": os.getpid(),
        }

    async def backlog(self) -> int | None:
        """Messages of the events stream the reconcilers' durable has not acked yet."""
        return await consumer_backlog(self.nats_url, EVENTS_STREAM, DURABLE)

    async def outboxes(self) -> float:
        """Events waiting in every live reconciler's CDEvents sink outboxes."""
        total = 0.0
        for proc in self.reconcilers:
            if proc.metrics_url and proc.pid is not None:
                metrics = await scrape(proc.metrics_url)
                total += metric_sum(metrics, "fluxrelay_reconciler_sink_outbox")
        return total

    async def settle(self, within: float, quiet: float) -> float:
        """Wait until all is acked, no patch arrived for ``quiet`` s and outboxes are empty
        (at most ``within`` s); the seconds it took."""
        assert self.watcher is not None
        start = time.monotonic()
        while time.monotonic() - start < within:
            backlog = await self.backlog()
            quiet_for = time.monotonic() - max(self.watcher.last_seen(), start)
            if backlog == 0 and quiet_for >= quiet and await self.outboxes() == 0:
                break
            await asyncio.sleep(1.0)
        return time.monotonic() - start

    async def object_states(self) -> dict[str, ReconcileState]:
        """Every object's last reconcile request and the one Flux (the stand-in) handled,
        read from the API server directly (not through the fault proxy)."""
        assert self._api is not None
        return await reconcile_states(
            self._api,
            self.namespace,
            GIT_REPOSITORY.group,
            GIT_REPOSITORY.version,
            GIT_REPOSITORY.plural,
            GIT_REPOSITORY.kind,
        )


async def _step(what: str, stopping: Awaitable[object]) -> None:
    try:
        await stopping
    except Exception:
        log.exception("stopping %s failed", what)


def _flag(name: str, value: object) -> list[str]:
    """``[name, value]``, or nothing when ``value`` is None (the program's default)."""
    return [] if value is None else [name, str(value)]
