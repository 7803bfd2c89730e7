"""The ``fluxrelay-receiver`` process as an operator runs it: hook-path known answers,
invalid config refused at start naming document and field, serving from a file with the
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
    ("docs", "message"),
    [
        pytest.param(
            [
                {
                    "apiVersion": "notification.toolkit.fluxcd.io/v1",
                    "kind": "Receiver",
                    "metadata": {"name": "r"},
                    "spec": {"type": "github"},
                }
            ],
            "document 1 (Receiver default/r): spec.secretRef.name: required",
            id="no-secret-ref",
        ),
        pytest.param(
            receiver_docs("r", "githib"),
            "spec.type: unknown provider 'githib'",
            id="bad-type",
        ),
        pytest.param(
            receiver_docs("r", "github")[1:],
            "Secret default/r-token not found",
            id="missing-secret",
        ),
        pytest.param(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": "s"},
                    "data": {"token": "%%%"},
                }
            ],
            "document 1 (Secret default/s): data.token: not valid base64",
            id="bad-base64",
        ),
        pytest.param(
            [{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}}],
            "document 1: kind 'Deployment'",
            id="foreign-kind",
        ),
    ],
)
def test_invalid_config_fails_at_start_naming_document_and_field(
    tmp_path: Path, docs: list[dict[str, object]], message: str
) -> None:
    config = tmp_path / "receivers.yaml"
    config.write_text(dump_yaml(docs))
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


def test_colliding_paths_are_refused_at_load(tmp_path: Path) -> None:
    docs = [
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
    config = tmp_path / "receivers.yaml"
    config.write_text(dump_yaml(docs))
    out = run_cli("--config", str(config), "--nats-url", "nats://127.0.0.1:1")
    assert out.returncode == 2
    assert "hash to the same hook path" in out.stderr
    assert "default/c" in out.stderr
    assert "default/bc" in out.stderr


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
