"""Proves the real-Kubernetes test harness: API server, CRDs, fault proxy and Flux stand-in.

Everything here runs against a real kube-apiserver v1.20.2 + etcd (tests/support/kubeapi.py).
Where Flux's reaction is needed, the Flux controller stand-in (tests/support/fluxstandin.py)
writes status the way Flux would; no real Flux controller runs.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio.client.exceptions import ApiException

from reconciler.kinds import KINDS
from tests.support.faultproxy import FaultProxy, FaultProxyThread
from tests.support.fluxobjects import API_VERSIONS, flux_spec
from tests.support.fluxstandin import (
    ARTIFACT_GENERATOR,
    EXTERNAL_ARTIFACT,
    GIT_REPOSITORY,
    HELM_RELEASE,
    KUSTOMIZATION,
    OCI_REPOSITORY,
    OUTCOME_LABEL,
    RECONCILED_KINDS,
    FluxKind,
    FluxStandIn,
    Outcome,
)
from tests.support.kubeapi import CRD_DIR, MERGE_PATCH, FluxCRDsMissing, KubeAPI, load_crds

pytestmark = pytest.mark.kube

KS_GROUP, KS_VERSION, KS_PLURAL = "kustomize.toolkit.fluxcd.io", "v1", "kustomizations"
REQUESTED_AT = "reconcile.fluxcd.io/requestedAt"


def kustomization(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": f"{KS_GROUP}/{KS_VERSION}",
        "kind": "Kustomization",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "interval": "10m",
            "path": "./deploy",
            "prune": True,
            "sourceRef": {"kind": "GitRepository", "name": "flux-system"},
        },
    }


async def create_kustomization(
    api: k8s_client.ApiClient, namespace: str, name: str, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    created: dict[str, Any] = await k8s_client.CustomObjectsApi(
        api
    ).create_namespaced_custom_object(
        KS_GROUP, KS_VERSION, namespace, KS_PLURAL, kustomization(name, labels)
    )
    return created


async def request_reconcile(
    api: k8s_client.ApiClient, namespace: str, name: str, at: str
) -> dict[str, Any]:
    patched: dict[str, Any] = await k8s_client.CustomObjectsApi(api).patch_namespaced_custom_object(
        KS_GROUP,
        KS_VERSION,
        namespace,
        KS_PLURAL,
        name,
        {"metadata": {"annotations": {REQUESTED_AT: at}}},
        **MERGE_PATCH,
    )
    return patched


# ------------------------------------------------------------------------------ API server


def test_apiserver_is_ready_and_is_v1_20(kube: KubeAPI) -> None:
    status, body = kube.request("GET", "/readyz", expect=None)
    assert status == 200
    assert body == "ok"
    _, version = kube.request("GET", "/version")
    assert version["gitVersion"].startswith("v1.20.2")


SERVED = {
    **API_VERSIONS,
    "Alert": "notification.toolkit.fluxcd.io/v1beta3",
    "Provider": "notification.toolkit.fluxcd.io/v1beta3",
}


def test_fluxs_own_crds_are_established_and_serve_one_version_each(kube: KubeAPI) -> None:
    """The 15 CRDs are Flux's released ones, each serving the version the reconciler uses."""
    crds = load_crds()
    assert {c["spec"]["names"]["kind"]: c["spec"]["group"] for c in crds} == {
        kind: api.rsplit("/", 1)[0] for kind, api in SERVED.items()
    }
    for crd in crds:
        [version] = [v for v in crd["spec"]["versions"] if v.get("served")]
        kind = crd["spec"]["names"]["kind"]
        assert f"{crd['spec']['group']}/{version['name']}" == SERVED[kind]
        if kind in KINDS:
            assert KINDS[kind].api_version == SERVED[kind]
        _, live = kube.request(
            "GET",
            f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}",
        )
        established = [c for c in live["status"]["conditions"] if c["type"] == "Established"]
        assert established
        assert established[0]["status"] == "True"
        for version in crd["spec"]["versions"]:
            _, discovery = kube.request("GET", f"/apis/{crd['spec']['group']}/{version['name']}")
            served = {r["name"] for r in discovery["resources"]}
            plural = crd["spec"]["names"]["plural"]
            with_status = crd["spec"]["names"]["kind"] not in ("Alert", "Provider")
            assert {plural, f"{plural}/status"} <= served or not with_status
            assert plural in served


def test_missing_flux_crds_fail_with_a_clear_message(tmp_path: Path) -> None:
    """Never a skip and never a silent fallback to stand-ins: the run says where they belong."""
    with pytest.raises(FluxCRDsMissing, match=r"\.\./shared/flux-crds"):
        load_crds(tmp_path / "flux-crds")
    assert CRD_DIR.parts[-2:] == ("shared", "flux-crds")


def test_unauthenticated_requests_are_rejected(kube: KubeAPI) -> None:
    status, _ = kube.request("GET", "/api/v1/namespaces", token="not-a-token", expect=None)
    assert status == 401


async def test_merge_patch_sets_requested_at_annotation(
    kube_client: k8s_client.ApiClient, kube_namespace: str
) -> None:
    await create_kustomization(kube_client, kube_namespace, "apps")
    api = k8s_client.CustomObjectsApi(kube_client)
    patched = await api.patch_namespaced_custom_object(
        KS_GROUP,
        KS_VERSION,
        kube_namespace,
        KS_PLURAL,
        "apps",
        {"metadata": {"annotations": {REQUESTED_AT: "2025-01-01T00:00:00Z"}}},
        **MERGE_PATCH,
    )
    assert patched["metadata"]["annotations"][REQUESTED_AT] == "2025-01-01T00:00:00Z"
    assert patched["spec"]["path"] == "./deploy"  # merge patch kept the rest


async def test_dict_patch_without_content_type_is_rejected_by_the_real_server(
    kube_client: k8s_client.ApiClient, kube_namespace: str
) -> None:
    """The trap: kubernetes-asyncio sends a dict body as JSON Patch unless told otherwise.

    ``patch_namespaced_custom_object`` picks ``application/json-patch+json`` for custom objects;
    a JSON Patch must be a list of operations, so the real server refuses a merge-patch dict.
    Mocks such as kmock accept it, which is why this runs against a real server.
    """
    await create_kustomization(kube_client, kube_namespace, "apps")
    api = k8s_client.CustomObjectsApi(kube_client)
    with pytest.raises(ApiException) as caught:
        await api.patch_namespaced_custom_object(
            KS_GROUP,
            KS_VERSION,
            kube_namespace,
            KS_PLURAL,
            "apps",
            {"metadata": {"annotations": {REQUESTED_AT: "2025-01-01T00:00:00Z"}}},
        )
    assert caught.value.status == 400
    current = await api.get_namespaced_custom_object(
        KS_GROUP, KS_VERSION, kube_namespace, KS_PLURAL, "apps"
    )
    assert REQUESTED_AT not in (current["metadata"].get("annotations") or {})


async def test_label_selector_filters_custom_objects(
    kube_client: k8s_client.ApiClient, kube_namespace: str
) -> None:
    await create_kustomization(kube_client, kube_namespace, "a", {"team": "red", "tier": "web"})
    await create_kustomization(kube_client, kube_namespace, "b", {"team": "red"})
    await create_kustomization(kube_client, kube_namespace, "c", {"team": "blue"})
    api = k8s_client.CustomObjectsApi(kube_client)

    async def names(selector: str) -> set[str]:
        listing = await api.list_namespaced_custom_object(
            KS_GROUP, KS_VERSION, kube_namespace, KS_PLURAL, label_selector=selector
        )
        return {item["metadata"]["name"] for item in listing["items"]}

    assert await names("team=red") == {"a", "b"}
    assert await names("team=red,tier=web") == {"a"}
    assert await names("team!=red") == {"c"}
    assert await names("team in (blue,green)") == {"c"}


async def test_status_subresource_ignores_status_on_main_resource(
    kube_client: k8s_client.ApiClient, kube_namespace: str
) -> None:
    await create_kustomization(kube_client, kube_namespace, "apps")
    api = k8s_client.CustomObjectsApi(kube_client)
    await api.patch_namespaced_custom_object(
        KS_GROUP,
        KS_VERSION,
        kube_namespace,
        KS_PLURAL,
        "apps",
        {"status": {"lastHandledReconcileAt": "ignored"}},
        **MERGE_PATCH,
    )
    through_status = await api.patch_namespaced_custom_object_status(
        KS_GROUP,
        KS_VERSION,
        kube_namespace,
        KS_PLURAL,
        "apps",
        {"status": {"lastHandledReconcileAt": "kept"}},
        **MERGE_PATCH,
    )
    assert through_status["status"]["lastHandledReconcileAt"] == "kept"


@pytest.mark.parametrize(
    ("api_version", "plural"),
    [
        ("source.toolkit.fluxcd.io/v1beta2", "ocirepositories"),
        ("image.toolkit.fluxcd.io/v1beta2", "imagerepositories"),
        ("kustomize.toolkit.fluxcd.io/v1beta2", "kustomizations"),
        ("helm.toolkit.fluxcd.io/v2beta2", "helmreleases"),
    ],
)
def test_removed_flux_versions_answer_404(
    kube: KubeAPI, kube_namespace: str, api_version: str, plural: str
) -> None:
    """What a client still using a removed version meets on a current Flux cluster."""
    status, _ = kube.request(
        "GET", f"/apis/{api_version}/namespaces/{kube_namespace}/{plural}", expect=None
    )
    assert status == 404


def test_real_schemas_refuse_an_scp_git_url_and_prune_unknown_fields(
    kube: KubeAPI, kube_namespace: str
) -> None:
    """Flux's GitRepository accepts ``ssh://`` only, and no unknown spec field survives."""
    repo: dict[str, Any] = {
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "GitRepository",
        "metadata": {"name": "fleet", "namespace": kube_namespace},
        "spec": {"url": "git@github.com:org/fleet.git", "interval": "5m"},
    }
    collection = f"/apis/source.toolkit.fluxcd.io/v1/namespaces/{kube_namespace}/gitrepositories"
    status, _ = kube.request("POST", collection, repo, expect=None)
    assert status == 422
    repo["spec"] = {"url": "ssh://git@github.com/org/fleet", "interval": "5m", "bogus": 1}
    created = kube.apply(repo)
    assert "bogus" not in created["spec"]
    assert created["status"] == {"observedGeneration": -1}  # defaulted on create


def test_apply_replaces_an_existing_object(kube: KubeAPI, kube_namespace: str) -> None:
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}}
    kube.apply({**config, "data": {"k": "1"}}, namespace=kube_namespace)
    kube.apply({**config, "data": {"k": "2"}}, namespace=kube_namespace)
    _, live = kube.request("GET", f"/api/v1/namespaces/{kube_namespace}/configmaps/cfg")
    assert live["data"] == {"k": "2"}


def test_deleted_namespace_is_gone_with_its_objects(kube: KubeAPI) -> None:
    kube.create_namespace("t-harness-cleanup")
    kube.apply(kustomization("apps"), namespace="t-harness-cleanup")
    kube.delete_namespace("t-harness-cleanup")
    status, _ = kube.request("GET", "/api/v1/namespaces/t-harness-cleanup", expect=None)
    assert status == 404
    status, _ = kube.request(
        "GET",
        f"/apis/{KS_GROUP}/{KS_VERSION}/namespaces/t-harness-cleanup/{KS_PLURAL}/apps",
        expect=None,
    )
    assert status == 404


async def test_restart_apiserver_keeps_data_and_ends_open_watches(
    kube: KubeAPI, kube_namespace: str
) -> None:
    kube.apply(kustomization("survivor"), namespace=kube_namespace)
    async with await kube.api_client() as api:
        custom = k8s_client.CustomObjectsApi(api)
        response = await custom.list_namespaced_custom_object(
            KS_GROUP,
            KS_VERSION,
            kube_namespace,
            KS_PLURAL,
            watch=True,
            timeout_seconds=60,
            _preload_content=False,
        )
        first = json.loads(await response.content.readline())
        assert first["type"] == "ADDED"
        old_pid = kube.apiserver_pid
        await asyncio.to_thread(kube.restart_apiserver)
        # The open watch stream ends when its server goes away: it does not hang.
        try:
            while await response.content.readline():
                pass
            assert response.content.at_eof()
        except aiohttp.ClientPayloadError:
            pass  # the server vanished in the middle of a chunk: also an end
        response.release()
        assert kube.apiserver_pid not in (None, old_pid)
        survivor = await custom.get_namespaced_custom_object(
            KS_GROUP, KS_VERSION, kube_namespace, KS_PLURAL, "survivor"
        )
    assert survivor["spec"]["path"] == "./deploy"


async def test_token_request_gives_a_service_account_that_rbac_restricts(
    kube: KubeAPI, kube_namespace: str
) -> None:
    token = kube.create_service_account_token(kube_namespace, "relay")
    subject = {"kind": "ServiceAccount", "name": "relay", "namespace": kube_namespace}
    kube.apply_manifests(
        [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "read-kustomizations"},
                "rules": [
                    {
                        "apiGroups": [KS_GROUP],
                        "resources": [KS_PLURAL],
                        "verbs": ["get", "list", "watch"],
                    }
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "relay-reads"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "read-kustomizations",
                },
                "subjects": [subject],
            },
        ],
        namespace=kube_namespace,
    )
    kube.apply(kustomization("apps"), namespace=kube_namespace)
    async with await kube.api_client(token=token) as api:
        custom = k8s_client.CustomObjectsApi(api)
        listing = await custom.list_namespaced_custom_object(
            KS_GROUP, KS_VERSION, kube_namespace, KS_PLURAL
        )
        assert [i["metadata"]["name"] for i in listing["items"]] == ["apps"]
        with pytest.raises(ApiException) as caught:
            await custom.patch_namespaced_custom_object(
                KS_GROUP,
                KS_VERSION,
                kube_namespace,
                KS_PLURAL,
                "apps",
                {"metadata": {"annotations": {REQUESTED_AT: "now"}}},
                **MERGE_PATCH,
            )
        assert caught.value.status == 403
        with pytest.raises(ApiException) as other_ns:
            await custom.list_namespaced_custom_object(KS_GROUP, KS_VERSION, "default", KS_PLURAL)
        assert other_ns.value.status == 403


# ------------------------------------------------------------------------------ fault proxy


async def test_proxy_forwards_and_records_requests(
    kube: KubeAPI, kube_namespace: str, kube_proxy: FaultProxy
) -> None:
    async with await kube.api_client(server=kube_proxy.url) as api:
        await create_kustomization(api, kube_namespace, "apps")
        patched = await request_reconcile(api, kube_namespace, "apps", "t1")
    assert patched["metadata"]["annotations"][REQUESTED_AT] == "t1"
    assert kube_proxy.count("POST", f"/{KS_PLURAL}$") == 1
    assert kube_proxy.count("PATCH") == 1
    (patch,) = kube_proxy.matching("PATCH", f"/{KS_PLURAL}/apps$")
    assert patch.content_type == "application/merge-patch+json"
    assert json.loads(patch.body) == {"metadata": {"annotations": {REQUESTED_AT: "t1"}}}
    assert patch.fault is None


async def test_proxy_injects_429_with_retry_after_then_recovers(
    kube: KubeAPI, kube_namespace: str, kube_proxy: FaultProxy
) -> None:
    kube.apply(kustomization("apps"), namespace=kube_namespace)
    kube_proxy.fail(429, times=2, retry_after=7, method="PATCH")
    async with await kube.api_client(server=kube_proxy.url) as api:
        for attempt in ("t1", "t2"):
            with pytest.raises(ApiException) as caught:
                await request_reconcile(api, kube_namespace, "apps", attempt)
            error = caught.value
            assert error.status == 429
            assert error.headers is not None
            assert error.body is not None
            assert error.headers["Retry-After"] == "7"
            assert json.loads(error.body)["details"]["retryAfterSeconds"] == 7
        patched = await request_reconcile(api, kube_namespace, "apps", "t3")
    assert patched["metadata"]["annotations"][REQUESTED_AT] == "t3"
    assert kube_proxy.count("PATCH") == 3
    assert kube_proxy.count("PATCH", forwarded=True) == 1
    assert [r.fault for r in kube_proxy.matching("PATCH")] == ["status:429", "status:429", None]


async def test_proxy_fails_with_500_until_cleared(
    kube: KubeAPI, kube_namespace: str, kube_proxy: FaultProxy
) -> None:
    kube.apply(kustomization("apps"), namespace=kube_namespace)
    kube_proxy.fail(500, times=None, method="GET", path=f"/{KS_PLURAL}/apps$")
    async with await kube.api_client(server=kube_proxy.url) as api:
        custom = k8s_client.CustomObjectsApi(api)
        for _ in range(3):
            with pytest.raises(ApiException) as caught:
                await custom.get_namespaced_custom_object(
                    KS_GROUP, KS_VERSION, kube_namespace, KS_PLURAL, "apps"
                )
            assert caught.value.status == 500
        listing = await custom.list_namespaced_custom_object(  # path does not match the rule
            KS_GROUP, KS_VERSION, kube_namespace, KS_PLURAL
        )
        assert len(listing["items"]) == 1
        kube_proxy.clear_faults()
        got = await custom.get_namespaced_custom_object(
            KS_GROUP, KS_VERSION, kube_namespace, KS_PLURAL, "apps"
        )
    assert got["metadata"]["name"] == "apps"
    assert kube_proxy.count("GET", "/apps$", forwarded=False) == 3


async def test_proxy_down_mode_fails_requests_then_recovers(
    kube: KubeAPI, kube_namespace: str, kube_proxy: FaultProxy
) -> None:
    kube.apply(kustomization("apps"), namespace=kube_namespace)
    async with await kube.api_client(server=kube_proxy.url) as api:
        custom = k8s_client.CustomObjectsApi(api)

        async def get() -> dict[str, Any]:
            got: dict[str, Any] = await custom.get_namespaced_custom_object(
                KS_GROUP, KS_VERSION, kube_namespace, KS_PLURAL, "apps"
            )
            return got

        assert (await get())["metadata"]["name"] == "apps"  # leaves a keep-alive connection
        await kube_proxy.go_down()
        assert kube_proxy.down
        for _ in range(2):  # first on the kept-alive connection, then a refused new one
            with pytest.raises(aiohttp.ClientConnectionError):
                await get()
        await kube_proxy.come_up()
        assert (await get())["metadata"]["name"] == "apps"


async def test_proxy_streams_watches_and_can_drop_them(
    kube: KubeAPI, kube_namespace: str, kube_proxy: FaultProxy
) -> None:
    async with await kube.api_client(server=kube_proxy.url) as api:
        response = await k8s_client.CustomObjectsApi(api).list_namespaced_custom_object(
            KS_GROUP,
            KS_VERSION,
            kube_namespace,
            KS_PLURAL,
            watch=True,
            timeout_seconds=60,
            _preload_content=False,
        )
        # Created after the watch started: the event can only arrive if the proxy streams.
        await asyncio.to_thread(kube.apply, kustomization("late"), namespace=kube_namespace)
        event = json.loads(await response.content.readline())
        assert event["type"] == "ADDED"
        assert event["object"]["metadata"]["name"] == "late"
        await kube_proxy.drop_connections()
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.content.read()
        response.release()


async def test_proxy_latency_holds_requests_until_cleared(
    kube: KubeAPI, kube_namespace: str, kube_proxy: FaultProxy
) -> None:
    kube.apply(kustomization("apps"), namespace=kube_namespace)
    kube_proxy.delay(600, method="GET")
    async with await kube.api_client(server=kube_proxy.url) as api:
        custom = k8s_client.CustomObjectsApi(api)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await custom.get_namespaced_custom_object(
                    KS_GROUP, KS_VERSION, kube_namespace, KS_PLURAL, "apps"
                )
        kube_proxy.clear_faults()
        got = await custom.get_namespaced_custom_object(
            KS_GROUP, KS_VERSION, kube_namespace, KS_PLURAL, "apps"
        )
    assert got["metadata"]["name"] == "apps"


def test_threaded_proxy_serves_synchronous_clients(kube: KubeAPI) -> None:
    def get_version(url: str) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(
            url + "/version", headers={"Authorization": f"Bearer {kube.token}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as rsp:
                return rsp.status, dict(rsp.headers), rsp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    with FaultProxyThread(kube.url, kube.ca_file) as proxy:
        proxy.proxy.fail(429, retry_after=2, path="^/version$")
        status, headers, _ = get_version(proxy.url)
        assert (status, headers["Retry-After"]) == (429, "2")
        status, _, body = get_version(proxy.url)
        assert status == 200
        assert json.loads(body)["gitVersion"].startswith("v1.20.2")
        proxy.go_down()
        with pytest.raises(urllib.error.URLError):
            get_version(proxy.url)
        proxy.come_up()
        assert get_version(proxy.url)[0] == 200
        assert proxy.proxy.count("GET", "^/version$") == 3  # refused connections never arrive


# ------------------------------------------------------------------------- Flux stand-in


def ready_condition(obj: dict[str, Any]) -> dict[str, Any]:
    (ready,) = [c for c in obj["status"]["conditions"] if c["type"] == "Ready"]
    assert isinstance(ready, dict)
    return ready


async def get_object(api: k8s_client.ApiClient, kind: FluxKind, ns: str, name: str) -> Any:
    return await k8s_client.CustomObjectsApi(api).get_namespaced_custom_object(
        kind.group, kind.version, ns, kind.plural, name
    )


async def annotate(
    api: k8s_client.ApiClient, kind: FluxKind, ns: str, name: str, annotations: dict[str, str]
) -> None:
    await k8s_client.CustomObjectsApi(api).patch_namespaced_custom_object(
        kind.group,
        kind.version,
        ns,
        kind.plural,
        name,
        {"metadata": {"annotations": annotations}},
        **MERGE_PATCH,
    )


def flux_object(
    kind: FluxKind,
    name: str,
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    suspend: bool = False,
) -> dict[str, Any]:
    """A documentation-like ``kind`` object; ``suspend`` the way its controller is paused."""
    notes = dict(annotations or {})
    spec = flux_spec(kind.kind)
    if suspend and kind.disable_annotation is not None:
        notes[kind.disable_annotation] = "Disabled"
    elif suspend:
        spec["suspend"] = True
    return {
        "apiVersion": kind.api_version,
        "kind": kind.kind,
        "metadata": {"name": name, "labels": labels or {}, "annotations": notes},
        "spec": spec,
    }


async def test_stand_in_handles_each_request_like_flux(
    kube: KubeAPI, kube_namespace: str, kube_client: k8s_client.ApiClient
) -> None:
    """Uses the Flux stand-in (no real Flux runs): success sets lastHandledReconcileAt + Ready."""
    kube.apply(flux_object(KUSTOMIZATION, "apps"), namespace=kube_namespace)
    async with FluxStandIn(kube_client, kube_namespace, [KUSTOMIZATION]) as flux:
        for n, at in enumerate(("2025-01-01T00:00:00.1Z", "2025-01-01T00:00:05.2Z"), start=1):
            await annotate(kube_client, KUSTOMIZATION, kube_namespace, "apps", {REQUESTED_AT: at})
            async with asyncio.timeout(30):
                handled = await flux.wait_handled(n, name="apps")
            obj = await get_object(kube_client, KUSTOMIZATION, kube_namespace, "apps")
            assert obj["status"]["lastHandledReconcileAt"] == at
            ready = ready_condition(obj)
            assert (ready["status"], ready["reason"]) == ("True", "ReconciliationSucceeded")
            assert obj["status"]["lastAppliedRevision"] == handled[-1].revision
            assert obj["status"]["lastAttemptedRevision"] == handled[-1].revision
            assert "Reconciling" not in {c["type"] for c in obj["status"]["conditions"]}
    assert [h.requested_at for h in flux.handled] == [
        "2025-01-01T00:00:00.1Z",
        "2025-01-01T00:00:05.2Z",
    ]


@pytest.mark.parametrize(
    ("kind", "labels", "annotations", "expect_status", "expect_reason"),
    [
        pytest.param(KUSTOMIZATION, {}, {}, "True", "ReconciliationSucceeded", id="ks-succeeds"),
        pytest.param(
            KUSTOMIZATION,
            {OUTCOME_LABEL: "fail"},
            {"standin.fluxrelay.io/reason": "BuildFailed"},
            "False",
            "BuildFailed",
            id="ks-fails-with-reason",
        ),
        pytest.param(
            HELM_RELEASE,
            {OUTCOME_LABEL: "fail"},
            {},
            "False",
            "ReconciliationFailed",
            id="hr-fails",
        ),
        pytest.param(GIT_REPOSITORY, {}, {}, "True", "ReconciliationSucceeded", id="git-succeeds"),
        pytest.param(
            OCI_REPOSITORY,
            {},
            {"standin.fluxrelay.io/revision": "v1.2.3@sha256:abc"},
            "True",
            "ReconciliationSucceeded",
            id="oci-succeeds-with-revision",
        ),
    ],
)
async def test_stand_in_outcome_follows_object_metadata(
    kube: KubeAPI,
    kube_namespace: str,
    kube_client: k8s_client.ApiClient,
    kind: FluxKind,
    labels: dict[str, str],
    annotations: dict[str, str],
    expect_status: str,
    expect_reason: str,
) -> None:
    kube.apply(
        flux_object(kind, "obj", labels=labels, annotations=annotations), namespace=kube_namespace
    )
    async with FluxStandIn(kube_client, kube_namespace, [kind]) as flux:
        await annotate(kube_client, kind, kube_namespace, "obj", {REQUESTED_AT: "r1"})
        async with asyncio.timeout(30):
            (handled,) = await flux.wait_handled(1, name="obj")
    obj = await get_object(kube_client, kind, kube_namespace, "obj")
    status = obj["status"]
    assert status["lastHandledReconcileAt"] == "r1"
    assert (ready_condition(obj)["status"], ready_condition(obj)["reason"]) == (
        expect_status,
        expect_reason,
    )
    if "standin.fluxrelay.io/revision" in annotations:
        assert handled.revision == annotations["standin.fluxrelay.io/revision"]
    if kind.has_artifact:
        assert status["artifact"]["revision"] == handled.revision
    if kind.revision_fields:
        assert status["lastAttemptedRevision"] == handled.revision
    if kind is KUSTOMIZATION and expect_status == "True":
        assert status["lastAppliedRevision"] == handled.revision
    else:
        assert "lastAppliedRevision" not in status  # HelmRelease v2 has no such field
    if kind is HELM_RELEASE:
        assert "history" not in status  # a failed first install records no release here


@pytest.mark.parametrize("kind", RECONCILED_KINDS, ids=lambda k: k.kind)
async def test_stand_in_status_survives_each_real_schema(
    kube: KubeAPI, kube_namespace: str, kube_client: k8s_client.ApiClient, kind: FluxKind
) -> None:
    """Every field the stand-in writes is one Flux's schema keeps (nothing is pruned away).

    A write the schema refused or pruned would leave ``lastHandledReconcileAt`` unset, and the
    stand-in would loop on the object; one handled request proves neither happens.
    """
    kube.apply(flux_object(kind, "obj"), namespace=kube_namespace)
    async with FluxStandIn(kube_client, kube_namespace, [kind]) as flux:
        await annotate(kube_client, kind, kube_namespace, "obj", {REQUESTED_AT: "r1"})
        async with asyncio.timeout(30):
            (handled,) = await flux.wait_handled(1, name="obj")
        await asyncio.sleep(0.3)  # a looping stand-in would handle it again meanwhile
        assert len(flux.handled) == 1
    status = (await get_object(kube_client, kind, kube_namespace, "obj"))["status"]
    assert status["lastHandledReconcileAt"] == "r1"
    assert ready_condition({"status": status})["status"] == "True"
    assert ("observedGeneration" in status) is kind.has_observed_generation
    if kind.has_artifact:
        assert status["artifact"]["revision"] == handled.revision


async def test_stand_in_records_helm_releases_in_history(
    kube: KubeAPI, kube_namespace: str, kube_client: k8s_client.ApiClient
) -> None:
    """helm-controller v2 writes releases to ``status.history`` (newest first), as here."""
    kube.apply(flux_object(HELM_RELEASE, "web"), namespace=kube_namespace)
    async with FluxStandIn(kube_client, kube_namespace, [HELM_RELEASE]) as flux:
        for n, at in enumerate(("r1", "r2"), start=1):
            await annotate(kube_client, HELM_RELEASE, kube_namespace, "web", {REQUESTED_AT: at})
            async with asyncio.timeout(30):
                handled = await flux.wait_handled(n, name="web")
    status = (await get_object(kube_client, HELM_RELEASE, kube_namespace, "web"))["status"]
    latest, previous = status["history"]
    assert (latest["status"], latest["version"], previous["status"]) == (
        "deployed",
        2,
        "superseded",
    )
    assert latest["chartName"] == "podinfo"
    assert latest["chartVersion"] == handled[-1].revision == status["lastAttemptedRevision"]


async def test_stand_in_pauses_artifact_generator_by_annotation_and_ignores_external_artifact(
    kube: KubeAPI, kube_namespace: str, kube_client: k8s_client.ApiClient
) -> None:
    """source-watcher pauses on ``source.extensions.fluxcd.io/reconcile: disabled`` (any case;
    its ``IsDisabled``), not ``spec.suspend``; nothing answers requests on an ExternalArtifact."""
    kube.apply_manifests(
        [
            flux_object(ARTIFACT_GENERATOR, "paused", suspend=True),
            flux_object(ARTIFACT_GENERATOR, "active"),
            flux_object(EXTERNAL_ARTIFACT, "external"),
        ],
        namespace=kube_namespace,
    )
    kinds = [ARTIFACT_GENERATOR, EXTERNAL_ARTIFACT]
    assert EXTERNAL_ARTIFACT not in RECONCILED_KINDS
    async with FluxStandIn(kube_client, kube_namespace, kinds) as flux:
        for kind, name in ((EXTERNAL_ARTIFACT, "external"), (ARTIFACT_GENERATOR, "paused")):
            await annotate(kube_client, kind, kube_namespace, name, {REQUESTED_AT: "1"})
        await annotate(
            kube_client, ARTIFACT_GENERATOR, kube_namespace, "active", {REQUESTED_AT: "1"}
        )
        async with asyncio.timeout(30):
            await flux.wait_handled(1, name="active")
        await asyncio.sleep(0.3)
    assert [h.name for h in flux.handled] == ["active"]
    external = await get_object(kube_client, EXTERNAL_ARTIFACT, kube_namespace, "external")
    assert "lastHandledReconcileAt" not in (external.get("status") or {})


async def test_stand_in_rule_callable_and_suspend(
    kube: KubeAPI, kube_namespace: str, kube_client: k8s_client.ApiClient
) -> None:
    kube.apply_manifests(
        [
            flux_object(KUSTOMIZATION, "paused", suspend=True),
            flux_object(KUSTOMIZATION, "ruled"),
        ],
        namespace=kube_namespace,
    )

    def rule(obj: dict[str, Any]) -> Outcome:
        return Outcome("fail", reason="HealthCheckFailed", message="deployment not ready")

    async with FluxStandIn(kube_client, kube_namespace, [KUSTOMIZATION], rule=rule) as flux:
        # The suspended object's event comes first on the same watch; Flux ignores it.
        await annotate(kube_client, KUSTOMIZATION, kube_namespace, "paused", {REQUESTED_AT: "1"})
        await annotate(kube_client, KUSTOMIZATION, kube_namespace, "ruled", {REQUESTED_AT: "1"})
        async with asyncio.timeout(30):
            await flux.wait_handled(1, name="ruled")
    assert flux.handled_for("paused") == []
    paused = await get_object(kube_client, KUSTOMIZATION, kube_namespace, "paused")
    assert "lastHandledReconcileAt" not in (paused.get("status") or {})
    ruled = await get_object(kube_client, KUSTOMIZATION, kube_namespace, "ruled")
    assert ready_condition(ruled)["reason"] == "HealthCheckFailed"
    assert ready_condition(ruled)["message"] == "deployment not ready"


async def test_stand_in_hang_never_handles_and_progress_is_not_final(
    kube: KubeAPI, kube_namespace: str, kube_client: k8s_client.ApiClient
) -> None:
    kube.apply_manifests(
        [
            flux_object(KUSTOMIZATION, "stuck", labels={OUTCOME_LABEL: "hang"}),
            flux_object(
                KUSTOMIZATION, "slow", annotations={"standin.fluxrelay.io/delay-seconds": "600"}
            ),
        ],
        namespace=kube_namespace,
    )
    async with FluxStandIn(kube_client, kube_namespace, [KUSTOMIZATION]) as flux:
        await annotate(kube_client, KUSTOMIZATION, kube_namespace, "stuck", {REQUESTED_AT: "1"})
        await annotate(kube_client, KUSTOMIZATION, kube_namespace, "slow", {REQUESTED_AT: "1"})
        async with asyncio.timeout(30):
            (noticed,) = await flux.wait_handled(1, name="stuck")
            while True:  # the slow one reports progress first, like Flux
                slow = await get_object(kube_client, KUSTOMIZATION, kube_namespace, "slow")
                if (slow.get("status") or {}).get("conditions"):
                    break
                await asyncio.sleep(0.05)
    assert noticed.outcome.result == "hang"
    stuck = await get_object(kube_client, KUSTOMIZATION, kube_namespace, "stuck")
    assert stuck["status"] == {"observedGeneration": -1}  # only the CRD's default
    conditions = {c["type"]: c for c in slow["status"]["conditions"]}
    assert conditions["Ready"]["status"] == "Unknown"
    assert conditions["Reconciling"]["status"] == "True"
    assert "lastHandledReconcileAt" not in slow["status"]


async def test_stand_in_survives_apiserver_restart(
    kube: KubeAPI, kube_namespace: str, kube_client: k8s_client.ApiClient
) -> None:
    kube.apply(flux_object(HELM_RELEASE, "web"), namespace=kube_namespace)
    async with FluxStandIn(kube_client, kube_namespace, [HELM_RELEASE]) as flux:
        await asyncio.to_thread(kube.restart_apiserver, graceful=False)  # a crash
        await annotate(kube_client, HELM_RELEASE, kube_namespace, "web", {REQUESTED_AT: "after"})
        async with asyncio.timeout(60):
            await flux.wait_handled(1, name="web")
    obj = await get_object(kube_client, HELM_RELEASE, kube_namespace, "web")
    assert obj["status"]["lastHandledReconcileAt"] == "after"
