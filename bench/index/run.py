"""Benchmark of the source index: lookup cost against index size, and memory for 10,000 sources.

What it shows, and how:

- **Lookups are O(1) in the number of sources.** ``SourceTable.match`` is timed for a Git push
  (four URL forms in the event, a branch that some sources follow) and a registry push, on tables
  of 1, 1,000 and 10,000 sources. Sources per repository stay the same as the table grows (more
  repositories, not more sources per repository), which is the realistic shape; the ratio of the
  10,000-source time to the 1-source time is the number to read, not the absolute times.
- **Memory.** A fresh interpreter (so earlier measurements don't count) imports the reconciler,
  decodes API-server-shaped objects (metadata with managedFields, spec, status) in JSON pages of
  500 as ``SourceIndex`` lists them, files them page by page, and reports its peak RSS
  (``ru_maxrss``) and its RSS after import; a separate run with ``tracemalloc`` (which inflates
  RSS itself) tells what the table alone retains.

Every figure is the median of several runs (``--runs``). Writes ``bench/index/results.md``.
Run: ``/work/venv/bin/python bench/index/run.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SIZES = (1, 1_000, 10_000)
SOURCES_PER_REPO = 4
LOOKUPS = 20_000
PAGE = 500

# What a GitRepository's spec.url may hold under Flux's schema (http, https or ssh://; the scp
# form git@host:org/repo is refused there and appears only in webhook payloads).
URL_FORMS = (
    "https://github.com/org{r}/repo{r}.git",
    "ssh://git@github.com/org{r}/repo{r}",
    "ssh://git@github.com:22/Org{r}/Repo{r}.git",
    "https://deploy:token@github.com/org{r}/repo{r}/",
)
REFS = (
    {"branch": "main"},
    {"branch": "dev"},
    {"semver": ">=1.0.0 <2.0.0"},
    {"tag": "v1.2.3"},
)


def _meta(kind: str, name: str, namespace: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "uid": f"{hash((kind, name)) & 0xFFFFFFFF:08x}-0000-4000-8000-000000000000",
        "resourceVersion": "123456",
        "generation": 3,
        "creationTimestamp": "2024-01-01T00:00:00Z",
        "labels": {"app.kubernetes.io/part-of": "platform", "team": "payments"},
        "annotations": {"fluxrelay.io/paths": "apps/**"} if name.endswith("0") else {},
        "managedFields": [
            {
                "apiVersion": "source.toolkit.fluxcd.io/v1",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:interval": {}, "f:ref": {"f:branch": {}}, "f:url": {}}},
                "manager": "kustomize-controller",
                "operation": "Apply",
                "time": "2024-01-01T00:00:00Z",
            },
            {
                "apiVersion": "source.toolkit.fluxcd.io/v1",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:status": {"f:artifact": {}, "f:conditions": {}}},
                "manager": "source-controller",
                "operation": "Update",
                "subresource": "status",
                "time": "2024-01-01T00:00:00Z",
            },
        ],
    }


def _status() -> dict[str, Any]:
    return {
        "observedGeneration": 3,
        "artifact": {
            "digest": "sha256:" + "e" * 64,
            "lastUpdateTime": "2024-01-01T00:00:00Z",
            "path": "gitrepository/ns/name/" + "c" * 40 + ".tar.gz",
            "revision": "main@sha1:" + "c" * 40,
            "size": 91318,
            "url": "http://source-controller.flux-system.svc.cluster.local./x.tar.gz",
        },
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Succeeded",
                "message": "stored artifact for revision 'main@sha1:" + "c" * 40 + "'",
                "lastTransitionTime": "2024-01-01T00:00:00Z",
                "observedGeneration": 3,
            }
        ],
    }


def iter_objects(count: int) -> Iterator[dict[str, Any]]:
    """``count`` sources: ~70% Git, 10% OCI, 10% image, 10% OCI Helm charts (after their repo)."""
    for i in range(count):
        namespace = f"team-{i % 50}"
        repo = i // SOURCES_PER_REPO
        slot = i % 10
        name = f"src-{i}"
        if slot < 7 or count < 10:
            spec: dict[str, Any] = {
                "interval": "10m",
                "url": URL_FORMS[i % len(URL_FORMS)].format(r=repo),
                "ref": REFS[i % len(REFS)],
            }
            kind = "GitRepository"
        elif slot == 7:
            kind, spec = "OCIRepository", {"url": f"oci://ghcr.io/org/app{repo}", "interval": "5m"}
        elif slot == 8:
            kind, spec = "ImageRepository", {"image": f"ghcr.io/org/app{repo}", "interval": "5m"}
        else:
            repo_name = f"charts-{i}"
            yield {
                "apiVersion": "source.toolkit.fluxcd.io/v1",
                "kind": "HelmRepository",
                "metadata": _meta("HelmRepository", repo_name, namespace),
                "spec": {"type": "oci", "url": f"oci://ghcr.io/org/charts{repo}"},
            }
            kind = "HelmChart"
            spec = {
                "chart": "podinfo",
                "version": "6.x",
                "sourceRef": {"kind": "HelmRepository", "name": repo_name},
            }
        yield {
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": kind,
            "metadata": _meta(kind, name, namespace),
            "spec": spec,
            "status": _status(),
        }


def pages(count: int, size: int = PAGE) -> Iterator[bytes]:
    """The objects as JSON list pages, the way the API server sends a paged list."""
    batch: list[dict[str, Any]] = []
    for obj in iter_objects(count):
        batch.append(obj)
        if len(batch) == size:
            yield json.dumps({"items": batch}).encode()
            batch = []
    if batch:
        yield json.dumps({"items": batch}).encode()


def git_push(repo: int) -> dict[str, Any]:
    forms = [u.format(r=repo) for u in URL_FORMS] + [f"git@github.com:Org{repo}/Repo{repo}.git"]
    return {
        "repository": {"urls": forms, "http": forms[0], "ssh": forms[1], "web": None},
        "ref": "refs/heads/main",
        "revision": "f" * 40,
        "paths_complete": True,
        "changed_paths": ["apps/web/deploy.yaml", "README.md"],
    }


def registry_push(repo: int) -> dict[str, Any]:
    return {"artifact": {"registry": "ghcr.io", "repository": f"org/app{repo}", "tag": "latest"}}


def time_lookups(sizes: tuple[int, ...], runs: int) -> list[dict[str, float]]:
    """Median nanoseconds per ``match`` call for tables of each size (runs interleaved)."""
    from reconciler.sourcetable import SourceTable

    cases = []
    for size in sizes:
        table = SourceTable()
        for obj in iter_objects(size):
            table.upsert(obj)
        repos = max(1, size // SOURCES_PER_REPO)
        events = {
            "git": [git_push(r % repos) for r in range(0, 4 * 97, 4)],
            "image": [registry_push(r % repos) for r in range(7, 7 + 4 * 97, 4)],
            "miss": [git_push(10**9)],
        }
        cases.append((table, events))
    samples: list[dict[str, list[float]]] = [
        {k: [] for k in ("git", "image", "miss")} for _ in sizes
    ]
    for _ in range(runs):  # interleaved, so background noise falls on every size alike
        for (table, events), out in zip(cases, samples, strict=True):
            for label, batch in events.items():
                n = len(batch)
                start = time.perf_counter_ns()
                for k in range(LOOKUPS):
                    table.match(batch[k % n])
                out[label].append((time.perf_counter_ns() - start) / LOOKUPS)
    return [
        {"sources": float(len(table)), **{k: statistics.median(v) for k, v in out.items()}}
        for (table, _), out in zip(cases, samples, strict=True)
    ]


MEMORY_PROBE = """
import gc, json, resource, sys, tracemalloc
TRACE = {trace!r}
sys.path.insert(0, {root!r})
import reconciler.indexing  # noqa: F401  (the reconciler's imports: kubernetes_asyncio, aiohttp)
import reconciler.sourcetable
from bench.index.run import pages
def rss_mib():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
after_import = rss_mib()
if TRACE:
    tracemalloc.start()
table = reconciler.sourcetable.SourceTable()
for page in pages({count}):  # one decoded page alive at a time, as SourceIndex lists
    for item in json.loads(page)["items"]:
        table.upsert(item)
del page, item
gc.collect()
retained = tracemalloc.get_traced_memory()[0] if TRACE else 0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"sources": len(table), "after_import": after_import, "peak": peak,
                  "retained": retained / 2**20, "final": rss_mib()}}))
"""


def _probe(count: int, *, trace: bool) -> dict[str, float]:
    root = str(HERE.parent.parent)
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE.format(root=root, count=count, trace=trace)],
        check=True,
        capture_output=True,
        text=True,
        cwd=root,
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def measure_memory(count: int, runs: int) -> dict[str, float]:
    """Medians over ``runs`` fresh interpreters holding ``count`` sources (RSS untraced)."""
    samples = [_probe(count, trace=False) for _ in range(runs)]
    medians = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
    medians["retained"] = _probe(count, trace=True)["retained"]
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="repetitions per figure (median)")
    parser.add_argument("--output", type=Path, default=HERE / "results.md")
    args = parser.parse_args()

    rows = time_lookups(SIZES, args.runs)
    base = rows[0]
    memory = measure_memory(10_000, max(3, args.runs // 2 + 1))

    lines = [
        "# Source index benchmark",
        "",
        f"Python {platform.python_version()} on {platform.machine()}, "
        f"{LOOKUPS:,} lookups per sample, median of {args.runs} samples; "
        f"{SOURCES_PER_REPO} sources per repository at every size. "
        "Absolute times are noisy on shared machines: read the ratios.",
        "",
        "| sources | Git push (ns/lookup) | x vs 1 | registry push | x vs 1 | miss | x vs 1 |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {int(row['sources']):,} | {row['git']:,.0f} | {row['git'] / base['git']:.2f} "
            f"| {row['image']:,.0f} | {row['image'] / base['image']:.2f} "
            f"| {row['miss']:,.0f} | {row['miss'] / base['miss']:.2f} |"
        )
    big, mid = rows[-1], rows[-2]
    lines += [
        "",
        "The 1-source table has one source under the pushed key; the larger ones have about three "
        "(several sources follow one repository), so the like-for-like check of O(1) is "
        f"10,000 vs 1,000 sources: Git push x{big['git'] / mid['git']:.2f}, "
        f"registry push x{big['image'] / mid['image']:.2f}, miss x{big['miss'] / mid['miss']:.2f}.",
    ]
    lines += [
        "",
        f"Memory, {int(memory['sources']):,} sources filed, fresh interpreter "
        "(median of several runs):",
        "",
        "| RSS after imports | peak RSS | RSS at end | retained by the table (tracemalloc) |",
        "|---:|---:|---:|---:|",
        f"| {memory['after_import']:.1f} MiB | {memory['peak']:.1f} MiB "
        f"| {memory['final']:.1f} MiB | {memory['retained']:.1f} MiB |",
        "",
        "Target: the whole reconciler under 250 MiB with 10,000 indexed sources.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.output.write_text(text)


if __name__ == "__main__":
    main()
