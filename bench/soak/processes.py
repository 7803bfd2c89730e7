"""A process the soak starts, kills and restarts, and whether it ever died on its own.

The fluxrelay services (``system.py``) and the soak's own helper processes (``sidecars.py``)
are all started this way: ``python -m`` with stdout and stderr appended to a log file in the
segment's work directory, ready once an HTTP URL answers 200.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from bench.soak.observing import process_rss

ROOT = Path(__file__).resolve().parents[2]


class Proc:
    """One process of the soak: started, killed, restarted; knows whether it died on its own."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        log_path: Path,
        ready_url: str,
        metrics_url: str | None = None,
    ) -> None:
        self.name = name
        self.metrics_url = metrics_url
        self.cmd = cmd
        self.log_path = log_path
        self.ready_url = ready_url
        self.popen: subprocess.Popen[bytes] | None = None
        self.killed_by_us = 0
        self.unexpected_exits: list[int] = []

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None and self.popen.poll() is None else None

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.popen = subprocess.Popen(
                self.cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL, cwd=ROOT
            )

    async def wait_ready(self, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.popen is None or self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited before ready; see {self.log_path}")
            if await asyncio.to_thread(_ok, self.ready_url):
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {within}s; see {self.log_path}")

    def check(self) -> None:
        """Note an exit we did not cause (a crash)."""
        if self.popen is not None and self.popen.poll() is not None:
            self.unexpected_exits.append(self.popen.returncode)
            self.popen = None

    def kill(self) -> None:
        self.check()
        if self.popen is not None:
            self.popen.kill()
            self.popen.wait()
            self.killed_by_us += 1
            self.popen = None

    def stop(self) -> None:
        self.check()
        if self.popen is not None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
            self.popen = None

    def rss(self) -> int | None:
        return process_rss(self.pid)


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as rsp:  # loopback only
            return bool(rsp.status == 200)
    except OSError:
        return False
