"""End to end and deployment shape, all real: a signed GitHub push into the real receiver
(in-process) is stored on JetStream and the reconciler patches the Kustomization it names,
with the delivery's envelope id on the object; and the reconciler running as the
``fluxrelay-reconciler`` ServiceAccount bound by ``deploy/base/reconciler-rbac.yaml``
(Receivers read from the Kubernetes API) can do its job and nothing more: it reads no Secret
and creates no Event. The manifest grants exactly get/list/watch/patch on every Flux kind the
reconciler knows and get/list/watch on Receivers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio.client.exceptions import ApiException

from reconciler.kinds import DELIVERY_ANNOTATION, KINDS
from tests.reconciler.conftest import (
    Bus,
    Fleet,
    annotations_of,
    flux_object,
    make_envelope,
    receiver_manifest,
    requested_at,
    wait_for,
)
from tests.support.ingress import dump_yaml, hmac_hex, path_of, receiver_docs, start_ingress
from tests.support.kubeapi import REPO_ROOT, KubeAPI

RBAC = REPO_ROOT / "deploy" / "base" / "reconciler-rbac.yaml"


async def test_a_signed_github_push_becomes_a_patch_on_the_kustomization(
    kube: KubeAPI, kube_namespace: str, fleet: Fleet, tmp_path: Path
) -> None:
    kube.apply(flux_object("Kustomization", "apps"), namespace=kube_namespace)
    kube.apply(flux_object("Kustomization", "unrelated"), namespace=kube_namespace)
    docs = receiver_docs(
        "gh",
        "github",
        namespace=kube_namespace,
        resources=[
            {
                "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
                "kind": "Kustomization",
                "name": "apps",
            }
        ],
    )
    ingress = await start_ingress(fleet.bus.url, docs)
    try:
        receivers = tmp_path / "receivers.yaml"  # the same file both sides read
        receivers.write_text(dump_yaml(docs))
        stream = ingress.state.settings.stream
        settings = fleet.settings(
            receivers,
            consumer={
                "stream": stream.name,
                "subject_prefix": stream.subject_prefix,
                "dead_stream": stream.dead_name,
                "dead_subject_prefix": stream.dead_subject_prefix,
            },
        )
        await fleet.start(settings)
        body = json.dumps(
            {
                "ref": "refs/heads/main",
                "before": "0" * 40,
                "after": "a" * 40,
                "repository": {
                    "clone_url": "https://github.com/org/app.git",
                    "full_name": "org/app",
                },
                "commits": [],
            }
        ).encode()
        resp = await ingress.client.post(
            path_of("gh", namespace=kube_namespace),
            data=body,
            headers={
                "Content-Type": "application/json",
                "X-GitHub-Event": "push",
                "X-GitHub-Delivery": "e2e-delivery-1",
                "X-Hub-Signature-256": "sha256=" + hmac_hex("s3cr3t-s3cr3t-s3cr3t", body),
            },
        )
        assert resp.status == 202, await resp.text()
        accepted = await resp.json()
        await wait_for(
            lambda: requested_at(kube, kube_namespace, "Kustomization", "apps") is not None,
            "the Kustomization patched",
        )
        (stored,) = await ingress.stored()
        assert stored.envelope["delivery_id"] == "e2e-delivery-1"
        annotations = annotations_of(kube, kube_namespace, "Kustomization", "apps")
        assert annotations[DELIVERY_ANNOTATION] == stored.envelope["id"] == accepted["id"]
        assert requested_at(kube, kube_namespace, "Kustomization", "unrelated") is None
    finally:
        await ingress.close()


def rbac_documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(RBAC.read_text()) if d]


def test_the_cluster_role_grants_exactly_what_the_reconciler_needs() -> None:
    (role,) = [d for d in rbac_documents() if d["kind"] == "ClusterRole"]
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted[(group, resource)] = set(rule["verbs"])
    expected = {(k.group, k.plural): {"get", "list", "watch", "patch"} for k in KINDS.values()}
    expected[("notification.toolkit.fluxcd.io", "receivers")] = {"get", "list", "watch"}
    assert granted == expected
    kinds = {d["kind"]: d["metadata"] for d in rbac_documents()}
    assert kinds["ServiceAccount"] == {**kinds["ServiceAccount"], "name": "fluxrelay-reconciler",
                                       "namespace": "fluxrelay"}  # fmt: skip


async def test_the_reconciler_works_as_its_service_account_and_can_do_no_more(
    kube: KubeAPI, kube_namespace: str, fleet: Fleet, bus: Bus
) -> None:
    kube.request(
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "fluxrelay"}},
        expect=(201, 409),
    )
    kube.apply_manifests(rbac_documents())
    token = kube.create_service_account_token(
        "fluxrelay", "fluxrelay-reconciler", create_account=False
    )
    kube.apply(flux_object("Kustomization", "apps"), namespace=kube_namespace)
    kube.apply(flux_object("HelmRelease", "web", {"team": "a"}), namespace=kube_namespace)
    receiver = receiver_manifest(
        "hook",
        kube_namespace,
        [
            {
                "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
                "kind": "Kustomization",
                "name": "apps",
            },
            {
                "apiVersion": "helm.toolkit.fluxcd.io/v2",
                "kind": "HelmRelease",
                "name": "*",
                "matchLabels": {"team": "a"},
            },
        ],
    )
    kube.apply(receiver, namespace=kube_namespace)  # read from the API, not from a file
    settings = fleet.settings(None, token=token, kubernetes=True)
    reconciler = await fleet.start(settings)
    await wait_for(lambda: reconciler.book.get(kube_namespace, "hook") is not None, "receiver")
    await bus.publish(make_envelope(kube_namespace, "hook"))
    await wait_for(
        lambda: (
            requested_at(kube, kube_namespace, "HelmRelease", "web") is not None
            and requested_at(kube, kube_namespace, "Kustomization", "apps") is not None
        ),
        "both targets patched",
    )
    assert await bus.dead() == []
    async with await kube.api_client(token=token) as api:
        core = k8s_client.CoreV1Api(api)
        with pytest.raises(ApiException) as secrets:
            await core.list_namespaced_secret(kube_namespace)
        assert secrets.value.status == 403
        with pytest.raises(ApiException) as events:
            event: Any = {"metadata": {"name": "x"}, "involvedObject": {"name": "apps"}}
            await core.create_namespaced_event(kube_namespace, event)
        assert events.value.status == 403
        with pytest.raises(ApiException) as delete:
            await k8s_client.CustomObjectsApi(api).delete_namespaced_custom_object(
                "kustomize.toolkit.fluxcd.io", "v1", kube_namespace, "kustomizations", "apps"
            )
        assert delete.value.status == 403
