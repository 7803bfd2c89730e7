"""Bitbucket receiver (Server/Data Center and Cloud) against a real nats-server: Server
``repo:refs_changed`` and Cloud ``repo:push`` each normalised field by field with one stored
message per changed ref, the sha1 signature Flux accepts, other events, malformed shapes and
the delivery id fallback. The shapes every provider answers (the ``X-Hub-Signature`` formats,
``diagnostics:ping`` signed and unsigned, a push of no ref changes, content types, the event
allow-list, dedup of a multi-ref push) are rows of test_providers_table.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.ingress import (
    Ingress,
    hmac_hex,
    path_of,
    receiver_docs,
    repository,
    start_ingress,
)
from tests.support.natsd import NatsServer

FIXTURES = Path(__file__).parent / "fixtures"
SERVER = (FIXTURES / "bitbucket_server_refs_changed.json").read_bytes()
CLOUD = (FIXTURES / "bitbucket_cloud_push.json").read_bytes()
TOKEN = "s3cr3t-s3cr3t-s3cr3t"
PATH = path_of("bb")
REQUEST_ID = "c9a3e1d7-2b4f-4a6c-8e0d-1f3b5a7c9e2d"
CLOUD_UUID = "7e5d3c1b-9a8f-4e6d-b2c1-0a9f8e7d6c5b"


@pytest.fixture
async def ingress(nats_session: NatsServer) -> AsyncIterator[Ingress]:
    ing = await start_ingress(nats_session.url, receiver_docs("bb", "bitbucket", TOKEN))
    yield ing
    await ing.close()


def server(body: bytes, event: str = "repo:refs_changed", **extra: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json; charset=UTF-8",
        "X-Event-Key": event,
        "X-Request-Id": REQUEST_ID,
        "X-Hub-Signature": "sha256=" + hmac_hex(TOKEN, body),
        **extra,
    }


def cloud(body: bytes, event: str = "repo:push", **extra: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Event-Key": event,
        "X-Request-UUID": CLOUD_UUID,
        "X-Hook-UUID": "{4d2b0e8c-6a4f-4e2d-b0c8-6a4e2d0b8c6a}",
        "X-Attempt-Number": "1",
        "X-Hub-Signature": "sha256=" + hmac_hex(TOKEN, body),
        **extra,
    }


def without(headers: dict[str, str], name: str) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k != name}


SERVER_REPO = repository(
    "https://bitbucket.example.com/scm/ops/fleet.git",
    "ssh://git@bitbucket.example.com:7999/ops/fleet.git",
    "https://bitbucket.example.com/projects/OPS/repos/fleet/browse",
    "OPS/fleet",
)


async def test_a_server_push_stores_one_message_per_changed_ref(ingress: Ingress) -> None:
    status, answer = await ingress.post(PATH, SERVER, server(SERVER))
    assert status == 202, answer
    assert len(answer["ids"]) == 2
    branch, tag = await ingress.envelopes()
    assert [branch["id"], tag["id"]] == answer["ids"]
    for env in (branch, tag):
        assert env["provider"] == "bitbucket"
        assert env["event"] == "repo:refs_changed"
        assert env["repository"] == SERVER_REPO
        assert env["changed_paths"] == []
        assert env["paths_complete"] is False
        assert env["forced"] is False
        assert env["payload"] == json.loads(SERVER)
    assert branch["delivery_id"] == f"{REQUEST_ID}#0"
    assert branch["ref"] == "refs/heads/main"
    assert branch["previous_revision"] == "3e9a0c7b1d2f4a6e8c0b2d4f6a8c0e2b4d6f8a0c"
    assert branch["revision"] == "9d1f3b5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d"
    assert (branch["created"], branch["deleted"]) == (False, False)
    assert tag["delivery_id"] == f"{REQUEST_ID}#1"
    assert tag["ref"] == "refs/tags/v2.4.0"
    assert tag["revision"] == "9d1f3b5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d"
    assert (tag["created"], tag["deleted"]) == (True, False)


async def test_a_server_branch_deletion_is_marked_deleted(ingress: Ingress) -> None:
    doc = json.loads(SERVER)
    doc["changes"] = [
        {
            "ref": {"id": "refs/heads/old", "displayId": "old", "type": "BRANCH"},
            "refId": "refs/heads/old",
            "fromHash": "9d1f3b5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d",
            "toHash": "0" * 40,
            "type": "DELETE",
        }
    ]
    body = json.dumps(doc).encode()
    status, answer = await ingress.post(PATH, body, server(body))
    assert status == 202, answer
    [env] = await ingress.envelopes()
    assert env["delivery_id"] == REQUEST_ID
    assert (env["ref"], env["created"], env["deleted"]) == ("refs/heads/old", False, True)


async def test_a_cloud_push_is_normalised_field_by_field(ingress: Ingress) -> None:
    status, answer = await ingress.post(PATH, CLOUD, cloud(CLOUD))
    assert status == 202, answer
    [env] = await ingress.envelopes()
    assert env["id"] == answer["id"]
    assert env["event"] == "repo:push"
    assert env["delivery_id"] == CLOUD_UUID
    assert env["repository"] == repository(
        "https://bitbucket.org/northwind/gitops.git",
        "git@bitbucket.org:northwind/gitops.git",
        "https://bitbucket.org/northwind/gitops",
        "northwind/gitops",
    )
    assert env["ref"] == "refs/heads/main"
    assert env["revision"] == "e1f3a5c7b9d1e3f5a7c9b1d3e5f7a9c1b3d5e7f9"
    assert env["previous_revision"] == "5c7e9a1b3d5f7092b4d6f8a0c2e4b6d8f0a2c4e6"
    assert (env["created"], env["deleted"], env["forced"]) == (False, False, False)
    assert env["changed_paths"] == []
    assert env["paths_complete"] is False


def cloud_change(**change: Any) -> bytes:
    doc = json.loads(CLOUD)
    doc["push"]["changes"] = [change]
    return json.dumps(doc).encode()


TARGET_NEW = {"type": "commit", "hash": "e1f3a5c7b9d1e3f5a7c9b1d3e5f7a9c1b3d5e7f9"}
TARGET_OLD = {"type": "commit", "hash": "5c7e9a1b3d5f7092b4d6f8a0c2e4b6d8f0a2c4e6"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            cloud_change(
                new={"name": "v1.0.0", "type": "tag", "target": TARGET_NEW},
                old=None,
                created=True,
                closed=False,
                forced=False,
            ),
            ("refs/tags/v1.0.0", TARGET_NEW["hash"], None, True, False, False),
            id="bitbucket-cloud-tag-created",
        ),
        pytest.param(
            cloud_change(
                new=None,
                old={"name": "feature/x", "type": "branch", "target": TARGET_OLD},
                created=False,
                closed=True,
                forced=False,
            ),
            ("refs/heads/feature/x", None, TARGET_OLD["hash"], False, True, False),
            id="bitbucket-cloud-branch-closed",
        ),
        pytest.param(
            cloud_change(
                new={"name": "main", "type": "branch", "target": TARGET_NEW},
                old={"name": "main", "type": "branch", "target": TARGET_OLD},
                created=False,
                closed=False,
                forced=True,
            ),
            ("refs/heads/main", TARGET_NEW["hash"], TARGET_OLD["hash"], False, False, True),
            id="bitbucket-cloud-forced",
        ),
    ],
)
async def test_cloud_ref_changes(ingress: Ingress, body: bytes, expected: tuple[Any, ...]) -> None:
    status, answer = await ingress.post(PATH, body, cloud(body))
    assert status == 202, answer
    [env] = await ingress.envelopes()
    got = tuple(
        env[k] for k in ("ref", "revision", "previous_revision", "created", "deleted", "forced")
    )
    assert got == expected


async def test_a_cloud_push_of_two_refs_stores_two_messages(ingress: Ingress) -> None:
    doc = json.loads(CLOUD)
    doc["push"]["changes"].append(
        {
            "new": {"name": "v9", "type": "tag", "target": TARGET_NEW},
            "old": None,
            "created": True,
            "closed": False,
            "forced": False,
        }
    )
    body = json.dumps(doc).encode()
    status, answer = await ingress.post(PATH, body, cloud(body))
    assert status == 202, answer
    envs = await ingress.envelopes()
    assert [e["delivery_id"] for e in envs] == [f"{CLOUD_UUID}#0", f"{CLOUD_UUID}#1"]
    assert [e["ref"] for e in envs] == ["refs/heads/main", "refs/tags/v9"]


async def test_a_sha1_signature_is_accepted_as_flux_does(ingress: Ingress) -> None:
    headers = server(SERVER, **{"X-Hub-Signature": "sha1=" + hmac_hex(TOKEN, SERVER, "sha1")})
    status, answer = await ingress.post(PATH, SERVER, headers)
    assert (status, answer["status"]) == (202, "accepted"), answer
    assert len(await ingress.stored()) == 2


async def test_other_events_keep_only_the_repository(ingress: Ingress) -> None:
    status, answer = await ingress.post(PATH, SERVER, server(SERVER, event="repo:modified"))
    assert status == 202, answer
    [env] = await ingress.envelopes()
    assert env["delivery_id"] == REQUEST_ID
    assert env["repository"] == SERVER_REPO
    assert "ref" not in env


def server_with(**changes: Any) -> bytes:
    doc = json.loads(SERVER)
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("body", "event"),
    [
        pytest.param(server_with(changes={"ref": {}}), "repo:refs_changed", id="changes-object"),
        pytest.param(server_with(changes=[None]), "repo:refs_changed", id="change-null"),
        pytest.param(server_with(changes=[7]), "repo:refs_changed", id="change-number"),
        pytest.param(server_with(changes=[{"ref": []}]), "repo:refs_changed", id="ref-array"),
        pytest.param(server_with(changes=[{"type": "ADD"}]), "repo:refs_changed", id="no-ref-id"),
        pytest.param(
            server_with(changes=[{"ref": {"id": 5}}]), "repo:refs_changed", id="ref-id-number"
        ),
        pytest.param(
            server_with(repository={"links": {"clone": {"href": "x"}}}),
            "repo:refs_changed",
            id="clone-links-object",
        ),
        pytest.param(
            server_with(repository={"links": {"clone": ["https://x"]}}),
            "repo:refs_changed",
            id="clone-link-string",
        ),
        pytest.param(
            server_with(repository={"links": {"self": [None]}}),
            "repo:refs_changed",
            id="self-link-null",
        ),
        pytest.param(server_with(repository=[]), "repo:refs_changed", id="repository-array"),
        pytest.param(cloud_change(new=None, old=None), "repo:push", id="cloud-no-side"),
        pytest.param(cloud_change(new=[], old=None), "repo:push", id="cloud-new-array"),
        pytest.param(
            cloud_change(new={"name": "x", "type": "bookmark"}, old=None),
            "repo:push",
            id="cloud-unknown-ref-type",
        ),
        pytest.param(
            cloud_change(new={"name": 1, "type": "branch"}, old=None),
            "repo:push",
            id="cloud-name-number",
        ),
        pytest.param(
            cloud_change(new={"name": "x", "type": "branch", "target": "abc"}, old=None),
            "repo:push",
            id="cloud-target-string",
        ),
        pytest.param(
            cloud_change(new={"name": "x", "type": "branch"}, old=None, forced="yes"),
            "repo:push",
            id="cloud-forced-string",
        ),
        pytest.param(b'{"push": []}', "repo:push", id="cloud-push-array"),
        pytest.param(b'{"push": {"changes": 3}}', "repo:push", id="cloud-changes-number"),
        pytest.param(b'{"repository": {"full_name": 3}}', "repo:push", id="cloud-full-name-num"),
    ],
)
async def test_malformed_signed_bodies_are_400_and_nothing_is_stored(
    ingress: Ingress, body: bytes, event: str
) -> None:
    status, answer = await ingress.post(PATH, body, server(body, event=event))
    assert status == 400, answer
    assert answer["code"] == "payload_invalid"
    assert await ingress.stored() == []


async def test_without_a_request_id_the_body_digest_is_the_delivery_id(
    ingress: Ingress,
) -> None:
    headers = without(cloud(CLOUD), "X-Request-UUID")
    status, answer = await ingress.post(PATH, CLOUD, headers)
    assert status == 202, answer
    [env] = await ingress.envelopes()
    assert env["delivery_id"].startswith("sha256:")
