"""Explicit targeting with Flux's Receiver semantics against the real kube-apiserver.

One table of named cases: named resources (default and explicit apiVersion), wildcard with
matchLabels (and without: refused, as Flux does), namespace defaulting and the
cross-namespace switch, ``spec.resourceFilter`` and a resource's ``filter`` over ``res``
and ``req`` (including the string extension Flux enables), sharding, unknown kinds and
missing objects, and automatic targeting through the source index interface.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s_client

from reconciler.decisions import NOT_FOUND, SHARD
from reconciler.errors import TemporaryError
from reconciler.kinds import (
    DEFAULT_API_VERSIONS,
    KINDS,
    SHARD_LABEL,
    ObjectRef,
    default_api_version,
)
from reconciler.metadata import MetadataCache
from reconciler.metrics import ReconcilerMetrics
from reconciler.receivers import ReceiverBook
from reconciler.settings import PatchSettings
from reconciler.targeting import TARGETING_ANNOTATION, Targeter
from reconciler.throttling import ApiGate
from schemas.envelope import validate
from schemas.receivers import parse_receiver
from tests.reconciler.conftest import flux_object, make_envelope, receiver_manifest
from tests.support.kubeapi import KubeAPI

OTHER_NS = "t-targeting-other"


@pytest.fixture
async def world(kube: KubeAPI, kube_namespace: str) -> AsyncIterator[str]:
    """Flux objects the cases target, in the test namespace and one other namespace."""
    objects = [
        flux_object("Kustomization", "apps", {"team": "red", "tier": "web"}),
        flux_object("Kustomization", "infra", {"team": "red"}),
        flux_object("Kustomization", "blue", {"team": "blue"}),
        flux_object("Kustomization", "sharded", {"team": "red", SHARD_LABEL: "s1"}),
        flux_object("GitRepository", "repo"),
    ]
    for obj in objects:
        kube.apply(obj, namespace=kube_namespace)
    for kind in ("OCIRepository", "ImageRepository", "ImagePolicy", "HelmRelease"):
        kube.apply(flux_object(kind, "podinfo"), namespace=kube_namespace)
    kube.create_namespace(f"{OTHER_NS}-{kube_namespace}")
    kube.apply(flux_object("Kustomization", "elsewhere"), namespace=f"{OTHER_NS}-{kube_namespace}")
    try:
        yield kube_namespace
    finally:
        kube.delete_namespace(f"{OTHER_NS}-{kube_namespace}")


@dataclass
class Case:
    resources: list[dict[str, Any]]
    expected: list[str]
    """``Kind/name`` (namespace ``@other`` for the other namespace)."""
    failures: list[str] = field(default_factory=list)
    """Reasons of resource entries that failed for good."""
    resource_filter: str | None = None
    payload: Any = None
    shard: str | None = None
    cross_namespace: bool = True


CASES = [
    pytest.param(
        Case(
            [
                {
                    "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
                    "kind": "Kustomization",
                    "name": "apps",
                }
            ],
            ["Kustomization/apps"],
        ),
        id="named",
    ),
    pytest.param(
        Case(
            [
                {
                    "kind": "OCIRepository",
                    "name": "podinfo",
                    "apiVersion": "source.toolkit.fluxcd.io/v1",
                }
            ],
            ["OCIRepository/podinfo"],
        ),
        id="named-explicit-api-version",
    ),
    pytest.param(
        Case(
            [
                {"kind": "ImageRepository", "name": "podinfo"},
                {"kind": "OCIRepository", "name": "podinfo"},
            ],
            ["ImageRepository/podinfo", "OCIRepository/podinfo"],
        ),
        id="defaultable-kinds-resolve-to-the-served-version",
    ),
    pytest.param(
        Case(
            [
                {"kind": "Kustomization", "name": "apps"},
                {"kind": "HelmRelease", "name": "podinfo"},
                {"kind": "ImagePolicy", "name": "podinfo"},
                {"kind": "GitRepository", "name": "repo"},
            ],
            ["GitRepository/repo"],
            ["missing_api_version"] * 3,
        ),
        id="flux-Test_handlePayload-missing-apiVersion-in-resource",
    ),
    pytest.param(
        Case(
            [
                {
                    "kind": "ImagePolicy",
                    "name": "podinfo",
                    "apiVersion": "image.toolkit.fluxcd.io/v1beta2",
                }
            ],
            [],
            ["not_found"],
        ),
        id="removed-api-version-is-not-found",
    ),
    pytest.param(
        Case(
            [
                {
                    "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
                    "kind": "Kustomization",
                    "name": "*",
                    "matchLabels": {"team": "red"},
                }
            ],
            ["Kustomization/apps", "Kustomization/infra"],
        ),
        id="wildcard-match-labels-skips-other-shards",
    ),
    pytest.param(
        Case(
            [
                {
                    "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
                    "kind": "Kustomization",
                    "name": "*",
                    "matchLabels": {"team": "red", "tier": "web"},
                }
            ],
            ["Kustomization/apps"],
        ),
        id="wildcard-labels-are-anded",
    ),
    pytest.param(
        Case(
            [
                {
                    "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
                    "kind": "Kustomization",
                    "name": "*",
                    "matchLabels": {"team": "red"},
                }
            ],
            ["Kustomization/sharded"],
            shard="s1",
        ),
        id="wildcard-in-a-shard",
    ),
    pytest.param(
        Case(
            [
                {
                    "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
                    "kind": "Kustomization",
                    "name": "sharded",
                }
            ],
            [],
            shard=None,
        ),
        id="named-object-of-another-shard-is-skipped",
    ),
    pytest.param(
        Case(
            [
                {
                    "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
                    "kind": "Kustomization",
                    "name": "*",
                }
            ],
            [],
            ["wildcard_without_labels"],
        ),
        id="wildcard-without-labels-is-refused",
    ),
    pytest.param(
        Case(
            [
                {
                    "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
                    "kind": "Kustomization",
                    "name": "apps",
                },
                {"kind": "GitRepository", "name": "repo"},
            ],
            ["GitRepository/repo", "Kustomization/apps"],
        ),
        id="several-resources",
    ),
    pytest.param(
        Case(
            [
                {
                    "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
                    "kind": "Kustomization",
                    "name": "missing",
                },
                {"kind": "GitRepository", "name": "repo"},
            ],
            ["GitRepository/repo"],
            ["not_found"],
        ),
        id="missing-object-fails-alone",
    ),
    pytest.param(
        Case([{"kind": "Secret", "name": "x"}], [], ["unknown_kind"]), id="not-a-flux-kind"
    ),
    pytest.param(
        Case(
            [
                {
                    "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
                    "kind": "Kustomization",
                    "name": "elsewhere",
                    "namespace": "@other",
                }
            ],
            ["Kustomization/elsewhere@other"],
        ),
        id="cross-namespace-allowed",
    ),
    pytest.param(
        Case(
            [
                {
                    "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
                    "kind": "Kustomization",
                    "name": "elsewhere",
                    "namespace": "@other",
                }
            ],
            [],
            ["cross_namespace"],
            cross_namespace=False,
        ),
        id="cross-namespace-forbidden",
    ),
    pytest.param(
        Case(
            [
                {
                    "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
                    "kind": "Kustomization",
                    "name": "*",
                    "matchLabels": {"team": "red"},
                }
            ],
            ["Kustomization/infra"],
            resource_filter="res.metadata.name == 'infra'",
        ),
        id="resource-filter-on-res",
    ),
    pytest.param(
        Case(
            [
                {
                    "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
                    "kind": "Kustomization",
                    "name": "apps",
                }
            ],
            [],
            resource_filter="req.ref == 'refs/heads/release'",
            payload={"ref": "refs/heads/main"},
        ),
        id="resource-filter-on-req-false",
    ),
    pytest.param(
        Case(
            [
                {
                    "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
                    "kind": "Kustomization",
                    "name": "apps",
                }
            ],
            ["Kustomization/apps"],
            resource_filter="req.ref.split('/')[2] == 'main' && has(res.metadata.labels)",
            payload={"ref": "refs/heads/main"},
        ),
        id="resource-filter-string-extension",
    ),
    pytest.param(
        Case(
            [
                {
                    "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
                    "kind": "Kustomization",
                    "name": "*",
                    "matchLabels": {"team": "red"},
                    "filter": "'tier' in res.metadata.labels && res.metadata.labels.tier == 'web'",
                },
                {"kind": "GitRepository", "name": "repo", "filter": "req.image == 'x'"},
            ],
            ["Kustomization/apps"],
            ["filter_error"],
            payload={"ref": "r"},
        ),
        id="per-resource-filter-and-eval-error",
    ),
    pytest.param(
        Case(
            [
                {
                    "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
                    "kind": "Kustomization",
                    "name": "apps",
                }
            ],
            [],
            ["filter_not_bool"],
            resource_filter="res.metadata.name",
        ),
        id="filter-must-return-a-boolean",
    ),
    pytest.param(
        Case(
            [
                {
                    "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
                    "kind": "Kustomization",
                    "name": "apps",
                }
            ],
            [],
            ["filter_invalid"],
            resource_filter="res.metadata.name ===",
        ),
        id="filter-must-compile",
    ),
]


def targeter(api: k8s_client.ApiClient, book: ReceiverBook, **kwargs: Any) -> Targeter:
    metrics = kwargs.pop("metrics", None) or ReconcilerMetrics()
    return Targeter(
        api,
        ApiGate(PatchSettings(), metrics),
        book,
        metrics,
        shard=kwargs.pop("shard", None),
        allow_cross_namespace=kwargs.pop("allow_cross_namespace", True),
        cache_ttl=1.0,
        **kwargs,
    )


async def warm(cache: MetadataCache, refs: list[ObjectRef]) -> None:
    """Start keeping each kind of ``refs`` and wait until all are listed."""
    async with asyncio.timeout(30):
        await asyncio.gather(*(cache.listed(ref) for ref in refs))


def api_reads(metrics: ReconcilerMetrics, verb: str) -> float:
    return sum(
        sample.value
        for family in metrics.registry.collect()
        if family.name == "fluxrelay_reconciler_api_requests"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels["verb"] == verb
    )


@pytest.mark.parametrize("lookups", ["api", "cache"])
@pytest.mark.parametrize("case", CASES)
async def test_explicit_targeting(
    case: Case, lookups: str, world: str, kube_client: k8s_client.ApiClient
) -> None:
    """Each case gives the same answer whether objects are read from the API (before their
    kind is listed) or from the metadata cache; from the cache, only the objects it does not
    hold (missing, or in another shard) are read, and a wildcard lists nothing."""
    namespace = world
    other = f"{OTHER_NS}-{namespace}"
    resources = [
        {**r, "namespace": other} if r.get("namespace") == "@other" else r for r in case.resources
    ]
    manifest = receiver_manifest("hook", namespace, resources, resource_filter=case.resource_filter)
    book = ReceiverBook()
    book.replace([parse_receiver(manifest, "test")])
    metrics = ReconcilerMetrics()
    cache = None
    if lookups == "cache":
        cache = MetadataCache(kube_client, metrics, shard=case.shard)
        named = [
            ObjectRef.of(
                r["kind"], namespace, "-", r.get("apiVersion") or default_api_version(r["kind"])
            )
            for r in resources
            if r.get("kind") in KINDS and (r.get("apiVersion") or default_api_version(r["kind"]))
        ]
        await warm(cache, named)
    t = targeter(
        kube_client,
        book,
        shard=case.shard,
        allow_cross_namespace=case.cross_namespace,
        metadata=cache,
        metrics=metrics,
    )
    try:
        result = await t.targets(validate(make_envelope(namespace, "hook", case.payload)))
    finally:
        await t.close()
    if lookups == "cache":
        assert api_reads(metrics, "list") == 0
        fallbacks = [d for d in result.decisions.kept if d.reason in (NOT_FOUND, SHARD)]
        assert api_reads(metrics, "get") == len(
            [d for d in fallbacks if not d.target.endswith("/*")]
        )
    got = sorted(
        f"{ref.kind}/{ref.name}" + ("@other" if ref.namespace == other else "")
        for ref in result.refs
    )
    assert got == sorted(case.expected)
    assert sorted(e.reason for e in result.failures) == sorted(case.failures)


def test_only_notification_controllers_defaults_resolve_without_api_version() -> None:
    """The same table as notification-controller v1.9.3's ``defaultFluxAPIVersions``, each
    entry the version its CRD serves; every other targetable kind has no default."""
    assert DEFAULT_API_VERSIONS == {
        "Bucket": "source.toolkit.fluxcd.io/v1",
        "HelmChart": "source.toolkit.fluxcd.io/v1",
        "HelmRepository": "source.toolkit.fluxcd.io/v1",
        "GitRepository": "source.toolkit.fluxcd.io/v1",
        "OCIRepository": "source.toolkit.fluxcd.io/v1",
        "ImageRepository": "image.toolkit.fluxcd.io/v1",
        "ArtifactGenerator": "source.extensions.fluxcd.io/v1beta1",
    }
    for kind, known in KINDS.items():
        assert default_api_version(kind) in (None, known.api_version)
    assert {k for k in KINDS if default_api_version(k) is None} == {
        "Kustomization",
        "HelmRelease",
        "ImagePolicy",
        "ImageUpdateAutomation",
        "ExternalArtifact",
    }


async def test_an_unknown_receiver_is_a_temporary_failure(
    world: str, kube_client: k8s_client.ApiClient
) -> None:
    t = targeter(kube_client, ReceiverBook())
    with pytest.raises(TemporaryError) as caught:
        await t.targets(validate(make_envelope(world, "nobody")))
    assert caught.value.reason == "unknown_receiver"
    await t.close()


class FakeIndex:
    """Stands in for reconciler.indexing.SourceIndex (tested by its own suite) to check the
    integration seam: built lazily, asked only when ready, results merged with explicit."""

    built = 0

    def __init__(self, refs: list[ObjectRef]) -> None:
        self.refs = refs
        self._ready = False
        self.seen: list[Mapping[str, Any]] = []
        FakeIndex.built += 1

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        self._ready = True

    async def stop(self) -> None:
        self._ready = False

    def match(self, envelope: Mapping[str, Any]) -> list[ObjectRef]:
        self.seen.append(envelope)
        return self.refs


async def test_auto_targeting_adds_the_source_index_matches(
    world: str, kube_client: k8s_client.ApiClient
) -> None:
    auto_ref = ObjectRef.of("GitRepository", world, f"auto-{uuid.uuid4().hex[:4]}")
    indexes: list[FakeIndex] = []

    def factory() -> FakeIndex:
        indexes.append(FakeIndex([auto_ref]))
        return indexes[-1]

    manifest = receiver_manifest(
        "hook",
        world,
        [{"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization", "name": "apps"}],
        annotations={TARGETING_ANNOTATION: "auto"},
    )
    plain = receiver_manifest(
        "plain",
        world,
        [{"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization", "name": "apps"}],
    )
    book = ReceiverBook()
    book.replace([parse_receiver(manifest, "test"), parse_receiver(plain, "test")])
    t = targeter(kube_client, book, index_factory=factory)
    envelope = validate(make_envelope(world, "hook"))
    try:
        assert (await t.targets(validate(make_envelope(world, "plain")))).refs[0].name == "apps"
        assert indexes == []  # not built while no Receiver asks for it
        with pytest.raises(TemporaryError) as caught:  # built now, not listed yet
            await t.targets(envelope)
        assert caught.value.reason == "index_warming"
        await t._index_starting  # type: ignore[misc]
        result = await t.targets(envelope)
    finally:
        await t.close()
    assert len(indexes) == 1
    assert sorted(r.name for r in result.refs) == sorted(["apps", auto_ref.name])
    assert indexes[0].seen[-1]["id"] == envelope["id"]
