"""The documentation cannot drift from the code: docs/configuration.md is exactly what
scripts/reference.py renders from the CLIs' option tables, every flag a document mentions
exists, the README's two commands exist, the functions its hop-by-hop path names exist, its
module map names the packages there are, its "Differences from notification-controller"
table holds every difference the Flux handler cases rely on, every relative link in the
documents resolves (anchors included), docs/performance.md names the commit of every
results file that records one, and the README or docs/reliability.md the commit of every
long soak kept."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import cast

import pytest

from receiver import cli as receiver_cli
from reconciler import cli as reconciler_cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCUMENTS = (
    "README.md",
    "CONTRIBUTING.md",
    "docs/performance.md",
    "docs/reliability.md",
    "docs/threat-model.md",
    "docs/troubleshooting.md",
    "docs/usage.md",
)
"""The hand-written documents (docs/configuration.md is generated, deploy/README.md has its
own tests in tests/deploy)."""
OTHER_TOOLS_FLAGS = {"--strict-markers", "--version"}  # pytest's, nats-server's
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*[a-z0-9])(?![\w*-])")
"""A flag as written; a family such as ``--nats-*`` is none."""
SCRIPT_FLAGS = {"--write", "--check"}  # scripts/reference.py
SUBCOMMANDS = (
    ("receiver", "send"),
    ("receiver", "hook-path"),
    ("reconciler", "explain"),
)
"""Subcommands the documents show; their flags are read from their own --help."""


def test_the_configuration_reference_is_generated_from_the_clis() -> None:
    out = subprocess.run(
        [sys.executable, "scripts/reference.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    written = (ROOT / "docs" / "configuration.md").read_text()
    assert written == out.stdout, "stale: run python scripts/reference.py --write"


BENCHMARKS = (
    "bench.e2e.run",
    "bench.ingress.run",
    "bench.ingress.instructions",
    "bench.index.run",
    "bench.soak.run",
    "bench.soak.memory",
    "bench.soak.long",
    "bench.e2e.decisions",
)


def help_flags(*commands: tuple[str, ...]) -> set[str]:
    """Flags the commands the documents give really take (from their --help)."""
    flags: set[str] = set()
    for command in commands:
        out = subprocess.run(
            [sys.executable, "-m", *command, "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        flags |= set(FLAG.findall(out))
    return flags


@pytest.fixture(scope="module")
def known_flags() -> set[str]:
    known = {o.flag for o in receiver_cli.OPTIONS} | {o.flag for o in reconciler_cli.OPTIONS}
    benches = [(module,) for module in BENCHMARKS]
    return known | SCRIPT_FLAGS | OTHER_TOOLS_FLAGS | help_flags(*SUBCOMMANDS, *benches)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_documented_flag_exists(document: str, known_flags: set[str]) -> None:
    mentioned = set(FLAG.findall((ROOT / document).read_text()))
    assert mentioned <= known_flags, (
        f"{document} documents flags that do not exist: {mentioned - known_flags}"
    )


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


def section(text: str, heading: str) -> str:
    """The body of the ``## `` section called ``heading`` (up to the next ``## ``)."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no section {heading!r}"
    return match[1]


def resolve(dotted: str) -> object:
    """The object a dotted name such as ``receiver.ingress.handle_hook`` or
    ``reconciler.consuming.Consumer.run`` names: the longest importable module, then
    attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(dotted)


def test_the_hops_name_code_that_exists() -> None:
    """The hop-by-hop path names a function for every hop; a move or rename fails here."""
    hops = section(README, "One delivery, hop by hop")
    names = re.findall(r"`((?:receiver|reconciler|runtime|schemas)(?:\.\w+)+)`", hops)
    assert len(names) >= 13, names
    missing = []
    for name in names:
        try:
            resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert not missing, f"README's hops name code that does not exist: {missing}"


def test_the_module_map_names_the_packages_there_are() -> None:
    table = section(README, "Module map")
    assert "<!-- MODULE MAP" in table
    first_cells = re.findall(r"^\| (`[^|]+`) \|", table, re.M)
    listed = [path for cell in first_cells for path in re.findall(r"`([\w./]+)`", cell)]
    for path in listed:
        assert (ROOT / path).exists(), f"the module map lists {path}, which does not exist"
    packages = {f"{name}/" for name in ("receiver", "reconciler", "runtime", "schemas")}
    top = {"deploy/", "bench/", "tests/", "scripts/"}
    assert packages | top <= set(listed), (packages | top) - set(listed)


def test_the_differences_table_holds_what_the_flux_cases_rely_on() -> None:
    from tests.receiver import test_flux_handler_cases as flux

    drop_in = section(README, "Drop-in for notification-controller's receiver")
    differences = drop_in.split("### Differences from notification-controller", 1)[1]
    rows = [
        line.split("|")[1].strip().replace("`", "")
        for line in differences.splitlines()
        if line.startswith("| ") and not line.startswith("| ---")
    ]
    differences_of_cases = [cast(flux.Case, p.values[0]).difference for p in flux.FLUX_CASES]
    relied_on = {difference for difference in differences_of_cases if difference}
    for difference in relied_on:
        head = difference.split(" (")[0]
        assert any(row.startswith(head) for row in rows), f"no README difference {head!r}"
    cases = re.search(r"carries the (\d+) request cases", differences)
    split = re.search(r"(\d+) agree, the\s+other (\d+) are", differences)
    assert cases and split, "the case counts moved out of the differences' introduction"
    differing = sum(1 for difference in differences_of_cases if difference)
    assert int(cases[1]) == len(flux.FLUX_CASES)
    assert (int(split[1]), int(split[2])) == (len(flux.FLUX_CASES) - differing, differing)


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of ``markdown``."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower().replace("`", "")).replace(" ", "-")
        found.add(slug)
    return found


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_relative_link_resolves(document: str) -> None:
    source = ROOT / document
    text = re.sub(r"```.*?```", "", source.read_text(), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (source.parent / path).resolve() if path else source
        if not linked.exists():
            broken.append(target)
            continue
        if anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text()):
            broken.append(target)
    assert not broken, f"{document} links to what is not there: {broken}"


RESULTS_WITH_COMMITS = {
    "bench/e2e/results.json": ("meta", "commit"),
    "bench/ingress/results.json": ("commit",),
    "bench/ingress/instructions.json": ("commit",),
}


@pytest.mark.parametrize("results", sorted(RESULTS_WITH_COMMITS))
def test_the_performance_figures_name_the_commit_they_were_measured_at(results: str) -> None:
    """Re-running a bench and committing its results without updating docs/performance.md
    fails here."""
    data = json.loads((ROOT / results).read_text())
    for key in RESULTS_WITH_COMMITS[results]:
        data = data[key]
    performance = (ROOT / "docs" / "performance.md").read_text()
    assert f"`{str(data)[:7]}`" in performance, f"docs/performance.md lacks {results}'s commit"


@pytest.mark.parametrize(
    "results", sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("bench/soak/results-long*.json"))
)
def test_the_soak_figures_name_the_commit_they_were_measured_at(results: str) -> None:
    """A long soak's results are quoted in the README and docs/reliability.md with the commit
    they were measured at: a new run committed without the text following it fails here."""
    commit = json.loads((ROOT / results).read_text())["git"]["commit"][:7]
    quoted = README + (ROOT / "docs" / "reliability.md").read_text()
    assert commit in quoted, f"neither the README nor docs/reliability.md names {commit}"
    assert commit in results or results.endswith("results-long.json"), (
        f"{results}: a kept older run is named by its commit"
    )


def test_the_instruction_counts_are_the_recorded_ones() -> None:
    counts = json.loads((ROOT / "bench" / "ingress" / "instructions.json").read_text())
    performance = (ROOT / "docs" / "performance.md").read_text()
    for server in ("receiver", "bare", "strict"):
        assert f"{counts[server]:,}" in performance, server
