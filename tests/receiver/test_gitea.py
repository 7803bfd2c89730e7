"""Gitea and Forgejo receivers against a real nats-server, every case run for both brands:
bare-hex HMAC in either case (and no cross-brand header accepted), the GitHub-shaped push
normalised field by field with completeness from ``total_commits``, created/deleted from zero
ids, malformed shapes, the JSON-only content type, the event allow-list and dedup."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from schemas import envelope
from tests.support.ingress import Ingress, hmac_hex, path_of, receiver_docs, start_ingress
from tests.support.natsd import NatsServer

PUSH = (Path(__file__).parent / "fixtures" / "gitea_push.json").read_bytes()
TOKEN = "s3cr3t-s3cr3t-s3cr3t"
DELIVERY = "f1e2d3c4-b5a6-4978-8695-a4b3c2d1e0f9"


@dataclass(frozen=True)
class Brand:
    provider: str
    prefix: str
    other: str
    """The other brand's header prefix, which must not be accepted in place of ours."""

    @property
    def path(self) -> str:
        return path_of(self.provider)

    def headers(self, body: bytes, event: str = "push", **extra: str) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            f"{self.prefix}-Event": event,
            f"{self.prefix}-Delivery": DELIVERY,
            f"{self.prefix}-Signature": hmac_hex(TOKEN, body),
            # Both forges also send GitHub-style headers; they must not matter here.
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": DELIVERY,
            **extra,
        }


GITEA = Brand("gitea", "X-Gitea", "X-Forgejo")
FORGEJO = Brand("forgejo", "X-Forgejo", "X-Gitea")


@pytest.fixture(params=[GITEA, FORGEJO], ids=["gitea", "forgejo"])
def brand(request: pytest.FixtureRequest) -> Brand:
    assert isinstance(request.param, Brand)
    return request.param


@pytest.fixture
async def ingress(nats_session: NatsServer) -> AsyncIterator[Ingress]:
    docs = (
        receiver_docs("gitea", "gitea", TOKEN)
        + receiver_docs("forgejo", "forgejo", TOKEN)
        + receiver_docs("gitea-push-only", "gitea", TOKEN, events=["Push"])
        + receiver_docs("forgejo-push-only", "forgejo", TOKEN, events=["PUSH"])
    )
    ing = await start_ingress(nats_session.url, docs)
    yield ing
    await ing.close()


def without(headers: dict[str, str], name: str) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k != name}


def push_with(**changes: Any) -> bytes:
    doc = json.loads(PUSH)
    doc.update(changes)
    return json.dumps(doc).encode()


async def post(
    ingress: Ingress, brand: Brand, body: bytes, headers: dict[str, str]
) -> tuple[int, Any]:
    resp = await ingress.client.post(brand.path, data=body, headers=headers)
    return resp.status, await resp.json()


async def only_stored(ingress: Ingress) -> dict[str, Any]:
    [stored] = await ingress.stored()
    envelope.validate(stored.envelope)
    return stored.envelope


async def test_a_push_is_stored_normalised_field_by_field(ingress: Ingress, brand: Brand) -> None:
    status, answer = await post(ingress, brand, PUSH, brand.headers(PUSH))
    assert status == 202, answer
    env = await only_stored(ingress)
    assert env["id"] == answer["id"]
    assert env["receiver"] == {"namespace": "default", "name": brand.provider}
    assert env["provider"] == brand.provider
    assert env["event"] == "push"
    assert env["delivery_id"] == DELIVERY
    assert env["repository"] == {
        "urls": [
            "https://git.example.org/homelab/cluster.git",
            "ssh://git@git.example.org:2222/homelab/cluster.git",
            "https://git.example.org/homelab/cluster",
        ],
        "http": "https://git.example.org/homelab/cluster.git",
        "ssh": "ssh://git@git.example.org:2222/homelab/cluster.git",
        "web": "https://git.example.org/homelab/cluster",
        "full_name": "homelab/cluster",
    }
    assert env["ref"] == "refs/heads/main"
    assert env["revision"] == "c3e5a7b9d1f3a5c7e9b1d3f5a7c9e1b3d5f7a9c1"
    assert env["previous_revision"] == "b2d4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0"
    assert (env["created"], env["deleted"], env["forced"]) == (False, False, False)
    assert env["changed_paths"] == ["apps/immich/config.yaml", "apps/immich/helmrelease.yaml"]
    assert env["paths_complete"] is True
    assert env["payload"] == json.loads(PUSH)


CASES: list[Any] = [
    pytest.param(lambda br, b: br.headers(b), 202, None, id="signature-lowercase-hex"),
    pytest.param(
        lambda br, b: br.headers(b, **{f"{br.prefix}-Signature": hmac_hex(TOKEN, b).upper()}),
        202,
        None,
        id="signature-uppercase-hex",
    ),
    pytest.param(
        lambda br, b: br.headers(b, **{f"{br.prefix}-Signature": "sha256=" + hmac_hex(TOKEN, b)}),
        400,
        "signature_invalid",
        id="signature-with-github-prefix-rejected",
    ),
    pytest.param(
        lambda br, b: br.headers(b, **{f"{br.prefix}-Signature": hmac_hex("other", b)}),
        400,
        "signature_invalid",
        id="signature-mismatch",
    ),
    pytest.param(
        lambda br, b: br.headers(b, **{f"{br.prefix}-Signature": hmac_hex(TOKEN, b, "sha1")}),
        400,
        "signature_invalid",
        id="signature-sha1-rejected",
    ),
    pytest.param(
        lambda br, b: br.headers(b, **{f"{br.prefix}-Signature": "zz" * 32}),
        400,
        "signature_invalid",
        id="signature-not-hex",
    ),
    pytest.param(
        lambda br, b: without(br.headers(b), f"{br.prefix}-Signature"),
        400,
        "signature_invalid",
        id="signature-missing",
    ),
    pytest.param(
        lambda br, b: (
            without(br.headers(b), f"{br.prefix}-Signature")
            | {f"{br.other}-Signature": hmac_hex(TOKEN, b)}
        ),
        400,
        "signature_invalid",
        id="signature-only-in-the-other-brands-header",
    ),
    pytest.param(
        lambda br, b: (
            without(br.headers(b), f"{br.prefix}-Signature")
            | {"X-Hub-Signature-256": "sha256=" + hmac_hex(TOKEN, b)}
        ),
        400,
        "signature_invalid",
        id="signature-only-github-style",
    ),
    pytest.param(
        lambda br, b: without(br.headers(b), f"{br.prefix}-Event"),
        400,
        "payload_invalid",
        id="event-header-missing",
    ),
    pytest.param(
        lambda br, b: br.headers(b, **{"Content-Type": "application/x-www-form-urlencoded"}),
        415,
        "unsupported_media_type",
        id="form-content-type",
    ),
    pytest.param(lambda br, b: br.headers(b, event="release"), 202, None, id="other-event-stored"),
]


@pytest.mark.parametrize(("headers_for", "status", "code"), CASES)
async def test_signature_cases(
    ingress: Ingress,
    brand: Brand,
    headers_for: Callable[[Brand, bytes], dict[str, str]],
    status: int,
    code: str | None,
) -> None:
    got, answer = await post(ingress, brand, PUSH, headers_for(brand, PUSH))
    assert got == status, answer
    stored = await ingress.stored()
    if code is None:
        assert answer["status"] == "accepted"
        assert len(stored) == 1
    else:
        assert answer == {"status": "rejected", "code": code, "reason": answer["reason"]}
        assert stored == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty-body"),
        pytest.param(b"{oops", id="malformed-json"),
        pytest.param(b"[]", id="array-body"),
        pytest.param(b'"push"', id="string-body"),
        pytest.param(push_with(ref=None), id="ref-null"),
        pytest.param(push_with(ref=["refs/heads/main"]), id="ref-array"),
        pytest.param(push_with(repository="homelab/cluster"), id="repository-string"),
        pytest.param(push_with(repository={"clone_url": False}), id="clone-url-boolean"),
        pytest.param(push_with(commits=None, total_commits="1"), id="total-commits-string"),
        pytest.param(push_with(commits=[[]]), id="commit-array"),
        pytest.param(push_with(commits=[{"removed": [None]}]), id="removed-null-entry"),
        pytest.param(push_with(before=1), id="before-number"),
        pytest.param(b"{" * 100 + b"}" * 100, id="deeply-nested"),
    ],
)
async def test_malformed_signed_bodies_are_400_and_nothing_is_stored(
    ingress: Ingress, brand: Brand, body: bytes
) -> None:
    status, answer = await post(ingress, brand, body, brand.headers(body))
    assert status == 400, answer
    assert answer["code"] == "payload_invalid"
    assert await ingress.stored() == []


async def test_fewer_commits_than_pushed_mark_the_paths_incomplete(
    ingress: Ingress, brand: Brand
) -> None:
    body = push_with(total_commits=12)
    status, answer = await post(ingress, brand, body, brand.headers(body))
    assert status == 202, answer
    env = await only_stored(ingress)
    assert env["paths_complete"] is False
    assert len(env["changed_paths"]) == 2


@pytest.mark.parametrize(
    ("changes", "created", "deleted"),
    [
        pytest.param({"before": "0" * 40}, True, False, id="branch-created"),
        pytest.param({"after": "0" * 40, "commits": []}, False, True, id="branch-deleted"),
    ],
)
async def test_zero_ids_mean_created_or_deleted(
    ingress: Ingress, brand: Brand, changes: dict[str, Any], created: bool, deleted: bool
) -> None:
    body = push_with(**changes)
    status, answer = await post(ingress, brand, body, brand.headers(body))
    assert status == 202, answer
    env = await only_stored(ingress)
    assert (env["created"], env["deleted"]) == (created, deleted)
    assert env["paths_complete"] is False


async def test_a_release_keeps_the_repository_and_the_tag(ingress: Ingress, brand: Brand) -> None:
    doc = {
        "action": "published",
        "release": {"tag_name": "v0.9.0", "name": "v0.9.0"},
        "repository": json.loads(PUSH)["repository"],
    }
    body = json.dumps(doc).encode()
    status, answer = await post(ingress, brand, body, brand.headers(body, event="release"))
    assert status == 202, answer
    env = await only_stored(ingress)
    assert env["ref"] == "refs/tags/v0.9.0"
    assert env["repository"]["full_name"] == "homelab/cluster"


async def test_events_allow_list_is_case_insensitive(ingress: Ingress, brand: Brand) -> None:
    path = path_of(f"{brand.provider}-push-only")
    resp = await ingress.client.post(path, data=PUSH, headers=brand.headers(PUSH))
    assert resp.status == 202, await resp.text()
    resp = await ingress.client.post(path, data=PUSH, headers=brand.headers(PUSH, event="create"))
    assert resp.status == 400
    assert (await resp.json())["code"] == "event_not_allowed"
    assert len(await ingress.stored()) == 1


async def test_redelivery_with_the_same_delivery_id_is_stored_once(
    ingress: Ingress, brand: Brand
) -> None:
    first_status, first = await post(ingress, brand, PUSH, brand.headers(PUSH))
    again_status, again = await post(ingress, brand, PUSH, brand.headers(PUSH))
    assert first_status == again_status == 202
    assert first["id"] == again["id"]
    assert again["duplicate"] is True
    assert len(await ingress.stored()) == 1
