"""``fluxrelay-reconciler explain`` against real stores (issue #19).

A real receiver (aiohttp ingress) takes signed GitHub pushes into a real nats-server; two
reconciler shards (in-process, real kube-apiserver with Flux's CRDs, the Flux stand-in
settling requests) consume them and emit CDEvents to the server's CDEvents stream. Then:

- a push naming three Kustomizations, two in shard ``a`` (one of which fails) and one in
  shard ``b``: ``explain <delivery id>``, run as the CLI in a subprocess, tells all three
  requests with their outcomes and MTTP, and each shard's view of the others, from one
  command, in text and JSON;
- ``fluxrelay-receiver send --explain``: a signed test push, then its story once the shards
  are done with it, from the one command an operator runs after configuring a webhook;
- one push per remaining reason (``match_labels``, ``filter_false`` with its expression,
  ``cross_namespace``, automatic targeting's ``other_ref``, ``pinned``, ``path_excluded``
  and ``no_source``):
  each story names it, in text and JSON;
- a push whose only named object does not exist: the story says why nothing happened
  (``not_found``) and that it was dead-lettered;
- what the stores cannot say is said: an unknown id.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s

from reconciler import explaining
from reconciler.kinds import SHARD_LABEL
from reconciler.settings import CDEventsSettings
from reconciler.targeting import TARGETING_ANNOTATION
from tests.reconciler.conftest import Fleet, wait_for
from tests.reconciler.test_indexing import git
from tests.support.fluxobjects import flux_manifest
from tests.support.fluxstandin import OUTCOME_LABEL, FluxStandIn
from tests.support.ingress import dump_yaml, hmac_hex, path_of, receiver_docs, start_ingress
from tests.support.kubeapi import KubeAPI
from tests.support.natsd import NatsServer

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cr3t-s3cr3t-s3cr3t"


def push_body(repo: str) -> bytes:
    """A push to ``repo`` changing ``docs/guide.md`` (the commit list is complete)."""
    return json.dumps(
        {
            "ref": "refs/heads/main",
            "before": "0" * 40,
            "after": "b" * 40,
            "repository": {
                "clone_url": f"https://github.com/org/{repo}.git",
                "html_url": f"https://github.com/org/{repo}",
                "full_name": f"org/{repo}",
            },
            "commits": [
                {"id": "b" * 40, "added": [], "modified": ["docs/guide.md"], "removed": []}
            ],
        }
    ).encode()


REASONS = {
    "labels": "match_labels",
    "cel": "filter_false",
    "away": "cross_namespace",
    "auto": "other_ref",
    "narrow": "path_excluded",
}
"""Receiver -> the reason its delivery reconciles nothing for (in shard ``a``; shard ``b``
adds its own: ``shard`` or ``no_source``). ``auto`` also shows ``pinned``."""


REPOS = {"narrow": "narrow"}
"""The repository a Receiver's push names when not ``auto``'s (whose sources follow it)."""


def reason_receivers(ns: str, api_version: str) -> list[dict[str, Any]]:
    """One Receiver per remaining reason (not_found and shard are the push's and lost's)."""
    kustomization = {"apiVersion": api_version, "kind": "Kustomization"}
    docs = receiver_docs(
        "labels", "github", namespace=ns,
        resources=[{**kustomization, "name": "*", "matchLabels": {"team": "nobody"}}],
    )  # fmt: skip
    docs += receiver_docs("cel", "github", namespace=ns, resources=[{**kustomization,
                          "name": "a-ok"}])  # fmt: skip
    docs += receiver_docs(
        "away", "github", namespace=ns,
        resources=[{**kustomization, "name": "a-ok", "namespace": "elsewhere"}],
    )  # fmt: skip
    docs += receiver_docs("auto", "github", namespace=ns)
    docs += receiver_docs("narrow", "github", namespace=ns)
    for doc in docs:
        if doc["kind"] != "Receiver":
            continue
        if doc["metadata"]["name"] == "cel":
            doc["spec"]["resourceFilter"] = "res.metadata.name == 'someone-else'"
        if doc["metadata"]["name"] in ("auto", "narrow"):
            doc["spec"]["resources"] = []
            doc["metadata"]["annotations"] = {TARGETING_ANNOTATION: "auto"}
    return docs


def auto_sources(ns: str) -> list[dict[str, Any]]:
    """Sources of the pushed repository in shard a, none following the pushed branch."""
    url = "https://github.com/org/auto"
    labels = {SHARD_LABEL: "a"}
    return [
        git("dev", url, {"branch": "dev"}, namespace=ns, labels=labels),
        git("pinned", url, {"commit": "c" * 40}, namespace=ns, labels=labels),
        git(
            "apps-only",
            "https://github.com/org/narrow",
            {"branch": "main"},
            namespace=ns,
            labels=labels,
            annotations={"fluxrelay.io/paths": "apps/**"},
        ),
    ]


async def each_reason_is_named(streams: explaining.ExplainSettings) -> None:
    """Each untargeted delivery's story names its reason, in text and in JSON."""
    stories: list[explaining.Story] = []
    for name, reason in REASONS.items():

        async def told(name: str = name, reason: str = reason) -> bool:
            # each shard tells its part when it is done (automatic targeting first waits
            # for the index to list the sources)
            stories[:] = await explaining.explain(streams, f"explain-{name}")
            return f"reconciled nothing: {reason}" in explaining.render(stories)

        await wait_for(told, f"{name}: {reason} told", limit=60)
        data = json.loads(explaining.render_json(stories))
        decisions = [
            d["reason"]
            for step in data[0]["timeline"]
            if step["step"] == "targeted nothing"
            for d in step["decisions"]
        ]
        assert reason in decisions, data
    auto = explaining.render(await explaining.explain(streams, "explain-auto"))
    assert "pinned (follows commit/digest" in auto, auto
    assert "other_ref (follows branch dev, not refs/heads/main)" in auto, auto
    assert "shard b reconciled nothing: no_source" in auto, auto


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FLUXRELAY_")}


def cli(nats_url: str, streams: explaining.ExplainSettings, *args: str) -> str:
    """The real command line, as an operator runs it."""
    result = subprocess.run(
        [
            sys.executable, "-m", "reconciler", "explain", *args,
            "--nats-url", nats_url,
            "--stream", streams.stream,
            "--stream-subject-prefix", streams.subject_prefix,
            "--dead-stream", streams.dead_stream,
        ],
        check=False, capture_output=True, text=True, timeout=120, cwd=ROOT,
        env=_clean_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.timeout(300)
async def test_a_push_over_two_shards_is_explained_from_one_command(
    kube: KubeAPI,
    kube_namespace: str,
    kube_client: k8s.ApiClient,
    fleet: Fleet,
    nats_server: NatsServer,
    tmp_path: Path,
) -> None:
    ns = kube_namespace
    objects = [
        flux_manifest("Kustomization", "a-ok", labels={SHARD_LABEL: "a"}),
        flux_manifest("Kustomization", "a-bad", labels={SHARD_LABEL: "a", OUTCOME_LABEL: "fail"}),
        flux_manifest("Kustomization", "b-ok", labels={SHARD_LABEL: "b"}),
    ]
    for obj in objects:
        kube.apply(obj, namespace=ns)
    named = [{"apiVersion": o["apiVersion"], "kind": o["kind"], "name": o["metadata"]["name"]}
             for o in objects]  # fmt: skip
    docs = receiver_docs("gh", "github", namespace=ns, resources=named)
    docs += receiver_docs(
        "lost", "github", namespace=ns,
        resources=[{"apiVersion": named[0]["apiVersion"], "kind": "Kustomization",
                    "name": "nowhere"}],
    )  # fmt: skip
    docs += reason_receivers(ns, named[0]["apiVersion"])
    for source in auto_sources(ns):
        kube.apply(source, namespace=ns)
    ingress = await start_ingress(nats_server.url, docs)
    try:
        receivers = tmp_path / "receivers.yaml"
        receivers.write_text(dump_yaml(docs))
        stream = ingress.state.settings.stream
        consumer = {
            "stream": stream.name,
            "subject_prefix": stream.subject_prefix,
            "dead_stream": stream.dead_name,
            "dead_subject_prefix": stream.dead_subject_prefix,
        }
        async with FluxStandIn(kube_client, ns, delay=0.2):
            for shard in ("a", "b"):
                settings = fleet.settings(receivers, consumer=consumer)
                settings = replace(
                    settings,
                    nats_url=nats_server.url,
                    shard=shard,
                    allow_cross_namespace=False,
                    outcome_timeout=20.0,
                    cdevents=CDEventsSettings(nats=True, retry_initial=0.05, retry_max=0.5),
                )
                await fleet.start(settings)
            ids: dict[str, str] = {}
            pushes = (
                ("gh", "app"),
                ("lost", "gone"),
                *((r, REPOS.get(r, "auto")) for r in REASONS),
            )
            for name, repo in pushes:
                body = push_body(repo)
                for _ in range(5):  # a 503 (not stored yet, on a loaded machine) is retried, as
                    resp = await ingress.client.post(  # GitHub retries a delivery
                        path_of(name, namespace=ns),
                        data=body,
                        headers={
                            "Content-Type": "application/json",
                            "X-GitHub-Event": "push",
                            "X-GitHub-Delivery": f"explain-{name}",
                            "X-Hub-Signature-256": "sha256=" + hmac_hex(TOKEN, body),
                        },
                    )
                    if resp.status != 503:
                        break
                    await asyncio.sleep(1)
                assert resp.status == 202, await resp.text()
                ids[name] = (await resp.json())["id"]
            streams = explaining.ExplainSettings(
                nats_url=nats_server.url,
                stream=stream.name,
                subject_prefix=stream.subject_prefix,
                dead_stream=stream.dead_name,
            )

            async def told() -> bool:
                (story,) = await explaining.explain(streams, "explain-gh")
                return len(story.requests) == 3 and all(
                    "outcome" in r for r in story.requests.values()
                )

            await wait_for(told, "three outcomes in the CDEvents stream", limit=120)
            await each_reason_is_named(streams)

            # The operator's one command after configuring a webhook: send a test push and
            # wait for its story (the receiver's send hands over to the reconciler's explain).
            sent = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "receiver", "send",
                "--url", str(ingress.client.make_url(path_of("gh", namespace=ns))),
                "--token", TOKEN, "--repo-url", "https://github.com/org/app",
                "--explain", "90", "--nats-url", nats_server.url,
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env={**_clean_env(), "FLUXRELAY_STREAM": stream.name,
                     "FLUXRELAY_STREAM_SUBJECT_PREFIX": stream.subject_prefix,
                     "FLUXRELAY_DEAD_STREAM": stream.dead_name},
            )  # fmt: skip
            out, err = await asyncio.wait_for(sent.communicate(), 150)
            assert sent.returncode == 0, err.decode()
            story_text = out.decode()
            assert story_text.startswith("202 "), story_text
            for name in ("a-ok", "b-ok"):
                assert f"=> Kustomization/{ns}/{name}: success" in story_text, story_text
            assert f"=> Kustomization/{ns}/a-bad: failure" in story_text, story_text

    finally:
        # Stop the reconcilers while their nats-server still runs (the fixture stops the
        # server first): otherwise their clients reconnect against a dead server.
        await fleet.stop_all()
        await ingress.close()

    text = cli(nats_server.url, streams, "explain-gh")
    for line in (
        f"=> Kustomization/{ns}/a-ok: success",
        f"=> Kustomization/{ns}/a-bad: failure",
        f"=> Kustomization/{ns}/b-ok: success",
        "stored, sequence",
        f"Kustomization/{ns}/b-ok: shard (not in shard a)",
    ):
        assert line in text, text
    assert "MTTP" in text
    (story,) = json.loads(cli(nats_server.url, streams, "explain-gh", "--output", "json"))
    assert story["delivery"]["delivery_id"] == "explain-gh"
    assert story["delivery"]["id"] == ids["gh"]
    assert story["stored"]["stream"] == stream.name
    outcomes = {k: v["outcome"] for k, v in story["requests"].items()}
    assert outcomes == {
        f"Kustomization/{ns}/a-ok": "success",
        f"Kustomization/{ns}/a-bad": "failure",
        f"Kustomization/{ns}/b-ok": "success",
    }
    assert all(
        v["mttpSeconds"] > 0 for v in story["requests"].values() if v["outcome"] == "success"
    )
    steps = [s["step"] for s in story["timeline"]]
    assert steps[:2] == ["received", "stored"]
    assert steps.count("reconcile requested") == 3 and steps.count("finished") == 3

    # by event id, the delivery nothing happened for: why, and that it was dead-lettered
    lost = cli(nats_server.url, streams, ids["lost"])
    assert "reconciled nothing: not_found" in lost, lost
    assert "dead-lettered (not_found)" in lost, lost
    # an id no store knows: said so
    (unknown,) = await explaining.explain(streams, "no-such-delivery")
    assert unknown.stored is None
    assert any("holds no delivery no-such-delivery" in u for u in unknown.unknown)
    last: list[dict[str, Any]] = json.loads(
        cli(nats_server.url, streams, "--receiver", f"{ns}/gh", "--last", "2", "--output", "json")
    )
    # the push above, then send's own test delivery; "lost" is another Receiver's
    assert last[0]["delivery"]["delivery_id"] == "explain-gh"
    assert len(last) == 2 and last[1]["delivery"]["receiver"] == f"{ns}/gh"
