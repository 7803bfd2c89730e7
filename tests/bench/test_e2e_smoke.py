"""bench/e2e kept working: a tiny latency run on the real parts (kube-apiserver, nats-server,
receiver, reconciler, webhook + kubectl), checking that the harness accounts for every
delivery of every system and writes its reports. No timing is asserted: numbers belong to
the benchmark, not to tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DELIVERIES = 10


@pytest.mark.timeout(300)
def test_a_tiny_latency_run_accounts_for_every_delivery(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.e2e.run",
            "--scenario",
            "latency",
            "--deliveries",
            str(DELIVERIES),
            "--runs",
            "1",
            "--out-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    systems = results["scenarios"]["latency"]
    assert set(systems) == {"fluxrelay", "fluxrelay-window-0", "webhook-kubectl"}
    for name, result in systems.items():
        (run,) = result["runs"]
        assert run["deliveries"] == DELIVERIES, name
        assert run["accepted"] == DELIVERIES, name
        assert run["seen"] == DELIVERIES and run["missing"] == 0, name
        assert run["send_to_annotation_p99_ms"] is not None, name
    assert systems["fluxrelay"]["runs"][0]["receiver_peak_rss_mib"] > 0
    report = (tmp_path / "results.md").read_text()
    assert "## (a) latency" in report
    counted = f"{DELIVERIES} / {DELIVERIES} / {DELIVERIES}"
    assert f"| deliveries / accepted / seen | {counted} | {counted} | {counted} |" in report
