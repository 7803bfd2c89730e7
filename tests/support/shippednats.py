"""Running the NATS configuration deploy/ ships, as shipped, on a private loopback setup.

The deploy tests, the NATS permission tests and the quick start all need a nats-server
that is configured *exactly* like the StatefulSet's, users and permissions included, or
what they prove says nothing about an install. Only what cannot work on a developer's
machine is changed: the listen and monitoring addresses move to free loopback ports, the
store to a private folder, and ``sync_interval`` (2.10+) is dropped when the server the
harness chose is older (Debian's 2.9.10, which the CI run also uses). The credentials come
in the way the pod gets them: the public keys and route password as environment variables
(``scripts/natsusers.py``), and the environment holds nothing else, so the config cannot
pick up a stray variable.

The server's log is kept: permission violations are logged there (with the user's public
key), which lets a test show both that an attack was refused and that the legitimate
processes never hit a refusal.
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

from scripts.natsusers import NatsUsers
from tests.support.natsd import NATS_SERVER, free_port, nats_version, require_server, wait_port

REPO_ROOT = Path(__file__).resolve().parents[2]
SINGLE_DIR = REPO_ROOT / "deploy" / "nats" / "single"
CONFIG_FILES = ("nats.conf", "auth.conf")
"""The files of the ConfigMap nats-config (nats.conf includes auth.conf)."""
NEWER_THAN_LOCAL = ("sync_interval",)
"""nats.conf keys the image knows and Debian's 2.9 server does not (2.10+)."""
POD_NAME = "nats-0"


def local_version() -> tuple[int, int]:
    major, minor, _ = nats_version()
    return major, minor


def for_local_server(text: str) -> str:
    """``text`` without the keys the local server does not know (only when it is older)."""
    if local_version() >= (2, 10):
        return text
    return "\n".join(
        line for line in text.splitlines() if line.strip().split(":")[0] not in NEWER_THAN_LOCAL
    )


def shipped_files() -> dict[str, str]:
    """The single-node configuration as it sits in deploy/ (what its ConfigMap holds)."""
    return {name: (SINGLE_DIR / name).read_text() for name in CONFIG_FILES}


class ShippedNats:
    """One nats-server running the shipped files, moved to loopback ports and ``folder``.

    ``port`` is the client port (a free one if not given). For a cluster node,
    ``cluster_port`` moves the route listener too and ``env`` adds what the cluster's
    StatefulSet sets (the route URLs); ``pod_name`` is its ``server_name``.
    """

    def __init__(
        self,
        folder: Path,
        files: Mapping[str, str],
        users: NatsUsers,
        *,
        pod_name: str = POD_NAME,
        port: int | None = None,
        cluster_port: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.folder = folder
        self.users = users
        self.env = {"POD_NAME": pod_name, **users.server_env(), **(env or {})}
        self.port, self.monitor = port or free_port(), free_port()
        self.cluster_port = cluster_port
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (folder / name).write_text(for_local_server(text))
        conf = (folder / "nats.conf").read_text()
        moves = [
            (r"(?m)^listen: .*$", f"listen: 127.0.0.1:{self.port}"),
            (r"(?m)^http: .*$", f"http: 127.0.0.1:{self.monitor}"),
            (r"store_dir: \S+", f"store_dir: {folder / 'js'}"),
        ]
        if cluster_port is not None:
            moves.append(
                (r"(?m)^  listen: 0\.0\.0\.0:6222$", f"  listen: 127.0.0.1:{cluster_port}")
            )
        for pattern, value in moves:
            conf, found = re.subn(pattern, value, conf)
            assert found == 1, f"the shipped nats.conf no longer has one {pattern!r}"
        self.conf = folder / "nats.conf"
        self.conf.write_text(conf)
        self.log = folder / "nats.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def check(self) -> subprocess.CompletedProcess[str]:
        """``nats-server -t``: whether the server accepts the configuration."""
        return subprocess.run(
            [NATS_SERVER, "-c", str(self.conf), "-t"],
            capture_output=True,
            text=True,
            check=False,
            env=self.env,
        )

    def start(self) -> ShippedNats:
        require_server()
        self.proc = subprocess.Popen(
            [NATS_SERVER, "-c", str(self.conf), "-l", str(self.log)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(self.port)
            wait_port(self.monitor)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"{e}\n{self.log_text()[-3000:]}") from e
        return self

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def violations(self) -> list[str]:
        """Log lines of refused publishes and subscriptions, in order."""
        return [line for line in self.log_text().splitlines() if "Violation" in line]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
