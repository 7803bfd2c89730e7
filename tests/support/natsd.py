"""A real ``nats-server`` per test session (or per test), on a free loopback port.

Tests own the process so they can stop, kill and restart it on the same store and port
(the faults the receiver and reconciler must survive). Startup failures raise: a test tier
whose server cannot start fails, it never skips.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

MAX_PAYLOAD = 8 * 1024 * 1024
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class NatsServer:
    """One nats-server process with JetStream, its store in a private temp folder."""

    def __init__(
        self,
        *,
        port: int | None = None,
        store: Path | None = None,
        config: str | None = None,
        extra_args: tuple[str, ...] = (),
        name: str = "nats",
    ) -> None:
        self.port = port or free_port()
        self._tmp = tempfile.mkdtemp(prefix=f"fluxrelay-{name}-")
        self.store = store or Path(self._tmp) / "js"
        self.log_path = Path(self._tmp) / "nats.log"
        self.config = config
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        if not os.path.exists(NATS_SERVER):
            raise RuntimeError("nats-server is not installed (Debian package nats-server)")
        args = [
            NATS_SERVER,
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.store),
            "-l",
            str(self.log_path),
        ]
        conf = Path(self._tmp) / "nats.conf"
        # fluxrelay stores bodies up to 3 MiB plus the envelope: the server must accept
        # messages larger than its 1 MiB default (deploy/ sets the same).
        conf.write_text(f"max_payload: {MAX_PAYLOAD}\n" + (self.config or ""))
        args += ["-c", str(conf)]
        args += list(self.extra_args)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(self.port)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"{e}\n{self.log_tail()}") from e
        return self

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Graceful stop (SIGTERM), waiting for exit."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: the crash case, nothing flushed beyond what the store already synced."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)
