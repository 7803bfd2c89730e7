"""The README's run command, as a newcomer uses it: start the quick start, paste the signed
push it prints, see the reconcile requests on the Flux objects (and the CDEvents emitted),
then Ctrl-C stops everything it started. Its NATS is deploy/'s (users and permissions):
an anonymous client is refused, and the push still goes through, so the receiver and the
reconciler work with their own NKeys.

Stopping, as a supervisor or ``kill -INT <pid>`` does it: the quick start runs in a session of
its own and SIGINT or SIGTERM goes to its PID alone, never to the group, once it is ready and
while it is still starting (SIGINT ignored on entry, as a non-interactive shell's background
job gets it). It must exit within a bound, and every process that was ever below it (read
from the kernel's ``/proc/<pid>/task/*/children`` lists while it runs) must be gone."""

from __future__ import annotations

import contextlib
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.natsd import free_port
from tests.support.secret_scan import register_secret

ROOT = Path(__file__).resolve().parents[2]
STOP_BOUND_S = 60.0
"""How long a stop may take: the receiver and reconciler get 20 s each to drain, then
anything left 10 s between SIGTERM and SIGKILL; a stop here takes a few seconds."""


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


def quick_start(
    tmp_path: Path, *, session: bool, ignore_sigint: bool = False
) -> subprocess.Popen[str]:
    """``scripts/quickstart.py`` on free ports, output merged into a text pipe; with
    ``ignore_sigint``, started the way a shell starts a background job (``trap '' INT``, kept
    across ``exec``)."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    command = [
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
    ]
    if ignore_sigint:
        command = ["/bin/sh", "-c", "trap '' INT; exec \"$@\"", "sh", *command]
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=session,
    )


def stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name (field 3, the state, first), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


@dataclass
class Seen:
    """A process once seen below the quick start: its start time tells a reused PID apart."""

    pid: int
    started: str
    argv: list[str]

    def running(self) -> bool:
        fields = stat_fields(self.pid)
        return fields is not None and fields[19] == self.started and fields[0] != "Z"


@dataclass
class Tree:
    """Every process seen below ``root`` while it ran, polled every 50 ms."""

    root: int
    seen: dict[int, Seen] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)

    def poll(self) -> None:
        todo = [self.root]
        while todo:
            parent = todo.pop()
            for task in Path(f"/proc/{parent}/task").glob("*"):
                try:
                    children = [int(c) for c in (task / "children").read_text().split()]
                except OSError:
                    continue
                for pid in children:
                    todo.append(pid)
                    fields = stat_fields(pid)
                    try:
                        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
                    except OSError:
                        continue
                    if fields is None or not argv[0]:
                        continue
                    known = self.seen.get(pid)
                    if known is None or known.started != fields[19]:
                        self.seen[pid] = Seen(pid, fields[19], argv)
                    else:  # forked, then exec'd: the same process under its own name now
                        known.argv = argv

    def watch(self) -> None:
        while not self.done.wait(0.05):
            self.poll()

    def running(self) -> list[Seen]:
        return [p for p in self.seen.values() if p.running()]

    def programs(self) -> set[str]:
        """What ran: the binary's name, or ``-m <module>`` for Python."""
        names = set()
        for p in self.seen.values():
            if "-m" in p.argv[:-1]:
                names.add(f"-m {p.argv[p.argv.index('-m') + 1]}")
            elif p.argv and p.argv[0]:
                names.add(Path(p.argv[0]).name)
        return names


@contextlib.contextmanager
def watched(proc: subprocess.Popen[str]) -> Iterator[Tree]:
    """Record the process tree below ``proc`` until the block ends; whatever the outcome,
    nothing of it is left running afterwards (the quick start's own session is killed)."""
    tree = Tree(proc.pid)
    watching = threading.Thread(target=tree.watch, daemon=True)
    watching.start()
    try:
        yield tree
    finally:
        tree.done.set()
        watching.join(5)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for left in tree.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(left.pid, signal.SIGKILL)


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
    proc = quick_start(tmp_path, session=False)
    lines: queue.Queue[str] = queue.Queue()
    reading = threading.Thread(target=reader, args=(proc.stdout, lines), daemon=True)
    reading.start()
    seen: list[str] = []
    with watched(proc) as tree:
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
        # Nothing it started outlives it.
        assert tree.running() == []


RUNNING = {"nats-server", "etcd", "kube-apiserver-v1.20.2", "-m receiver", "-m reconciler"}
"""What runs below a ready quick start (the API server binary keeps its versioned name)."""


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("stop", "after", "ignore_sigint", "code"),
    [
        pytest.param(signal.SIGINT, "fluxrelay> READY", False, 0, id="sigint-once-ready"),
        pytest.param(signal.SIGTERM, "fluxrelay> READY", False, 0, id="sigterm-once-ready"),
        pytest.param(
            signal.SIGINT,
            "fluxrelay> NATS users",
            True,
            128 + signal.SIGINT,
            id="sigint-while-starting-with-sigint-inherited-ignored",
        ),
        pytest.param(
            signal.SIGTERM,
            "fluxrelay> kube-apiserver + etcd at ",
            False,
            128 + signal.SIGTERM,
            id="sigterm-while-the-receiver-and-reconciler-start",
        ),
    ],
)
def test_a_stop_signal_to_the_quick_start_alone_stops_everything_it_started(
    tmp_path: Path, stop: signal.Signals, after: str, ignore_sigint: bool, code: int
) -> None:
    proc = quick_start(tmp_path, session=True, ignore_sigint=ignore_sigint)
    assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)  # a group of its own
    lines: queue.Queue[str] = queue.Queue()
    reading = threading.Thread(target=reader, args=(proc.stdout, lines), daemon=True)
    reading.start()
    seen: list[str] = []
    with watched(proc) as tree:
        wait_line(lines, seen, after, 150)
        for seed in (tmp_path / "nats-users").glob("*.nk"):
            register_secret(seed.read_text().strip(), f"quick start NATS seed {seed.name}")
        tree.poll()
        if after == "fluxrelay> READY":
            assert tree.programs() >= RUNNING, tree.programs()
        else:
            assert "nats-server" in tree.programs(), tree.programs()
        os.kill(proc.pid, stop)  # the PID alone: nothing else in its group hears it
        sent = time.monotonic()
        try:
            exited = proc.wait(STOP_BOUND_S)
        except subprocess.TimeoutExpired:
            exited = None
        took = time.monotonic() - sent
        reading.join(10)
        assert exited == code, f"exit {exited} after {took:.1f} s; output:\n" + "\n".join(seen)
        wait_line(lines, seen, "fluxrelay> stopped", 5)
        left = tree.running()
        assert left == [], [(p.pid, p.argv) for p in left]
    assert proc.stdout is not None
    proc.stdout.close()
