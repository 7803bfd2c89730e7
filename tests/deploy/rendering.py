"""Rendering deploy/ with ``kubectl kustomize`` and reading the rendered objects.

This module owns how the deploy tests get manifests: which kubectl is used (and that its
embedded kustomize is new enough for components and ``labels``), the list of overlays and
kustomizations that must render, a cached render per directory (callers get deep copies), and
small accessors over rendered workloads. Rendering with the real kubectl, not a Python
re-implementation of kustomize, is the point: users install with exactly this tool.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = Path(os.environ.get("FLUXRELAY_DEPLOY_DIR") or REPO_ROOT / "deploy")
"""The tree under test; ``$FLUXRELAY_DEPLOY_DIR`` renders another copy (e.g. a release)."""

OVERLAYS = ("overlays/simple", "overlays/ha", "overlays/namespaced")
"""Every installable overlay."""
KUSTOMIZATIONS = (*OVERLAYS, "base", "nats/single", "nats/cluster", "observability", "flux")
"""Every directory with a kustomization.yaml that must render on its own."""
EXAMPLE_FILES = ("examples/credentials-secret.yaml",)
"""Plain manifests shown as examples (in no kustomization) that must still be valid."""

MIN_KUSTOMIZE = (4, 1)
"""Components and the ``labels`` field need kustomize v4.1 or newer."""

JSON = dict[str, Any]


class RenderError(AssertionError):
    """kubectl is missing or too old, or a kustomization does not render."""


@functools.cache
def kubectl() -> str:
    """The kubectl binary; fails with a clear message if absent or its kustomize is too old."""
    found = shutil.which("kubectl") or (
        "/usr/bin/kubectl" if Path("/usr/bin/kubectl").exists() else None
    )
    if not found:
        raise RenderError(
            "kubectl not found: the deploy tests render with `kubectl kustomize` (kubectl "
            "v1.21+ embeds kustomize v4+); install it and put it on PATH"
        )
    out = subprocess.run(
        [found, "version", "--client", "-o", "json"], capture_output=True, text=True, check=False
    )
    version = json.loads(out.stdout or "{}").get("kustomizeVersion", "")
    match = re.match(r"v?(\d+)\.(\d+)", version)
    if not match or (int(match[1]), int(match[2])) < MIN_KUSTOMIZE:
        raise RenderError(
            f"{found} embeds kustomize {version or 'unknown'}; deploy/ needs v"
            f"{MIN_KUSTOMIZE[0]}.{MIN_KUSTOMIZE[1]}+ (components, labels): use kubectl v1.27+"
        )
    return found


@functools.cache
def _render_text(relpath: str) -> str:
    directory = DEPLOY_DIR / relpath
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        hint = ""
        if not (DEPLOY_DIR / "base" / "reconciler-rbac.yaml").exists():
            hint = (
                "\n(deploy/base/reconciler-rbac.yaml is missing: it holds the reconciler's "
                "ServiceAccount and RBAC and is referenced by deploy/base/kustomization.yaml)"
            )
        raise RenderError(f"kubectl kustomize {relpath} failed:\n{result.stderr}{hint}")
    return result.stdout


def render(relpath: str) -> list[JSON]:
    """The objects ``kubectl kustomize deploy/<relpath>`` prints (a fresh copy per call)."""
    docs = [d for d in yaml.safe_load_all(_render_text(relpath)) if d]
    return copy.deepcopy(docs)


def load_file(relpath: str) -> list[JSON]:
    """The documents of one plain manifest file under deploy/."""
    return [d for d in yaml.safe_load_all((DEPLOY_DIR / relpath).read_text()) if d]


def by_kind(docs: list[JSON], kind: str) -> list[JSON]:
    return [d for d in docs if d.get("kind") == kind]


def named(docs: list[JSON], kind: str, name: str) -> JSON:
    for doc in by_kind(docs, kind):
        if doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name} in the rendered objects")


WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")


def workloads(docs: list[JSON]) -> Iterator[JSON]:
    return (d for d in docs if d.get("kind") in WORKLOAD_KINDS)


def containers(workload: JSON) -> list[JSON]:
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def is_fluxrelay(workload: JSON) -> bool:
    """Receiver and reconciler pods (not NATS)."""
    labels = workload["spec"]["template"]["metadata"].get("labels", {})
    return bool(labels.get("app.kubernetes.io/name") == "fluxrelay")


def selector_matches(selector: JSON, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) selects ``labels``."""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        # A Service selector is a plain map.
        return all(labels.get(k) == v for k, v in selector.items())
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def shard_of(container: JSON) -> str | None:
    """The value of ``--shard`` in a container's args (``--shard=X`` or ``--shard X``)."""
    args = [str(a) for a in container.get("args", [])]
    for i, arg in enumerate(args):
        if arg.startswith("--shard="):
            return arg.split("=", 1)[1]
        if arg == "--shard" and i + 1 < len(args):
            return args[i + 1]
    return None
