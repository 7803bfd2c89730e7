"""The NATS configuration deploy/ ships runs on a real nats-server and takes fluxrelay's events.

Covers: the rendered single-node and cluster ``nats.conf`` pass ``nats-server -t``; the
single-node one, started for real (only its listen addresses and store path moved to a
private loopback setup), serves ``/healthz`` on the monitoring port the probes use, has
JetStream on, and stores a 3 MiB body plus envelope room in a file stream while a message
over its ``max_payload`` is refused; the cluster one names one route per StatefulSet replica.

The local nats-server is Debian's 2.9.10 while the image is 2.10: ``sync_interval`` (2.10+)
is removed before the local run when the local server is older, and only then.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.errors import MaxPayloadError

from tests.deploy.rendering import JSON, by_kind, named, render
from tests.support.natsd import NATS_SERVER, free_port, wait_port

MiB = 1024 * 1024
NEWER_THAN_LOCAL = ("sync_interval",)
"""nats.conf keys the 2.10 image knows and Debian's 2.9 server does not."""


def nats_conf(overlay: str) -> str:
    docs = render(overlay)
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith("nats-")]
    text: str = cm["data"]["nats.conf"]
    return text


def local_version() -> tuple[int, int]:
    out = subprocess.run([NATS_SERVER, "--version"], capture_output=True, text=True, check=True)
    match = re.search(r"v(\d+)\.(\d+)", out.stdout + out.stderr)
    assert match, out
    return int(match[1]), int(match[2])


def for_local_server(text: str) -> str:
    if local_version() >= (2, 10):
        return text
    return "\n".join(
        line for line in text.splitlines() if line.strip().split(":")[0] not in NEWER_THAN_LOCAL
    )


@pytest.mark.parametrize("overlay", ["overlays/simple", "overlays/ha"])
def test_nats_server_accepts_the_rendered_config(overlay: str, tmp_path: Path) -> None:
    conf = tmp_path / "nats.conf"
    conf.write_text(for_local_server(nats_conf(overlay)))
    result = subprocess.run(
        [NATS_SERVER, "-c", str(conf), "-t"],
        capture_output=True,
        text=True,
        check=False,
        env={"POD_NAME": "nats-0"},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_cluster_config_routes_to_every_replica() -> None:
    docs = render("overlays/ha")
    replicas = named(docs, "StatefulSet", "nats")["spec"]["replicas"]
    routes = re.findall(r"nats://(nats-\d+)\.nats-headless:6222", nats_conf("overlays/ha"))
    assert sorted(routes) == [f"nats-{i}" for i in range(replicas)]


class RunningNats:
    def __init__(self, tmp: Path, text: str) -> None:
        self.port, self.monitor = free_port(), free_port()
        text = re.sub(r"(?m)^listen: .*$", f"listen: 127.0.0.1:{self.port}", text)
        text = re.sub(r"(?m)^http: .*$", f"http: 127.0.0.1:{self.monitor}", text)
        text = re.sub(r"store_dir: \S+", f"store_dir: {tmp / 'js'}", text)
        self.conf = tmp / "nats.conf"
        self.conf.write_text(for_local_server(text))
        self.log = tmp / "nats.log"
        self.proc = subprocess.Popen(
            [NATS_SERVER, "-c", str(self.conf), "-l", str(self.log)],
            env={"POD_NAME": "nats-0"},
        )
        wait_port(self.port)
        wait_port(self.monitor)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def single_node(tmp_path: Path) -> Iterator[RunningNats]:
    text = nats_conf("overlays/simple")
    assert "listen: 0.0.0.0:4222" in text and "http: 0.0.0.0:8222" in text
    server = RunningNats(tmp_path, text)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def client(single_node: RunningNats) -> AsyncIterator[NATS]:
    nc = await nats.connect(f"nats://127.0.0.1:{single_node.port}")
    try:
        yield nc
    finally:
        await nc.close()


def get_json(url: str) -> tuple[int, JSON]:
    with urllib.request.urlopen(url, timeout=5) as rsp:
        status: int = rsp.status
        return status, json.loads(rsp.read())


async def test_single_node_serves_probes_and_stores_a_three_mib_event(
    single_node: RunningNats, client: NATS
) -> None:
    status, health = get_json(f"http://127.0.0.1:{single_node.monitor}/healthz")
    assert status == 200 and health.get("status") == "ok", health
    _, jsz = get_json(f"http://127.0.0.1:{single_node.monitor}/jsz")
    assert jsz.get("config", {}).get("store_dir", "").startswith(str(single_node.conf.parent))
    assert client.max_payload == 8 * MiB
    js = client.jetstream()
    await js.add_stream(name="DEPLOYCHECK", subjects=["deploycheck.>"], storage="file")
    body = b"x" * (3 * MiB + 64 * 1024)
    ack = await js.publish("deploycheck.large", body)
    assert ack.stream == "DEPLOYCHECK" and ack.seq == 1
    msg = await js.get_msg("DEPLOYCHECK", 1)
    assert msg.data == body
    with pytest.raises(MaxPayloadError):
        await js.publish("deploycheck.too-large", b"x" * (8 * MiB + 1))
