"""Outcome watching against the real API server, with the Flux stand-in (tests/support/
fluxstandin.py) playing Flux's controllers: it sets ``lastHandledReconcileAt`` and ``Ready``
after a delay, or fails, or never handles (``standin.fluxrelay.io/outcome`` label).

Covers: success / failure / timeout per stand-in outcome (table), with the handled and ready
moments recorded in order; many objects of one kind followed at once over one watch; a request
superseded by a later one is settled by the later reconcile; an object deleted while followed;
the watch surviving dropped connections and a 410 (relist) through the fault proxy; a request
already handled before it was followed is settled from the cache; the pure status reading.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s
from prometheus_client import CollectorRegistry

from reconciler.fluxstatus import Condition, ObjectStatus, settled, status_of
from reconciler.kinds import REQUESTED_AT, ObjectRef
from reconciler.outcome_metrics import OutcomeMetrics
from reconciler.outcomes import OutcomeWatcher, WatchSettings
from reconciler.patching import CONTENT_TYPE, RequestClock
from tests.reconciler.conftest import WAIT, flux_object, wait_for
from tests.support.faultproxy import FaultProxy
from tests.support.fluxstandin import OUTCOME_LABEL, FluxStandIn
from tests.support.kubeapi import KubeAPI


async def request(api: k8s.ApiClient, ref: ObjectRef, value: str) -> None:
    """The reconciler's patch, as ``reconciler.patching`` sends it."""
    body = {"metadata": {"annotations": {REQUESTED_AT: value}}}
    await k8s.CustomObjectsApi(api).patch_namespaced_custom_object(
        ref.group, ref.version, ref.namespace, ref.plural, ref.name, body, **CONTENT_TYPE
    )


def make(kube: KubeAPI, ns: str, kind: str, name: str, outcome: str = "succeed") -> ObjectRef:
    kube.apply(flux_object(kind, name, {OUTCOME_LABEL: outcome}), namespace=ns)
    return ObjectRef.of(kind, ns, name)


@pytest.fixture
async def watcher(kube_client: k8s.ApiClient) -> AsyncIterator[OutcomeWatcher]:
    w = OutcomeWatcher(kube_client, OutcomeMetrics(CollectorRegistry()), timeout=WAIT)
    yield w
    await w.close()


@pytest.fixture
async def flux(kube_client: k8s.ApiClient, kube_namespace: str) -> AsyncIterator[FluxStandIn]:
    async with FluxStandIn(kube_client, kube_namespace, delay=0.2) as standin:
        yield standin


@pytest.mark.parametrize(
    ("outcome", "result", "reason"),
    [
        pytest.param("succeed", "success", "ReconciliationSucceeded", id="ready-true-is-success"),
        pytest.param("fail", "failure", "ReconciliationFailed", id="ready-false-is-failure"),
        pytest.param("hang", "error", "Timeout", id="never-handled-is-a-timeout-error"),
    ],
)
async def test_a_request_is_followed_to_its_outcome(
    kube: KubeAPI,
    kube_namespace: str,
    kube_client: k8s.ApiClient,
    flux: FluxStandIn,
    outcome: str,
    result: str,
    reason: str,
) -> None:
    metrics = OutcomeMetrics(CollectorRegistry())
    timeout = 2.0 if outcome == "hang" else WAIT
    watcher = OutcomeWatcher(kube_client, metrics, timeout=timeout)
    try:
        ref = make(kube, kube_namespace, "Kustomization", "apps", outcome)
        value = RequestClock().next()
        await request(kube_client, ref, value)
        got = await asyncio.wait_for(watcher.follow(ref, value), WAIT)
    finally:
        await watcher.close()
    assert (got.result, got.reason, got.requested_at, got.ref) == (result, reason, value, ref)
    if result == "error":
        assert got.handled_at is None and got.ready_at is None
        assert "not handled" in got.message
    else:
        assert got.handled_at is not None and got.ready_at is not None
        assert got.patched_at <= got.handled_at <= got.ready_at
        assert got.status is not None and got.status.handled == value
    assert metrics.outcomes.labels("Kustomization", result)._value.get() == 1
    assert metrics.waiting._value.get() == 0


async def test_many_objects_are_followed_over_one_watch_per_kind(
    kube: KubeAPI,
    kube_namespace: str,
    kube_client: k8s.ApiClient,
    flux: FluxStandIn,
    watcher: OutcomeWatcher,
) -> None:
    refs = [make(kube, kube_namespace, "Kustomization", f"app-{i}") for i in range(40)]
    refs += [make(kube, kube_namespace, "HelmRelease", f"web-{i}", "fail") for i in range(10)]
    clock = RequestClock()
    values = [clock.next() for _ in refs]
    await asyncio.gather(*(request(kube_client, r, v) for r, v in zip(refs, values, strict=True)))
    futures = [watcher.follow(r, v) for r, v in zip(refs, values, strict=True)]
    assert watcher.waiting == 50
    outcomes = await asyncio.wait_for(asyncio.gather(*futures), WAIT)
    assert [o.result for o in outcomes] == ["success"] * 40 + ["failure"] * 10
    assert [o.requested_at for o in outcomes] == values
    assert len(watcher._scopes) == 2  # one watch for Kustomizations, one for HelmReleases
    assert watcher.waiting == 0


async def test_following_the_same_request_twice_gives_the_same_future(
    kube: KubeAPI, kube_namespace: str, watcher: OutcomeWatcher
) -> None:
    ref = make(kube, kube_namespace, "Kustomization", "apps")
    first = watcher.follow(ref, "2025-01-01T00:00:00.000000001Z")
    assert watcher.follow(ref, "2025-01-01T00:00:00.000000001Z") is first
    assert watcher.waiting == 1


async def test_a_request_superseded_by_a_later_one_is_settled_by_the_later_reconcile(
    kube: KubeAPI,
    kube_namespace: str,
    kube_client: k8s.ApiClient,
    flux: FluxStandIn,
    watcher: OutcomeWatcher,
) -> None:
    ref = make(kube, kube_namespace, "Kustomization", "apps", "hang")
    clock = RequestClock()
    first, second = clock.next(), clock.next()
    await request(kube_client, ref, first)
    pending = watcher.follow(ref, first)
    await asyncio.wait_for(flux.wait_handled(1, "apps"), WAIT)  # noticed, never handled

    await wait_for(lambda: getattr(watcher._status(ref), "requested", None) == first, "seen")
    kube.apply(
        flux_object("Kustomization", "apps", {OUTCOME_LABEL: "succeed"}), namespace=kube_namespace
    )
    await request(kube_client, ref, second)
    later = watcher.follow(ref, second)
    a, b = await asyncio.wait_for(asyncio.gather(pending, later), WAIT)
    assert (a.result, a.superseded_by) == ("success", second)
    assert (b.result, b.superseded_by) == ("success", None)


async def test_an_object_deleted_while_followed_is_an_error(
    kube: KubeAPI,
    kube_namespace: str,
    kube_client: k8s.ApiClient,
    watcher: OutcomeWatcher,
) -> None:
    ref = make(kube, kube_namespace, "Kustomization", "apps")
    value = RequestClock().next()
    await request(kube_client, ref, value)
    future = watcher.follow(ref, value)
    await asyncio.wait_for(watcher.synced(ref), WAIT)
    await k8s.CustomObjectsApi(kube_client).delete_namespaced_custom_object(
        ref.group, ref.version, ref.namespace, ref.plural, ref.name
    )
    got = await asyncio.wait_for(future, WAIT)
    assert (got.result, got.reason) == ("error", "ObjectDeleted")


async def test_a_request_handled_before_it_is_followed_is_settled_from_the_cache(
    kube: KubeAPI,
    kube_namespace: str,
    kube_client: k8s.ApiClient,
    flux: FluxStandIn,
    watcher: OutcomeWatcher,
) -> None:
    ref = make(kube, kube_namespace, "Kustomization", "apps")
    value = RequestClock().next()
    watcher.follow(ref, "2000-01-01T00:00:00.000000000Z").cancel()  # start the watch early
    await asyncio.wait_for(watcher.synced(ref), WAIT)
    await request(kube_client, ref, value)
    await asyncio.wait_for(flux.wait_handled(1, "apps"), WAIT)

    def cached() -> bool:
        status = watcher._status(ref)
        return status is not None and status.handled == value and settled(status) is not None

    await wait_for(cached, "the handled request in the cache")
    future = watcher.follow(ref, value)
    assert future.done() and future.result().result == "success"


async def test_the_watch_survives_dropped_connections_and_410(
    kube: KubeAPI, kube_namespace: str, kube_client: k8s.ApiClient, kube_proxy: FaultProxy
) -> None:
    metrics = OutcomeMetrics(CollectorRegistry())
    settings = WatchSettings(backoff_initial_s=0.05, backoff_max_s=0.2)
    async with await kube.api_client(server=kube_proxy.url) as proxied:
        watcher = OutcomeWatcher(proxied, metrics, timeout=WAIT, settings=settings)
        try:
            async with FluxStandIn(kube_client, kube_namespace, delay=0.2):
                refs = [make(kube, kube_namespace, "Kustomization", f"a{i}") for i in range(3)]
                clock = RequestClock()
                watcher.follow(refs[0], "2000-01-01T00:00:00.000000000Z").cancel()
                await asyncio.wait_for(watcher.synced(refs[0]), WAIT)
                got = []
                for ref in refs:
                    # Every request's watch is cut under it, once by a reset connection and
                    # once by a 410 Gone on the next watch request (relist).
                    await kube_proxy.drop_connections()
                    kube_proxy.fail(410, times=1, path="kustomizations", method="GET")
                    value = clock.next()
                    await request(kube_client, ref, value)
                    got.append(await asyncio.wait_for(watcher.follow(ref, value), WAIT))
        finally:
            await watcher.close()
    assert [o.result for o in got] == ["success"] * 3
    assert metrics.watch_restarts.labels("Kustomization", "gone")._value.get() >= 1  # relisted


def ready(status: str, reason: str) -> dict[str, Any]:
    return {"status": {"conditions": [{"type": "Ready", "status": status, "reason": reason}]}}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        pytest.param({}, None, id="no-status"),
        pytest.param(
            ready("True", "Ok"),
            "success",
            id="ready-true",
        ),
        pytest.param(
            ready("False", "Progressing"),
            None,
            id="false-but-progressing",
        ),
        pytest.param(
            ready("False", "BuildFailed"),
            "failure",
            id="false-with-reason",
        ),
        pytest.param(
            ready("Unknown", "Progressing"),
            None,
            id="unknown",
        ),
        pytest.param(
            {
                "metadata": {"generation": 3},
                "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Ok",
                                           "observedGeneration": 2}]},
            },
            None,
            id="ready-about-an-older-generation",
        ),
    ],
)  # fmt: skip
def test_readiness_is_read_like_flux_writes_it(obj: dict[str, Any], expected: str | None) -> None:
    assert settled(status_of(obj)) == expected


def test_status_keeps_what_the_cdevents_mapping_needs() -> None:
    status = status_of(
        {
            "metadata": {"annotations": {REQUESTED_AT: "t2"}, "generation": 1},
            "spec": {"targetNamespace": "prod", "chart": {"spec": {"chart": "podinfo"}}},
            "status": {
                "lastHandledReconcileAt": "t1",
                "lastAttemptedRevision": "6.5.0",
                "history": [{"chartName": "podinfo", "chartVersion": "6.5.1", "appVersion": "6"}],
                "conditions": [{"type": "Ready", "status": "True", "reason": "Ok", "message": "m"}],
            },
        }
    )
    assert status == ObjectStatus(
        requested="t2",
        handled="t1",
        generation=1,
        ready=Condition("True", "Ok", "m"),
        attempted_revision="6.5.0",
        chart_name="podinfo",
        chart_version="6.5.1",
        app_version="6",
        target_namespace="prod",
    )


@pytest.mark.parametrize(
    ("snapshot", "applied"),
    [
        pytest.param({"status": "deployed", "chartVersion": "6.5.1"}, "6.5.1", id="deployed"),
        pytest.param({"status": "failed", "chartVersion": "6.5.2"}, None, id="failed-release"),
        pytest.param({"status": "superseded", "chartVersion": "6.5.0"}, None, id="superseded"),
    ],
)
def test_a_helm_release_v2_applied_revision_is_its_deployed_release(
    snapshot: dict[str, Any], applied: str | None
) -> None:
    """helm-controller v2 has no ``lastAppliedRevision``: the newest ``status.history`` entry
    says what runs, and only a ``deployed`` one was applied."""
    status = status_of({"status": {"lastAttemptedRevision": "6.5.2", "history": [snapshot]}})
    assert status.applied_revision == applied
    assert status.attempted_revision == "6.5.2"


async def test_a_helm_release_outcome_carries_the_release_from_its_history(
    kube: KubeAPI,
    kube_namespace: str,
    kube_client: k8s.ApiClient,
    flux: FluxStandIn,
    watcher: OutcomeWatcher,
) -> None:
    """On the real HelmRelease v2 schema (stand-in writing ``status.history`` as
    helm-controller does), the outcome names the chart version that was released."""
    ref = make(kube, kube_namespace, "HelmRelease", "web")
    value = RequestClock().next()
    await request(kube_client, ref, value)
    got = await asyncio.wait_for(watcher.follow(ref, value), WAIT)
    (handled,) = await asyncio.wait_for(flux.wait_handled(1, name="web"), WAIT)
    assert got.result == "success" and got.status is not None
    assert got.status.applied_revision == got.status.chart_version == handled.revision
    assert got.status.chart_name == "podinfo"


async def test_a_closed_watcher_cancels_what_it_followed(
    kube_client: k8s.ApiClient,
) -> None:
    watcher = OutcomeWatcher(kube_client, OutcomeMetrics(CollectorRegistry()), timeout=WAIT)
    ref = ObjectRef.of("Kustomization", f"t-{uuid.uuid4().hex[:8]}", "x")
    future = watcher.follow(ref, "t")
    await watcher.close()
    assert future.cancelled()
    with pytest.raises(RuntimeError):
        watcher.follow(ref, "t")


async def test_past_max_followed_the_oldest_request_gives_up_with_an_error_outcome(
    kube: KubeAPI, kube_namespace: str, kube_client: k8s.ApiClient
) -> None:
    """Issue #18: followers are bounded whatever the rate. With room for three deliveries,
    a fourth gives the oldest request (two deliveries on it) up: its future settles with an
    ``error`` outcome (FollowLimit), the metric counts it, and the newer ones stay followed."""
    metrics = OutcomeMetrics(CollectorRegistry())
    watcher = OutcomeWatcher(kube_client, metrics, timeout=WAIT, max_followed=3)
    try:
        refs = [make(kube, kube_namespace, "GitRepository", f"f{i}", "hang") for i in range(3)]
        oldest = watcher.follow(refs[0], "t0")
        assert watcher.follow(refs[0], "t0") is oldest  # a second delivery on that request
        second = watcher.follow(refs[1], "t1")
        assert (watcher.waiting, watcher.followers) == (2, 3)
        assert not oldest.done()
        third = watcher.follow(refs[2], "t2")
        outcome = await asyncio.wait_for(oldest, 1)
        assert (outcome.result, outcome.reason) == ("error", "FollowLimit")
        assert "oldest" in outcome.message
        assert not second.done() and not third.done()
        assert (watcher.waiting, watcher.followers) == (2, 2)
        assert metrics.abandoned._value.get() == 1
        assert metrics.outcomes.labels("GitRepository", "error")._value.get() == 1
        assert metrics.followed._value.get() == 2
    finally:
        await watcher.close()
