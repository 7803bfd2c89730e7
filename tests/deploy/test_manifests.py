"""deploy/ renders, keeps its invariants, and a real API server accepts every object.

Covers: every kustomization renders with ``kubectl kustomize``; on every overlay each
container has CPU/memory requests and limits, runs as non-root with a read-only root
filesystem, no privilege escalation and no capabilities, uses a tagged image (never
``latest``), and fluxrelay containers probe ``/healthz`` (liveness) and ``/readyz``
(readiness) on the metrics port 9090; every reference resolves (ConfigMaps with their hash
suffix, ServiceAccounts, Service ports, Ingress backends); no two workloads select each
other's pods; every workload has a NetworkPolicy and every Deployment a PDB; the HA overlay
runs two reconciler shards with distinct ``--shard`` next to the unsharded reconciler, three
receivers, three NATS nodes and R3 streams; the namespaced overlay has no cluster-wide binding.
Then every overlay, the observability and Flux kustomizations and the examples are applied
with ``kubectl apply --server-side --dry-run=server`` to the real kube-apiserver (v1.20.2) of
tests/support/kubeapi.py, and a deliberately broken manifest is shown to be refused.

The test server is v1.20, which serves PodDisruptionBudgets only as ``policy/v1beta1``;
deploy/ uses ``policy/v1`` (1.21+, the only version on 1.25+), so PDBs are sent as v1beta1
when, and only when, the server lacks ``policy/v1`` (same fields for what deploy/ uses).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.rendering import (
    EXAMPLE_FILES,
    JSON,
    KUSTOMIZATIONS,
    OVERLAYS,
    by_kind,
    containers,
    is_fluxrelay,
    kubectl,
    load_file,
    named,
    render,
    selector_matches,
    shard_of,
    workloads,
)
from tests.support.kubeapi import KubeAPI

REPO_ROOT = Path(__file__).resolve().parents[2]
MONITORING_CRDS = Path(__file__).parent / "crds" / "monitoring.coreos.com.yaml"
METRICS_PORT = 9090
HOOK_PORT = 9292
NAMESPACES = ("fluxrelay", "flux-system")
"""Namespaces the manifests place objects in (created for real before dry-runs)."""


def overlay_params() -> list[Any]:
    return [pytest.param(o, id=o.split("/")[-1]) for o in OVERLAYS]


def workload_id(w: JSON) -> str:
    return f"{w['kind']}/{w['metadata']['name']}"


# ------------------------------------------------------------------------------ rendering


@pytest.mark.parametrize("relpath", [pytest.param(k, id=k) for k in KUSTOMIZATIONS])
def test_every_kustomization_renders(relpath: str) -> None:
    docs = render(relpath)
    assert docs, f"{relpath} rendered nothing"
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), doc


# ------------------------------------------------------------------ container invariants


@pytest.mark.parametrize("overlay", overlay_params())
def test_every_container_has_cpu_and_memory_requests_and_limits(overlay: str) -> None:
    for w in workloads(render(overlay)):
        for c in containers(w):
            resources = c.get("resources", {})
            for kind in ("requests", "limits"):
                for res in ("cpu", "memory"):
                    assert res in resources.get(kind, {}), (
                        f"{workload_id(w)} container {c['name']} lacks {kind}.{res}"
                    )


@pytest.mark.parametrize("overlay", overlay_params())
def test_every_container_runs_unprivileged_on_a_read_only_root(overlay: str) -> None:
    for w in workloads(render(overlay)):
        pod = w["spec"]["template"]["spec"]
        pod_sc = pod.get("securityContext", {})
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", workload_id(w)
        for c in containers(w):
            sc = c.get("securityContext", {})
            where = f"{workload_id(w)} container {c['name']}"
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", pod_sc.get("runAsUser", 0)) != 0, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("privileged"), where


@pytest.mark.parametrize("overlay", overlay_params())
def test_every_image_is_pinned_to_a_tag_that_is_not_latest(overlay: str) -> None:
    for w in workloads(render(overlay)):
        for c in containers(w):
            image = c["image"]
            name, _, tag = image.rpartition(":")
            digest = "@sha256:" in image
            assert digest or (name and "/" not in tag and tag), f"{image} has no tag"
            assert tag != "latest" and not image.endswith(":latest"), image


@pytest.mark.parametrize("overlay", overlay_params())
def test_fluxrelay_containers_probe_healthz_and_readyz_on_the_metrics_port(overlay: str) -> None:
    fluxrelay = [w for w in workloads(render(overlay)) if is_fluxrelay(w)]
    assert len(fluxrelay) >= 2, "expected at least a receiver and a reconciler"
    for w in fluxrelay:
        for c in containers(w):
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            assert ports.get("metrics") == METRICS_PORT, workload_id(w)
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                get = c.get(probe, {}).get("httpGet", {})
                assert get.get("path") == path, f"{workload_id(w)} {probe}"
                port = get.get("port")
                assert ports.get(port, port) == METRICS_PORT, f"{workload_id(w)} {probe} port"


@pytest.mark.parametrize("overlay", overlay_params())
def test_nats_containers_probe_the_monitoring_healthz(overlay: str) -> None:
    nats = [w for w in workloads(render(overlay)) if not is_fluxrelay(w)]
    assert nats, "no NATS workload"
    for w in nats:
        for c in containers(w):
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                get = c[probe]["httpGet"]
                assert get["path"].split("?")[0] == "/healthz", f"{workload_id(w)} {probe}"
                assert get["port"] == "monitor"


@pytest.mark.parametrize("overlay", overlay_params())
def test_receiver_and_reconciler_share_one_image_and_the_reconciler_overrides_the_command(
    overlay: str,
) -> None:
    docs = render(overlay)
    images = {c["image"] for w in workloads(docs) if is_fluxrelay(w) for c in containers(w)}
    assert len(images) == 1, images
    for w in by_kind(docs, "Deployment"):
        component = w["metadata"]["labels"]["app.kubernetes.io/component"]
        (c,) = containers(w)
        if component == "reconciler":
            assert c["command"] == ["fluxrelay-reconciler"]
            assert "--kubernetes" in c["args"]
        else:
            assert "command" not in c, "the receiver runs the image's entrypoint"
            assert "--kubernetes" in c["args"]
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert ports["http"] == HOOK_PORT


# ------------------------------------------------------------------ references resolve


@pytest.mark.parametrize("overlay", overlay_params())
def test_config_maps_secrets_and_service_accounts_referenced_by_pods_exist(overlay: str) -> None:
    docs = render(overlay)
    config_maps = {d["metadata"]["name"] for d in by_kind(docs, "ConfigMap")}
    accounts = {d["metadata"]["name"] for d in by_kind(docs, "ServiceAccount")}
    for w in workloads(docs):
        pod = w["spec"]["template"]["spec"]
        if is_fluxrelay(w):
            assert pod.get("serviceAccountName") in accounts, workload_id(w)
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, workload_id(w)
        for c in containers(w):
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    # Catches a generated ConfigMap whose hash suffix did not reach the pod.
                    assert source["configMapRef"]["name"] in config_maps, workload_id(w)
                if "secretRef" in source:
                    assert source["secretRef"].get("optional") is True, (
                        f"{workload_id(w)}: no Secret ships with deploy/, so refs are optional"
                    )


@pytest.mark.parametrize("overlay", overlay_params())
def test_every_service_selects_pods_on_ports_they_declare(overlay: str) -> None:
    docs = render(overlay)
    templates = [w["spec"]["template"] for w in workloads(docs)]
    for svc in by_kind(docs, "Service"):
        selected = [
            t
            for t in templates
            if selector_matches(svc["spec"]["selector"], t["metadata"]["labels"])
        ]
        assert selected, f"Service {svc['metadata']['name']} selects no pods"
        for port in svc["spec"]["ports"]:
            for t in selected:
                names = {p["name"] for c in t["spec"]["containers"] for p in c.get("ports", [])}
                assert port["targetPort"] in names, (svc["metadata"]["name"], port)


@pytest.mark.parametrize("overlay", overlay_params())
def test_no_two_workloads_select_each_others_pods(overlay: str) -> None:
    ws = list(workloads(render(overlay)))
    for a in ws:
        for b in ws:
            if a is b:
                continue
            labels = b["spec"]["template"]["metadata"]["labels"]
            assert not selector_matches(a["spec"]["selector"], labels), (
                f"{workload_id(a)} selects the pods of {workload_id(b)}"
            )


@pytest.mark.parametrize("overlay", overlay_params())
def test_every_workload_is_covered_by_a_network_policy_and_deployments_by_a_pdb(
    overlay: str,
) -> None:
    docs = render(overlay)
    policies = by_kind(docs, "NetworkPolicy")
    budgets = by_kind(docs, "PodDisruptionBudget")
    for w in workloads(docs):
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert any(selector_matches(p["spec"]["podSelector"], labels) for p in policies), (
            f"{workload_id(w)} has no NetworkPolicy"
        )
        if w["kind"] == "Deployment" or w["spec"].get("replicas", 1) > 1:
            assert any(selector_matches(b["spec"]["selector"], labels) for b in budgets), (
                f"{workload_id(w)} has no PodDisruptionBudget"
            )


def test_receiver_network_policy_admits_webhooks_from_anywhere_and_metrics_from_monitoring() -> (
    None
):
    policy = named(render("overlays/simple"), "NetworkPolicy", "fluxrelay-receiver")
    rules = policy["spec"]["ingress"]
    open_rules = [r for r in rules if not r.get("from")]
    assert [p["port"] for r in open_rules for p in r["ports"]] == [HOOK_PORT]
    metrics = [r for r in rules if r.get("from")]
    assert [p["port"] for r in metrics for p in r["ports"]] == [METRICS_PORT]
    egress_ports = {p["port"] for r in policy["spec"]["egress"] for p in r["ports"]}
    assert {4222, 53, 443, 6443} <= egress_ports


# ------------------------------------------------------------------------ overlay shapes


def config_of(docs: list[JSON]) -> dict[str, str]:
    (cm,) = [
        d
        for d in by_kind(docs, "ConfigMap")
        if d["metadata"]["name"].startswith("fluxrelay-config")
    ]
    data: dict[str, str] = cm["data"]
    return data


def reconcilers(docs: list[JSON]) -> list[JSON]:
    return [
        d
        for d in by_kind(docs, "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "reconciler"
    ]


def test_simple_overlay_runs_one_of_everything_on_one_nats_node() -> None:
    docs = render("overlays/simple")
    assert named(docs, "Deployment", "fluxrelay-receiver")["spec"]["replicas"] == 1
    (rec,) = reconcilers(docs)
    assert shard_of(containers(rec)[0]) is None
    assert named(docs, "StatefulSet", "nats")["spec"]["replicas"] == 1
    config = config_of(docs)
    assert config["FLUXRELAY_STREAM_REPLICAS"] == "1"
    assert config["FLUXRELAY_NATS_URL"] == "nats://nats:4222"
    assert config["FLUXRELAY_METRICS_LISTEN"] == f"0.0.0.0:{METRICS_PORT}"
    assert not by_kind(docs, "Ingress")


def test_ha_overlay_runs_two_distinct_shards_beside_the_unsharded_reconciler() -> None:
    docs = render("overlays/ha")
    deployments = reconcilers(docs)
    shards = {d["metadata"]["name"]: shard_of(containers(d)[0]) for d in deployments}
    sharded = {name: s for name, s in shards.items() if s is not None}
    assert len(sharded) == 2 and len(set(sharded.values())) == 2, shards
    assert set(sharded.values()) == {"shard-a", "shard-b"}
    assert list(shards.values()).count(None) == 1, "objects without a shard label need one"
    for d in deployments:
        assert d["spec"]["replicas"] == 2, d["metadata"]["name"]
        instance = d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/instance"]
        assert instance == (shard_of(containers(d)[0]) or "default")


def test_ha_overlay_runs_three_receivers_three_nats_nodes_and_r3_streams() -> None:
    docs = render("overlays/ha")
    receiver = named(docs, "Deployment", "fluxrelay-receiver")
    assert receiver["spec"]["replicas"] >= 3
    assert receiver["spec"]["template"]["spec"]["topologySpreadConstraints"]
    nats = named(docs, "StatefulSet", "nats")
    assert nats["spec"]["replicas"] == 3
    assert config_of(docs)["FLUXRELAY_STREAM_REPLICAS"] == "3"
    conf = next(
        d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith("nats-config")
    )
    text = conf["data"]["nats.conf"]
    assert all(f"$NATS_ROUTE_{i}" in text for i in range(3))  # URLs: test_nats_config.py
    assert "max_payload: 8MB" in text
    assert named(docs, "PodDisruptionBudget", "nats")["spec"]["maxUnavailable"] == 1


def test_ha_ingress_routes_hook_paths_to_the_receiver_service() -> None:
    docs = render("overlays/ha")
    (ingress,) = by_kind(docs, "Ingress")
    svc = named(docs, "Service", "fluxrelay-receiver")
    port_names = {p["name"] for p in svc["spec"]["ports"]}
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/hook/" and path["pathType"] == "Prefix"
    assert path["backend"]["service"]["name"] == "fluxrelay-receiver"
    assert path["backend"]["service"]["port"]["name"] in port_names


def test_namespaced_overlay_binds_roles_only_inside_flux_system() -> None:
    docs = render("overlays/namespaced")
    assert not by_kind(docs, "ClusterRoleBinding")
    bindings = by_kind(docs, "RoleBinding")
    subjects = {(b["metadata"]["namespace"], s["name"]) for b in bindings for s in b["subjects"]}
    assert subjects == {
        ("flux-system", "fluxrelay-receiver"),
        ("flux-system", "fluxrelay-reconciler"),
    }
    assert config_of(docs)["FLUXRELAY_NAMESPACE"] == "flux-system"


def test_flux_example_installs_an_overlay_that_exists() -> None:
    docs = render("flux")
    ks = named(docs, "Kustomization", "fluxrelay")
    repo = named(docs, "GitRepository", ks["spec"]["sourceRef"]["name"])
    assert repo["spec"]["ref"].get("tag") or repo["spec"]["ref"].get("semver")
    path = REPO_ROOT / ks["spec"]["path"]
    assert (path / "kustomization.yaml").is_file(), path
    assert ks["spec"]["prune"] is True


# --------------------------------------------------------------- real API server dry-run


def server_docs(kube: KubeAPI, docs: list[JSON]) -> list[JSON]:
    """Docs as the test server can take them (PDBs as v1beta1 only if it lacks policy/v1)."""
    status, _ = kube.request("GET", "/apis/policy/v1", expect=None)
    if status == 200:
        return docs
    return [
        {**doc, "apiVersion": "policy/v1beta1"}
        if doc["apiVersion"] == "policy/v1" and doc["kind"] == "PodDisruptionBudget"
        else doc
        for doc in docs
    ]


def dry_run(kubeconfig: Path, docs: list[JSON]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            kubectl(),
            "--kubeconfig",
            str(kubeconfig),
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=fluxrelay-deploy-tests",
            "-f",
            "-",
        ],
        input=yaml.safe_dump_all(docs),
        capture_output=True,
        text=True,
        check=False,
        timeout=90,
    )


@pytest.fixture(scope="module")
def admin_kubeconfig(kube: KubeAPI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An admin kubeconfig, the namespaces the manifests use and the monitoring stand-in CRDs.

    Server-side dry-run of a namespaced object fails if its namespace does not exist, so the
    namespaces are created for real (and removed afterwards if this module created them).
    """
    created = []
    for ns in NAMESPACES:
        status, _ = kube.request("GET", f"/api/v1/namespaces/{ns}", expect=None)
        if status == 404:
            kube.create_namespace(ns)
            created.append(ns)
    kube.apply_manifests(d for d in yaml.safe_load_all(MONITORING_CRDS.read_text()) if d)
    path = kube.write_kubeconfig(tmp_path_factory.mktemp("deploy") / "admin.kubeconfig")
    try:
        yield path
    finally:
        for ns in created:
            kube.delete_namespace(ns)


def dry_run_params() -> list[Any]:
    return [pytest.param(("render", k), id=k) for k in KUSTOMIZATIONS] + [
        pytest.param(("file", f), id=f) for f in EXAMPLE_FILES
    ]


@pytest.mark.parametrize("source", dry_run_params())
def test_the_api_server_accepts_every_object_in_a_server_side_dry_run(
    kube: KubeAPI, admin_kubeconfig: Path, source: tuple[str, str]
) -> None:
    how, relpath = source
    docs = render(relpath) if how == "render" else load_file(relpath)
    result = dry_run(admin_kubeconfig, server_docs(kube, docs))
    assert result.returncode == 0, f"dry-run of {relpath} refused:\n{result.stderr}"
    applied = [line for line in result.stdout.splitlines() if "(server dry run)" in line]
    assert len(applied) == len(docs), result.stdout


def test_the_dry_run_refuses_a_broken_manifest(kube: KubeAPI, admin_kubeconfig: Path) -> None:
    """The check above has teeth: an invalid port and an unknown field are both refused."""
    receiver = named(render("overlays/simple"), "Deployment", "fluxrelay-receiver")
    broken_port = yaml.safe_load(yaml.safe_dump(receiver))
    broken_port["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = 70000
    result = dry_run(admin_kubeconfig, [broken_port])
    assert result.returncode != 0 and "containerPort" in result.stderr, result.stderr
    unknown = yaml.safe_load(yaml.safe_dump(receiver))
    unknown["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    result = dry_run(admin_kubeconfig, [unknown])
    assert result.returncode != 0 and "livenesProbe" in result.stderr, result.stderr
