"""Azure DevOps receiver against a real nats-server: Basic credentials from the Secret (both
keys required at load, every malformed header refused), the ``git.push`` payload normalised
field by field with one stored message per ref update, other events, malformed shapes, and
dedup by the body's ``id`` across retries. The shapes every provider answers (wrong, empty or
no credentials, a push of no ref updates, content types, the event from the body against the
allow-list, a plain redelivery) are rows of test_providers_table.py."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from receiver.config.spec import specs_from_documents
from receiver.config.table import ReceiverTable
from receiver.errors import ConfigError
from tests.support.ingress import Ingress, path_of, receiver_docs, repository, start_ingress
from tests.support.natsd import NatsServer

PUSH = (Path(__file__).parent / "fixtures" / "azuredevops_push.json").read_bytes()
TOKEN = "s3cr3t-s3cr3t-s3cr3t"
USER = "flux-hook"
PASSWORD = "pa:ss wörd"
"""A colon and a non-ASCII letter: the split is at the first colon, compared as UTF-8 bytes."""
CREDENTIALS = {"username": USER, "password": PASSWORD}
PATH = path_of("ado")
EVENT_ID = "8a2c4e6f-0b1d-4f3a-9c5e-7d9f1b3a5c7e"


@pytest.fixture
async def ingress(nats_session: NatsServer) -> AsyncIterator[Ingress]:
    docs = receiver_docs("ado", "azuredevops", TOKEN, extra_secret=CREDENTIALS)
    ing = await start_ingress(nats_session.url, docs)
    yield ing
    await ing.close()


def basic(user: str | bytes = USER, password: str | bytes = PASSWORD) -> str:
    u = user.encode() if isinstance(user, str) else user
    p = password.encode() if isinstance(password, str) else password
    return "Basic " + base64.b64encode(u + b":" + p).decode()


def sent(authorization: str | None = None) -> dict[str, str]:
    headers = {"Content-Type": "application/json; charset=utf-8"}
    headers["Authorization"] = basic() if authorization is None else authorization
    return headers


def push_with(**resource: Any) -> bytes:
    doc = json.loads(PUSH)
    doc["resource"].update(resource)
    return json.dumps(doc).encode()


def doc_with(**changes: Any) -> bytes:
    doc = json.loads(PUSH)
    doc.update(changes)
    return json.dumps(doc).encode()


REPO = repository(
    "https://contoso@dev.azure.com/contoso/Platform/_git/deploy",
    "git@ssh.dev.azure.com:v3/contoso/Platform/deploy",
    "https://dev.azure.com/contoso/Platform/_git/deploy",
    None,
)


async def test_a_push_is_stored_normalised_field_by_field(ingress: Ingress) -> None:
    status, answer = await ingress.post(PATH, PUSH, sent())
    assert status == 202, answer
    [env] = await ingress.envelopes()
    assert env["id"] == answer["id"]
    assert env["provider"] == "azuredevops"
    assert env["event"] == "git.push"
    assert env["delivery_id"] == EVENT_ID
    assert env["repository"] == REPO
    assert env["ref"] == "refs/heads/main"
    assert env["revision"] == "d4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f2"
    assert env["previous_revision"] == "f0a2c4e6b8d0f2a4c6e8b0d2f4a6c8e0b2d4f6a8"
    assert (env["created"], env["deleted"], env["forced"]) == (False, False, False)
    assert env["changed_paths"] == []
    assert env["paths_complete"] is False
    assert env["payload"] == json.loads(PUSH)


async def test_each_ref_update_is_its_own_message(ingress: Ingress) -> None:
    body = push_with(
        refUpdates=[
            {
                "name": "refs/heads/main",
                "oldObjectId": "f0a2c4e6b8d0f2a4c6e8b0d2f4a6c8e0b2d4f6a8",
                "newObjectId": "d4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f2",
            },
            {
                "name": "refs/tags/v5.0.0",
                "oldObjectId": "0" * 40,
                "newObjectId": "d4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f2",
            },
            {
                "name": "refs/heads/spike",
                "oldObjectId": "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678",
                "newObjectId": "0" * 40,
            },
        ]
    )
    status, answer = await ingress.post(PATH, body, sent())
    assert status == 202, answer
    envs = await ingress.envelopes()
    assert [e["id"] for e in envs] == answer["ids"]
    assert [e["delivery_id"] for e in envs] == [f"{EVENT_ID}#{i}" for i in range(3)]
    assert [e["ref"] for e in envs] == ["refs/heads/main", "refs/tags/v5.0.0", "refs/heads/spike"]
    assert [(e["created"], e["deleted"]) for e in envs] == [
        (False, False),
        (True, False),
        (False, True),
    ]
    assert all(e["repository"] == REPO for e in envs)


@pytest.mark.parametrize(
    ("authorization", "status", "code"),
    [
        pytest.param(
            "basic " + basic().split(" ", 1)[1], 202, None, id="azuredevops-scheme-lowercase"
        ),
        pytest.param(
            basic(user="someone"), 400, "signature_invalid", id="azuredevops-user-mismatch"
        ),
        pytest.param(
            basic(user=PASSWORD, password=USER),
            400,
            "signature_invalid",
            id="azuredevops-swapped-credentials",
        ),
        pytest.param(
            basic(password=PASSWORD + "\n"),
            400,
            "signature_invalid",
            id="azuredevops-password-trailing-newline",
        ),
        pytest.param(
            "Basic " + base64.b64encode(USER.encode()).decode(),
            400,
            "signature_invalid",
            id="azuredevops-no-colon",
        ),
        pytest.param("Basic !!!not-base64", 400, "signature_invalid", id="azuredevops-not-base64"),
        pytest.param("Basic", 400, "signature_invalid", id="azuredevops-scheme-only"),
        pytest.param("Bearer " + TOKEN, 400, "signature_invalid", id="azuredevops-bearer-instead"),
    ],
)
async def test_credential_cases(
    ingress: Ingress, authorization: str, status: int, code: str | None
) -> None:
    got, answer = await ingress.post(PATH, PUSH, sent(authorization))
    assert got == status, answer
    stored = await ingress.stored()
    if code is None:
        assert answer["status"] == "accepted"
        assert len(stored) == 1
    else:
        assert answer == {"status": "rejected", "code": code, "reason": answer["reason"]}
        assert stored == []


@pytest.mark.parametrize(
    "missing", [pytest.param("username", id="no-username"), pytest.param("password", id="no-pw")]
)
def test_a_secret_without_credentials_fails_at_load(missing: str) -> None:
    secret = {k: v for k, v in CREDENTIALS.items() if k != missing}
    docs = receiver_docs("ado", "azuredevops", TOKEN, extra_secret=secret)
    with pytest.raises(ConfigError, match=repr(missing)):
        ReceiverTable.build(specs_from_documents(docs, "test"))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[{}]", id="azuredevops-array-body"),
        pytest.param(b"{}", id="azuredevops-no-event-type"),
        pytest.param(doc_with(eventType=None), id="azuredevops-event-type-null"),
        pytest.param(doc_with(eventType=["git.push"]), id="azuredevops-event-type-array"),
        pytest.param(doc_with(id=17), id="azuredevops-id-number"),
        pytest.param(doc_with(resource=[]), id="azuredevops-resource-array"),
        pytest.param(doc_with(resource="push"), id="azuredevops-resource-string"),
        pytest.param(push_with(refUpdates={"name": "x"}), id="azuredevops-ref-updates-object"),
        pytest.param(push_with(refUpdates=[None]), id="azuredevops-ref-update-null"),
        pytest.param(push_with(refUpdates=[{"name": 3}]), id="azuredevops-ref-name-number"),
        pytest.param(push_with(refUpdates=[{}]), id="azuredevops-ref-name-missing"),
        pytest.param(
            push_with(refUpdates=[{"name": "refs/heads/x", "newObjectId": []}]),
            id="azuredevops-new-id-array",
        ),
        pytest.param(push_with(repository=5), id="azuredevops-repository-number"),
        pytest.param(push_with(repository={"sshUrl": {}}), id="azuredevops-ssh-url-object"),
    ],
)
async def test_malformed_bodies_are_400_and_nothing_is_stored(
    ingress: Ingress, body: bytes
) -> None:
    status, answer = await ingress.post(PATH, body, sent())
    assert status == 400, answer
    assert answer["code"] == "payload_invalid"
    assert await ingress.stored() == []


async def test_other_events_keep_only_the_repository(ingress: Ingress) -> None:
    doc = json.loads(PUSH)
    doc["eventType"] = "git.pullrequest.created"
    doc["resource"] = {"repository": doc["resource"]["repository"], "pullRequestId": 41}
    body = json.dumps(doc).encode()
    status, answer = await ingress.post(PATH, body, sent())
    assert status == 202, answer
    [env] = await ingress.envelopes()
    assert env["event"] == "git.pullrequest.created"
    assert env["repository"] == REPO
    assert "ref" not in env


async def test_redelivery_with_the_same_body_id_is_stored_once(ingress: Ingress) -> None:
    first_status, first = await ingress.post(PATH, PUSH, sent())
    # A retry may carry a new notificationId: the event id is what identifies it.
    retry = doc_with(notificationId=32)
    again_status, again = await ingress.post(PATH, retry, sent())
    assert first_status == again_status == 202
    assert first["id"] == again["id"]
    assert again["duplicate"] is True
    assert len(await ingress.stored()) == 1


async def test_without_a_body_id_the_body_digest_is_the_delivery_id(ingress: Ingress) -> None:
    doc = json.loads(PUSH)
    del doc["id"]
    body = json.dumps(doc).encode()
    status, answer = await ingress.post(PATH, body, sent())
    assert status == 202, answer
    [env] = await ingress.envelopes()
    assert env["delivery_id"].startswith("sha256:")
