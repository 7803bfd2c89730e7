"""bench/ingress: signed GitHub push deliveries with wrk against one receiver process and a
real nats-server (file storage), and, in the same run, a bare aiohttp handler as the ceiling.

Both servers run for the whole bench and are loaded ``--runs`` times each, in pairs a few
seconds apart (which goes first alternates). Reported: the medians, the median of the
per-pair receiver/bare throughput ratios, and the ratio of CPU time per request (bare over
receiver), which a shared host's changing speed disturbs less. The server process is
pinned to one core and wrk plus nats-server to the other, as TESTING.md describes. Every
request carries its own delivery id (so nothing is deduplicated: each 202 is a new stored
message).

    python -m bench.ingress.run [--duration 5] [--runs 10] [--connections 64]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from receiver.hooks import hook_path
from tests.support.ingress import dump_yaml, hmac_hex, receiver_docs
from tests.support.natsd import NatsServer, free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]
PUSH = (ROOT / "tests" / "receiver" / "fixtures" / "github_push.json").read_bytes()
TOKEN = "bench-token-00000001"

LUA = """
-- Every request gets its own delivery id (run nonce, wrk thread, counter): nothing may be
-- deduplicated, each 202 must be a newly stored message.
local counter = 0
local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end
function init(args)
  prefix = "{nonce}-" .. tostring(id)
end
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-GitHub-Event"] = "push"
wrk.headers["X-Hub-Signature-256"] = "{signature}"
request = function()
  counter = counter + 1
  wrk.headers["X-GitHub-Delivery"] = prefix .. "-" .. counter
  return wrk.format(nil, "{path}")
end
"""


KEYS = ("rps", "p50_ms", "p99_ms", "non2xx", "cpu_us_per_request")


def lua_string(data: bytes) -> str:
    return "[==[" + data.decode() + "]==]"


def parse_wrk(out: str) -> dict[str, float]:
    def ms(value: str) -> float:
        number, unit = re.match(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
        return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "rps": rps,
        "p50_ms": p50,
        "p99_ms": p99,
        "requests": float(total.group(1)) if total else 0.0,
        "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "socket_errors": 1.0 if errors else 0.0,
    }


def wrk(port: int, script: Path, duration: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return parse_wrk(out)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (the server is pinned to one core, so CPU per
    request is the cost that bounds its throughput, and is less disturbed by other load)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


def write_script(tmp: Path, path: str) -> Path:
    """A wrk script with a fresh nonce: no delivery id repeats across runs (a repeat would
    be deduplicated by the stream and cost the receiver less)."""
    script = tmp / f"post-{uuid.uuid4().hex}.lua"
    script.write_text(
        LUA.replace("{nonce}", uuid.uuid4().hex)
        .replace("{body}", lua_string(PUSH))
        .replace("{signature}", "sha256=" + hmac_hex(TOKEN, PUSH))
        .replace("{path}", path)
    )
    return script


def bench_receiver(tmp: Path) -> tuple[str, Path]:
    """The bench's one GitHub Receiver: its hook path, and the config file (in ``tmp``)
    that the receiver loads."""
    config = tmp / "receivers.yaml"
    config.write_text(dump_yaml(receiver_docs("bench", "github", TOKEN)))
    return hook_path(TOKEN.encode(), "bench", "default"), config


def receiver_command(config: Path, nats_url: str, port: int, metrics: int) -> list[str]:
    """The receiver's command line for both benches: its own stream names, so a bench
    never writes into a stream a running relay uses, and warnings only (logging per
    delivery would be measured too)."""
    return [
        sys.executable,
        "-m",
        "receiver",
        "--config",
        str(config),
        "--nats-url",
        nats_url,
        "--listen",
        f"127.0.0.1:{port}",
        "--metrics-listen",
        f"127.0.0.1:{metrics}",
        "--stream",
        "BENCH",
        "--stream-subject-prefix",
        "bench.events",
        "--dead-stream",
        "BENCHDEAD",
        "--dead-subject-prefix",
        "bench.dead",
        "--log-level",
        "WARNING",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "ingress" / "results.json")
    args = parser.parse_args()
    for tool in ("wrk", "taskset"):
        if not shutil.which(tool):
            print(f"{tool} is required (Debian: wrk, util-linux)", file=sys.stderr)
            return 2

    load_before = os.getloadavg()[0]  # the machine should be idle but for this bench
    tmp = Path(tempfile.mkdtemp(prefix="fluxrelay-bench-"))
    path, config = bench_receiver(tmp)

    nats = NatsServer(name="bench")
    nats.start()
    subprocess.run(
        ["taskset", "-pc", "1", str(nats.proc.pid if nats.proc else 0)],
        check=True,
        capture_output=True,
    )
    results: dict[str, list[dict[str, float]]] = {"receiver": [], "bare": []}
    ports = {"receiver": free_port(), "bare": free_port()}
    metrics = free_port()
    commands = {
        "receiver": receiver_command(config, nats.url, ports["receiver"], metrics),
        "bare": [sys.executable, "-m", "bench.ingress.bare", str(ports["bare"])],
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        # Both servers stay up on core 0 for the whole bench (an idle one costs nothing), so
        # the two halves of a pair are seconds apart, not a process start and a warm-up.
        for name, cmd in commands.items():
            procs[name] = subprocess.Popen(
                ["taskset", "-c", "0", *cmd],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        wait_ready(f"http://127.0.0.1:{metrics}/readyz")
        wait_port(ports["bare"])
        for name in commands:
            wrk(ports[name], write_script(tmp, path), 2, args.connections)  # warm-up
        for run in range(args.runs):
            # Alternate which goes first, so a drift of the shared host's speed within a
            # pair does not always favour the same side.
            order = ("receiver", "bare") if run % 2 == 0 else ("bare", "receiver")
            for name in order:
                pid = procs[name].pid
                cpu_before = cpu_seconds(pid)
                result = wrk(ports[name], write_script(tmp, path), args.duration, args.connections)
                result["cpu_us_per_request"] = (
                    (cpu_seconds(pid) - cpu_before) / result["requests"] * 1e6
                )
                results[name].append(result)
                print(
                    f"run {run + 1} {name:8s} {result['rps']:9.0f} req/s  "
                    f"p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms  "
                    f"non-2xx {result['non2xx']:.0f}  "
                    f"cpu {result['cpu_us_per_request']:.0f} us/request",
                    flush=True,
                )
        rss = peak_rss_mib(procs["receiver"].pid)
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(15)
        nats.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    ratios = [
        r["rps"] / b["rps"] for r, b in zip(results["receiver"], results["bare"], strict=True)
    ]
    summary = {
        "connections": args.connections,
        "duration_s": args.duration,
        "runs": args.runs,
        "cpus": os.cpu_count(),
        "receiver": {k: median("receiver", k) for k in KEYS},
        "bare": {k: median("bare", k) for k in KEYS},
        "ratio": statistics.median(ratios),
        "ratios": [round(r, 3) for r in ratios],
        "cpu_ratio": median("bare", "cpu_us_per_request")
        / median("receiver", "cpu_us_per_request"),
        "receiver_peak_rss_mib": rss,
        "per_run": {
            name: [{k: round(r[k], 2) for k in KEYS} for r in runs]
            for name, runs in results.items()
        },
        "loadavg_1m_after": os.getloadavg()[0],
        "loadavg_1m_before": load_before,
    }
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
