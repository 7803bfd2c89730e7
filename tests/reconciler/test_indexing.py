"""Automatic targeting: the source table's matching, and the source index against a real API server.

Unit (``SourceTable``, no server): Git pushes over every URL form of a repository reach exactly
the sources following the pushed branch/tag/semver/name; commit pins, suspended sources and
deleted refs never; registry pushes reach ImageRepositories and OCIRepositories by tag/semver but
never digest pins; HelmCharts of OCI HelmRepositories by chart version, following their
repository's changes; path narrowing only with a complete, non-empty path list; updates and
removals refile; ``sync_kind`` drops objects missing from a relist.

Integration (``SourceIndex``, real kube-apiserver): sources created in a namespace are listed and
matched over ssh/https/``.git`` variants, branches, a tag and a semver range, a non-matching ref
matches nothing; shard selectors split the objects; an update and a deletion are followed; after
the API server restarts mid-watch, later changes are still indexed. Through the fault proxy: a
kind answering 404 (CRD not installed) does not block readiness and is picked up once served,
500s are retried, a dropped watch resumes from its resourceVersion without relisting, a 410
relists. ``stop()`` during ``start()`` ends both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s_client

from reconciler.indexing import IndexSettings, SourceIndex
from reconciler.kinds import SHARD_LABEL, ObjectRef
from reconciler.narrowing import compile_paths, narrowing_paths
from reconciler.sourcetable import SourceTable
from tests.support.faultproxy import FaultProxy, RecordedRequest
from tests.support.kubeapi import MERGE_PATCH, KubeAPI

NS = "apps"
REPO_FORMS = (
    "https://github.com/Org/Repo.git",
    "ssh://git@github.com/org/repo",
    "ssh://git@github.com:22/Org/repo.git",
    "https://deploy:token@github.com/org/repo/",
)
"""One repository as a GitRepository's ``spec.url`` may name it. Never the scp form
``git@github.com:org/repo.git``: Flux's schema refuses it (``^(http|https|ssh)://``), though
webhook payloads carry it, so the scp form appears here only in events."""


def git(
    name: str,
    url: str,
    ref: Mapping[str, Any] | None = None,
    *,
    namespace: str = NS,
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    suspend: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"url": url, "interval": "10m"}
    if ref is not None:
        spec["ref"] = dict(ref)
    if suspend:
        spec["suspend"] = True
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        meta["annotations"] = dict(annotations)
    if labels:
        meta["labels"] = dict(labels)
    return {
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "GitRepository",
        "metadata": meta,
        "spec": spec,
    }


def oci(name: str, url: str, ref: Mapping[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"url": url, "interval": "10m"}
    if ref is not None:
        spec["ref"] = dict(ref)
    return {
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "OCIRepository",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


def image_repo(name: str, image: str, exclusions: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"image": image, "interval": "10m"}
    if exclusions is not None:
        spec["exclusionList"] = exclusions
    return {
        "apiVersion": "image.toolkit.fluxcd.io/v1",
        "kind": "ImageRepository",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


def helm_repo(name: str, url: str, *, oci_type: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {"url": url, "interval": "10m"}
    if oci_type:
        spec["type"] = "oci"
    return {
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "HelmRepository",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


def helm_chart(
    name: str,
    chart: str,
    source: str,
    version: str | None = None,
    source_kind: str = "HelmRepository",
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "chart": chart,
        "interval": "10m",
        "sourceRef": {"kind": source_kind, "name": source},
    }
    if version is not None:
        spec["version"] = version
    return {
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "HelmChart",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


def push(
    ref: str,
    url: str = "https://github.com/org/repo",
    *,
    paths: list[str] | None = None,
    complete: bool = False,
    deleted: bool = False,
) -> dict[str, Any]:
    envelope: dict[str, Any] = {
        "repository": {
            "urls": [url],
            "http": url,
            "ssh": None,
            "web": None,
        },
        "ref": ref,
        "revision": "0" * 40 if deleted else "f" * 40,
        "deleted": deleted,
        "paths_complete": complete,
    }
    if paths is not None:
        envelope["changed_paths"] = paths
    return envelope


def registry_push(
    repository: str, tag: str | None, registry: str | None = "ghcr.io", digest: str | None = None
) -> dict[str, Any]:
    return {
        "artifact": {
            "registry": registry,
            "repository": repository,
            "tag": tag,
            "digest": digest,
            "media_type": None,
        }
    }


def names(refs: list[ObjectRef]) -> list[str]:
    return [r.name for r in refs]


@pytest.fixture
def table() -> SourceTable:
    """A table with a spread of Git, OCI, image and Helm sources in namespace ``apps``."""
    t = SourceTable()
    for obj in (
        git("main-https", REPO_FORMS[0], {"branch": "main"}),
        git("main-ssh", REPO_FORMS[1], {"branch": "main"}),
        git("dev-ssh-port", REPO_FORMS[2], {"branch": "dev"}),
        git("default-master", REPO_FORMS[3]),
        git("tag-v1", REPO_FORMS[0], {"tag": "v1.2.3"}),
        git("semver-1x", REPO_FORMS[1], {"semver": ">=1.0.0 <2.0.0"}),
        git("semver-2x", REPO_FORMS[2], {"semver": "^2.0.0"}),
        git("pr-ref", REPO_FORMS[0], {"name": "refs/pull/7/head"}),
        git("pinned", REPO_FORMS[0], {"branch": "main", "commit": "a" * 40}),
        git("suspended", REPO_FORMS[0], {"branch": "main"}, suspend=True),
        git("other-repo", "https://github.com/org/other", {"branch": "main"}),
        git(
            "narrow-apps",
            REPO_FORMS[1],
            {"branch": "main"},
            annotations={"fluxrelay.io/paths": "apps/**, clusters/prod/*"},
        ),
        oci("app-latest", "oci://ghcr.io/org/app"),
        oci("app-stable", "oci://ghcr.io/org/app", {"tag": "stable"}),
        oci("app-semver", "oci://ghcr.io/org/app", {"semver": "^1.0.0"}),
        oci("app-digest", "oci://ghcr.io/org/app", {"digest": "sha256:" + "d" * 64}),
        image_repo("app-images", "ghcr.io/org/app"),
        image_repo("nginx-images", "nginx"),
        helm_repo("charts", "oci://ghcr.io/org/charts"),
        helm_repo("http-charts", "https://charts.example.com", oci_type=False),
        helm_chart("podinfo", "podinfo", "charts", "6.x"),
        helm_chart("podinfo-any", "podinfo", "charts"),
        helm_chart("from-http", "podinfo", "http-charts"),
        helm_chart("from-git", "./charts/podinfo", "main-https", source_kind="GitRepository"),
    ):
        t.upsert(obj)
    return t


@pytest.mark.parametrize(
    ("envelope", "expected"),
    [
        pytest.param(
            push("refs/heads/main"),
            ["main-https", "main-ssh", "narrow-apps"],
            id="branch-over-all-url-forms",
        ),
        pytest.param(
            push("refs/heads/main", "git@github.com:ORG/repo.git"),
            ["main-https", "main-ssh", "narrow-apps"],
            id="event-url-in-scp-form",
        ),
        pytest.param(push("refs/heads/dev"), ["dev-ssh-port"], id="other-branch"),
        pytest.param(push("refs/heads/master"), ["default-master"], id="default-master-branch"),
        pytest.param(push("refs/heads/feature"), [], id="non-matching-branch"),
        pytest.param(push("refs/tags/v1.2.3"), ["semver-1x", "tag-v1"], id="tag-and-semver"),
        pytest.param(push("refs/tags/v1.9.0"), ["semver-1x"], id="semver-only"),
        pytest.param(push("refs/tags/v2.1.0"), ["semver-2x"], id="other-semver-range"),
        pytest.param(push("refs/tags/v3.0.0"), [], id="tag-outside-every-range"),
        pytest.param(push("refs/pull/7/head"), ["pr-ref"], id="name-ref"),
        pytest.param(push("refs/heads/main", deleted=True), [], id="deleted-ref-never"),
        pytest.param(
            push("refs/heads/main", "https://github.com/org/unknown"), [], id="unknown-repo"
        ),
        pytest.param(
            push("refs/heads/main", "https://gitlab.com/org/repo"), [], id="same-path-other-host"
        ),
        pytest.param(
            push("refs/heads/main", paths=["docs/readme.md"], complete=True),
            ["main-https", "main-ssh"],
            id="complete-paths-narrow-out",
        ),
        pytest.param(
            push(
                "refs/heads/main", paths=["docs/readme.md", "apps/web/deploy.yaml"], complete=True
            ),
            ["main-https", "main-ssh", "narrow-apps"],
            id="complete-paths-one-matches",
        ),
        pytest.param(
            push("refs/heads/main", paths=["clusters/prod/kustomization.yaml"], complete=True),
            ["main-https", "main-ssh", "narrow-apps"],
            id="single-star-glob-matches-file",
        ),
        pytest.param(
            push("refs/heads/main", paths=["clusters/prod/sub/x.yaml"], complete=True),
            ["main-https", "main-ssh", "narrow-apps"],
            id="matched-directory-covers-below",
        ),
        pytest.param(
            push("refs/heads/main", paths=["clusters/staging/x.yaml"], complete=True),
            ["main-https", "main-ssh"],
            id="sibling-directory-narrowed-out",
        ),
        pytest.param(
            push("refs/heads/main", paths=["docs/readme.md"], complete=False),
            ["main-https", "main-ssh", "narrow-apps"],
            id="incomplete-paths-never-narrow",
        ),
        pytest.param(
            push("refs/heads/main", paths=[], complete=True),
            ["main-https", "main-ssh", "narrow-apps"],
            id="empty-path-list-never-narrows",
        ),
        pytest.param(registry_push("org/app", "latest"), ["app-images", "app-latest"], id="latest"),
        pytest.param(registry_push("org/app", "stable"), ["app-images", "app-stable"], id="tag"),
        pytest.param(
            registry_push("org/app", "v1.4.0"), ["app-images", "app-semver"], id="image-semver"
        ),
        pytest.param(registry_push("org/app", "v2.0.0"), ["app-images"], id="image-outside-range"),
        pytest.param(
            registry_push("org/app", None, digest="sha256:" + "d" * 64), [], id="digest-only-push"
        ),
        pytest.param(registry_push("org/app", "sha256-abc.sig"), [], id="signature-tag-excluded"),
        pytest.param(
            registry_push("ghcr.io/Org/App", "stable", registry=None),
            ["app-images", "app-stable"],
            id="registry-inside-repository",
        ),
        pytest.param(
            registry_push("library/nginx", "1.25", registry="docker.io"),
            ["nginx-images"],
            id="docker-hub-library",
        ),
        pytest.param(
            registry_push("nginx", "1.25", registry=None), ["nginx-images"], id="docker-hub-short"
        ),
        pytest.param(registry_push("org/other", "latest"), [], id="unknown-image"),
        pytest.param(
            registry_push("org/charts/podinfo", "6.2.0"),
            ["podinfo", "podinfo-any"],
            id="oci-chart-version",
        ),
        pytest.param(
            registry_push("org/charts/podinfo", "7.0.0"), ["podinfo-any"], id="oci-chart-range"
        ),
    ],
)
def test_table_matches_exactly_the_sources_that_follow(
    table: SourceTable, envelope: dict[str, Any], expected: list[str]
) -> None:
    assert sorted(names(table.match(envelope))) == sorted(expected)


def test_matches_carry_kind_and_api_version(table: SourceTable) -> None:
    refs = table.match(registry_push("org/app", "latest"))
    assert {(r.kind, r.group, r.version) for r in refs} == {
        ("ImageRepository", "image.toolkit.fluxcd.io", "v1"),
        ("OCIRepository", "source.toolkit.fluxcd.io", "v1"),
    }
    assert all(r.namespace == NS for r in refs)


def test_a_tag_push_is_never_narrowed_by_paths() -> None:
    """A tag is a new artifact for every source following it, whatever paths its commit touched
    (the module's promise); a branch push with the same complete path list still narrows."""
    t = SourceTable()
    paths = {"fluxrelay.io/paths": "apps/**"}
    t.upsert(git("narrow-semver", REPO_FORMS[1], {"semver": ">=1.0.0"}, annotations=paths))
    t.upsert(git("narrow-tag", REPO_FORMS[0], {"tag": "v1.2.3"}, annotations=paths))
    t.upsert(git("narrow-main", REPO_FORMS[0], {"branch": "main"}, annotations=paths))
    docs_only = ["docs/readme.md"]
    tag = push("refs/tags/v1.2.3", paths=docs_only, complete=True)
    assert names(t.match(tag)) == ["narrow-semver", "narrow-tag"]
    assert names(t.match(push("refs/heads/main", paths=docs_only, complete=True))) == []
    assert names(t.match(push("refs/heads/main", paths=["apps/x"], complete=True))) == [
        "narrow-main"
    ]


@pytest.mark.parametrize(
    ("event_url", "source_url"),
    [
        pytest.param("git@github.com:org/repo.git", "ssh://git@github.com/org/repo", id="github"),
        pytest.param(
            "git@gitlab.example.com:infra/platform-config.git",
            "ssh://git@gitlab.example.com/infra/platform-config.git",
            id="gitlab",
        ),
        pytest.param(
            "git@bitbucket.org:northwind/gitops.git",
            "ssh://git@bitbucket.org/northwind/gitops",
            id="bitbucket-cloud",
        ),
        pytest.param(
            "git@ssh.dev.azure.com:v3/contoso/Platform/deploy",
            "ssh://git@ssh.dev.azure.com/v3/contoso/Platform/deploy",
            id="azure-devops",
        ),
    ],
)
def test_scp_form_in_an_event_meets_the_ssh_url_flux_requires(
    event_url: str, source_url: str
) -> None:
    """Payloads name the ssh clone URL in scp form; a GitRepository may only use ``ssh://``."""
    t = SourceTable()
    t.upsert(git("src", source_url, {"branch": "main"}))
    assert names(t.match(push("refs/heads/main", event_url))) == ["src"]


def test_updating_a_source_refiles_it(table: SourceTable) -> None:
    table.upsert(git("dev-ssh-port", REPO_FORMS[2], {"branch": "release"}))
    assert "dev-ssh-port" not in names(table.match(push("refs/heads/dev")))
    assert names(table.match(push("refs/heads/release"))) == ["dev-ssh-port"]
    table.upsert(git("dev-ssh-port", "https://github.com/org/moved", {"branch": "release"}))
    assert names(table.match(push("refs/heads/release"))) == []
    assert names(table.match(push("refs/heads/release", "https://github.com/org/moved"))) == [
        "dev-ssh-port"
    ]


def test_removing_a_source_unfiles_it(table: SourceTable) -> None:
    before = len(table)
    table.remove(git("main-ssh", REPO_FORMS[1]))
    assert len(table) == before - 1
    assert sorted(names(table.match(push("refs/heads/main")))) == ["main-https", "narrow-apps"]


def test_unsuspending_a_source_files_it(table: SourceTable) -> None:
    table.upsert(git("suspended", REPO_FORMS[0], {"branch": "main"}))
    assert "suspended" in names(table.match(push("refs/heads/main")))


def test_oci_charts_follow_their_helm_repository(table: SourceTable) -> None:
    chart_push = registry_push("org/charts/podinfo", "6.2.0")
    table.upsert(helm_repo("charts", "oci://ghcr.io/org/moved"))
    assert table.match(chart_push) == []
    assert sorted(names(table.match(registry_push("org/moved/podinfo", "6.2.0")))) == [
        "podinfo",
        "podinfo-any",
    ]
    table.remove(helm_repo("charts", "oci://ghcr.io/org/moved"))
    assert table.match(registry_push("org/moved/podinfo", "6.2.0")) == []
    table.upsert(helm_repo("charts", "oci://ghcr.io/org/charts"))
    assert sorted(names(table.match(chart_push))) == ["podinfo", "podinfo-any"]
    table.remove(helm_chart("podinfo-any", "podinfo", "charts"))
    assert names(table.match(chart_push)) == ["podinfo"]


def test_chart_seen_before_its_repository_is_filed_when_it_arrives() -> None:
    t = SourceTable()
    t.upsert(helm_chart("late", "app", "repo"))
    assert t.match(registry_push("org/charts/app", "1.0.0")) == []
    t.upsert(helm_repo("repo", "oci://ghcr.io/org/charts"))
    assert names(t.match(registry_push("org/charts/app", "1.0.0"))) == ["late"]


def test_sync_kind_drops_what_a_relist_no_longer_shows(table: SourceTable) -> None:
    table.sync_kind("GitRepository", [git("main-https", REPO_FORMS[0], {"branch": "main"})])
    assert names(table.match(push("refs/heads/main"))) == ["main-https"]
    assert names(table.match(registry_push("org/app", "stable"))) == ["app-images", "app-stable"]


def test_same_name_in_two_namespaces_are_two_sources() -> None:
    t = SourceTable()
    t.upsert(git("app", REPO_FORMS[0], {"branch": "main"}, namespace="a"))
    t.upsert(git("app", REPO_FORMS[1], {"branch": "main"}, namespace="b"))
    assert [(r.namespace, r.name) for r in t.match(push("refs/heads/main"))] == [
        ("a", "app"),
        ("b", "app"),
    ]


def test_objects_without_identity_are_ignored() -> None:
    t = SourceTable()
    t.upsert({"kind": "GitRepository", "metadata": {"name": "x"}, "spec": {"url": REPO_FORMS[0]}})
    t.upsert({"kind": "Unknown", "metadata": {"name": "x", "namespace": "n"}})
    t.upsert(git("bad-url", "not a url"))
    assert len(t) == 0


@pytest.mark.parametrize(
    ("globs", "path", "expected"),
    [
        pytest.param("apps/**", "apps/a/b/c.yaml", True, id="double-star-deep"),
        pytest.param("apps/**", "appsx/a.yaml", False, id="double-star-prefix-boundary"),
        pytest.param("apps", "apps/a/b.yaml", True, id="directory-covers-below"),
        pytest.param("apps/", "apps/a.yaml", True, id="trailing-slash-directory"),
        pytest.param("*.yaml", "a.yaml", True, id="star-top-level"),
        pytest.param("*.yaml", "dir/a.yaml", False, id="star-does-not-cross"),
        pytest.param("**/*.yaml", "dir/sub/a.yaml", True, id="leading-double-star"),
        pytest.param("**/*.yaml", "a.yaml", True, id="leading-double-star-zero-dirs"),
        pytest.param("a/**/b", "a/b", True, id="middle-double-star-zero-dirs"),
        pytest.param("a/**/b", "a/x/y/b", True, id="middle-double-star-many-dirs"),
        pytest.param("file?.txt", "file1.txt", True, id="question-mark"),
        pytest.param("file?.txt", "file/.txt", False, id="question-mark-not-slash"),
        pytest.param("env-[ab]/*", "env-a/x", True, id="class"),
        pytest.param("env-[!ab]/*", "env-a/x", False, id="negated-class"),
        pytest.param("./apps/**", "apps/x", True, id="dot-slash-prefix"),
        pytest.param("a.b", "axb", False, id="dot-is-literal"),
        pytest.param(" apps/** , infra ", "infra/x", True, id="list-with-spaces"),
    ],
)
def test_path_globs(globs: str, path: str, expected: bool) -> None:
    compiled = compile_paths(globs)
    assert compiled is not None
    assert (compiled.fullmatch(path) is not None) is expected


@pytest.mark.parametrize(
    ("envelope", "expected"),
    [
        pytest.param({"paths_complete": True, "changed_paths": ["a"]}, ["a"], id="complete"),
        pytest.param(
            {"paths_complete": True, "changed_paths": ["/a", "./b"]}, ["a", "b"], id="norm"
        ),
        pytest.param({"paths_complete": False, "changed_paths": ["a"]}, None, id="incomplete"),
        pytest.param({"changed_paths": ["a"]}, None, id="unstated"),
        pytest.param({"paths_complete": True, "changed_paths": []}, None, id="empty"),
        pytest.param({"paths_complete": True}, None, id="no-list"),
        pytest.param(
            {"paths_complete": True, "changed_paths": ["a"], "ref": "refs/tags/v1.0.0"},
            None,
            id="tag-push",
        ),
        pytest.param(
            {"paths_complete": True, "changed_paths": ["a"], "ref": "refs/heads/v1.0.0"},
            ["a"],
            id="branch-named-like-a-tag",
        ),
    ],
)
def test_only_complete_non_empty_path_lists_narrow(
    envelope: dict[str, Any], expected: list[str] | None
) -> None:
    assert narrowing_paths(envelope) == expected


# ------------------------------------------------------------------ against the API server

FAST = IndexSettings(backoff_initial_s=0.1, backoff_max_s=1.0, watch_timeout_s=30)


async def eventually(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Poll ``check`` until it holds; fail (not time out the test) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.1)


async def create(kube: KubeAPI, namespace: str, obj: dict[str, Any]) -> None:
    obj = {**obj, "metadata": {**obj["metadata"], "namespace": namespace}}
    await asyncio.to_thread(kube.apply, obj, namespace=namespace)


@pytest.fixture
async def started(
    kube: KubeAPI, kube_namespace: str, kube_client: k8s_client.ApiClient
) -> AsyncIterator[Callable[..., Awaitable[SourceIndex]]]:
    indexes: list[SourceIndex] = []

    async def start(**kwargs: Any) -> SourceIndex:
        index = SourceIndex(kube_client, namespace=kube_namespace, settings=FAST, **kwargs)
        indexes.append(index)
        await asyncio.wait_for(index.start(), 30)
        return index

    yield start
    for index in indexes:
        await index.stop()


async def test_index_lists_and_matches_real_sources(
    kube: KubeAPI,
    kube_namespace: str,
    started: Callable[..., Awaitable[SourceIndex]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Against Flux's real CRDs every indexed kind is served at the version the index asks for
    (ImageRepository was a 404 at ``v1beta2``, so no image was ever matched)."""
    for obj in (
        git("main-https", REPO_FORMS[0], {"branch": "main"}),
        git("main-ssh", REPO_FORMS[1], {"branch": "main"}),
        git("dev-ssh-port", REPO_FORMS[2], {"branch": "dev"}),
        git("tag-v1", REPO_FORMS[3], {"tag": "v1.2.3"}),
        git("semver-1x", REPO_FORMS[0], {"semver": ">=1.0.0 <2.0.0"}),
        git("pinned", REPO_FORMS[0], {"branch": "main", "commit": "a" * 40}),
        git("sharded", REPO_FORMS[0], {"branch": "main"}, labels={SHARD_LABEL: "shard1"}),
        oci("app-latest", "oci://ghcr.io/org/app"),
        image_repo("app-images", "ghcr.io/org/app"),
    ):
        await create(kube, kube_namespace, obj)

    index = await started()
    assert index.ready
    assert not [r for r in caplog.records if "not served" in r.getMessage()]
    assert names(index.match(push("refs/heads/main"))) == ["main-https", "main-ssh"]
    assert names(index.match(push("refs/heads/main", "git@github.com:org/repo"))) == [
        "main-https",
        "main-ssh",
    ]
    assert names(index.match(push("refs/heads/dev", "ssh://git@github.com:22/org/Repo.git"))) == [
        "dev-ssh-port"
    ]
    assert names(index.match(push("refs/tags/v1.2.3"))) == ["semver-1x", "tag-v1"]
    assert names(index.match(push("refs/tags/v1.7.0"))) == ["semver-1x"]
    assert index.match(push("refs/heads/feature")) == []
    assert index.match(push("refs/tags/v2.0.0")) == []
    assert names(index.match(registry_push("org/app", "latest"))) == ["app-images", "app-latest"]
    refs = index.match(push("refs/heads/main"))
    assert all(r.namespace == kube_namespace for r in refs)

    sharded = await started(shard="shard1")
    assert names(sharded.match(push("refs/heads/main"))) == ["sharded"]
    assert sharded.match(push("refs/tags/v1.2.3")) == []


async def test_index_follows_updates_deletions_and_api_server_restarts(
    kube: KubeAPI,
    kube_namespace: str,
    kube_client: k8s_client.ApiClient,
    started: Callable[..., Awaitable[SourceIndex]],
) -> None:
    await create(kube, kube_namespace, git("a", REPO_FORMS[0], {"branch": "main"}))
    await create(kube, kube_namespace, git("b", REPO_FORMS[1], {"branch": "main"}))
    index = await started()
    assert names(index.match(push("refs/heads/main"))) == ["a", "b"]

    custom = k8s_client.CustomObjectsApi(kube_client)
    await custom.patch_namespaced_custom_object(
        "source.toolkit.fluxcd.io",
        "v1",
        kube_namespace,
        "gitrepositories",
        "a",
        {"spec": {"ref": {"branch": "release"}}},
        **MERGE_PATCH,
    )
    await eventually(lambda: names(index.match(push("refs/heads/release"))) == ["a"])
    assert names(index.match(push("refs/heads/main"))) == ["b"]

    await custom.delete_namespaced_custom_object(
        "source.toolkit.fluxcd.io", "v1", kube_namespace, "gitrepositories", "b"
    )
    await eventually(lambda: index.match(push("refs/heads/main")) == [])

    await asyncio.to_thread(kube.restart_apiserver)
    await create(kube, kube_namespace, git("c", REPO_FORMS[2], {"branch": "main"}))
    await create(kube, kube_namespace, oci("app", "oci://ghcr.io/org/app", {"tag": "stable"}))
    await eventually(lambda: names(index.match(push("refs/heads/main"))) == ["c"])
    await eventually(lambda: names(index.match(registry_push("org/app", "stable"))) == ["app"])
    assert names(index.match(push("refs/heads/release"))) == ["a"]


def watch_requests(proxy: FaultProxy, plural: str) -> list[RecordedRequest]:
    return [r for r in proxy.matching("GET", plural) if "watch=true" in r.query.lower()]


def list_requests(proxy: FaultProxy, plural: str) -> list[RecordedRequest]:
    return [r for r in proxy.matching("GET", plural) if "watch=true" not in r.query.lower()]


async def test_index_survives_missing_kinds_dropped_watches_and_gone(
    kube: KubeAPI, kube_namespace: str, kube_proxy: FaultProxy
) -> None:
    # ImageRepository not served (as without Flux image automation): ready without it.
    kube_proxy.fail(404, path="imagerepositories", times=None)
    kube_proxy.fail(500, path="gitrepositories", times=2)
    await create(kube, kube_namespace, git("a", REPO_FORMS[0], {"branch": "main"}))
    await create(kube, kube_namespace, image_repo("img", "ghcr.io/org/app"))
    settings = IndexSettings(
        backoff_initial_s=0.1, backoff_max_s=0.5, watch_timeout_s=30, not_served_retry_s=0.5
    )
    api = await kube.api_client(server=kube_proxy.url)
    async with api:
        index = SourceIndex(api, namespace=kube_namespace, settings=settings)
        try:
            await asyncio.wait_for(index.start(), 30)
            assert index.ready
            assert names(index.match(push("refs/heads/main"))) == ["a"]  # after two 500s
            assert index.match(registry_push("org/app", "v1")) == []

            kube_proxy.clear_faults()  # the CRD "appears": found on the next slow retry
            await eventually(lambda: names(index.match(registry_push("org/app", "v1"))) == ["img"])

            # A dropped watch resumes from its resourceVersion, without listing again.
            await eventually(lambda: len(watch_requests(kube_proxy, "gitrepositories")) >= 1)
            lists_before = len(list_requests(kube_proxy, "gitrepositories"))
            watches_before = len(watch_requests(kube_proxy, "gitrepositories"))
            await kube_proxy.drop_connections()
            await create(kube, kube_namespace, git("b", REPO_FORMS[1], {"branch": "main"}))
            await eventually(lambda: names(index.match(push("refs/heads/main"))) == ["a", "b"])
            resumed = watch_requests(kube_proxy, "gitrepositories")[watches_before:]
            assert resumed
            assert all("resourceVersion=" in r.query for r in resumed)
            assert len(list_requests(kube_proxy, "gitrepositories")) == lists_before

            # 410 Gone on the resumed watch: the kind is listed again, changes still arrive.
            kube_proxy.fail(410, path="gitrepositories", method="GET", times=1)
            await kube_proxy.drop_connections()
            await eventually(
                lambda: len(list_requests(kube_proxy, "gitrepositories")) > lists_before
            )
            await create(kube, kube_namespace, git("c", REPO_FORMS[2], {"branch": "main"}))
            await eventually(lambda: names(index.match(push("refs/heads/main"))) == ["a", "b", "c"])
        finally:
            await index.stop()


async def test_stop_while_starting_returns_not_ready() -> None:
    # Nothing listens on port 9 of loopback: every list fails and is retried until stopped.
    cfg = k8s_client.Configuration(host="http://127.0.0.1:9")
    async with k8s_client.ApiClient(configuration=cfg) as api:
        index = SourceIndex(api, settings=FAST)
        starting = asyncio.create_task(index.start())
        await asyncio.sleep(0.3)
        assert not starting.done()
        await index.stop()
        await asyncio.wait_for(starting, 5)
        assert not index.ready
