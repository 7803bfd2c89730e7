"""The metadata cache explicit targeting reads (reconciler.metadata), on the real kube-apiserver.

notification-controller reads a Receiver's resources as ``PartialObjectMetadata`` through
controller-runtime's cached client (``internal/server/receiver_handlers.go``: ``kubeClient``
is ``mgr.GetClient()`` in ``main.go``), so its lookups cost no request once a kind is cached.
These tests hold fluxrelay's cache to the same: the server sends metadata only, the cache
follows creations, label changes and deletions, keeps to its shard, lets a version the server
does not serve fall back to reads, and a burst of deliveries for a Receiver naming many
objects reads nothing from the API. The coalescer reads the same cache to let another
replica's request cover deliveries stored before it, and sends its patch on condition of the
resource version it decided on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s_client

from reconciler.coalescing import Coalescer
from reconciler.kinds import KINDS, REQUESTED_AT, SHARD_LABEL, ObjectRef
from reconciler.metadata import MetadataCache
from reconciler.metrics import ReconcilerMetrics
from reconciler.patching import LastRequest, Patcher, Position, rfc3339_nano
from reconciler.receivers import ReceiverBook
from reconciler.settings import PatchSettings
from reconciler.throttling import ApiGate
from runtime.informer import custom_objects, read_events, read_json
from schemas.envelope import validate
from schemas.receivers import parse_receiver
from tests.reconciler.conftest import (
    annotations_of,
    flux_object,
    make_envelope,
    receiver_manifest,
    wait_for,
)
from tests.reconciler.test_targeting import api_reads, targeter
from tests.support.kubeapi import KubeAPI

KS = KINDS["Kustomization"]


def gauge(metrics: ReconcilerMetrics, kind: str) -> float | None:
    return metrics.registry.get_sample_value("fluxrelay_reconciler_cached_objects", {"kind": kind})


async def test_the_server_sends_metadata_only(
    kube: KubeAPI, kube_namespace: str, kube_client: k8s_client.ApiClient
) -> None:
    """Lists and watch events both come as PartialObjectMetadata: no spec, no status."""
    kube.apply(flux_object("Kustomization", "apps", {"team": "red"}), namespace=kube_namespace)
    call = custom_objects(
        kube_client, KS.group, KS.version, KS.plural, namespace=kube_namespace, metadata_only=True
    )
    listing = await read_json(await call(_preload_content=False))
    assert listing["kind"] == "PartialObjectMetadataList"
    [item] = listing["items"]
    assert item["metadata"]["labels"] == {"team": "red"}
    assert "spec" not in item and "status" not in item

    kube.apply(flux_object("Kustomization", "apps", {"team": "blue"}), namespace=kube_namespace)
    resp = await call(
        watch=True,
        resource_version=listing["metadata"]["resourceVersion"],
        timeout_seconds=2,
        _preload_content=False,
    )
    events = [event async for event in read_events(resp.content, 1 << 20)]
    resp.release()
    [modified] = [e for e in events if e["type"] == "MODIFIED"]
    assert modified["object"]["kind"] == "PartialObjectMetadata"
    assert modified["object"]["metadata"]["labels"] == {"team": "blue"}
    assert "spec" not in modified["object"]


async def test_the_cache_follows_the_cluster_within_its_shard(
    kube: KubeAPI, kube_namespace: str, kube_client: k8s_client.ApiClient
) -> None:
    ns = kube_namespace
    kube.apply(flux_object("Kustomization", "apps", {"team": "red"}), namespace=ns)
    kube.apply(flux_object("Kustomization", "other", {SHARD_LABEL: "s1"}), namespace=ns)
    metrics = ReconcilerMetrics()
    cache = MetadataCache(kube_client, metrics, namespace=ns)
    apps = ObjectRef.of("Kustomization", ns, "apps")
    probe = ObjectRef.of("Kustomization", ns, "*")
    try:
        assert cache.get(apps) is None  # not listed yet: the caller reads the API
        async with asyncio.timeout(30):
            await cache.listed(apps)
        entry = cache.get(apps)
        assert entry is not None
        assert entry["apiVersion"] == KS.api_version and entry["kind"] == "Kustomization"
        assert entry["metadata"]["labels"] == {"team": "red"}
        assert "managedFields" not in entry["metadata"] and "spec" not in entry
        assert cache.get(ObjectRef.of("Kustomization", ns, "other")) is None  # shard s1
        assert gauge(metrics, "Kustomization") == 1

        def selected(labels: dict[str, Any]) -> list[str]:
            return sorted(o["metadata"]["name"] for o in cache.select(probe, labels) or [])

        kube.apply(flux_object("Kustomization", "apps", {"team": "blue"}), namespace=ns)
        await wait_for(lambda: selected({"team": "blue"}) == ["apps"], "the label change")
        assert selected({"team": "red"}) == []

        kube.apply(flux_object("Kustomization", "late", {"team": "blue"}), namespace=ns)
        await wait_for(lambda: selected({"team": "blue"}) == ["apps", "late"], "the creation")
        assert gauge(metrics, "Kustomization") == 2

        kube.request("DELETE", f"/apis/{KS.group}/{KS.version}/namespaces/{ns}/{KS.plural}/late")
        await wait_for(
            lambda: cache.get(ObjectRef.of("Kustomization", ns, "late")) is None, "the deletion"
        )
        assert gauge(metrics, "Kustomization") == 1
    finally:
        await cache.close()


async def test_a_version_not_served_lists_empty_and_falls_back_to_reads(
    kube: KubeAPI, kube_namespace: str, kube_client: k8s_client.ApiClient
) -> None:
    """Flux's Get fails for a version its CRD does not serve; so does the fallback read."""
    ns = kube_namespace
    kube.apply(flux_object("Kustomization", "apps"), namespace=ns)
    resources = [{"apiVersion": f"{KS.group}/v9", "kind": "Kustomization", "name": "apps"}]
    book = ReceiverBook()
    book.replace([parse_receiver(receiver_manifest("hook", ns, resources), "test")])
    metrics = ReconcilerMetrics()
    cache = MetadataCache(kube_client, metrics, namespace=ns)
    t = targeter(kube_client, book, metadata=cache, metrics=metrics)
    try:
        async with asyncio.timeout(30):
            await cache.listed(ObjectRef.of("Kustomization", ns, "apps", f"{KS.group}/v9"))
        result = await t.targets(validate(make_envelope(ns, "hook")))
    finally:
        await t.close()
    assert result.refs == []
    assert [e.reason for e in result.failures] == ["not_found"]
    assert api_reads(metrics, "get") == 1


async def test_a_burst_for_a_receiver_naming_many_objects_reads_no_api(
    kube: KubeAPI, kube_namespace: str, kube_client: k8s_client.ApiClient
) -> None:
    """The soak's shape: one Receiver names many objects, deliveries arrive faster than the
    API budget could read them. Once the kind is listed, 300 deliveries read nothing."""
    ns = kube_namespace
    names = [f"app-{i:02d}" for i in range(40)]
    for name in names:
        kube.apply(flux_object("Kustomization", name, {"tier": "web"}), namespace=ns)
    resources: list[dict[str, Any]] = [
        {"apiVersion": KS.api_version, "kind": "Kustomization", "name": name} for name in names
    ]
    resources.append(
        {
            "apiVersion": KS.api_version,
            "kind": "Kustomization",
            "name": "*",
            "matchLabels": {"tier": "web"},
        }
    )
    book = ReceiverBook()
    book.replace([parse_receiver(receiver_manifest("hook", ns, resources), "test")])
    metrics = ReconcilerMetrics()
    cache = MetadataCache(kube_client, metrics)
    t = targeter(kube_client, book, metadata=cache, metrics=metrics)
    try:
        async with asyncio.timeout(30):
            await cache.listed(ObjectRef.of("Kustomization", ns, "-"))
        results = await asyncio.gather(
            *(t.targets(validate(make_envelope(ns, "hook"))) for _ in range(300))
        )
    finally:
        await t.close()
    assert all(sorted(r.name for r in result.refs) == names for result in results)
    assert api_reads(metrics, "get") == 0
    assert api_reads(metrics, "list") == 0


@contextlib.asynccontextmanager
async def apps_kept(
    kube: KubeAPI, namespace: str, client: k8s_client.ApiClient, metrics: ReconcilerMetrics
) -> AsyncIterator[tuple[ObjectRef, MetadataCache]]:
    """The Kustomization ``apps`` in ``namespace``, and a metadata cache that has listed it
    (closed on the way out)."""
    kube.apply(flux_object("Kustomization", "apps"), namespace=namespace)
    ref = ObjectRef.of("Kustomization", namespace, "apps")
    cache = MetadataCache(client, metrics, namespace=namespace)
    try:
        async with asyncio.timeout(30):
            await cache.listed(ref)
        yield ref, cache
    finally:
        await cache.close()


async def test_another_replicas_request_seen_by_the_watch_covers_older_deliveries(
    kube: KubeAPI, kube_namespace: str, kube_client: k8s_client.ApiClient
) -> None:
    """Two replicas of one durable each get deliveries for every object. Replica B's patch
    (here: the same merge patch, sent by a Patcher) reaches replica A's cache through the
    watch, and A's batch of deliveries stored before it is not patched again; a delivery
    stored after it is."""
    ns = kube_namespace
    metrics = ReconcilerMetrics()
    gate = ApiGate(PatchSettings(), metrics)
    async with apps_kept(kube, ns, kube_client, metrics) as (ref, cache):
        patcher = Patcher(kube_client, gate, metrics)
        coalescer = Coalescer(
            patcher.patch, 0.0, metrics, admit=gate.admit, last_request=cache.last_request
        )
        try:
            before = time.time() - 2.0  # stored, then replica B requested a reconcile:
            other = await Patcher(kube_client, gate, ReconcilerMetrics()).patch(
                ref, [validate(make_envelope(ns, "hook"))]
            )
            await wait_for(
                lambda: (
                    (cache.last_request(ref) or LastRequest(None, None)).requested_at
                    == other.requested_at
                ),
                "B's request",
            )
            covered = await coalescer.submit(ref, validate(make_envelope(ns, "hook")), before)
            assert covered.covered and covered.requested_at == other.requested_at
            assert (
                metrics.registry.get_sample_value(
                    "fluxrelay_reconciler_patches_total", {"kind": "Kustomization", "result": "ok"}
                )
                is None
            )

            # a delivery stored after B's request (within the clock margin) needs its own
            own = await coalescer.submit(ref, validate(make_envelope(ns, "hook")), time.time())
            assert not own.covered and own.requested_at != other.requested_at
        finally:
            await coalescer.close()


def test_a_label_selection_looks_at_one_namespace_only() -> None:
    """A wildcard Receiver's delivery selects among its namespace's objects: with 20,000
    objects of the kind elsewhere in the cluster it looks at the three in its own (objects
    are kept by namespace; the first version scanned the whole kind for every delivery,
    time in proportion to the cluster's size). No API server: a listed collection is put in
    place, as a complete list leaves it."""
    from reconciler.metadata import _Collection

    def obj(namespace: str, name: str, team: str) -> dict[str, Any]:
        return {"metadata": {"namespace": namespace, "name": name, "labels": {"team": team}}}

    collection = _Collection(KS.kind, f"{KS.group}/{KS.version}")
    for i in range(20_000):
        collection.put(obj(f"tenant-{i % 500}", f"app-{i}", "red"))
    for name, team in (("a", "red"), ("b", "red"), ("c", "blue")):
        collection.put(obj("apps", name, team))
    collection.listed.set()
    unused: Any = None
    cache = MetadataCache(unused, ReconcilerMetrics())
    cache._collections[(KS.group, KS.version, KS.plural)] = collection
    probe = ObjectRef.of("Kustomization", "apps", "*")

    looked_at: list[str] = []
    real_get = dict.get

    class Counting(dict[str, Any]):
        def get(self, key: str, default: Any = None) -> Any:
            looked_at.append(key)
            return real_get(self, key, default)

    for names in collection.namespaces.values():
        for name, held in names.items():
            names[name] = {
                "metadata": {**held["metadata"], "labels": Counting(held["metadata"]["labels"])}
            }
    selected = cache.select(probe, {"team": "red"})
    assert selected is not None
    assert sorted(o["metadata"]["name"] for o in selected) == ["a", "b"]
    assert len(looked_at) == 3  # one label read per object of the namespace, none elsewhere
    assert len(cache) == 20_003
    collection.put(obj("apps", "a", "blue"))  # an update is not a second object
    assert len(cache) == 20_003
    for name in ("a", "b", "c", "never-held"):
        collection.drop(obj("apps", name, "red"))
    assert cache.select(probe, {"team": "red"}) == [] and len(cache) == 20_000
    assert "apps" not in collection.namespaces


@pytest.mark.parametrize("conditional", [True, False], ids=["on-condition", "control-without"])
async def test_two_replicas_requesting_for_one_message_at_once_make_one_request(
    kube: KubeAPI, kube_namespace: str, kube_client: k8s_client.ApiClient, conditional: bool
) -> None:
    """The long soak's other double request: replica A works on a message (its patch waiting
    out an API outage) while the server, after a stream leader change, hands it to replica B
    as well. Both decide on what their watch showed before either request landed. B's lands
    first; A's, sent on condition of the version it decided on, is refused (409), and A reads
    the object and finds B's request covers the message. The control sends A's without the
    condition: two requests."""
    ns = kube_namespace
    metrics = ReconcilerMetrics()
    gate = ApiGate(PatchSettings(), metrics)
    async with apps_kept(kube, ns, kube_client, metrics) as (ref, cache):
        seen_before = cache.last_request(ref)
        assert seen_before is not None and seen_before.resource_version is not None
        frozen = seen_before if conditional else seen_before._replace(resource_version=None)
        patcher = Patcher(kube_client, gate, metrics)
        coalescer = Coalescer(patcher.patch, 0.0, metrics, last_request=lambda _: frozen)
        stored = time.time() - 40.0  # the message, stored before the outage
        position = Position(17, rfc3339_nano(time.time_ns()))
        message = validate(make_envelope(ns, "hook"))
        b = await Patcher(kube_client, gate, ReconcilerMetrics()).patch(
            ref, [message], through=position
        )
        a = await coalescer.submit(ref, message, stored, position)
        now = annotations_of(kube, ns, "Kustomization", "apps")[REQUESTED_AT]
        if conditional:
            assert a.covered and a.requested_at == b.requested_at == now
            assert metrics.conflicts._value.get() == 1
        else:
            assert not a.covered and now == a.requested_at != b.requested_at
            assert metrics.conflicts._value.get() == 0


async def test_a_request_s_answer_replaces_what_the_cache_holds_and_adds_nothing(
    kube: KubeAPI, kube_namespace: str, kube_client: k8s_client.ApiClient
) -> None:
    """``MetadataCache.saw``: the object as a patch answered is held at once (the next patch
    is conditioned on the version this one made), but an object the cache does not hold (in
    another shard, deleted) is not added by it."""
    ns = kube_namespace
    async with apps_kept(kube, ns, kube_client, ReconcilerMetrics()) as (ref, cache):
        before = cache.last_request(ref)
        assert before is not None
        answer = {"metadata": {"name": "apps", "namespace": ns, "resourceVersion": "999999",
                               "annotations": {REQUESTED_AT: "now"}}}  # fmt: skip
        cache.saw(ref, answer)
        assert cache.last_request(ref) == LastRequest("now", None, "999999")
        elsewhere = ObjectRef.of("Kustomization", ns, "not-held")
        cache.saw(elsewhere, dict(answer, metadata=dict(answer["metadata"], name="not-held")))
        assert cache.get(elsewhere) is None and cache.last_request(elsewhere) is None
