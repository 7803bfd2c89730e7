"""The RBAC in deploy/ grants each process what it needs and nothing more, on a real API server.

The ServiceAccounts, ClusterRoles and (Cluster)RoleBindings are rendered from the overlays
and created for real on the test kube-apiserver (RBAC authorization on), then each process's
own ServiceAccount token (TokenRequest) is used for the requests the process makes:

- reconciler (cluster-wide): can merge-patch ``reconcile.fluxcd.io/requestedAt`` on a
  Kustomization and a GitRepository and list Receivers; cannot read or list Secrets, patch a
  Deployment, write a Flux object's status, delete a Flux object or write a Receiver (403);
- receiver (cluster-wide): can list and watch Receivers and get/list Secrets; cannot patch a
  Receiver, a Kustomization or a Deployment, nor create a Secret (403);
- namespaced overlay: both only inside flux-system; the same requests against another
  namespace and cluster-wide lists are refused.

Requests are made with the tokens directly; running the reconciler process itself under the
token belongs with the reconciler's end-to-end tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.deploy.rendering import JSON, render
from tests.support.fluxobjects import flux_manifest
from tests.support.kubeapi import KubeAPI

RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
MERGE = "application/merge-patch+json"
REQUESTED_AT = "reconcile.fluxcd.io/requestedAt"
KS = "/apis/kustomize.toolkit.fluxcd.io/v1"
GIT = "/apis/source.toolkit.fluxcd.io/v1"
RECEIVERS = "/apis/notification.toolkit.fluxcd.io/v1"


def ensure_namespace(kube: KubeAPI, name: str, created: list[str]) -> None:
    status, _ = kube.request("GET", f"/api/v1/namespaces/{name}", expect=None)
    if status == 404:
        kube.create_namespace(name)
        created.append(name)


@contextmanager
def installed_rbac(kube: KubeAPI, overlay: str) -> Iterator[dict[str, str]]:
    """Create the overlay's accounts and RBAC for real; yield a token per ServiceAccount."""
    docs = [d for d in render(overlay) if d["kind"] in RBAC_KINDS]
    created_ns: list[str] = []
    for ns in {d["metadata"].get("namespace") for d in docs} - {None}:
        ensure_namespace(kube, str(ns), created_ns)
    applied: list[JSON] = []
    try:
        for doc in docs:
            kube.apply(doc)
            applied.append(doc)
        tokens = {
            d["metadata"]["name"]: kube.create_service_account_token(
                d["metadata"]["namespace"], d["metadata"]["name"], create_account=False
            )
            for d in docs
            if d["kind"] == "ServiceAccount"
        }
        yield tokens
    finally:
        for doc in reversed(applied):
            path = f"{kube.object_path(doc)}/{doc['metadata']['name']}"
            kube.request("DELETE", path, expect=(200, 202, 404))
        for ns in created_ns:
            kube.delete_namespace(ns)


def flux_object(api_version: str, kind: str, name: str) -> JSON:
    """A ``kind`` object valid under Flux's real CRDs (the controller docs' example spec)."""
    manifest = flux_manifest(kind, name)
    assert manifest["apiVersion"] == api_version
    return manifest


def seed(kube: KubeAPI, namespace: str) -> None:
    """A Kustomization, a GitRepository, a Receiver, its Secret and a Deployment."""
    kube.apply_manifests(
        [
            flux_object("kustomize.toolkit.fluxcd.io/v1", "Kustomization", "apps"),
            flux_object("source.toolkit.fluxcd.io/v1", "GitRepository", "apps"),
            {
                "apiVersion": "notification.toolkit.fluxcd.io/v1",
                "kind": "Receiver",
                "metadata": {"name": "github"},
                "spec": {
                    "type": "github",
                    "secretRef": {"name": "webhook-token"},
                    "resources": [{"kind": "GitRepository", "name": "apps"}],
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "webhook-token"},
                "stringData": {"token": "not-a-real-token"},
            },
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web"},
                "spec": {
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "web", "image": "web:1"}]},
                    },
                },
            },
        ],
        namespace=namespace,
    )


def reconcile_request() -> dict[str, Any]:
    return {"metadata": {"annotations": {REQUESTED_AT: uuid.uuid4().hex}}}


def status_of(kube: KubeAPI, token: str, method: str, path: str, body: Any = None) -> int:
    status, _ = kube.request(
        method,
        path,
        body,
        token=token,
        content_type=MERGE if method == "PATCH" else "application/json",
        expect=None,
    )
    return status


def reconciler_checks(ns: str) -> list[tuple[str, str, str, Any, int]]:
    """(what, method, path, body, expected status) for the reconciler in namespace ``ns``."""
    return [
        ("patch Kustomization", "PATCH", f"{KS}/namespaces/{ns}/kustomizations/apps",
         reconcile_request(), 200),
        ("patch GitRepository", "PATCH", f"{GIT}/namespaces/{ns}/gitrepositories/apps",
         reconcile_request(), 200),
        ("list Receivers in ns", "GET", f"{RECEIVERS}/namespaces/{ns}/receivers", None, 200),
        ("get Secret", "GET", f"/api/v1/namespaces/{ns}/secrets/webhook-token", None, 403),
        ("list Secrets", "GET", f"/api/v1/namespaces/{ns}/secrets", None, 403),
        ("patch Deployment", "PATCH", f"/apis/apps/v1/namespaces/{ns}/deployments/web",
         reconcile_request(), 403),
        ("write Kustomization status", "PATCH",
         f"{KS}/namespaces/{ns}/kustomizations/apps/status",
         {"status": {"lastHandledReconcileAt": "x"}}, 403),
        ("delete Kustomization", "DELETE", f"{KS}/namespaces/{ns}/kustomizations/apps", None,
         403),
        ("patch Receiver", "PATCH", f"{RECEIVERS}/namespaces/{ns}/receivers/github",
         reconcile_request(), 403),
    ]  # fmt: skip


def receiver_checks(ns: str) -> list[tuple[str, str, str, Any, int]]:
    return [
        ("list Receivers in ns", "GET", f"{RECEIVERS}/namespaces/{ns}/receivers", None, 200),
        ("get Secret", "GET", f"/api/v1/namespaces/{ns}/secrets/webhook-token", None, 200),
        ("list Secrets", "GET", f"/api/v1/namespaces/{ns}/secrets", None, 200),
        ("patch Receiver", "PATCH", f"{RECEIVERS}/namespaces/{ns}/receivers/github",
         reconcile_request(), 403),
        ("patch Kustomization", "PATCH", f"{KS}/namespaces/{ns}/kustomizations/apps",
         reconcile_request(), 403),
        ("patch Deployment", "PATCH", f"/apis/apps/v1/namespaces/{ns}/deployments/web",
         reconcile_request(), 403),
        ("create Secret", "POST", f"/api/v1/namespaces/{ns}/secrets",
         {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "stolen"}}, 403),
    ]  # fmt: skip


def run_checks(
    kube: KubeAPI, token: str, checks: list[tuple[str, str, str, Any, int]]
) -> list[str]:
    failures = []
    for what, method, path, body, expected in checks:
        got = status_of(kube, token, method, path, body)
        if got != expected:
            failures.append(f"{what}: expected {expected}, got {got} ({method} {path})")
    return failures


@pytest.fixture
def cluster_wide(kube: KubeAPI) -> Iterator[dict[str, str]]:
    with installed_rbac(kube, "overlays/simple") as tokens:
        yield tokens


def test_reconciler_can_request_reconciles_and_nothing_more(
    kube: KubeAPI, kube_namespace: str, cluster_wide: dict[str, str]
) -> None:
    seed(kube, kube_namespace)
    token = cluster_wide["fluxrelay-reconciler"]
    assert run_checks(kube, token, reconciler_checks(kube_namespace)) == []
    assert status_of(kube, token, "GET", f"{RECEIVERS}/receivers") == 200
    assert status_of(kube, token, "GET", "/api/v1/secrets") == 403
    _, ks = kube.request("GET", f"{KS}/namespaces/{kube_namespace}/kustomizations/apps")
    assert REQUESTED_AT in ks["metadata"]["annotations"], "the allowed patch did not land"


def test_receiver_can_read_receivers_and_secrets_and_write_nothing(
    kube: KubeAPI, kube_namespace: str, cluster_wide: dict[str, str]
) -> None:
    seed(kube, kube_namespace)
    token = cluster_wide["fluxrelay-receiver"]
    assert run_checks(kube, token, receiver_checks(kube_namespace)) == []
    assert status_of(kube, token, "GET", f"{RECEIVERS}/receivers") == 200
    watch = f"{RECEIVERS}/receivers?watch=true&timeoutSeconds=1"
    assert status_of(kube, token, "GET", watch) == 200


def test_namespaced_overlay_confines_both_processes_to_flux_system(
    kube: KubeAPI, kube_namespace: str
) -> None:
    with installed_rbac(kube, "overlays/namespaced") as tokens:
        seed(kube, "flux-system")
        seed(kube, kube_namespace)
        try:
            reconciler, receiver = tokens["fluxrelay-reconciler"], tokens["fluxrelay-receiver"]
            assert run_checks(kube, reconciler, reconciler_checks("flux-system")) == []
            assert run_checks(kube, receiver, receiver_checks("flux-system")) == []
            outside = [
                (reconciler, "PATCH", f"{KS}/namespaces/{kube_namespace}/kustomizations/apps"),
                (reconciler, "GET", f"{RECEIVERS}/receivers"),
                (receiver, "GET", f"/api/v1/namespaces/{kube_namespace}/secrets"),
                (receiver, "GET", f"{RECEIVERS}/namespaces/{kube_namespace}/receivers"),
                (receiver, "GET", "/api/v1/secrets"),
            ]
            for token, method, path in outside:
                body = reconcile_request() if method == "PATCH" else None
                assert status_of(kube, token, method, path, body) == 403, (method, path)
        finally:
            for kind_path in (
                f"{KS}/namespaces/flux-system/kustomizations/apps",
                f"{GIT}/namespaces/flux-system/gitrepositories/apps",
                f"{RECEIVERS}/namespaces/flux-system/receivers/github",
                "/api/v1/namespaces/flux-system/secrets/webhook-token",
                "/apis/apps/v1/namespaces/flux-system/deployments/web",
            ):
                kube.request("DELETE", kind_path, expect=(200, 202, 404))
