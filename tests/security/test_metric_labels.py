"""Metric labels a sender chooses: a closed set per provider, ``other`` for the rest, a cap.

The finding: the ``event`` label took whatever the sender put in a header or a body field, so
200 CDEvents with made-up custom types made 200 series and 40 types of 500 KB added 38 MiB to
every scrape (and to the memory holding the series). Here the same flood is sent to the real
receiver app against a real nats-server, and ``/metrics`` is read over HTTP: every family keeps
the series it had, the exposition grows by a few hundred bytes, no label carries request text,
and documented events keep their own label. The per-provider tables are checked against the
names the providers' own code relies on, the cap is exercised on its own, and every label
value either process passes to prometheus_client is pinned to the audited list below.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from receiver import labelling
from receiver.app import create_metrics_app
from receiver.labelling import EVENT_LABELS, OTHER, event_label
from receiver.metrics import MAX_SERIES, Counters, IngressMetrics
from receiver.providers import PROVIDERS, azuredevops, bitbucket, gitlab
from schemas.cdevents.catalog import RELEASES
from tests.support.ingress import Ingress, hmac_hex, path_of, receiver_docs, start_ingress
from tests.support.natsd import NatsServer

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "schemas" / "fixtures" / "cdevents" / "v0_5_1"
MERGED = json.loads((FIXTURES / "change_merged.json").read_text())
CUSTOM = json.loads((FIXTURES / "custom_tag_pushed.json").read_text())
TOKEN = "metric-labels-s3cr3t"
HUGE = 500 * 1024
LONGEST_LABEL = 64
"""No label value of the receiver's families is longer (the longest documented event name is
about 50 characters); a longer one can only be text taken from a request."""


# ------------------------------------------------------------------------ the tables, unit


@pytest.mark.parametrize(
    ("provider", "event", "label"),
    [
        pytest.param("github", "push", "push", id="github-push"),
        pytest.param("github", "pull_request", "pull_request", id="github-pr"),
        pytest.param("github", "ping", "ping", id="github-ping"),
        pytest.param("github", "workflow_run", "workflow_run", id="github-workflow-run"),
        pytest.param("github", "Push", OTHER, id="github-case-matters"),
        pytest.param("github", "made-up", OTHER, id="github-made-up"),
        pytest.param("github", "", "", id="github-no-event"),
        pytest.param("gitlab", "Push Hook", "Push Hook", id="gitlab-push"),
        pytest.param("gitlab", "Tag Push Hook", "Tag Push Hook", id="gitlab-tag-push"),
        pytest.param("gitlab", "System Hook", "System Hook", id="gitlab-system"),
        pytest.param("gitlab", "push", OTHER, id="gitlab-github-name"),
        pytest.param("gitea", "push", "push", id="gitea-push"),
        pytest.param(
            "gitea", "pull_request_approved", "pull_request_approved", id="gitea-approved"
        ),
        pytest.param("gitea", "issue_label", OTHER, id="gitea-event-type-not-event"),
        pytest.param("forgejo", "action_run_failure", "action_run_failure", id="forgejo-run"),
        pytest.param("bitbucket", "repo:push", "repo:push", id="bitbucket-cloud-push"),
        pytest.param("bitbucket", "repo:refs_changed", "repo:refs_changed", id="bitbucket-dc"),
        pytest.param("bitbucket", "diagnostics:ping", "diagnostics:ping", id="bitbucket-ping"),
        pytest.param("bitbucket", "repo:made_up", OTHER, id="bitbucket-made-up"),
        pytest.param("azuredevops", "git.push", "git.push", id="azure-push"),
        pytest.param("azuredevops", "build.complete", "build.complete", id="azure-build"),
        pytest.param("azuredevops", "git.made.up", OTHER, id="azure-made-up"),
        pytest.param("harbor", "PUSH_ARTIFACT", "PUSH_ARTIFACT", id="harbor-push"),
        pytest.param("harbor", "push_artifact", OTHER, id="harbor-case-matters"),
        pytest.param("harbor", "", "", id="harbor-empty-body"),
        pytest.param("acr", "push", "push", id="acr-push"),
        pytest.param("acr", "chart_push", "chart_push", id="acr-chart-push"),
        pytest.param("acr", "exfiltrate", OTHER, id="acr-made-up"),
        pytest.param("nexus", "CREATED", "CREATED", id="nexus-created"),
        pytest.param("gcr", "INSERT", "INSERT", id="gcr-insert"),
        pytest.param("distribution", "pull", "pull", id="distribution-pull"),
        pytest.param(
            "cdevents", "dev.cdevents.change.merged.0.2.0", "change.merged", id="cdevents-0.4"
        ),
        pytest.param(
            "cdevents", "dev.cdevents.change.merged.0.3.0", "change.merged", id="cdevents-0.5"
        ),
        pytest.param(
            "cdevents",
            "dev.cdevents.pipelinerun.finished.0.2.0",
            "pipelinerun.finished",
            id="cdevents-pipelinerun",
        ),
        pytest.param(
            "cdevents", "dev.cdeventsx.tool-tag.pushed.0.1.0", OTHER, id="cdevents-custom"
        ),
        pytest.param("cdevents", "dev.cdevents.change.merged", OTHER, id="cdevents-no-version"),
        pytest.param(
            "cdevents", "dev.cdevents.change.merged.9.9.9", OTHER, id="cdevents-unknown-version"
        ),
        pytest.param("generic", "", "", id="generic"),
        pytest.param("generic", "push", OTHER, id="generic-has-no-events"),
        pytest.param("generic-hmac", "", "", id="generic-hmac"),
        pytest.param("generic-oidc", "", "", id="generic-oidc"),
        pytest.param("quay", "", "", id="quay"),
        pytest.param("dockerhub", "", "", id="dockerhub"),
        pytest.param("", "", "", id="refused-before-routing"),
        pytest.param("not-a-provider", "push", OTHER, id="unknown-provider"),
    ],
)
def test_event_label(provider: str, event: str, label: str) -> None:
    assert event_label(provider, event) == label


def test_every_provider_has_a_table() -> None:
    """A provider without one would label all its events ``other``: adding a provider means
    listing the event names it documents."""
    assert set(PROVIDERS) <= set(EVENT_LABELS)
    assert set(EVENT_LABELS) - set(PROVIDERS) == {""}


def test_every_label_is_short_documented_and_never_other() -> None:
    for provider, table in EVENT_LABELS.items():
        assert table[""] == "", provider
        assert OTHER not in table, f"{provider}: 'other' must stay the bucket of the unknown"
        for event, label in table.items():
            assert len(label) <= LONGEST_LABEL, (provider, event)
            assert label == event or provider == "cdevents", (provider, event)


def test_the_events_providers_special_case_are_in_their_tables() -> None:
    """The names the providers' own code branches on are documented names, so they cannot be
    missing from the tables."""
    assert set(gitlab.PUSH_EVENTS) <= labelling.GITLAB_EVENTS
    assert {*bitbucket.SERVER_PUSH_EVENTS, bitbucket.CLOUD_PUSH_EVENT, bitbucket.PING_EVENT} <= (
        labelling.BITBUCKET_EVENTS
    )
    assert azuredevops.PUSH_EVENT in labelling.AZURE_DEVOPS_EVENTS
    assert {"push", "ping", "release"} <= labelling.GITHUB_EVENTS
    assert {"push", "ping"} <= labelling.ACR_EVENTS


def test_every_catalogued_cdevent_type_is_labelled_by_subject_and_predicate() -> None:
    for release in RELEASES:
        for spec in release.events:
            assert event_label("cdevents", spec.type) == spec.key


def test_the_label_is_the_tables_string_never_the_requests() -> None:
    """A series key must not keep a request's text alive (the 27 MiB that were never freed)."""
    metrics = IngressMetrics()
    sent = "".join(["pu", "sh"])  # equal to "push" but another object
    huge = "x" * HUGE
    metrics.delivery("ns/a", "github", sent, "accepted").inc()
    metrics.delivery("ns/a", "github", huge, "accepted").inc()
    for key in metrics.deliveries.series:
        assert key[2] is not sent and key[2] is not huge
        assert key[2] in ("push", OTHER)
    assert metrics.deliveries.value("ns/a", "github", "push", "accepted") == 1
    assert metrics.deliveries.value("ns/a", "github", OTHER, "accepted") == 1


def test_a_family_stops_growing_at_its_cap(caplog: pytest.LogCaptureFixture) -> None:
    """The second line of defence: past the cap, new label combinations share one series."""
    caplog.set_level(logging.WARNING, logger="receiver.metrics")
    family = Counters("t_total", "test", ["a", "b"], max_series=3)
    for i in range(10):
        family.child(f"a{i}", "b").inc()
    family.child("a0", "b").inc()  # an existing series still counts on its own
    assert len(family.series) == 4
    assert family.value("a0", "b") == 2
    assert family.value(OTHER, OTHER) == 7
    warnings = [r for r in caplog.records if "series reached" in r.getMessage()]
    assert len(warnings) == 1, "warned once, not per delivery"


def test_the_deliveries_family_is_capped() -> None:
    metrics = IngressMetrics()
    assert metrics.deliveries.max_series == MAX_SERIES
    metrics.deliveries.max_series = 5
    for i in range(50):
        metrics.delivery(f"ns/r{i}", "github", "push", "accepted").inc()
    assert len(metrics.deliveries.series) == 6
    assert metrics.deliveries.value(OTHER, OTHER, OTHER, OTHER) == 45


# ------------------------------------------------------ the flood, against the real receiver


@dataclass
class Served:
    ingress: Ingress
    metrics: TestClient[Any, Any]

    async def scrape(self) -> bytes:
        resp = await self.metrics.get("/metrics")
        assert resp.status == 200
        return await resp.read()


@pytest.fixture
async def served(nats_session: NatsServer) -> AsyncIterator[Served]:
    docs = (
        receiver_docs("cde", "cdevents", TOKEN)
        + receiver_docs("reg", "acr", TOKEN)
        + receiver_docs("gh", "github", TOKEN)
    )
    ing = await start_ingress(nats_session.url, docs)
    client: TestClient[Any, Any] = TestClient(TestServer(create_metrics_app(ing.state)))
    await client.start_server()
    yield Served(ing, client)
    await client.close()
    await ing.close()


def cdevent(event_type: str | None = None) -> bytes:
    event = copy.deepcopy(CUSTOM if event_type else MERGED)
    event["context"]["id"] = str(uuid.uuid4())
    if event_type:
        event["context"]["type"] = event_type
    return json.dumps(event).encode()


def acr(action: str) -> bytes:
    return json.dumps(
        {
            "id": str(uuid.uuid4()),
            "action": action,
            "target": {"repository": "team/app", "tag": "v1"},
            "request": {"host": "example.azurecr.io"},
        }
    ).encode()


GH_BODY = b'{"ref": "refs/heads/main", "repository": {"full_name": "o/r"}}'


def github_headers(event: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": "sha256=" + hmac_hex(TOKEN, GH_BODY),
    }


async def post(ing: Ingress, name: str, body: bytes, **headers: str) -> int:
    resp = await ing.client.post(
        path_of(name, TOKEN), data=body, headers={"Content-Type": "application/json", **headers}
    )
    await resp.read()
    return resp.status


def series_by_family(exposition: bytes) -> dict[str, set[tuple[tuple[str, str], ...]]]:
    """Distinct label sets per metric family (histogram buckets and ``_created`` samples, which
    the text format shows as a family of their own, folded into their series)."""
    out: dict[str, set[tuple[tuple[str, str], ...]]] = {}
    for family in text_string_to_metric_families(exposition.decode()):
        out.setdefault(family.name.removesuffix("_created"), set()).update(
            tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
            for sample in family.samples
        )
    return out


def label_values(exposition: bytes) -> set[str]:
    return {
        value
        for family in text_string_to_metric_families(exposition.decode())
        for sample in family.samples
        for value in sample.labels.values()
    }


async def test_made_up_events_leave_the_series_and_the_scrape_as_they_were(
    served: Served,
) -> None:
    ing = served.ingress
    # Documented events first: they keep their own label.
    assert await post(ing, "cde", cdevent()) == 202
    assert await post(ing, "reg", acr("push")) == 202
    assert await post(ing, "gh", GH_BODY, **github_headers("push")) == 202
    before = await served.scrape()
    families_before = series_by_family(before)

    # The flood of the finding, and the same for the other providers whose event a sender sets:
    # ACR's body field, and GitHub's header (which no signature covers: a replayed signed
    # body can carry any X-GitHub-Event).
    for i in range(200):
        assert await post(ing, "cde", cdevent(f"dev.cdeventsx.tool{i}-thing.made.0.1.0")) == 202
    for i in range(40):
        huge_type = f"dev.cdeventsx.{'a' * HUGE}{i}-thing.made.0.1.0"
        assert await post(ing, "cde", cdevent(huge_type)) == 202
    for i in range(200):
        assert await post(ing, "reg", acr(f"made-up-{i}")) == 202
    for i in range(20):
        assert await post(ing, "reg", acr(f"{'b' * HUGE}{i}")) == 202
    for i in range(200):
        assert await post(ing, "gh", GH_BODY, **github_headers(f"made_up_{i}")) == 202
    for i in range(20):  # as long as a header line may be (8190 bytes with the name)
        assert await post(ing, "gh", GH_BODY, **github_headers(f"{'c' * 8000}{i}")) == 202

    after = await served.scrape()
    families_after = series_by_family(after)

    assert set(families_after) == set(families_before)
    grown = {
        name: len(families_after[name]) - len(families_before[name]) for name in families_after
    }
    # Only the deliveries family may grow, by one ``other`` series per flooded Receiver.
    assert grown.pop("fluxrelay_receiver_deliveries") == 3
    assert not any(grown.values()), grown
    assert len(after) - len(before) < 2048, "three series, not 700 (nor 58 MB of label text)"
    assert len(after) < 64 * 1024

    values = label_values(after)
    assert max(len(v) for v in values) <= LONGEST_LABEL
    assert not any("made" in v or "tool" in v for v in values)
    assert {"change.merged", "push", OTHER} <= values

    deliveries = ing.state.metrics.deliveries
    assert deliveries.value("default/cde", "cdevents", "change.merged", "accepted") == 1
    assert deliveries.value("default/cde", "cdevents", OTHER, "accepted") == 240
    assert deliveries.value("default/reg", "acr", "push", "accepted") == 1
    assert deliveries.value("default/reg", "acr", OTHER, "accepted") == 220
    assert deliveries.value("default/gh", "github", "push", "accepted") == 1
    assert deliveries.value("default/gh", "github", OTHER, "accepted") == 220
    for key in deliveries.series:  # no series key holds request text
        assert all(len(value) <= LONGEST_LABEL for value in key), key


# ------------------------------------------------- every label value either process passes


AUDITED_LABEL_ARGUMENTS = {
    # reconciler: Flux kinds are KINDS entries (Receiver resources are checked against it,
    # the index holds source kinds only), never an envelope field.
    "ref.kind",
    "outcome.ref.kind",
    "waiter.ref.kind",
    "scope.kind",
    "collection.kind",  # metadata.MetadataCache: kinds looked up after the KINDS check
    # reconciler: error reasons are code constants (plus api_<HTTP status of the API server>).
    "reason",
    "getattr(e, 'reason', 'error')",
    # reconciler: a fixed subject.predicate per emitted CDEvent (chaining.Planned.type_key).
    "planned.type_key",
    # reconciler: Literal["success", "failure", "error"].
    "outcome.result",
    # reconciler: sink names are configuration.
    "name",
    "self.name",
    # reconciler: the API verb is a code constant; the status comes from the API server.
    "verb",
    "str(e.status)",
    # receiver: a Receiver's namespace/name (configuration).
    "spec.key",
    # receiver: reload results are code constants.
    "result",
    # reconciler: why a watch started over, runtime.informer.Restart ("gone" or "error").
    "why",
    # reconciler: a known Receiver's namespace/name (the stored envelope names it, but an
    # unknown one never gets this far: targeting retries it as unknown_receiver).
    "receiver",
    # reconciler: the first decision's reason, a reconciler.decisions constant.
    "decisions.why_not",
}
"""Every non-literal label value passed to prometheus_client in receiver/ and reconciler/.
Nothing here comes from a request or a stored envelope; a new expression fails the test below
until it is audited (and, if a sender can set it, mapped to a closed set like ``event``)."""


def test_every_label_value_passed_to_prometheus_client_is_audited() -> None:
    unaudited = []
    for package in ("receiver", "reconciler"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                if node.func.attr != "labels":
                    continue
                for arg in [*node.args, *(k.value for k in node.keywords)]:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        continue
                    if ast.unparse(arg) not in AUDITED_LABEL_ARGUMENTS:
                        unaudited.append(
                            f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(arg)}"
                        )
    assert not unaudited, unaudited


def test_the_cdevent_types_the_reconciler_labels_are_fixed() -> None:
    """``fluxrelay_reconciler_cdevents_emitted{type}`` takes ``Planned.type_key``: whatever the
    delivery's provider and event, it is one of the chain's own types."""
    from reconciler import chaining
    from schemas.envelope import Envelope

    hostile = "h" * HUGE
    envelope: dict[str, Any] = {
        "id": hashlib.sha256(b"x").hexdigest(),
        "delivery_id": hostile,
        "provider": hostile,
        "event": hostile,
        "receiver": {"namespace": "ns", "name": "r"},
        "received_at": "2026-01-01T00:00:00Z",
        "payload": {"type": hostile},
    }
    planned = chaining.ingest(cast(Envelope, envelope))
    assert planned is not None
    assert planned.type_key == chaining.WEBHOOK_TYPE
    assert len(planned.type_key) <= LONGEST_LABEL
