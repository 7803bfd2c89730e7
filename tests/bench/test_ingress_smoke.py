"""bench/ingress kept working: a tiny run of the throughput bench (receiver at its default
flags, bare and strict ceilings, real nats-server, wrk), checking that every server answered
every request it was sent, that the receiver logged at its default level into its log file,
and that the results record each run, the ratios and the commit. No timing is asserted:
numbers belong to the benchmark, not to tests."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.ingress.run import SERVERS, rotation, round_ratios

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 2


def test_the_order_rotates_so_each_server_goes_first_in_turn() -> None:
    orders = [rotation(i) for i in range(len(SERVERS))]
    assert [order[0] for order in orders] == list(SERVERS)
    assert all(sorted(order) == sorted(SERVERS) for order in orders)
    assert rotation(len(SERVERS)) == rotation(0)


def test_ratios_are_receiver_over_each_ceiling() -> None:
    runs = {
        "receiver": {"rps": 5.0, "cpu_us_per_request": 90.0},
        "bare": {"rps": 10.0, "cpu_us_per_request": 45.0},
        "strict": {"rps": 20.0, "cpu_us_per_request": 30.0},
    }
    assert round_ratios(runs) == {
        "receiver/bare": {"rps": 0.5, "cpu_us_per_request": 2.0},
        "receiver/strict": {"rps": 0.25, "cpu_us_per_request": 3.0},
    }


@pytest.mark.timeout(180)
def test_a_tiny_ingress_run_answers_everything_and_records_every_run(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.ingress.run",
            "--runs",
            str(ROUNDS),
            "--duration",
            "1",
            "--warmup",
            "0",
            "--connections",
            "8",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())

    assert re.fullmatch(r"[0-9a-f]{40}", results["commit"])
    assert isinstance(results["dirty"], bool)
    receiver_flags = results["commands"]["receiver"]
    assert not any(flag.startswith("--log") for flag in receiver_flags)
    assert {f for f in receiver_flags if f.startswith("--")} == {
        "--config",
        "--nats-url",
        "--listen",
        "--metrics-listen",
    }

    rounds = results["rounds"]
    assert len(rounds) == ROUNDS
    assert [r["order"] for r in rounds] == [list(rotation(i)) for i in range(ROUNDS)]
    for r in rounds:
        for name in SERVERS:
            run = r[name]
            assert run["requests"] > 0, name
            assert run["non2xx"] == 0 and run["socket_errors"] == 0, name
            assert run["cpu_us_per_request"] > 0, name
        assert set(r["ratios"]) == {"receiver/bare", "receiver/strict"}
    for pair in ("receiver/bare", "receiver/strict"):
        for key in ("rps", "cpu_us_per_request"):
            ratio = results["ratios"][pair][key]
            assert len(ratio["per_round"]) == ROUNDS
            assert ratio["min"] <= ratio["median"] <= ratio["max"]
    assert set(results["median"]) == set(SERVERS)

    # INFO, the default: a line per accepted delivery reached the log file (the process was
    # stopped with SIGTERM, which writes out every queued line).
    answered = sum(r["receiver"]["requests"] for r in rounds)
    assert results["receiver_log"]["INFO"] >= answered
