"""GitLab receiver against a real nats-server: the token check (exact bytes, non-UTF-8 header
values), push and tag push normalisation field by field, completeness from
``total_commits_count``, created/deleted refs from zero ids, system hooks, the empty-body
decision, the delivery id fallbacks. The shapes every provider answers (wrong, empty or no
token, no event header, other events, content types, malformed bodies, the event allow-list,
dedup) are rows of test_providers_table.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from receiver.providers.common import body_digest
from tests.support.ingress import Ingress, path_of, receiver_docs, repository, start_ingress
from tests.support.natsd import NatsServer

PUSH = (Path(__file__).parent / "fixtures" / "gitlab_push.json").read_bytes()
TOKEN = "s3cr3t-s3cr3t-s3cr3t"
PATH = path_of("gl")
UUID = "3f7c1e92-5a4b-4c8d-9e0f-1a2b3c4d5e6f"
ZERO = "0" * 40


@pytest.fixture
async def ingress(nats_session: NatsServer) -> AsyncIterator[Ingress]:
    ing = await start_ingress(nats_session.url, receiver_docs("gl", "gitlab", TOKEN))
    yield ing
    await ing.close()


def sent(event: str = "Push Hook", **extra: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Gitlab-Event": event,
        "X-Gitlab-Token": TOKEN,
        "X-Gitlab-Event-UUID": UUID,
        **extra,
    }


def without(headers: dict[str, str], name: str) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k != name}


def push_with(**changes: Any) -> bytes:
    doc = json.loads(PUSH)
    doc.update(changes)
    return json.dumps(doc).encode()


async def test_a_push_is_stored_normalised_field_by_field(ingress: Ingress) -> None:
    status, answer = await ingress.post(PATH, PUSH, sent())
    assert status == 202, answer
    env = await ingress.envelope()
    assert env["id"] == answer["id"]
    assert env["receiver"] == {"namespace": "default", "name": "gl"}
    assert env["provider"] == "gitlab"
    assert env["event"] == "Push Hook"
    assert env["delivery_id"] == UUID
    assert env["repository"] == repository(
        "https://gitlab.example.com/infra/platform-config.git",
        "git@gitlab.example.com:infra/platform-config.git",
        "https://gitlab.example.com/infra/platform-config",
        "infra/platform-config",
    )
    assert env["ref"] == "refs/heads/main"
    assert env["revision"] == "a8c3f1e09d2b7c64e5f13a90b8d7c6e5f4a3b2c1"
    assert env["previous_revision"] == "4b1d6e2c9a0f83e7b5d2c61f0a9e8d7c6b5a4f31"
    assert (env["created"], env["deleted"], env["forced"]) == (False, False, False)
    assert env["changed_paths"] == [
        "clusters/prod/ingress/values.yaml",
        "clusters/staging/monitoring/rules.yaml",
        "clusters/staging/monitoring/legacy-rules.yaml",
    ]
    assert env["paths_complete"] is True
    assert env["payload"] == json.loads(PUSH)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(TOKEN.upper(), id="gitlab-token-case-differs"),
        pytest.param(TOKEN + "x", id="gitlab-token-longer"),
        pytest.param(TOKEN[:-1], id="gitlab-token-prefix"),
    ],
)
async def test_the_token_must_match_to_the_byte(ingress: Ingress, token: str) -> None:
    got, answer = await ingress.post(PATH, PUSH, sent(**{"X-Gitlab-Token": token}))
    assert got == 400, answer
    assert answer == {"status": "rejected", "code": "signature_invalid", "reason": answer["reason"]}
    assert answer["reason"]
    assert await ingress.stored() == []


@pytest.mark.parametrize(
    ("header_lines", "code"),
    [
        pytest.param(
            b"X-Gitlab-Event: Push Hook\r\nX-Gitlab-Token: s3cr\xff\xfe\r\n",
            "signature_invalid",
            id="gitlab-token-not-utf8",
        ),
        pytest.param(
            b"X-Gitlab-Event: Push\xff Hook\r\nX-Gitlab-Token: s3cr3t-s3cr3t-s3cr3t\r\n",
            "payload_invalid",
            id="gitlab-event-not-utf8",
        ),
        pytest.param(
            b"X-Gitlab-Event: Push Hook\r\nX-Gitlab-Token: s3cr3t-s3cr3t-s3cr3t\r\n"
            b"X-Gitlab-Event-UUID: 3f7c\xc3\x28\r\n",
            "payload_invalid",
            id="gitlab-event-uuid-not-utf8",
        ),
    ],
)
async def test_header_bytes_that_are_not_utf8_are_refused_not_crashed(
    ingress: Ingress, header_lines: bytes, code: str
) -> None:
    """aiohttp hands such bytes over as lone surrogates: comparing them or copying them into
    the envelope must give a 400, never an exception (a 500)."""
    server = ingress.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(PUSH)}\r\nConnection: close\r\n"
    ).encode()
    writer.write(head + header_lines + b"\r\n" + PUSH)
    await writer.drain()
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    status_line, _, rest = raw.partition(b"\r\n")
    assert status_line.split()[1] == b"400", raw[:300]
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["code"] == code
    assert await ingress.stored() == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"ref": 42}', id="gitlab-ref-number"),
        pytest.param(push_with(project=[]), id="gitlab-project-array"),
        pytest.param(push_with(project="infra/x"), id="gitlab-project-string"),
        pytest.param(push_with(project={"git_http_url": 7}), id="gitlab-url-number"),
        pytest.param(push_with(commits={"a": 1}), id="gitlab-commits-object"),
        pytest.param(push_with(commits=[None]), id="gitlab-commit-null"),
        pytest.param(push_with(commits=[{"added": [1]}]), id="gitlab-paths-numbers"),
        pytest.param(push_with(commits=[{"modified": "a.yaml"}]), id="gitlab-paths-string"),
        pytest.param(push_with(total_commits_count="2"), id="gitlab-total-string"),
        pytest.param(push_with(total_commits_count=True), id="gitlab-total-boolean"),
        pytest.param(push_with(before=0), id="gitlab-before-number"),
        pytest.param(b'{"ref": "refs/heads/\\ud800x"}', id="gitlab-lone-surrogate-escape"),
    ],
)
async def test_malformed_bodies_are_400_and_nothing_is_stored(
    ingress: Ingress, body: bytes
) -> None:
    status, answer = await ingress.post(PATH, body, sent())
    assert status == 400, answer
    assert answer["code"] == "payload_invalid"
    assert await ingress.stored() == []


async def test_an_empty_verified_body_is_stored_without_repository(ingress: Ingress) -> None:
    """Decision (module docstring): Flux reconciles on any verified GitLab delivery; we store
    it with nothing to match automatically, so only spec.resources are triggered."""
    status, answer = await ingress.post(PATH, b"", sent())
    assert status == 202, answer
    env = await ingress.envelope()
    assert env["event"] == "Push Hook"
    assert env["delivery_id"] == UUID
    assert env["repository"] is None
    assert env["ref"] is None
    assert env["payload"] is None
    assert "changed_paths" not in env


async def test_an_empty_body_with_a_bad_token_is_refused(ingress: Ingress) -> None:
    status, answer = await ingress.post(PATH, b"", sent(**{"X-Gitlab-Token": "nope"}))
    assert (status, answer["code"]) == (400, "signature_invalid")
    assert await ingress.stored() == []


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(sent(), lambda body: UUID, id="gitlab-delivery-event-uuid"),
        pytest.param(
            without(sent(), "X-Gitlab-Event-UUID") | {"Idempotency-Key": "idem-77"},
            lambda body: "idem-77",
            id="gitlab-delivery-idempotency-key",
        ),
        pytest.param(
            sent(**{"Idempotency-Key": "idem-77"}),
            lambda body: UUID,
            id="gitlab-delivery-uuid-wins",
        ),
        pytest.param(
            without(sent(), "X-Gitlab-Event-UUID"),
            body_digest,
            id="gitlab-delivery-body-digest",
        ),
    ],
)
async def test_delivery_id_falls_back_from_uuid_to_idempotency_key_to_digest(
    ingress: Ingress, headers: dict[str, str], expected: Callable[[bytes], str]
) -> None:
    status, answer = await ingress.post(PATH, PUSH, headers)
    assert status == 202, answer
    env = await ingress.envelope()
    assert env["delivery_id"] == expected(PUSH)


async def test_fewer_commits_than_pushed_mark_the_paths_incomplete(ingress: Ingress) -> None:
    body = push_with(total_commits_count=57)
    status, answer = await ingress.post(PATH, body, sent())
    assert status == 202, answer
    env = await ingress.envelope()
    assert env["paths_complete"] is False
    assert len(env["changed_paths"]) == 3


async def test_twenty_commits_without_a_count_are_assumed_truncated(ingress: Ingress) -> None:
    doc = json.loads(PUSH)
    del doc["total_commits_count"]
    doc["commits"] = [{"id": str(i), "added": [f"f{i}"]} for i in range(20)]
    body = json.dumps(doc).encode()
    status, answer = await ingress.post(PATH, body, sent())
    assert status == 202, answer
    assert (await ingress.envelope())["paths_complete"] is False


async def test_twenty_commits_with_a_count_of_twenty_are_complete(ingress: Ingress) -> None:
    commits = [{"id": str(i), "added": [f"f{i}"]} for i in range(20)]
    body = push_with(commits=commits, total_commits_count=20)
    status, answer = await ingress.post(PATH, body, sent())
    assert status == 202, answer
    env = await ingress.envelope()
    assert env["paths_complete"] is True
    assert len(env["changed_paths"]) == 20


@pytest.mark.parametrize(
    ("changes", "created", "deleted"),
    [
        pytest.param({"before": ZERO}, True, False, id="gitlab-branch-created"),
        pytest.param({"after": ZERO, "commits": []}, False, True, id="gitlab-branch-deleted"),
        pytest.param({"before": "0" * 64}, True, False, id="gitlab-sha256-repo-created"),
    ],
)
async def test_zero_ids_mean_created_or_deleted_and_paths_incomplete(
    ingress: Ingress, changes: dict[str, Any], created: bool, deleted: bool
) -> None:
    status, answer = await ingress.post(PATH, push_with(**changes), sent())
    assert status == 202, answer
    env = await ingress.envelope()
    assert (env["created"], env["deleted"]) == (created, deleted)
    assert env["paths_complete"] is False


async def test_a_tag_push_is_normalised_like_a_push(ingress: Ingress) -> None:
    body = push_with(
        object_kind="tag_push",
        event_name="tag_push",
        ref="refs/tags/v3.1.0",
        before=ZERO,
        commits=[],
        total_commits_count=0,
    )
    status, answer = await ingress.post(PATH, body, sent(event="Tag Push Hook"))
    assert status == 202, answer
    env = await ingress.envelope()
    assert env["event"] == "Tag Push Hook"
    assert env["ref"] == "refs/tags/v3.1.0"
    assert env["created"] is True
    assert env["repository"]["http"] == "https://gitlab.example.com/infra/platform-config.git"


async def test_a_system_hook_push_is_normalised(ingress: Ingress) -> None:
    status, answer = await ingress.post(
        PATH, push_with(event_name="push"), sent(event="System Hook")
    )
    assert status == 202, answer
    env = await ingress.envelope()
    assert env["event"] == "System Hook"
    assert env["ref"] == "refs/heads/main"
    assert env["paths_complete"] is True


async def test_other_system_hooks_keep_only_the_repository(ingress: Ingress) -> None:
    body = json.dumps(
        {
            "event_name": "repository_update",
            "project": {
                "git_http_url": "https://gitlab.example.com/infra/platform-config.git",
                "path_with_namespace": "infra/platform-config",
            },
            "changes": [{"ref": "refs/heads/main"}],
        }
    ).encode()
    status, answer = await ingress.post(PATH, body, sent(event="System Hook"))
    assert status == 202, answer
    env = await ingress.envelope()
    assert env["repository"]["urls"] == ["https://gitlab.example.com/infra/platform-config.git"]
    assert "ref" not in env


async def test_legacy_payloads_without_project_use_the_repository_block(
    ingress: Ingress,
) -> None:
    doc = json.loads(PUSH)
    del doc["project"]
    body = json.dumps(doc).encode()
    status, answer = await ingress.post(PATH, body, sent())
    assert status == 202, answer
    repo = (await ingress.envelope())["repository"]
    assert repo["http"] == "https://gitlab.example.com/infra/platform-config.git"
    assert repo["ssh"] == "git@gitlab.example.com:infra/platform-config.git"
    assert repo["web"] == "https://gitlab.example.com/infra/platform-config"
    assert repo["full_name"] is None
