"""bench/ingress/instructions: instructions the server executes per delivery, the receiver
and both ceilings of ``bench.ingress.run`` (bare handler, strict low-level server), counted
by callgrind.

Time per request on a shared host drifts by a factor of two within minutes, and the servers
do not drift alike; the number of instructions a server executes per request hardly moves
between runs. So this is the bench for telling whether a change to the hot path is a gain
(the throughput bench, ``bench.ingress.run``, is the one whose numbers the goal is stated
in). Each server runs under ``valgrind --tool=callgrind`` with counting off; after a
warm-up, counting is switched on for exactly ``--requests`` signed GitHub pushes (each a new
delivery id, ``--concurrency`` in flight, from a client outside valgrind), then off, and
the total is divided by the number of requests. Counts include everything the process
runs, every thread: the interpreter, aiohttp, uvloop, libcrypto, the kernel interface (not
the kernel).

The receiver runs with the same command line as in ``bench.ingress.run``: its default flags
(INFO, a text line per delivery), stdout and stderr to a file. Its lines are formatted and
written by the log writer thread, possibly after the answer; so counting starts only once
the warm-up's lines are all written and stops only once the measured requests' lines are
(the log file has stopped growing), and the lines written per request are reported.

    python -m bench.ingress.instructions [--requests 2000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import aiohttp

from bench.ingress.run import (
    CEILINGS,
    PUSH,
    ROOT,
    TOKEN,
    bench_receiver,
    ceiling_command,
    git_state,
    receiver_command,
    receiver_env,
    wait_ready,
)
from tests.support.ingress import hmac_hex
from tests.support.natsd import NatsServer, free_port, wait_port

READY_SECONDS = 300.0
"""Starting the receiver under valgrind (imports, compiled schemas) takes a minute or two."""
QUIET_SECONDS = 1.0
"""A log that has not grown for this long has been written out (the writer thread writes
while it has lines queued)."""


def settled(log: Path, timeout: float = 120.0) -> int:
    """Wait until ``log`` stops growing; its number of lines then."""
    deadline = time.monotonic() + timeout
    size, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = log.stat().st_size
        if now != size:
            size, since = now, time.monotonic()
        elif time.monotonic() - since >= QUIET_SECONDS:
            break
        time.sleep(0.05)
    with log.open("rb") as lines:
        return sum(1 for _ in lines)


async def send(url: str, count: int, concurrency: int, nonce: str) -> int:
    """POST ``count`` signed pushes, ``concurrency`` at a time; the number answered 2xx."""
    signature = "sha256=" + hmac_hex(TOKEN, PUSH)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)
    ok = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal ok
        while not queue.empty():
            i = queue.get_nowait()
            headers = {
                "Content-Type": "application/json",
                "X-GitHub-Event": "push",
                "X-GitHub-Delivery": f"{nonce}-{i}",
                "X-Hub-Signature-256": signature,
            }
            async with session.post(url, data=PUSH, headers=headers) as resp:
                await resp.read()
                ok += resp.status < 300

    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return ok


def callgrind_control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True)


def counted(out_dir: Path) -> int:
    """Instructions in the dumps callgrind wrote (counting was on only while measuring)."""
    total = 0
    for dump in out_dir.glob("callgrind.out*"):
        # "totals:" closes each dump (its "summary:" line may be 0 when counting was off at
        # the start of the dump's time range)
        match = re.search(r"^totals:\s+(\d+)", dump.read_text(), re.MULTILINE)
        if match:
            total += int(match.group(1))
    return total


def measure(
    name: str,
    command: list[str],
    env: dict[str, str],
    ready: Callable[[], None],
    url: str,
    args: argparse.Namespace,
) -> dict[str, float]:
    """Run ``command`` under callgrind, wait until ``ready()`` returns, count one batch."""
    out_dir = Path(tempfile.mkdtemp(prefix=f"fluxrelay-callgrind-{name}-"))
    log = out_dir / "server.log"  # the server's stdout and stderr; valgrind's own apart
    try:
        with log.open("wb") as output:
            proc = subprocess.Popen(
                [
                    "valgrind",
                    "--tool=callgrind",
                    "--instr-atstart=no",
                    f"--callgrind-out-file={out_dir}/callgrind.out.%p",
                    f"--log-file={out_dir}/valgrind.log",
                    *command,
                ],
                cwd=ROOT,
                env={**env, "PYTHONHASHSEED": "0"},
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
            )
        try:
            ready()
            nonce = uuid.uuid4().hex
            asyncio.run(send(url, args.warmup, args.concurrency, nonce + "-warm"))
            lines_before = settled(log)
            callgrind_control("--instr=on", str(proc.pid))
            started = time.monotonic()
            ok = asyncio.run(send(url, args.requests, args.concurrency, nonce))
            lines = settled(log) - lines_before
            callgrind_control("--instr=off", str(proc.pid))
            callgrind_control("--dump", str(proc.pid))
            seconds = time.monotonic() - started
        finally:
            proc.terminate()
            proc.wait(60)
        if ok != args.requests:
            raise RuntimeError(f"{name}: {args.requests - ok} request(s) not answered 2xx")
        total = counted(out_dir)  # after exit: the dumps are complete
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    result = {
        "instructions_per_request": total / args.requests,
        "log_lines_per_request": lines / args.requests,
        "seconds": seconds,
    }
    print(
        f"{name:8s} {result['instructions_per_request']:10.0f} instructions/request  "
        f"{result['log_lines_per_request']:.2f} log lines/request",
        flush=True,
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "ingress" / "instructions.json"
    )
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if not shutil.which(tool):
            print(f"{tool} is required (Debian: valgrind)", file=sys.stderr)
            return 2

    git = git_state()
    tmp = Path(tempfile.mkdtemp(prefix="fluxrelay-bench-"))
    path, config = bench_receiver(tmp)
    nats = NatsServer(name="bench")
    nats.start()
    try:
        port, metrics = free_port(), free_port()
        results = {
            "receiver": measure(
                "receiver",
                receiver_command(config, nats.url, port, metrics),
                receiver_env(),
                lambda: wait_ready(f"http://127.0.0.1:{metrics}/readyz", READY_SECONDS),
                f"http://127.0.0.1:{port}{path}",
                args,
            )
        }
        for name in CEILINGS:
            ceiling = free_port()
            results[name] = measure(
                name,
                ceiling_command(name, ceiling),
                dict(os.environ),
                lambda: wait_port(ceiling, READY_SECONDS),  # noqa: B023 (called right away)
                f"http://127.0.0.1:{ceiling}{path}",
                args,
            )
    finally:
        nats.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    receiver = results["receiver"]["instructions_per_request"]
    summary = {
        **git,
        "requests": args.requests,
        "concurrency": args.concurrency,
        **{name: round(r["instructions_per_request"]) for name, r in results.items()},
        **{
            f"receiver/{name}": receiver / results[name]["instructions_per_request"]
            for name in CEILINGS
        },
        "receiver_log_lines_per_request": results["receiver"]["log_lines_per_request"],
    }
    print(json.dumps(summary, indent=2))
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
