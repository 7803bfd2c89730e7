"""The Dockerfile's structure, since no container engine here can build it.

Covers: multi-stage; every stage's base is ``python:3.11.<patch>-slim-bookworm`` pinned to an
exact patch release (never ``latest`` or a floating tag); the runtime stage installs the wheel
built in the first stage and runs as uid/gid 65532 (the same ``runAsUser`` the Deployments
use) with an exec-form entrypoint ``fluxrelay-receiver``; everything it copies is in the
build context .dockerignore allows; and the package metadata the wheel is built from declares
both console scripts the Deployments run.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from tests.deploy.rendering import REPO_ROOT, containers, is_fluxrelay, render, workloads

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
PINNED_PYTHON = re.compile(r"^python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?$")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            result.append([])
        assert result, "instruction before the first FROM"
        result[-1].append(ins)
    return result


def test_is_multi_stage_on_an_exactly_pinned_python_base() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    for stage in all_stages:
        image = stage[0][1].split()[0]
        assert PINNED_PYTHON.match(image), f"{image} is not pinned to a 3.11 patch release"
    assert "latest" not in DOCKERFILE.read_text()


def test_runtime_stage_installs_the_built_wheels_and_runs_as_nonroot() -> None:
    build, runtime = stages()[0], stages()[-1]
    build_name = build[0][1].split()[-1]
    assert any("pip wheel" in args for ins, args in build if ins == "RUN")
    runs = [args for ins, args in runtime if ins == "RUN"]
    assert any(f"from={build_name}" in r and "--no-index" in r for r in runs), runs
    users = [args for ins, args in runtime if ins == "USER"]
    assert users and users[-1] == "65532:65532"
    last_user_at = max(i for i, (ins, _) in enumerate(runtime) if ins == "USER")
    assert all(ins != "RUN" for ins, _ in runtime[last_user_at:]), "RUN after USER"


def test_entrypoint_is_exec_form_receiver_and_the_deployments_match_the_image_user() -> None:
    (entrypoint,) = [args for ins, args in stages()[-1] if ins == "ENTRYPOINT"]
    argv = json.loads(entrypoint)
    assert Path(argv[0]).name == "fluxrelay-receiver"
    for overlay in ("overlays/simple", "overlays/ha"):
        for w in workloads(render(overlay)):
            if is_fluxrelay(w):
                pod_sc = w["spec"]["template"]["spec"]["securityContext"]
                assert (pod_sc["runAsUser"], pod_sc["runAsGroup"]) == (65532, 65532)
                for c in containers(w):
                    assert c.get("command", ["fluxrelay-receiver"])[0] in {
                        "fluxrelay-receiver",
                        "fluxrelay-reconciler",
                    }


def test_console_scripts_the_image_runs_are_declared() -> None:
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["fluxrelay-receiver"] == "receiver.cli:main"
    assert scripts["fluxrelay-reconciler"] == "reconciler.cli:main"


def test_everything_copied_exists_and_is_let_through_by_dockerignore() -> None:
    allowed = {
        line.strip()[1:].rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip().startswith("!")
    }
    assert "*" in {line.strip() for line in DOCKERIGNORE.read_text().splitlines()}
    for ins, args in instructions():
        if ins != "COPY" or "--from" in args:
            continue
        sources = args.split()[:-1]
        for source in sources:
            assert source in allowed, f"COPY {source} is excluded by .dockerignore"
            assert (REPO_ROOT / source).exists(), f"COPY {source}: not in the repository"
