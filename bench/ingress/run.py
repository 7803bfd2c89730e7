"""bench/ingress: signed GitHub push deliveries with wrk against one receiver process and a
real nats-server (file storage), and, in the same run, two aiohttp servers that do nothing
but answer, as ceilings.

The receiver runs as it ships: default flags (log level INFO, one text line per delivery on
stderr, written by the log writer thread), with its stdout and stderr going to a file as
under a container runtime, so formatting and writing the log lines are measured; a pipe
that nobody read would block it, ``/dev/null`` would be cheaper than any real destination.
The only flags given are the ones a bench cannot do without: ``--config`` (the bench's one
GitHub Receiver), ``--nats-url`` (the bench's own nats-server), ``--listen`` and
``--metrics-listen`` (free loopback ports, the metrics port for readiness). ``FLUXRELAY_*``
variables are removed from its environment, so a shell that sets one cannot change a
default behind the bench's back. The nats-server is private to the bench, so the default
stream names write into nothing a running relay uses.

The ceilings: ``bare`` (:mod:`bench.ingress.bare`, an application with a router and
``json_response``, the usual aiohttp service, the ceiling of earlier results) and ``strict``
(:mod:`bench.ingress.strict`, the receiver's own low-level server and options with a handler
that only answers). All three stay up for the whole bench and are loaded in ``--runs``
rounds, one run each, seconds apart; the order rotates every round, so a drift of the shared
host's speed does not always favour the same server. Reported for each server: throughput,
p50, p99 and CPU time per request (the server is pinned to one core, so CPU per request is
the cost that bounds its throughput, and a shared host's changing speed disturbs it less);
per round and as medians of the rounds, receiver/bare and receiver/strict for throughput
(below 1) and CPU per request (above 1). wrk plus nats-server are pinned to the other core,
as TESTING.md describes. Every request carries its own delivery id (nothing is deduplicated:
each 202 is a new stored message). The results file records every run, the exact commands,
and the commit measured with whether the work tree was dirty.

    python -m bench.ingress.run [--duration 5] [--runs 10] [--connections 64] [--warmup 2]
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from receiver.config.hooks import hook_path
from tests.support.ingress import dump_yaml, hmac_hex, receiver_docs
from tests.support.natsd import NATS_SERVER, NatsServer, free_port, nats_version, wait_port

ROOT = Path(__file__).resolve().parents[2]
PUSH = (ROOT / "tests" / "receiver" / "fixtures" / "github_push.json").read_bytes()
TOKEN = "bench-token-00000001"

SERVERS = ("receiver", "bare", "strict")
CEILINGS = ("bare", "strict")

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


KEYS = ("rps", "p50_ms", "p99_ms", "requests", "non2xx", "socket_errors", "cpu_us_per_request")
"""What each run records; medians are taken of each."""


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
    errors = re.search(r"Socket errors:(.*)", out)
    return {
        "rps": rps,
        "p50_ms": p50,
        "p99_ms": p99,
        "requests": float(total.group(1)) if total else 0.0,
        "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "socket_errors": float(sum(map(int, re.findall(r"\d+", errors[1])))) if errors else 0.0,
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
    """The receiver's command line for both benches: its defaults but for what a bench
    cannot leave to them (the Receivers, the bench's nats-server, free ports)."""
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
    ]


def receiver_env() -> dict[str, str]:
    """This environment without ``FLUXRELAY_*``: every receiver option can be set by such a
    variable, and a bench of the defaults must not inherit one (a log level, say)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FLUXRELAY_")}


def ceiling_command(name: str, port: int) -> list[str]:
    return [sys.executable, "-m", f"bench.ingress.{name}", str(port)]


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def log_stats(path: Path) -> dict[str, Any]:
    """Size of the receiver's log, and its lines by level (INFO lines show it logged at its
    default level: one per accepted delivery)."""
    level = re.compile(rb"\S+ \S+ ([A-Z]+) ")
    stats: dict[str, Any] = {"bytes": path.stat().st_size, "lines": 0}
    notable: list[str] = []  # what else it said (warnings at startup, say), the first few
    with path.open("rb") as lines:  # a full set writes some 100 MB: read line by line
        for line in lines:
            stats["lines"] += 1
            match = level.match(line)
            name = match[1].decode() if match else "other"
            stats[name] = stats.get(name, 0) + 1
            if name != "INFO" and len(notable) < 10:
                notable.append(line.decode(errors="replace").rstrip())
    return {**stats, "not_info": notable}


def git_state() -> dict[str, Any]:
    """The commit measured and whether the work tree differed from it (paths as ``git status
    --porcelain`` gives them; untracked files count, they may be imported)."""

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return None

    head = git("rev-parse", "HEAD")
    status = git("status", "--porcelain")
    changed = status.splitlines() if status is not None else []
    return {
        "commit": head.strip() if head is not None else None,
        "dirty": bool(changed) if status is not None else None,
        "dirty_paths": changed,
    }


def rotation(round_index: int, servers: Sequence[str] = SERVERS) -> tuple[str, ...]:
    """The order of round ``round_index``: the servers shifted by one place each round, so
    each goes first, second and last equally often (within one) over the rounds."""
    shift = round_index % len(servers)
    return (*servers[shift:], *servers[:shift])


def round_ratios(runs: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """receiver/ceiling for throughput and CPU per request, for one round's runs."""
    return {
        f"receiver/{ceiling}": {
            key: runs["receiver"][key] / runs[ceiling][key] for key in ("rps", "cpu_us_per_request")
        }
        for ceiling in CEILINGS
    }


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per server over the rounds, and each ratio per round and its median (the
    median of per-round ratios: both sides of a ratio were measured seconds apart)."""
    medians = {
        name: {key: statistics.median(r[name][key] for r in rounds) for key in KEYS}
        for name in SERVERS
    }
    ratios: dict[str, Any] = {}
    for pair in (f"receiver/{c}" for c in CEILINGS):
        ratios[pair] = {}
        for key in ("rps", "cpu_us_per_request"):
            values = [r["ratios"][pair][key] for r in rounds]
            ratios[pair][key] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "per_round": [round(v, 4) for v in values],
            }
    return {"median": medians, "ratios": ratios}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per run")
    parser.add_argument("--runs", type=int, default=10, help="rounds (one run per server)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2, help="seconds per server, 0: none")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "ingress" / "results.json")
    args = parser.parse_args()
    for tool in ("wrk", "taskset"):
        if not shutil.which(tool):
            print(f"{tool} is required (Debian: wrk, util-linux)", file=sys.stderr)
            return 2

    started = time.monotonic()
    git = git_state()  # before the run: the tree measured, not the results it writes
    load_before = os.getloadavg()[0]  # the machine should be idle but for this bench
    tmp = Path(tempfile.mkdtemp(prefix="fluxrelay-bench-"))
    path, config = bench_receiver(tmp)
    # The receiver's stdout and stderr, as a container runtime keeps them; the ceilings'
    # (they write nothing unless they fail) only for telling why one did.
    logs = {name: tmp / f"{name}.log" for name in SERVERS}

    nats = NatsServer(name="bench")
    nats.start()
    subprocess.run(
        ["taskset", "-pc", "1", str(nats.proc.pid if nats.proc else 0)],
        check=True,
        capture_output=True,
    )
    ports = {name: free_port() for name in SERVERS}
    metrics = free_port()
    commands = {
        "receiver": receiver_command(config, nats.url, ports["receiver"], metrics),
        **{name: ceiling_command(name, ports[name]) for name in CEILINGS},
    }
    rounds: list[dict[str, Any]] = []
    procs: dict[str, subprocess.Popen[bytes]] = {}
    rss: dict[str, float] = {}
    try:
        # All servers stay up on core 0 for the whole bench (an idle one costs next to
        # nothing), so the runs of a round are seconds apart, not a process start and a
        # warm-up apart.
        for name, cmd in commands.items():
            with logs[name].open("wb") as log:  # the child keeps its own descriptor
                procs[name] = subprocess.Popen(
                    ["taskset", "-c", "0", *cmd],
                    cwd=ROOT,
                    env=receiver_env() if name == "receiver" else None,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
        try:
            wait_ready(f"http://127.0.0.1:{metrics}/readyz")
            for name in CEILINGS:
                wait_port(ports[name])
        except RuntimeError as e:
            tails = "\n".join(f"{name} log:\n{log_tail(logs[name])}" for name in SERVERS)
            raise RuntimeError(f"{e}\n{tails}") from e
        if args.warmup > 0:
            for name in SERVERS:
                wrk(ports[name], write_script(tmp, path), args.warmup, args.connections)
        for index in range(args.runs):
            order = rotation(index)
            runs: dict[str, dict[str, float]] = {}
            for name in order:
                pid = procs[name].pid
                cpu_before = cpu_seconds(pid)
                result = wrk(ports[name], write_script(tmp, path), args.duration, args.connections)
                if not result["requests"]:
                    raise RuntimeError(f"{name} answered no request; log:\n{log_tail(logs[name])}")
                result["cpu_us_per_request"] = (
                    (cpu_seconds(pid) - cpu_before) / result["requests"] * 1e6
                )
                runs[name] = result
                print(
                    f"round {index + 1} {name:8s} {result['rps']:9.0f} req/s  "
                    f"p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms  "
                    f"non-2xx {result['non2xx']:.0f}  "
                    f"cpu {result['cpu_us_per_request']:.1f} us/request",
                    flush=True,
                )
            ratios = round_ratios(runs)
            print(
                f"round {index + 1} "
                + "  ".join(
                    f"{pair}: throughput {r['rps']:.3f} cpu/request {r['cpu_us_per_request']:.3f}"
                    for pair, r in ratios.items()
                ),
                flush=True,
            )
            rounds.append({"order": list(order), **runs, "ratios": ratios})
        rss = {name: peak_rss_mib(proc.pid) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        nats.cleanup()
        receiver_log = log_stats(logs["receiver"]) if logs["receiver"].exists() else {}
        shutil.rmtree(tmp, ignore_errors=True)

    summary = {
        **git,
        "connections": args.connections,
        "duration_s": args.duration,
        "runs": args.runs,
        "warmup_s": args.warmup,
        "cpus": os.cpu_count(),
        "nats_server": {"binary": NATS_SERVER, "version": ".".join(map(str, nats_version()))},
        "commands": {
            # ports and temporary paths differ from run to run; the flags are what matters
            name: [str(Path(cmd[0]).name), *cmd[1:]]
            for name, cmd in commands.items()
        },
        **summarise(rounds),
        "peak_rss_mib": rss,
        "receiver_log": receiver_log,
        "rounds": [
            {
                "order": r["order"],
                **{name: {k: round(v, 3) for k, v in r[name].items()} for name in SERVERS},
                "ratios": {
                    pair: {k: round(v, 4) for k, v in values.items()}
                    for pair, values in r["ratios"].items()
                },
            }
            for r in rounds
        ],
        "loadavg_1m_before": load_before,
        "loadavg_1m_after": os.getloadavg()[0],
        "wall_s": round(time.monotonic() - started, 1),
    }
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(report(summary))
    print(f"written: {args.out}")
    return 0


def report(summary: dict[str, Any]) -> str:
    """The medians and ratios as a few lines (the file has every run)."""
    lines = [
        f"commit {summary['commit']}{' (dirty tree)' if summary['dirty'] else ''}, "
        f"{summary['runs']} rounds of {summary['duration_s']} s, "
        f"{summary['connections']} connections",
        f"{'':9s}{'req/s':>10s}{'p50 ms':>9s}{'p99 ms':>9s}{'cpu us/req':>12s}",
    ]
    for name in SERVERS:
        m = summary["median"][name]
        lines.append(
            f"{name:9s}{m['rps']:10.0f}{m['p50_ms']:9.2f}{m['p99_ms']:9.2f}"
            f"{m['cpu_us_per_request']:12.1f}"
        )
    for pair, ratios in summary["ratios"].items():
        rps, cpu = ratios["rps"], ratios["cpu_us_per_request"]
        lines.append(
            f"{pair}: throughput {rps['median']:.3f} ({rps['min']:.3f}-{rps['max']:.3f}), "
            f"cpu/request {cpu['median']:.3f} ({cpu['min']:.3f}-{cpu['max']:.3f})"
        )
    log = summary["receiver_log"]
    lines.append(f"receiver log: {log.get('lines', 0)} lines, {log.get('bytes', 0)} bytes")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
