"""No log line is lost when the receiver process is stopped under load.

Log records are formatted and written by a writer thread (``runtime/logs.py``), so at any
moment lines the event loop has produced may still be queued. Here the real receiver process
serves a few hundred concurrent deliveries on a real nats-server, gets SIGTERM while they are
in flight, and exits: every delivery it answered 202 must have its ``stored`` line in the log
file (matched by the ``event_id`` the 202 body names), in both log formats. Deliveries the
stopping process refused or never answered are not counted: only an answered 202 promises a
line.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from tests.support.ingress import dump_yaml, path_of, receiver_docs
from tests.support.natsd import NatsServer, free_port

TOKEN = "tok-5d1e0b93aa-41c2"
DELIVERIES = 600
IN_FLIGHT = 300
SIGTERM_AFTER = 150
"""Answers seen before the signal: the rest of the deliveries are in flight or queued."""
TEXT_EVENT_ID = re.compile(r" event_id=(\S+)")


def ready(metrics_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=2) as r:
            return bool(r.status == 200)
    except (OSError, urllib.error.HTTPError):
        return False


def start_receiver(
    tmp_path: Path, nats: NatsServer, fmt: str, log: Path
) -> tuple[subprocess.Popen[bytes], int]:
    config = tmp_path / "receivers.yaml"
    config.write_text(dump_yaml(receiver_docs("load", "generic", TOKEN)))
    port, metrics = free_port(), free_port()
    env = dict(os.environ, FLUXRELAY_LOG_FORMAT=fmt, FLUXRELAY_STREAM_STORAGE="memory")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "receiver",
                "--config",
                str(config),
                "--nats-url",
                nats.url,
                "--listen",
                f"127.0.0.1:{port}",
                "--metrics-listen",
                f"127.0.0.1:{metrics}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=out,
            env=env,
        )
    deadline = time.monotonic() + 60
    while not ready(metrics):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "receiver not ready after 60 s"
        time.sleep(0.1)
    return proc, port


def logged_ids(text: str, fmt: str) -> set[str]:
    """``event_id`` of every ``stored`` line (the line each 202 promises)."""
    ids: set[str] = set()
    for line in text.splitlines():
        if fmt == "json":
            if not line.startswith("{"):
                continue
            doc = json.loads(line)
            if doc["msg"].startswith("stored ") and "event_id" in doc:
                ids.add(doc["event_id"])
        elif ": stored " in line and (match := TEXT_EVENT_ID.search(line)):
            ids.add(match[1])
    return ids


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["json", "text"])
async def test_every_accepted_delivery_is_logged_after_sigterm(
    tmp_path: Path, nats_session: NatsServer, fmt: str
) -> None:
    log = tmp_path / "receiver.log"
    proc, port = start_receiver(tmp_path, nats_session, fmt, log)
    url = f"http://127.0.0.1:{port}{path_of('load', TOKEN)}"
    accepted: list[str] = []
    answered = asyncio.Event()

    async def deliver(session: aiohttp.ClientSession, n: int) -> None:
        body = json.dumps({"delivery": n, "run": fmt}).encode()
        try:
            async with session.post(url, data=body) as rsp:
                doc = await rsp.json(content_type=None) if rsp.status == 202 else None
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return  # refused or cut off by the stopping process: no 202, no promise
        if doc is not None:
            accepted.append(doc["id"])
            if len(accepted) >= SIGTERM_AFTER:
                answered.set()

    connector = aiohttp.TCPConnector(limit=IN_FLIGHT)
    timeout = aiohttp.ClientTimeout(total=60)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            tasks = [asyncio.create_task(deliver(session, n)) for n in range(DELIVERIES)]
            await asyncio.wait_for(answered.wait(), 60)
            proc.send_signal(signal.SIGTERM)
            await asyncio.gather(*tasks)
        code = await asyncio.to_thread(proc.wait, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, log.read_text()[-3000:]
    assert len(accepted) >= SIGTERM_AFTER
    assert len(set(accepted)) == len(accepted)
    missing = set(accepted) - logged_ids(log.read_text(), fmt)
    assert not missing, f"{len(missing)} of {len(accepted)} accepted deliveries have no log line"
    lines = log.read_text().splitlines()
    assert any("stopping: finishing requests in flight" in line for line in lines)
