"""GitHub receiver against a real nats-server: normalisation of the stored message field by
field, trace context, the legacy signature header's algorithms, malformed push shapes,
form-encoded payloads and path completeness. The shapes every provider answers (signature
formats, missing headers, content types, pings, the event filter, dedup) are rows of
test_providers_table.py."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from urllib.parse import urlencode

import pytest

from schemas import envelope
from tests.support.ingress import (
    Ingress,
    hmac_hex,
    path_of,
    receiver_docs,
    repository,
    start_ingress,
)
from tests.support.natsd import NatsServer

PUSH = (Path(__file__).parent / "fixtures" / "github_push.json").read_bytes()
TOKEN = "s3cr3t-s3cr3t-s3cr3t"
PATH = path_of("gh")


@pytest.fixture
async def ingress(nats_session: NatsServer) -> AsyncIterator[Ingress]:
    ing = await start_ingress(nats_session.url, receiver_docs("gh", "github", TOKEN))
    yield ing
    await ing.close()


def signed(body: bytes, event: str = "push", **extra: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "X-Hub-Signature-256": "sha256=" + hmac_hex(TOKEN, body),
        **extra,
    }


async def test_a_signed_push_is_stored_normalised_field_by_field(ingress: Ingress) -> None:
    sent = time.time()
    resp = await ingress.client.post(PATH, data=PUSH, headers=signed(PUSH))
    answered = time.time()
    assert resp.status == 202, await resp.text()
    answer = await resp.json()
    assert answer["status"] == "accepted"
    [stored] = await ingress.stored()
    env = envelope.validate(stored.envelope)
    assert env["id"] == answer["id"]
    assert env["receiver"] == {"namespace": "default", "name": "gh"}
    assert env["provider"] == "github"
    assert env["event"] == "push"
    assert env["delivery_id"] == "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    assert env["repository"] == repository(
        "https://github.com/acme/fleet-infra.git",
        "git@github.com:acme/fleet-infra.git",
        "https://github.com/acme/fleet-infra",
        "acme/fleet-infra",
    )
    assert env["ref"] == "refs/heads/main"
    assert env["revision"] == "9049f1265b7d61be4a8904a9a27120d2064dab3b"
    assert env["previous_revision"] == "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
    assert (env["created"], env["deleted"], env["forced"]) == (False, False, False)
    assert env["changed_paths"] == [
        "apps/podinfo/hpa.yaml",
        "apps/podinfo/release.yaml",
        "clusters/old.yaml",
    ]
    assert env["paths_complete"] is True
    assert env["payload"] == json.loads(PUSH)
    assert stored.subject.endswith(".github.default.gh")
    assert stored.headers["Nats-Msg-Id"] == env["id"]
    assert stored.headers["ce-type"] == envelope.CLOUDEVENT_TYPE
    assert stored.headers["ce-id"] == env["id"]
    assert stored.headers["ce-specversion"] == "1.0"
    # Received: RFC 3339 UTC with microseconds, within the request, the same in the header.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", env["received_at"])
    assert sent <= datetime.fromisoformat(env["received_at"]).timestamp() <= answered
    assert stored.headers["ce-time"] == env["received_at"]
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", env["traceparent"])
    assert stored.headers["ce-traceparent"] == env["traceparent"]


@pytest.mark.parametrize(
    ("sent", "continued"),
    [
        pytest.param("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", True, id="valid"),
        pytest.param("00-00000000000000000000000000000000-00f067aa0ba902b7-01", False, id="zero"),
        pytest.param("01-4bf92f3577b34da6a3ce929d0e0e4736", False, id="malformed"),
    ],
)
async def test_the_senders_trace_is_continued_only_when_valid(
    ingress: Ingress, sent: str, continued: bool
) -> None:
    headers = signed(PUSH, traceparent=sent)
    resp = await ingress.client.post(PATH, data=PUSH, headers=headers)
    assert resp.status == 202, await resp.text()
    [stored] = await ingress.stored()
    trace = stored.envelope["traceparent"]
    assert stored.headers["ce-traceparent"] == trace
    if continued:
        assert trace == sent.lower()
    else:
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", trace)
        assert trace[3:35] != sent[3:35]


@pytest.mark.parametrize("algorithm", ["sha1", "sha512"])
async def test_the_legacy_header_is_verified_with_sha1_or_sha512(
    ingress: Ingress, algorithm: str
) -> None:
    headers = {k: v for k, v in signed(PUSH).items() if k != "X-Hub-Signature-256"}
    headers["X-Hub-Signature"] = f"{algorithm}=" + hmac_hex(TOKEN, PUSH, algorithm)
    resp = await ingress.client.post(PATH, data=PUSH, headers=headers)
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["status"] == "accepted"
    assert len(await ingress.stored()) == 1


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"ref": 42}', id="ref-wrong-type"),
        pytest.param(b'{"ref": "refs/heads/x", "repository": []}', id="repository-array"),
        pytest.param(b'{"ref": "refs/heads/x", "commits": {"a": 1}}', id="commits-object"),
        pytest.param(b'{"ref": "refs/heads/x", "commits": [{"added": [1]}]}', id="paths-ints"),
    ],
)
async def test_malformed_signed_bodies_are_400_and_nothing_is_stored(
    ingress: Ingress, body: bytes
) -> None:
    resp = await ingress.client.post(PATH, data=body, headers=signed(body))
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["code"] == "payload_invalid"
    assert await ingress.stored() == []


async def test_form_encoded_payload_is_verified_on_the_raw_form(ingress: Ingress) -> None:
    form = urlencode({"payload": PUSH.decode()}).encode()
    headers = signed(form, **{"Content-Type": "application/x-www-form-urlencoded"})
    resp = await ingress.client.post(PATH, data=form, headers=headers)
    assert resp.status == 202, await resp.text()
    [stored] = await ingress.stored()
    assert stored.envelope["payload"] == json.loads(PUSH)
    assert stored.envelope["ref"] == "refs/heads/main"


async def test_twenty_commits_mark_the_path_list_incomplete(ingress: Ingress) -> None:
    doc = json.loads(PUSH)
    doc["commits"] = [
        {"id": str(i), "added": [f"f{i}"], "modified": [], "removed": []} for i in range(20)
    ]
    body = json.dumps(doc).encode()
    assert (await ingress.client.post(PATH, data=body, headers=signed(body))).status == 202
    [stored] = await ingress.stored()
    assert stored.envelope["paths_complete"] is False
    assert len(stored.envelope["changed_paths"]) == 20


@pytest.mark.parametrize("flag", ["forced", "created", "deleted"])
async def test_forced_created_or_deleted_refs_never_claim_complete_paths(
    ingress: Ingress, flag: str
) -> None:
    doc = json.loads(PUSH)
    doc[flag] = True
    body = json.dumps(doc).encode()
    assert (await ingress.client.post(PATH, data=body, headers=signed(body))).status == 202
    [stored] = await ingress.stored()
    assert stored.envelope[flag] is True
    assert stored.envelope["paths_complete"] is False
