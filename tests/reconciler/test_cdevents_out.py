"""CDEvents out: the mapping of a delivery to its chain (``reconciler.chaining``), the reporter
that tells it (``reconciler.reporting``) and the whole loop end to end, all real: a signed GitHub
push into the real receiver (in-process) on a private nats-server, the real reconciler patching
on the real API server, the Flux stand-in (tests/support/fluxstandin.py) answering as Flux
would, CDEvents out on JetStream and to two HTTP sinks (a 0.5.1 one with HMAC and a 0.4.1 one,
as Flux's ``cdevents`` Receiver speaks).

Mapping (both spec versions, checked against the project's schemas and, when
``shared/cdevents-spec`` is present, the official ones): deterministic ids (a redelivery
plans the same events), one chainId, PATH links each to the event before; git push →
change.merged, registry push → artifact.published with a purl, an incoming CDEvent → not
re-emitted but linked (its chainId continued), anything else → the custom webhook event;
coalesced deliveries keep their own chains and share the run; outcomes → finished with
success/failure/error and, after success, service.deployed (HelmRelease) or
environment.modified (Kustomization).

End to end: one push naming four objects (succeed, HelmRelease succeed, fail, hang) gives
exactly the eleven events expected, each decoded by a plain nats-py subscriber and by the
cloudevents SDK, valid, linked, one chainId, the webhook's traceparent on all; the same chain
POSTed to both HTTP sinks in their spec versions; MTTP and stage histograms on ``/metrics``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from aiohttp import web
from cloudevents.core.bindings import http as ce_http
from kubernetes_asyncio import client as k8s
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from reconciler.chaining import (
    WEBHOOK_TYPE,
    Planned,
    chain_id,
    event_id,
    finished,
    ingest,
    queued,
)
from reconciler.fluxstatus import ObjectStatus, Outcome
from reconciler.kinds import ObjectRef
from reconciler.outcome_metrics import OutcomeMetrics
from reconciler.patching import Patched
from reconciler.reporting import ChainReporter
from reconciler.settings import CDEventsSettings, HttpSinkSettings
from reconciler.sinks import signature
from schemas import envelope as envelopes
from schemas import natsbinding
from schemas.cdevents import V0_4_1, V0_5_1, Event, SpecRelease, decode_http, validate
from schemas.envelope import Envelope
from tests.reconciler.conftest import Fleet, make_envelope, wait_for
from tests.schemas.cdevents_reference import official_errors, spec_dir
from tests.support.fluxobjects import flux_manifest
from tests.support.fluxstandin import (
    OUTCOME_LABEL,
    REVISION_ANNOTATION,
    FluxStandIn,
)
from tests.support.ingress import dump_yaml, hmac_hex, path_of, receiver_docs, start_ingress
from tests.support.kubeapi import KubeAPI
from tests.support.natsd import NatsServer

RELEASES = [pytest.param(V0_5_1, id="v0.5.1"), pytest.param(V0_4_1, id="v0.4.1")]
TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
SHA = "a" * 40
T1 = "2025-01-01T00:00:01.000000001Z"


def check(event: Event) -> None:
    """Valid against the project's schemas, and the official ones when they are present."""
    validate(event)
    version = event["context"].get("specversion") or event["context"]["version"]
    if spec_dir(version).is_dir():
        assert official_errors(event) == []


def built(planned: Planned, release: SpecRelease) -> Event:
    event = planned.build(release)
    check(event)
    return event


def env_of(namespace: str, receiver: str, **fields: Any) -> Envelope:
    return envelopes.validate(make_envelope(namespace, receiver, **fields))


def git_envelope(**fields: Any) -> Envelope:
    return env_of(
        "ns",
        "gh",
        ref="refs/heads/main",
        revision=SHA,
        repository={"urls": ["https://github.com/org/app.git"], "full_name": "org/app",
                    "web": "https://github.com/org/app"},
        traceparent=TRACE,
        **fields,
    )  # fmt: skip


def outcome_of(ref: ObjectRef, result: str, status: ObjectStatus | None = None) -> Outcome:
    reason = {"success": "ReconciliationSucceeded", "failure": "BuildFailed"}.get(result, "Timeout")
    return Outcome(
        ref, "2025-01-01T00:00:01.123456789Z", result, reason, "msg",  # type: ignore[arg-type]
        patched_at=1.0, handled_at=2.0, ready_at=3.0, status=status,
    )  # fmt: skip


def links(event: Event) -> list[str]:
    return [link["from"]["contextId"] for link in event["context"].get("links") or []]


@pytest.mark.parametrize("release", RELEASES)
def test_a_git_push_chain_is_linked_deterministic_and_valid(release: SpecRelease) -> None:
    env = git_envelope()
    ref = ObjectRef.of("HelmRelease", "ns", "web")
    status = ObjectStatus(
        handled="x", chart_name="podinfo", chart_version="6.5.0", target_namespace="prod"
    )
    head = ingest(env)
    assert head is not None
    plan = [head, queued(env, ref, "2025-01-01T00:00:01.123456789Z")]
    plan += finished(env, outcome_of(ref, "success", status))
    events = [built(p, release) for p in plan]
    again = [p.build(release) for p in [ingest(env), *plan[1:]] if p is not None]
    assert [e["context"]["id"] for e in again] == [e["context"]["id"] for e in events]
    kinds = [e["context"]["type"].split(".")[2:4] for e in events]
    assert kinds == [
        ["change", "merged"],
        ["pipelinerun", "queued"],
        ["pipelinerun", "finished"],
        ["service", "deployed"],
    ]
    assert {e["context"]["chainId"] for e in events} == {chain_id(env)}
    assert links(events[0]) == []
    for before, after in itertools.pairwise(events):
        assert links(after) == [before["context"]["id"]]
    merged, queued_, finished_, deployed = events
    assert merged["subject"]["id"] == SHA
    assert merged["subject"]["content"]["repository"]["id"] == "org/app"
    assert merged["context"]["timestamp"] == env["received_at"]
    assert merged["customData"]["ref"] == "refs/heads/main"
    assert queued_["subject"]["id"] == finished_["subject"]["id"]
    assert queued_["subject"]["content"]["pipelineName"] == "HelmRelease/ns/web"
    assert queued_["context"]["timestamp"] == "2025-01-01T00:00:01.123Z"
    assert finished_["subject"]["content"]["outcome"] == "success"
    assert deployed["subject"]["id"] == "prod/prod-web"
    assert deployed["subject"]["content"]["artifactId"] == "pkg:generic/podinfo@6.5.0"
    assert deployed["subject"]["content"]["environment"]["id"] == "prod"
    assert all(p.extensions == {"traceparent": TRACE} for p in plan)


@pytest.mark.parametrize(
    ("result", "errors"),
    [
        pytest.param("failure", "BuildFailed: msg", id="failure"),
        pytest.param("error", "Timeout: msg", id="timeout-is-error"),
    ],
)
def test_an_unsuccessful_outcome_finishes_with_its_reason_and_deploys_nothing(
    result: str, errors: str
) -> None:
    env = git_envelope()
    ref = ObjectRef.of("Kustomization", "ns", "apps")
    plan = finished(env, outcome_of(ref, result, ObjectStatus(applied_revision="main@sha1:x")))
    assert len(plan) == 1
    for release in (V0_5_1, V0_4_1):
        content = built(plan[0], release)["subject"]["content"]
        assert (content["outcome"], content["errors"]) == (result, errors)


def test_a_ready_kustomization_modifies_its_environment() -> None:
    env = git_envelope()
    ref = ObjectRef.of("Kustomization", "ns", "apps")
    status = ObjectStatus(applied_revision="main@sha1:" + SHA)
    _, modified = finished(env, outcome_of(ref, "success", status))
    for release in (V0_5_1, V0_4_1):
        event = built(modified, release)
        assert event["context"]["type"].startswith("dev.cdevents.environment.modified.")
        assert event["subject"]["id"] == "ns"
        assert event["customData"] == {
            "object": "Kustomization/ns/apps",
            "revision": status.applied_revision,
        }


@pytest.mark.parametrize("release", RELEASES)
def test_a_registry_push_is_an_artifact_published_with_a_purl(release: SpecRelease) -> None:
    env = env_of(
        "ns", "hub", event="push",
        artifact={"registry": "ghcr.io", "repository": "org/app", "tag": "v1.2.3",
                  "digest": "sha256:" + "b" * 64},
    )  # fmt: skip
    head = ingest(env)
    assert head is not None and head.type_key == "artifact.published"
    event = built(head, release)
    assert event["subject"]["id"] == (
        "pkg:oci/app@sha256%3A" + "b" * 64 + "?repository_url=ghcr.io/org/app&tag=v1.2.3"
    )


@pytest.mark.parametrize("release", RELEASES)
def test_an_incoming_cdevent_is_linked_not_re_emitted(release: SpecRelease) -> None:
    incoming = {"context": {"id": "their-id", "chainId": "their-chain", "type": "x"}}
    env = env_of("ns", "cd", cdevent=incoming)
    assert ingest(env) is None
    event = built(queued(env, ObjectRef.of("Kustomization", "ns", "apps"), T1), release)
    assert links(event) == ["their-id"]
    assert event["context"]["chainId"] == "their-chain"


@pytest.mark.parametrize("release", RELEASES)
def test_a_delivery_without_revision_or_artifact_starts_with_the_custom_event(
    release: SpecRelease,
) -> None:
    head = ingest(env_of("ns", "generic", event="generic"))
    assert head is not None
    event = built(head, release)
    assert event["context"]["type"] == WEBHOOK_TYPE


def test_coalesced_deliveries_keep_their_own_chains_and_share_the_run() -> None:
    ref = ObjectRef.of("Kustomization", "ns", "apps")
    a, b = git_envelope(), git_envelope()
    qa, qb = (built(queued(env, ref, T1), V0_5_1) for env in (a, b))
    assert qa["subject"]["id"] == qb["subject"]["id"] == f"Kustomization/ns/apps@{T1}"
    assert qa["context"]["chainId"] != qb["context"]["chainId"]
    assert links(qa) == [event_id(a["id"], "ingest")] and links(qb) == [event_id(b["id"], "ingest")]


class RecordingWatcher:
    """Records what the reporter asks to follow (the real watcher is tested on its own);
    following one request again returns its future, as the real one does."""

    def __init__(self) -> None:
        self.followed: list[ObjectRef] = []
        self.futures: dict[tuple[str, str], asyncio.Future[Outcome]] = {}

    def follow(
        self, ref: ObjectRef, requested_at: str, patched_at: float
    ) -> asyncio.Future[Outcome]:
        self.followed.append(ref)
        key = (ref.key, requested_at)
        if key not in self.futures:
            self.futures[key] = asyncio.get_running_loop().create_future()
        return self.futures[key]


async def test_an_external_artifact_is_queued_but_never_followed() -> None:
    """ExternalArtifact's status has no ``lastHandledReconcileAt``, so a followed request could
    only time out into an ``error`` outcome; the chain ends at ``queued`` instead."""
    watcher = RecordingWatcher()
    emitted: list[Planned] = []

    def emit(planned: Planned) -> None:
        emitted.append(planned)

    reporter = ChainReporter(emit, watcher, OutcomeMetrics(CollectorRegistry()))
    external = ObjectRef.of("ExternalArtifact", "ns", "podinfo")
    generator = ObjectRef.of("ArtifactGenerator", "ns", "podinfo")
    for ref in (external, generator):
        env = git_envelope()
        reporter.patched(Patched(ref, T1, (env["id"],)), env)
    assert watcher.followed == [generator]
    assert [p.type_key for p in emitted] == ["pipelinerun.queued", "pipelinerun.queued"]


async def test_a_coalesced_patch_is_one_request_with_a_chain_per_delivery() -> None:
    """The consumer reports a coalesced patch once per delivery it carried: each delivery
    gets its own ``queued`` and ``finished`` and its own MTTP, while the request's stages
    (patched→handled, handled→ready) count once, as it is one request."""
    watcher = RecordingWatcher()
    emitted: list[Planned] = []

    def emit(planned: Planned) -> None:
        emitted.append(planned)

    registry = CollectorRegistry()
    reporter = ChainReporter(emit, watcher, OutcomeMetrics(registry))
    ref = ObjectRef.of("Kustomization", "ns", "apps")
    a, b = git_envelope(), git_envelope()
    patched = Patched(ref, T1, (a["id"], b["id"]))
    for env in (a, b):
        reporter.patched(patched, env)
    assert watcher.followed == [ref, ref]
    watcher.futures[(ref.key, T1)].set_result(outcome_of(ref, "success"))
    await asyncio.sleep(0)  # the future's callbacks run
    assert [(p.type_key, p.delivery_id) for p in emitted] == [
        ("pipelinerun.queued", a["delivery_id"]),
        ("pipelinerun.queued", b["delivery_id"]),
        ("pipelinerun.finished", a["delivery_id"]),
        ("pipelinerun.finished", b["delivery_id"]),
    ]

    def count(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(f"fluxrelay_reconciler_{name}_count", labels)

    assert count("mttp_seconds", kind="Kustomization") == 2
    assert count("stage_seconds", stage="patched_handled") == 1
    assert count("stage_seconds", stage="handled_ready") == 1


# --------------------------------------------------------------------------- end to end


class Peer:
    """An HTTP sink in the test: records every POST."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.received.append(
            ({k.lower(): v for k, v in request.headers.items()}, await request.read())
        )
        return web.json_response({"status": "ok"}, status=202)

    async def start(self) -> Peer:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.2)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self.runner.addresses[0][1])
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def peers() -> AsyncIterator[tuple[Peer, Peer]]:
    new, old = await Peer().start(), await Peer().start()
    yield new, old
    await new.close()
    await old.close()


def sdk_decode(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """Decode with the cloudevents SDK after checking the raw headers (it invents id/time)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    assert lowered.get("ce-id") and lowered.get("ce-time") and lowered.get("ce-subject")
    sdk_headers = {k: v for k, v in lowered.items() if k.startswith("ce-") or k == "content-type"}
    event = ce_http.from_binary_event(ce_http.HTTPMessage(headers=sdk_headers, body=body))
    data = event.get_data()
    cdevent: dict[str, Any] = (
        json.loads(data) if isinstance(data, bytes | str) else dict(data or {})
    )
    assert event.get_id() == cdevent["context"]["id"]
    assert event.get_type() == cdevent["context"]["type"]
    assert event.get_subject() == cdevent["subject"]["id"]
    assert event.get_extension("traceparent") == TRACE
    return cdevent


def short(event: Event) -> tuple[str, str]:
    """(``subject.predicate``, what it is about) for comparing chains."""
    kind = ".".join(event["context"]["type"].split(".")[2:4])
    content = event["subject"]["content"]
    about = content.get("pipelineName") or event["subject"]["id"]
    if kind == "pipelinerun.finished":
        about += ":" + content["outcome"]
    return kind, about


async def test_a_signed_push_comes_out_as_one_chain_of_cdevents_on_nats_and_http(
    kube: KubeAPI,
    kube_namespace: str,
    kube_client: k8s.ApiClient,
    fleet: Fleet,
    nats_server: NatsServer,
    peers: tuple[Peer, Peer],
    tmp_path: Path,
) -> None:
    ns = kube_namespace
    new_sink, old_sink = peers
    objects: list[dict[str, Any]] = [
        flux_manifest("Kustomization", "apps"),
        flux_manifest("HelmRelease", "web", annotations={REVISION_ANNOTATION: "6.5.0"}),
        flux_manifest("Kustomization", "broken", labels={OUTCOME_LABEL: "fail"}),
        flux_manifest("Kustomization", "stuck", labels={OUTCOME_LABEL: "hang"}),
    ]
    for obj in objects:
        kube.apply(obj, namespace=ns)
    resources = [
        {"apiVersion": o["apiVersion"], "kind": o["kind"], "name": o["metadata"]["name"]}
        for o in objects
    ]
    docs = receiver_docs("gh", "github", namespace=ns, resources=resources)
    ingress = await start_ingress(nats_server.url, docs)
    nc = await nats.connect(nats_server.url)
    on_nats: list[Msg] = []

    async def collect(msg: Msg) -> None:
        on_nats.append(msg)

    await nc.subscribe("dev.cdevents.>", cb=collect)
    try:
        async with FluxStandIn(kube_client, ns, delay=0.2):
            receivers = tmp_path / "receivers.yaml"
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
            cdevents = CDEventsSettings(
                nats=True,
                retry_initial=0.05,
                retry_max=0.5,
                sinks=(
                    HttpSinkSettings(url=f"http://127.0.0.1:{new_sink.port}/hook", name="new",
                                     auth="hmac", secret="k3y"),
                    HttpSinkSettings(url=f"http://127.0.0.1:{old_sink.port}/hook", name="flux",
                                     spec_version="0.4.1"),
                ),
            )  # fmt: skip
            settings = replace(
                settings, nats_url=nats_server.url, outcome_timeout=8.0, cdevents=cdevents
            )
            reconciler = await fleet.start(settings)
            body = json.dumps(
                {
                    "ref": "refs/heads/main",
                    "before": "0" * 40,
                    "after": SHA,
                    "repository": {
                        "clone_url": "https://github.com/org/app.git",
                        "html_url": "https://github.com/org/app",
                        "full_name": "org/app",
                    },
                    "commits": [],
                }
            ).encode()
            resp = await ingress.client.post(
                path_of("gh", namespace=ns),
                data=body,
                headers={
                    "Content-Type": "application/json",
                    "X-GitHub-Event": "push",
                    "X-GitHub-Delivery": "cdevents-e2e-1",
                    "X-Hub-Signature-256": "sha256=" + hmac_hex("s3cr3t-s3cr3t-s3cr3t", body),
                    "traceparent": TRACE,
                },
            )
            assert resp.status == 202, await resp.text()
            envelope_id = (await resp.json())["id"]
            await wait_for(lambda: len(on_nats) >= 11, "eleven CDEvents on NATS")
            await wait_for(lambda: len(new_sink.received) >= 11, "eleven POSTs (0.5.1)")
            await wait_for(lambda: len(old_sink.received) >= 11, "eleven POSTs (0.4.1)")
            assert reconciler.metrics_port is not None
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{reconciler.metrics_port}/metrics"
                async with http.get(url) as metrics_resp:
                    exposition = await metrics_resp.text()
    finally:
        # Stop the reconciler while its nats-server still runs (the fixture stops the server
        # first): otherwise its clients reconnect against a dead server during teardown.
        await fleet.stop_all()
        await nc.close()
        await ingress.close()

    # ---- NATS: each message decoded by our codec and by the SDK, valid, one chain
    chain: list[Event] = []
    for msg in on_nats:
        headers = dict(msg.headers or {})
        assert headers["Nats-Msg-Id"] == headers["ce-id"]
        assert msg.subject == natsbinding.from_message(headers, msg.data).attributes["type"]
        cdevent = sdk_decode(headers, msg.data)
        assert cdevent == json.loads(msg.data)
        assert "specversion" in cdevent["context"]
        check(cdevent)
        chain.append(cdevent)
    assert len(chain) == 11
    k = f"Kustomization/{ns}"
    assert sorted(short(e) for e in chain) == sorted([
        ("change.merged", SHA),
        ("pipelinerun.queued", f"{k}/apps"),
        ("pipelinerun.queued", f"HelmRelease/{ns}/web"),
        ("pipelinerun.queued", f"{k}/broken"),
        ("pipelinerun.queued", f"{k}/stuck"),
        ("pipelinerun.finished", f"{k}/apps:success"),
        ("pipelinerun.finished", f"HelmRelease/{ns}/web:success"),
        ("pipelinerun.finished", f"{k}/broken:failure"),
        ("pipelinerun.finished", f"{k}/stuck:error"),
        ("environment.modified", ns),
        ("service.deployed", f"{ns}/web"),
    ])  # fmt: skip
    by_id = {e["context"]["id"]: e for e in chain}
    assert len(by_id) == 11
    assert {e["context"]["chainId"] for e in chain} == {event_id(envelope_id, "chain")}
    (head,) = [e for e in chain if not links(e)]
    assert head["context"]["id"] == event_id(envelope_id, "ingest")
    for event in chain:
        if event is head:
            continue
        (previous,) = links(event)
        before = short(by_id[previous])[0]
        expected_before = {
            "pipelinerun.queued": "change.merged",
            "pipelinerun.finished": "pipelinerun.queued",
            "environment.modified": "pipelinerun.finished",
            "service.deployed": "pipelinerun.finished",
        }[short(event)[0]]
        assert before == expected_before
        if before == "pipelinerun.queued":  # the same run: one object's reconcile request
            assert by_id[previous]["subject"]["id"] == event["subject"]["id"]
    for kind, name in (("environment.modified", "apps"), ("service.deployed", "web")):
        (event,) = [e for e in chain if short(e)[0] == kind]
        (previous,) = links(event)
        assert by_id[previous]["subject"]["content"]["pipelineName"].endswith(f"/{name}")
    (deployed,) = [e for e in chain if short(e)[0] == "service.deployed"]
    assert deployed["subject"]["content"]["artifactId"] == "pkg:generic/podinfo@6.5.0"
    (stuck,) = [e for e in chain if short(e) == ("pipelinerun.finished", f"{k}/stuck:error")]
    assert stuck["subject"]["content"]["errors"].startswith("Timeout:")

    # ---- HTTP: the same chain, HMAC-signed, in the 0.5.1 sink's version
    posted = []
    for headers, body in new_sink.received:
        assert headers["x-signature"] == signature(b"k3y", body)
        posted.append(sdk_decode(headers, body))
    assert sorted(e["context"]["id"] for e in posted) == sorted(by_id)
    assert all(e == by_id[e["context"]["id"]] for e in posted)

    # ---- HTTP 0.4.1: what Flux's cdevents Receiver parses (0.4.1 context, valid, binary mode)
    flux_chain = []
    for headers, body in old_sink.received:
        decoded = decode_http(headers, body)
        assert decoded.mode == "binary" and decoded.mismatches == ()
        event = decoded.cdevent
        assert event["context"]["version"] == "0.4.1" and "specversion" not in event["context"]
        check(event)
        flux_chain.append(event)
    assert sorted(e["context"]["id"] for e in flux_chain) == sorted(by_id)
    assert sorted(short(e) for e in flux_chain) == sorted(short(e) for e in chain)

    # ---- /metrics: MTTP per kind and the four stages
    lines = exposition.splitlines()
    assert 'fluxrelay_reconciler_mttp_seconds_count{kind="Kustomization"} 1.0' in lines
    assert 'fluxrelay_reconciler_mttp_seconds_count{kind="HelmRelease"} 1.0' in lines
    for stage, count in (("received_stored", 1), ("stored_patched", 4),
                         ("patched_handled", 3), ("handled_ready", 3)):  # fmt: skip
        assert f'fluxrelay_reconciler_stage_seconds_count{{stage="{stage}"}} {count}.0' in lines
    assert 'fluxrelay_reconciler_outcomes_total{kind="Kustomization",result="error"} 1.0' in lines
    assert 'fluxrelay_reconciler_sink_sent_total{sink="flux"} 11.0' in lines


def test_a_redelivery_plans_an_identical_ingest_event() -> None:
    env = git_envelope()
    first, second = ingest(env), ingest(envelopes.validate(json.loads(json.dumps(env))))
    assert first is not None and second is not None
    assert first.build(V0_5_1) == second.build(V0_5_1)
