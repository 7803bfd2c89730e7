"""The systems under test, started as real processes: fluxrelay and webhook + kubectl.

The cluster (etcd + kube-apiserver from ``tests.support.kubeapi``) is shared by every run:
one namespace per scenario holding its Kustomizations, plus a ``warm`` object each system
is warmed up on before measuring. Each measured run starts its system afresh:

* :class:`FluxRelay`: a fresh ``nats-server`` (file store), ``python -m receiver`` and
  ``python -m reconciler`` reading one config file of Receivers (one per object, named
  targeting) and a wildcard Receiver for the fan-out;
* :class:`WebhookKubectl`: Debian's ``webhook`` (adnanh/webhook) with one hook that checks
  the GitHub signature (``payload-hmac-sha256``) and runs a script doing
  ``kubectl annotate --overwrite`` on the object named in the URL. The hook waits for the
  command (``include-command-output-in-response``), so its response means "annotated".

Both verify the same HMAC-signed body and write the same two annotations, so the work per
delivery is the same; only how it is done differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from receiver.config.hooks import hook_path
from tests.support.kubeapi import KubeAPI
from tests.support.natsd import NatsServer, free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "bench-e2e-token-0001"
WARM = "warm"
KUSTOMIZATION = {"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization"}
FANOUT_LABELS = {"bench.fluxrelay.io/fanout": "yes"}
WEBHOOK = "/usr/bin/webhook"
KUBECTL = "/usr/bin/kubectl"


@dataclass(frozen=True)
class Layout:
    """Which objects exist: names per scenario namespace."""

    latency: tuple[str, ...]
    burst: tuple[str, ...]
    fanout: tuple[str, ...]

    @staticmethod
    def sized(latency: int, burst: int, fanout: int) -> Layout:
        return Layout(
            tuple(f"lat-{i:04d}" for i in range(latency)),
            tuple(f"burst-{i:04d}" for i in range(burst)),
            tuple(f"fan-{i:04d}" for i in range(fanout)),
        )

    def namespaces(self) -> dict[str, tuple[str, ...]]:
        return {"bench-lat": self.latency, "bench-burst": self.burst, "bench-fan": self.fanout}


def kustomization(name: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {
        **KUSTOMIZATION,
        "metadata": {"name": name, "labels": dict(labels or {})},
        "spec": {
            "interval": "10m",
            "path": "./",
            "prune": False,
            "sourceRef": {"kind": "GitRepository", "name": "fleet"},
        },
    }


def start_cluster(layout: Layout) -> KubeAPI:
    """etcd + kube-apiserver with the Flux CRDs and every benchmark object."""
    kube = KubeAPI().start()
    try:
        kube.apply_crds()
        for namespace, names in layout.namespaces().items():
            kube.create_namespace(namespace)
            labels = FANOUT_LABELS if namespace == "bench-fan" else None
            docs = [kustomization(WARM)] + [kustomization(n, labels) for n in names]
            kube.apply_manifests(docs, namespace=namespace)
    except BaseException:
        kube.stop()
        raise
    return kube


def receiver(name: str, namespace: str, resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "notification.toolkit.fluxcd.io/v1",
        "kind": "Receiver",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "type": "github",
            "events": ["push"],
            "secretRef": {"name": "bench-token"},
            "resources": resources,
        },
    }


def receivers_config(layout: Layout) -> str:
    """One Receiver per object (named targeting) and one wildcard Receiver for the fan-out."""
    docs: list[dict[str, Any]] = []
    for namespace, names in layout.namespaces().items():
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "bench-token", "namespace": namespace},
                "stringData": {"token": TOKEN},
            }
        )
        singles = (WARM,) if namespace == "bench-fan" else (WARM, *names)
        for name in singles:
            docs.append(
                receiver(
                    name,
                    namespace,
                    [
                        {
                            "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
                            "kind": "Kustomization",
                            "name": name,
                        }
                    ],
                )
            )
    wildcard = {
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
        "kind": "Kustomization",
        "name": "*",
        "matchLabels": FANOUT_LABELS,
    }
    docs.append(receiver("fanout", "bench-fan", [wildcard]))
    return yaml.safe_dump_all(docs)


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before {url} was ready")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url, timeout=1) as resp,
        ):
            if resp.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def spawn(
    cmd: list[str], log: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=out, cwd=ROOT, env={**os.environ, **(env or {})}
        )


def terminate(proc: subprocess.Popen[bytes] | None, grace: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def peak_rss_mib(pid: int) -> float | None:
    """The process's high-water resident set (VmHWM), in MiB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


class FluxRelay:
    """nats-server + receiver + reconciler, started fresh for one measured run."""

    name = "fluxrelay"
    attribution = "envelope-id"

    def __init__(
        self,
        workdir: Path,
        config: Path,
        kubeconfig: Path,
        *,
        qps: float,
        burst: int,
        window: float,
        extra_args: tuple[str, ...] = (),
        reconciler_env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.extra_args = extra_args
        self.reconciler_env = reconciler_env
        self.config = config
        self.kubeconfig = kubeconfig
        self.qps, self.burst, self.window = qps, burst, window
        self.port = free_port()
        self.nats: NatsServer | None = None
        self.receiver: subprocess.Popen[bytes] | None = None
        self.reconciler: subprocess.Popen[bytes] | None = None

    def start(self) -> FluxRelay:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nats = NatsServer(name="bench-e2e").start()
        receiver_metrics, reconciler_metrics = free_port(), free_port()
        common = ["--nats-url", self.nats.url, "--config", str(self.config)]
        # Logging as a user runs it (INFO, text), like every other flag not named here.
        try:
            self.receiver = spawn(
                [
                    sys.executable,
                    "-m",
                    "receiver",
                    *common,
                    "--listen",
                    f"127.0.0.1:{self.port}",
                    "--metrics-listen",
                    f"127.0.0.1:{receiver_metrics}",
                ],
                self.workdir / "receiver.log",
            )
            wait_ready(f"http://127.0.0.1:{receiver_metrics}/readyz", self.receiver)
            self.reconciler = spawn(
                [
                    sys.executable,
                    "-m",
                    "reconciler",
                    *common,
                    "--kubeconfig",
                    str(self.kubeconfig),
                    "--metrics-listen",
                    f"127.0.0.1:{reconciler_metrics}",
                    "--qps",
                    str(self.qps),
                    "--burst",
                    str(self.burst),
                    "--coalesce-window",
                    str(self.window),
                    *self.extra_args,
                ],
                self.workdir / "reconciler.log",
                self.reconciler_env,
            )
            wait_ready(f"http://127.0.0.1:{reconciler_metrics}/readyz", self.reconciler)
        except BaseException:
            self.stop()
            raise
        return self

    def hook_url(self, namespace: str, name: str) -> str:
        return f"http://127.0.0.1:{self.port}{hook_path(TOKEN.encode(), name, namespace)}"

    def rss(self) -> dict[str, float | None]:
        return {
            "receiver_peak_rss_mib": peak_rss_mib(self.receiver.pid) if self.receiver else None,
            "reconciler_peak_rss_mib": (
                peak_rss_mib(self.reconciler.pid) if self.reconciler else None
            ),
        }

    async def stream_state(self) -> dict[str, int]:
        """What JetStream holds: stored events, the reconciler's backlog, dead letters."""
        import nats
        from nats.js.errors import NotFoundError

        assert self.nats is not None
        nc = await nats.connect(self.nats.url)
        try:
            js = nc.jetstream()
            stream = await js.stream_info("FLUXRELAY_EVENTS")
            consumer = await js.consumer_info("FLUXRELAY_EVENTS", "fluxrelay-reconciler")
            try:
                dead = (await js.stream_info("FLUXRELAY_DEAD")).state.messages
            except NotFoundError:
                dead = 0
            return {
                "stored": stream.state.messages,
                "pending": consumer.num_pending or 0,
                "ack_pending": consumer.num_ack_pending or 0,
                "redelivered": consumer.num_redelivered or 0,
                "dead_letters": dead,
            }
        finally:
            await nc.close()

    async def drained(self, within: float) -> dict[str, int]:
        """Wait until the reconciler has acked everything (or ``within`` s), then report."""
        deadline = time.monotonic() + within
        while True:
            state = await self.stream_state()
            if state["pending"] == 0 and state["ack_pending"] == 0:
                return state
            if time.monotonic() > deadline:
                return state
            await asyncio.sleep(0.25)

    def stop(self) -> None:
        terminate(self.receiver)
        terminate(self.reconciler)
        self.receiver = self.reconciler = None
        if self.nats is not None:
            self.nats.cleanup()
            self.nats = None


SCRIPT = """#!/bin/sh
# One hook, one kubectl: the do-it-yourself reconcile request (bench/e2e).
# $1 namespace, $2 Kustomization name, $3 delivery id.
exec {kubectl} --kubeconfig "$BENCH_KUBECONFIG" --cache-dir "$BENCH_KUBE_CACHE" \\
  -n "$1" annotate --overwrite "kustomization/$2" \\
  "reconcile.fluxcd.io/requestedAt=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)" \\
  "fluxrelay.io/delivery=$3" 2>>"$BENCH_KUBECTL_ERRORS"
"""


def hooks_json(script: Path) -> list[dict[str, Any]]:
    """The webhook definition: signature checked, then the script with URL/header arguments."""
    return [
        {
            "id": "annotate",
            "execute-command": str(script),
            "command-working-directory": str(script.parent),
            "http-methods": ["POST"],
            "include-command-output-in-response": True,
            "pass-arguments-to-command": [
                {"source": "url", "name": "ns"},
                {"source": "url", "name": "object"},
                {"source": "header", "name": "X-GitHub-Delivery"},
            ],
            "trigger-rule": {
                "and": [
                    {
                        "match": {
                            "type": "payload-hmac-sha256",
                            "secret": TOKEN,
                            "parameter": {"source": "header", "name": "X-Hub-Signature-256"},
                        }
                    },
                    {
                        "match": {
                            "type": "value",
                            "value": "push",
                            "parameter": {"source": "header", "name": "X-GitHub-Event"},
                        }
                    },
                ]
            },
        }
    ]


class WebhookKubectl:
    """Debian's ``webhook`` running ``kubectl annotate`` per delivery."""

    name = "webhook-kubectl"
    attribution = "delivery-id"

    def __init__(self, workdir: Path, kubeconfig: Path) -> None:
        self.workdir = workdir
        self.kubeconfig = kubeconfig
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WebhookKubectl:
        self.workdir.mkdir(parents=True, exist_ok=True)
        script = self.workdir / "annotate.sh"
        script.write_text(SCRIPT.format(kubectl=KUBECTL))
        script.chmod(0o755)
        hooks = self.workdir / "hooks.json"
        hooks.write_text(json.dumps(hooks_json(script), indent=2))
        env = {
            "BENCH_KUBECONFIG": str(self.kubeconfig),
            "BENCH_KUBE_CACHE": str(self.workdir / "kube-cache"),
            "BENCH_KUBECTL_ERRORS": str(self.workdir / "kubectl-errors.log"),
        }
        cmd = [WEBHOOK, "-hooks", str(hooks), "-ip", "127.0.0.1", "-port", str(self.port)]
        self.proc = spawn(cmd, self.workdir / "webhook.log", env)
        try:
            wait_port(self.port)
        except BaseException:
            self.stop()
            raise
        return self

    def hook_url(self, namespace: str, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/annotate?ns={namespace}&object={name}"

    def rss(self) -> dict[str, float | None]:
        return {"webhook_peak_rss_mib": peak_rss_mib(self.proc.pid) if self.proc else None}

    def stop(self) -> None:
        terminate(self.proc)
        self.proc = None
