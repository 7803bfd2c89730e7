"""A short coverage-guided fuzzing run (atheris/libFuzzer, ``fuzz/verify_parse.py``) over
every provider's verify + parse path, seeded from the corpus kept in ``fuzz/corpus/``: it
must finish without a crash, actually mutate beyond the seeds, and reach a successful parse
for every provider in the registry (the seeds carry valid credentials). Hypothesis covers
the same path property-based in ``tests/receiver/test_fuzz_providers.py``.

``FLUXRELAY_ATHERIS_SECONDS`` sets the run's length (default 20)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from receiver.providers import PROVIDERS

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "fuzz" / "verify_parse.py"
CORPUS = ROOT / "fuzz" / "corpus"
SECONDS = int(os.environ.get("FLUXRELAY_ATHERIS_SECONDS", "20"))


def test_every_provider_has_seeds_with_valid_credentials() -> None:
    for name in PROVIDERS:
        seeds = sorted((CORPUS / name).glob("*"))
        assert seeds, f"no corpus for {name}"
        signed = [s for s in seeds if s.read_bytes().split(b"\n", 2)[1:2] == [b"s"]]
        assert signed, f"no signed seed for {name}: parsing would never be reached"


def test_a_short_atheris_run_finds_no_crash_and_reaches_every_provider(tmp_path: Path) -> None:
    reached = tmp_path / "reached"
    found = tmp_path / "found"
    found.mkdir()
    seeds = sorted(str(d) for d in CORPUS.iterdir() if d.is_dir())
    run = subprocess.run(
        [
            sys.executable,
            str(HARNESS),
            f"-max_total_time={SECONDS}",
            "-timeout=20",
            "-rss_limit_mb=3072",
            "-print_final_stats=1",
            f"-artifact_prefix={tmp_path}/",
            str(found),
            *seeds,
        ],
        capture_output=True,
        text=True,
        timeout=SECONDS + 120,
        cwd=ROOT,
        env={**os.environ, "FLUXRELAY_FUZZ_REACHED": str(reached)},
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    assert not list(tmp_path.glob("crash-*")), output[-6000:]
    executed = re.search(r"stat::number_of_executed_units:\s*(\d+)", output)
    assert executed is not None, output[-3000:]
    seed_count = sum(len(list(Path(d).iterdir())) for d in seeds)
    assert int(executed.group(1)) > 10 * seed_count, "the run fuzzed beyond the seeds"
    assert set(reached.read_text().split()) == set(PROVIDERS)
