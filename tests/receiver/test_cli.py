"""The ``fluxrelay-receiver`` process as an operator runs it: hook-path known answers,
a file that is no Receiver list refused at start, Receivers that cannot be served reported
(by name and reason) while the others are served, serving from a file with the
``send`` helper, reload on file change and SIGHUP, metrics, JSON logs without secrets,
graceful SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ingress import dump_yaml, path_of, receiver_docs
from tests.support.natsd import NatsServer, free_port

TOKEN = "tok-3f9a1c77e2-7b4d"
PY = sys.executable


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "receiver", *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("token", "name", "namespace", "path"),
    [
        pytest.param(
            "token",
            "test-receiver",
            "default",
            "/hook/c0546ea4a2a81aacb29ba4f488ccf72a588f481b7418f33a1747e7c8a0991eec",
            id="flux-known-answer",
        ),
        pytest.param(
            "ab",
            "c",
            "default",
            "/hook/67fd78d485bad807a5e9eb232f7dc365daa485941801f21abb6babea283828b1",
            id="collision-a",
        ),
        pytest.param(
            "a",
            "bc",
            "default",
            "/hook/67fd78d485bad807a5e9eb232f7dc365daa485941801f21abb6babea283828b1",
            id="collision-b",
        ),
    ],
)
def test_hook_path_prints_the_flux_path(token: str, name: str, namespace: str, path: str) -> None:
    out = run_cli("hook-path", "--token", token, "--name", name, "--namespace", namespace)
    assert out.returncode == 0
    assert out.stdout.strip() == path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            dump_yaml([{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}}]),
            "document 1: kind 'Deployment'",
            id="foreign-kind",
        ),
        pytest.param("kind: [unclosed", "invalid YAML", id="not-yaml"),
        pytest.param("--- just a string\n", "document 1: not a manifest", id="not-a-map"),
    ],
)
def test_a_file_that_is_no_receiver_list_fails_at_start(
    tmp_path: Path, text: str, message: str
) -> None:
    config = tmp_path / "receivers.yaml"
    config.write_text(text)
    out = run_cli(
        "--config",
        str(config),
        "--nats-url",
        "nats://127.0.0.1:1",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--metrics-listen",
        f"127.0.0.1:{free_port()}",
    )
    assert out.returncode == 2
    assert message in out.stderr


def test_config_and_kubernetes_together_are_refused_at_start(tmp_path: Path) -> None:
    """One source of Receivers, as the reconciler: before, ``--config`` was silently ignored."""
    config = tmp_path / "receivers.yaml"
    config.write_text("[]\n")
    out = run_cli("--config", str(config), "--kubernetes", "--nats-url", "nats://127.0.0.1:1")
    assert out.returncode == 2
    assert "--config and --kubernetes are exclusive" in out.stderr


UNSERVABLE = [
    {
        "apiVersion": "notification.toolkit.fluxcd.io/v1",
        "kind": "Receiver",
        "metadata": {"name": "no-ref", "namespace": "default"},
        "spec": {"type": "github"},
    },
    *receiver_docs("bad-type", "githib", TOKEN),
    receiver_docs("no-secret", "github", TOKEN)[1],
    *receiver_docs("weak", "quay", "weak-tok-1234"),
    {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "b64-token", "namespace": "default"},
        "data": {"token": "%%%"},
    },
    receiver_docs("b64", "github", TOKEN)[1],
    {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s1", "namespace": "default"},
        "stringData": {"token": "0123456789abcdef" + "ab"},
    },
    {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s2", "namespace": "default"},
        "stringData": {"token": "0123456789abcdef" + "a"},
    },
    {
        "apiVersion": "notification.toolkit.fluxcd.io/v1",
        "kind": "Receiver",
        "metadata": {"name": "c", "namespace": "default"},
        "spec": {"type": "github", "secretRef": {"name": "s1"}},
    },
    {
        "apiVersion": "notification.toolkit.fluxcd.io/v1",
        "kind": "Receiver",
        "metadata": {"name": "bc", "namespace": "default"},
        "spec": {"type": "github", "secretRef": {"name": "s2"}},
    },
]
"""Receivers a file may hold that cannot be served (an API server would accept each: Flux's
CRD checks neither Secrets nor token lengths), next to one that can."""


def test_receivers_that_cannot_be_served_are_reported_and_the_others_served(
    tmp_path: Path, nats_session: NatsServer
) -> None:
    config = tmp_path / "receivers.yaml"
    config.write_text(dump_yaml(receiver_docs("gh", "github", TOKEN) + UNSERVABLE))
    p = Process(config, nats_session, tmp_path / "receiver.log")
    try:
        wait_for(lambda: http_get(f"http://127.0.0.1:{p.metrics}/readyz")[0] == 200, what="ready")
        sent = p.send(path_of("gh", TOKEN))
        assert sent.stdout.startswith("202 "), sent.stdout + sent.stderr
        assert p.send(path_of("weak", "weak-tok-1234"), "weak-tok-1234").stdout.startswith("404")
        _, metrics = http_get(f"http://127.0.0.1:{p.metrics}/metrics")
        for reason, count in {
            "invalid": 3,  # no secretRef, unknown type, Secret data not base64
            "secret_missing": 1,
            "weak_token": 1,
            "collision": 2,
        }.items():
            assert (
                f'fluxrelay_receiver_receivers_unserved{{reason="{reason}"}} {count}.0' in metrics
            )
        assert "fluxrelay_receiver_receivers 1.0" in metrics
    finally:
        p.proc.send_signal(signal.SIGTERM)
        p.proc.wait(30)
        p._log_file.close()
    log = p.log.read_text()
    for name in ("no-ref", "bad-type", "no-secret", "weak", "b64", "c", "bc"):
        assert f"not serving Receiver default/{name} " in log, name
    assert "weak-tok-1234" not in log
    for name, token in (("weak", "weak-tok-1234"), ("c", "0123456789abcdefab")):
        assert path_of(name, token).removeprefix("/hook/") not in log


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def wait_for(check: object, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Process:
    def __init__(self, config: Path, nats: NatsServer, log: Path) -> None:
        self.port = free_port()
        self.metrics = free_port()
        self.log = log
        self._log_file = log.open("w")
        env = dict(os.environ, FLUXRELAY_LOG_FORMAT="json", FLUXRELAY_STREAM_STORAGE="memory")
        self.proc = subprocess.Popen(
            [
                PY,
                "-m",
                "receiver",
                "--config",
                str(config),
                "--nats-url",
                nats.url,
                "--listen",
                f"127.0.0.1:{self.port}",
                "--metrics-listen",
                f"127.0.0.1:{self.metrics}",
                "--reload-interval",
                "0.2",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
            env=env,
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def send(self, path: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
        return run_cli("send", "--url", self.url(path), "--token", token)


@pytest.fixture
def process(tmp_path: Path, nats_session: NatsServer) -> Iterator[Process]:
    config = tmp_path / "receivers.yaml"
    config.write_text(dump_yaml(receiver_docs("gh", "github", TOKEN)))
    p = Process(config, nats_session, tmp_path / "receiver.log")
    wait_for(lambda: http_get(f"http://127.0.0.1:{p.metrics}/readyz")[0] == 200, what="readiness")
    yield p
    if p.proc.poll() is None:
        p.proc.kill()
        p.proc.wait()
    p._log_file.close()


def test_serves_reloads_and_stops_gracefully(process: Process, tmp_path: Path) -> None:
    sent = process.send(path_of("gh", TOKEN))
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert sent.stdout.startswith("202 ")

    # Reload on file change: a second receiver appears without a restart.
    config = tmp_path / "receivers.yaml"
    docs = receiver_docs("gh", "github", TOKEN) + receiver_docs("gl", "github", TOKEN)
    config.write_text(dump_yaml(docs))
    wait_for(lambda: process.send(path_of("gl", TOKEN)).returncode == 0, what="file reload")

    # A broken edit keeps the previous table.
    config.write_text("kind: [unclosed")
    time.sleep(0.6)
    assert process.send(path_of("gl", TOKEN)).returncode == 0

    # SIGHUP forces a reload (here: back to one receiver).
    config.write_text(dump_yaml(receiver_docs("gh", "github", TOKEN)))
    process.proc.send_signal(signal.SIGHUP)
    wait_for(
        lambda: process.send(path_of("gl", TOKEN)).stdout.startswith("404"), what="SIGHUP reload"
    )

    status, metrics = http_get(f"http://127.0.0.1:{process.metrics}/metrics")
    assert status == 200
    assert (
        'fluxrelay_receiver_deliveries_total{event="push",outcome="accepted",'
        'provider="github",receiver="default/gh"}' in metrics
    )
    assert 'fluxrelay_receiver_config_reloads_total{result="error"}' in metrics
    assert "fluxrelay_receiver_publish_seconds_bucket" in metrics

    process.proc.send_signal(signal.SIGTERM)
    assert process.proc.wait(20) == 0

    lines = [json.loads(line) for line in process.log.read_text().splitlines() if line.strip()]
    stored = [line for line in lines if line["msg"].startswith("stored")]
    assert stored
    assert all(line.get("delivery_id") and line.get("receiver") for line in stored)
    assert TOKEN not in process.log.read_text()
