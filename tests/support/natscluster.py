"""A real 3-node ``nats-server`` cluster with JetStream on loopback, for fault tests.

Losing one node of an R3 stream must lose nothing: that is the production answer to a crashed
server, and it can only be shown with three real processes. This module owns those processes:
each node gets its own client port, route port, monitoring port, store folder and
``server_name``, all three list every route, and any node can be killed (SIGKILL), stopped or
restarted on the same store and ports. Helpers wait until the JetStream meta group has a
leader and until a stream has a leader with all its peers current, and name the node that
leads a stream (so a test can kill exactly that one).

Startup failures raise with the node's log tail: a tier whose servers cannot start fails.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import nats
from nats.js.errors import APIError

from tests.support.natsd import MAX_PAYLOAD, NATS_SERVER, free_port, require_server, wait_port

CLUSTER_NAME = "fluxrelay-test"


class NatsNode:
    """One member of a :class:`NatsCluster` (ports and store fixed for its whole life)."""

    def __init__(self, index: int, workdir: Path) -> None:
        self.index = index
        self.name = f"n{index + 1}"
        self.port = free_port()
        self.cluster_port = free_port()
        self.monitor_port = free_port()
        self.dir = workdir / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.store = self.dir / "js"
        self.log_path = self.dir / "nats.log"
        self.conf_path = self.dir / "nats.conf"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.running else None

    def write_config(self, routes: list[int]) -> None:
        route_urls = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in routes)
        self.conf_path.write_text(
            f'server_name: "{self.name}"\n'
            f"listen: 127.0.0.1:{self.port}\n"
            f"http: 127.0.0.1:{self.monitor_port}\n"
            f"max_payload: {MAX_PAYLOAD}\n"
            f'jetstream {{ store_dir: "{self.store}" }}\n'
            f"cluster {{\n"
            f'  name: "{CLUSTER_NAME}"\n'
            f"  listen: 127.0.0.1:{self.cluster_port}\n"
            f"  routes: [{route_urls}]\n"
            f"}}\n"
        )

    def start(self) -> None:
        if self.running:
            return
        require_server()
        args = [NATS_SERVER, "-c", str(self.conf_path), "-l", str(self.log_path)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(self.port)
        except RuntimeError as e:
            self.kill()
            raise RuntimeError(f"node {self.name}: {e}\n{self.log_tail()}") from e

    def kill(self) -> None:
        """SIGKILL: the crash case (what the OS page cache holds survives, as in real life)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        """Graceful stop (SIGTERM), SIGKILL after 10 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def varz(self, endpoint: str = "varz") -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.monitor_port}/{endpoint}"
        with urllib.request.urlopen(url, timeout=2) as rsp:  # loopback only
            doc: dict[str, Any] = json.loads(rsp.read())
            return doc

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class NatsCluster:
    """Three nats-server processes routed into one JetStream cluster on 127.0.0.1.

    ``start()`` is synchronous; the ``wait_*`` helpers and :meth:`stream_leader` are async
    (they speak the JetStream API through a client connected to every live node).
    """

    def __init__(self, size: int = 3, *, name: str = "cluster") -> None:
        if size < 3:
            raise ValueError("a JetStream cluster that survives a node loss needs 3 nodes")
        self._tmp = Path(tempfile.mkdtemp(prefix=f"fluxrelay-{name}-"))
        self.nodes = [NatsNode(i, self._tmp) for i in range(size)]
        routes = [n.cluster_port for n in self.nodes]
        for node in self.nodes:
            node.write_config(routes)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated (what ``--nats-url`` takes)."""
        return ",".join(self.urls)

    def node(self, server_name: str) -> NatsNode:
        for node in self.nodes:
            if node.name == server_name:
                return node
        raise KeyError(server_name)

    def start(self) -> NatsCluster:
        for node in self.nodes:
            node.start()
        return self

    def kill(self, index: int) -> NatsNode:
        node = self.nodes[index]
        node.kill()
        return node

    def restart(self, index: int) -> NatsNode:
        """Start a stopped or killed node again on its store and ports."""
        node = self.nodes[index]
        node.stop()
        node.start()
        return node

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # ------------------------------------------------------------------------------ waiting

    async def _connect(self) -> Any:
        live = [n.url for n in self.nodes if n.running]
        return await nats.connect(
            servers=live, connect_timeout=2, allow_reconnect=True, max_reconnect_attempts=5
        )

    async def wait_meta_leader(self, within: float = 30.0) -> None:
        """Wait until the JetStream API answers (a meta leader was elected)."""
        deadline = time.monotonic() + within
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                nc = await self._connect()
                try:
                    await nc.jetstream(timeout=2).account_info()
                    return
                finally:
                    await nc.close()
            except Exception as e:  # not elected yet, node still starting
                last = e
                await asyncio.sleep(0.25)
        raise RuntimeError(f"no JetStream meta leader after {within}s: {last!r}")

    async def stream_leader(self, stream: str) -> str | None:
        """``server_name`` of the node leading ``stream`` (None when it has no leader)."""
        nc = await self._connect()
        try:
            info = await nc.jetstream(timeout=2).stream_info(stream)
        finally:
            await nc.close()
        cluster = info.cluster
        return cluster.leader if cluster is not None else None

    async def wait_stream_current(self, stream: str, within: float = 30.0) -> str:
        """Wait until ``stream`` has a leader and every replica is current; return the leader."""
        deadline = time.monotonic() + within
        last: object = None
        while time.monotonic() < deadline:
            try:
                nc = await self._connect()
                try:
                    info = await nc.jetstream(timeout=2).stream_info(stream)
                finally:
                    await nc.close()
                cluster = info.cluster
                replicas = (cluster.replicas or []) if cluster is not None else []
                if (
                    cluster is not None
                    and cluster.leader
                    and all(r.current and not r.offline for r in replicas)
                ):
                    return str(cluster.leader)
                last = cluster
            except (APIError, TimeoutError, OSError, nats.errors.Error) as e:
                last = e
            await asyncio.sleep(0.25)
        raise RuntimeError(f"stream {stream} not current on all replicas after {within}s: {last}")
