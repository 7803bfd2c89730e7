"""The README cannot drift from the code: its configuration reference is the CLIs' option
tables, every flag it mentions exists, and the two commands it gives exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from receiver import cli as receiver_cli
from reconciler import cli as reconciler_cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SCRIPT_FLAGS = {"--write", "--check"}  # scripts/reference.py
SUBCOMMAND_FLAGS = SCRIPT_FLAGS | {
    "--token",
    "--name",
    "--url",
    "--provider",
    "--payload",
    "--event",
    "--repo-url",
    "--ref",
    "--content-type",
    "--header",
    "--help",
}


def test_the_configuration_reference_is_generated_from_the_clis() -> None:
    out = subprocess.run(
        [sys.executable, "scripts/reference.py", "--check", "README.md"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


BENCHMARKS = (
    "bench.e2e.run",
    "bench.ingress.run",
    "bench.ingress.instructions",
    "bench.index.run",
    "bench.soak.run",
    "bench.soak.memory",
)


def bench_flags() -> set[str]:
    """Flags the benchmark commands the README gives really take (from their --help)."""
    flags: set[str] = set()
    for module in BENCHMARKS:
        out = subprocess.run(
            [sys.executable, "-m", module, "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        flags |= set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", out))
    return flags


def test_every_documented_flag_exists() -> None:
    known = {o.flag for o in receiver_cli.OPTIONS} | {o.flag for o in reconciler_cli.OPTIONS}
    known |= SUBCOMMAND_FLAGS | bench_flags()
    mentioned = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", README))
    assert mentioned, "README mentions no flags?"
    assert mentioned <= known, f"README documents flags that do not exist: {mentioned - known}"


@pytest.mark.parametrize("prog", ["receiver", "reconciler"])
def test_every_option_is_in_help(prog: str) -> None:
    options = receiver_cli.OPTIONS if prog == "receiver" else reconciler_cli.OPTIONS
    out = subprocess.run(
        [sys.executable, "-m", prog, "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    for opt in options:
        assert opt.flag in out
        assert opt.env in out


def test_the_two_commands_exist() -> None:
    for command in ("bash scripts/run.sh", "bash scripts/test.sh"):
        assert command in README
        assert (ROOT / command.split()[1]).is_file()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci
