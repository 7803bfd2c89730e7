"""The README's run command, as a newcomer uses it: start the quick start, paste the signed
push it prints, see the reconcile requests on the Flux objects (and the CDEvents emitted),
then Ctrl-C stops everything it started. Its NATS is deploy/'s (users and permissions):
an anonymous client is refused, and the push still goes through, so the receiver and the
reconciler work with their own NKeys."""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.natsd import free_port
from tests.support.secret_scan import register_secret

ROOT = Path(__file__).resolve().parents[2]


def reader(stream: object, lines: queue.Queue[str]) -> None:
    for line in iter(stream.readline, ""):  # type: ignore[attr-defined]
        lines.put(line.rstrip("\n"))


def wait_line(lines: queue.Queue[str], seen: list[str], prefix: str, timeout: float) -> str:
    for line in seen:
        if line.startswith(prefix):
            return line
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        seen.append(line)
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no line starting {prefix!r}; output so far:\n" + "\n".join(seen))


def anonymous_connect(port: int) -> str:
    """CONNECT without credentials, then PING: the server's first answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        reader = sock.makefile("rb")
        info = json.loads(reader.readline().removeprefix(b"INFO "))
        assert info.get("auth_required") is True, info
        sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        return reader.readline().decode().strip()


@pytest.mark.timeout(240)
def test_quick_start_runs_a_push_to_a_reconcile_and_stops_cleanly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "scripts/quickstart.py",
            "--state-dir",
            str(tmp_path),
            "--port",
            str(free_port()),
            "--metrics-port",
            str(free_port()),
            "--reconciler-metrics-port",
            str(free_port()),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reading = threading.Thread(target=reader, args=(proc.stdout, lines), daemon=True)
    reading.start()
    seen: list[str] = []
    try:
        wait_line(lines, seen, "fluxrelay> READY", 150)
        for seed in (tmp_path / "nats-users").glob("*.nk"):
            register_secret(seed.read_text().strip(), f"quick start NATS seed {seed.name}")
        bus = wait_line(lines, seen, "fluxrelay> nats-server with JetStream at ", 1)
        match = re.search(r"nats://127\.0\.0\.1:(\d+)", bus)
        assert match, bus
        assert "Authorization Violation" in anonymous_connect(int(match[1]))
        send = wait_line(lines, seen, "fluxrelay> SEND ", 1).removeprefix("fluxrelay> SEND ")
        sent = subprocess.run(
            shlex.split(send), capture_output=True, text=True, timeout=60, check=False
        )
        assert sent.stdout.startswith("202 "), sent.stdout + sent.stderr
        delivery = json.loads(sent.stdout.removeprefix("202 "))["id"]

        for target in ("GitRepository/flux-system/fleet", "Kustomization/flux-system/apps"):
            line = wait_line(lines, seen, f"fluxrelay> PATCHED {target} ", 60)
            assert f"delivery={delivery}" in line
        wait_line(lines, seen, "fluxrelay> CDEVENT dev.cdevents.", 60)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(90)
        reading.join(10)
        assert proc.stdout is not None
        proc.stdout.close()
    assert code == 0
    wait_line(lines, seen, "fluxrelay> stopped", 5)
    # Nothing it started outlives it: the receiver's port is free again.
    leftover = subprocess.run(
        ["pgrep", "-f", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert leftover.stdout.strip() == ""
