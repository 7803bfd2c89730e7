"""Why a delivery reconciled what it did, or nothing (issue #19): targeting decisions.

Unit: the bounded record (16 kept, the rest counted, long details cut); automatic targeting
explains a push that moved nothing (no source follows the repository, sources following
another branch, a commit pin, path globs excluding every changed path, a deleted ref, an
image tag a semver range refuses) without touching the hot path; the ``untargeted`` CDEvent
and ``queued``'s ``targeting`` data validate against the CDEvents schemas of both releases.

End to end (real kube-apiserver with Flux's CRDs, real nats-server, an in-process
reconciler): one Receiver per reason (not found, no object matching ``matchLabels``, a
``resourceFilter`` CEL expression false, an object of another shard, a cross-namespace
reference refused, an automatic Receiver whose push no source follows); each delivery's
decisions name the reason and the object, and ``fluxrelay_reconciler_untargeted_total``
counts it by Receiver and reason.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from reconciler.chaining import UNTARGETED_TYPE, queued, untargeted
from reconciler.decisions import (
    CROSS_NAMESPACE,
    DELETED_REF,
    FILTER_FALSE,
    MATCH_LABELS,
    MAX_DECISIONS,
    MAX_DETAIL,
    NO_SOURCE,
    NOT_FOUND,
    OTHER_REF,
    PATH_EXCLUDED,
    PINNED,
    RECONCILED,
    SHARD,
    Decisions,
)
from reconciler.kinds import SHARD_LABEL, ObjectRef
from reconciler.patching import Patched
from reconciler.sourcetable import SourceTable
from reconciler.targeting import TARGETING_ANNOTATION
from schemas import envelope as envelopes
from schemas.cdevents import RELEASES, SpecRelease
from schemas.envelope import Envelope
from tests.reconciler.conftest import (
    Bus,
    Fleet,
    flux_object,
    make_envelope,
    receiver_manifest,
    wait_for,
)
from tests.reconciler.test_cdevents_out import built
from tests.reconciler.test_indexing import git, oci, push, registry_push
from tests.support.kubeapi import KubeAPI


def test_the_record_is_bounded_and_counts_the_rest() -> None:
    record = Decisions()
    for i in range(MAX_DECISIONS + 5):
        record.add(f"GitRepository/ns/r{i}", FILTER_FALSE, "x" * (MAX_DETAIL * 3))
    assert len(record.kept) == MAX_DECISIONS
    assert record.omitted == 5
    assert all(len(d.detail) == MAX_DETAIL for d in record.kept)
    assert record.why_not == FILTER_FALSE
    assert record.as_data()["omitted"] == 5
    assert Decisions().why_not == "no_resources"


def explain(table: SourceTable, envelope: dict[str, Any]) -> list[tuple[str, str, str]]:
    assert table.match(envelope) == []  # explain is for a push that moved nothing
    record = Decisions()
    table.explain(envelope, record)
    return [(d.target, d.reason, d.detail) for d in record.kept]


def test_automatic_targeting_says_why_a_push_moved_no_source() -> None:
    table = SourceTable()
    table.upsert(git("dev", "https://github.com/org/repo", {"branch": "dev"}))
    table.upsert(git("pinned", "https://github.com/org/repo", {"commit": "abc123"}))
    table.upsert(
        git(
            "narrow",
            "https://github.com/org/repo",
            {"branch": "main"},
            annotations={"fluxrelay.io/paths": "apps/**"},
        )
    )
    got = sorted(explain(table, push("refs/heads/main", paths=["docs/x.md"], complete=True)))
    assert got == [
        ("GitRepository/apps/dev", OTHER_REF, "follows branch dev, not refs/heads/main"),
        (
            "GitRepository/apps/narrow",
            PATH_EXCLUDED,
            "no changed path matches its fluxrelay.io/paths",
        ),
        ("GitRepository/apps/pinned", PINNED, "follows commit/digest abc123, not refs/heads/main"),
    ]
    ((target, reason, detail),) = explain(table, push("refs/heads/main", "https://gitlab.com/x/y"))
    assert (target, reason) == ("automatic", NO_SOURCE)
    assert "gitlab.com/x/y" in detail
    assert explain(table, push("refs/heads/dev", deleted=True))[0][1] == DELETED_REF


def test_automatic_targeting_says_why_an_image_push_moved_no_source() -> None:
    table = SourceTable()
    table.upsert(oci("app", "oci://ghcr.io/org/app", {"semver": ">=2.0.0"}))
    ((target, reason, detail),) = explain(table, registry_push("org/app", "1.4.0"))
    assert (target, reason) == ("OCIRepository/apps/app", OTHER_REF)
    assert detail == "follows semver >=2.0.0, not tag 1.4.0"


@pytest.mark.parametrize("release", RELEASES)
def test_the_untargeted_event_and_queued_targeting_data_are_valid_cdevents(
    release: SpecRelease,
) -> None:
    env: Envelope = envelopes.validate(make_envelope("ns", "hook"))
    record = Decisions()
    record.add("GitRepository/ns/app", FILTER_FALSE, "res.metadata.name == 'other'")
    event = built(untargeted(env, record), release)
    assert event["context"]["type"] == UNTARGETED_TYPE
    content = event["subject"]["content"]
    assert content["reason"] == FILTER_FALSE
    assert content["decisions"][0]["detail"] == "res.metadata.name == 'other'"
    record.add("GitRepository/ns/web", RECONCILED)
    ref = ObjectRef.of("GitRepository", "ns", "web")
    planned = queued(env, ref, "2025-01-01T00:00:01.123456789Z", decisions=record)
    data = built(planned, release)["customData"]
    assert [d["reason"] for d in data["targeting"]["decisions"]] == [FILTER_FALSE, RECONCILED]


class Reporter:
    """A reporter keeping each untargeted delivery's decisions."""

    def __init__(self) -> None:
        self.records: dict[str, Decisions] = {}
        self.patched_with: dict[str, Decisions] = {}

    def received(self, env: Envelope, stored_at: datetime | None) -> None:
        pass

    def patched(self, patched: Patched, env: Envelope, decisions: Decisions | None = None) -> None:
        if decisions is not None:
            self.patched_with[patched.ref.key] = decisions

    def untargeted(self, env: Envelope, decisions: Decisions) -> None:
        self.records[env["id"]] = decisions


async def test_each_reason_reaches_the_record_and_the_metric(
    kube: KubeAPI, kube_namespace: str, fleet: Fleet, bus: Bus
) -> None:
    ns = kube_namespace
    kube.apply(flux_object("GitRepository", "app"), namespace=ns)
    kube.apply(flux_object("GitRepository", "sharded", {SHARD_LABEL: "b"}), namespace=ns)
    git_repo = {"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository"}
    manifests = [
        receiver_manifest("missing", ns, [{**git_repo, "name": "gone"}]),
        receiver_manifest(
            "labels", ns, [{**git_repo, "name": "*", "matchLabels": {"team": "nobody"}}]
        ),
        receiver_manifest(
            "cel",
            ns,
            [{**git_repo, "name": "app"}],
            resource_filter="res.metadata.name == 'other'",
        ),
        receiver_manifest("shard", ns, [{**git_repo, "name": "sharded"}]),
        receiver_manifest("away", ns, [{**git_repo, "name": "app", "namespace": "elsewhere"}]),
        receiver_manifest("auto", ns, [], annotations={TARGETING_ANNOTATION: "auto"}),
    ]
    receivers = fleet.write_receivers(manifests)
    reporter = Reporter()
    settings = fleet.settings(receivers, allow_cross_namespace=False)
    reconciler = await fleet.start(settings, reporter=reporter)
    pushed = {"ref": "refs/heads/main", "revision": "f" * 40}
    repository = {"urls": ["https://github.com/org/nobody-follows"], "http": None}
    deliveries = {
        name: make_envelope(ns, name, **pushed, repository=repository)
        for name in ("missing", "labels", "cel", "shard", "away", "auto")
    }
    for env in deliveries.values():
        await bus.publish(env)
    await wait_for(lambda: len(reporter.records) == len(deliveries), "six untargeted")
    expected = {
        "missing": (NOT_FOUND, "resources[0] GitRepository/-/gone"),
        "labels": (MATCH_LABELS, f"GitRepository/{ns}/*"),
        "cel": (FILTER_FALSE, f"GitRepository/{ns}/app"),
        "shard": (SHARD, f"GitRepository/{ns}/sharded"),
        "away": (CROSS_NAMESPACE, "resources[0] GitRepository/elsewhere/app"),
        "auto": (NO_SOURCE, "automatic"),
    }
    for name, (reason, target) in expected.items():
        record = reporter.records[deliveries[name]["id"]]
        assert record.why_not == reason, name
        assert record.kept[0].target == target, name
        counted = reconciler.metrics.untargeted.labels(f"{ns}/{name}", reason)._value.get()
        assert counted == 1, name
    cel = reporter.records[deliveries["cel"]["id"]].kept[0]
    assert cel.detail == "res.metadata.name == 'other'"
    assert "nobody-follows" in reporter.records[deliveries["auto"]["id"]].kept[0].detail


async def test_resource_filter_applies_to_automatic_targets(
    kube: KubeAPI, kube_namespace: str, fleet: Fleet, bus: Bus
) -> None:
    """Issue #19: ``spec.resourceFilter`` applies to the sources the index finds as to named
    resources (it did not: automatic targets skipped the filter)."""
    ns = kube_namespace
    url = "https://github.com/org/filtered"
    kube.apply(
        git("web", url, {"branch": "main"}, namespace=ns, labels={"team": "web"}), namespace=ns
    )
    kube.apply(
        git("ops", url, {"branch": "main"}, namespace=ns, labels={"team": "ops"}), namespace=ns
    )
    receivers = fleet.write_receivers(
        [
            receiver_manifest(
                "auto",
                ns,
                [],
                annotations={TARGETING_ANNOTATION: "auto"},
                resource_filter="res.metadata.labels.team == 'web'",
            )
        ]
    )
    reporter = Reporter()
    await fleet.start(fleet.settings(receivers), reporter=reporter)
    env = make_envelope(
        ns, "auto", ref="refs/heads/main", revision="f" * 40, repository={"urls": [url]}
    )
    await bus.publish(env)
    web = f"GitRepository/{ns}/web"
    await wait_for(lambda: web in reporter.patched_with, "the web source patched")
    decisions = {d.target: d for d in reporter.patched_with[web].kept}
    assert decisions[web].reason == RECONCILED
    assert decisions[f"GitRepository/{ns}/ops"].reason == FILTER_FALSE
    assert decisions[f"GitRepository/{ns}/ops"].detail == "res.metadata.labels.team == 'web'"
    assert f"GitRepository/{ns}/ops" not in reporter.patched_with


@pytest.mark.parametrize("release", RELEASES)
def test_a_covered_request_says_so_in_the_queued_event(release: SpecRelease) -> None:
    """A delivery another replica's request covered (reconciler.coalescing) gets its queued
    event like any other, marked ``covered``: it sent no patch of its own."""
    env: Envelope = envelopes.validate(make_envelope("ns", "hook"))
    ref = ObjectRef.of("GitRepository", "ns", "web")
    at = "2025-01-01T00:00:01.123456789Z"
    assert built(queued(env, ref, at, covered=True), release)["customData"]["covered"] is True
    assert "covered" not in built(queued(env, ref, at), release)["customData"]
