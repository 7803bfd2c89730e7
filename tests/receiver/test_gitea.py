"""Gitea and Forgejo receivers against a real nats-server, every case run for both brands: no
cross-brand or GitHub-style signature header accepted, the GitHub-shaped push normalised field
by field with completeness from ``total_commits``, created/deleted from zero ids, releases and
malformed shapes. The shapes every provider answers (the bare-hex HMAC formats, the event
header, the JSON-only content type, the event allow-list, dedup) are rows of
test_providers_table.py, for both brands."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
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
    docs = receiver_docs("gitea", "gitea", TOKEN) + receiver_docs("forgejo", "forgejo", TOKEN)
    ing = await start_ingress(nats_session.url, docs)
    yield ing
    await ing.close()


def without(headers: dict[str, str], name: str) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k != name}


def push_with(**changes: Any) -> bytes:
    doc = json.loads(PUSH)
    doc.update(changes)
    return json.dumps(doc).encode()


async def test_a_push_is_stored_normalised_field_by_field(ingress: Ingress, brand: Brand) -> None:
    status, answer = await ingress.post(brand.path, PUSH, brand.headers(PUSH))
    assert status == 202, answer
    env = await ingress.envelope()
    assert env["id"] == answer["id"]
    assert env["receiver"] == {"namespace": "default", "name": brand.provider}
    assert env["provider"] == brand.provider
    assert env["event"] == "push"
    assert env["delivery_id"] == DELIVERY
    assert env["repository"] == repository(
        "https://git.example.org/homelab/cluster.git",
        "ssh://git@git.example.org:2222/homelab/cluster.git",
        "https://git.example.org/homelab/cluster",
        "homelab/cluster",
    )
    assert env["ref"] == "refs/heads/main"
    assert env["revision"] == "c3e5a7b9d1f3a5c7e9b1d3f5a7c9e1b3d5f7a9c1"
    assert env["previous_revision"] == "b2d4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0"
    assert (env["created"], env["deleted"], env["forced"]) == (False, False, False)
    assert env["changed_paths"] == ["apps/immich/config.yaml", "apps/immich/helmrelease.yaml"]
    assert env["paths_complete"] is True
    assert env["payload"] == json.loads(PUSH)


@pytest.mark.parametrize(
    "headers_for",
    [
        pytest.param(
            lambda br, b: (
                without(br.headers(b), f"{br.prefix}-Signature")
                | {f"{br.other}-Signature": hmac_hex(TOKEN, b)}
            ),
            id="signature-only-in-the-other-brands-header",
        ),
        pytest.param(
            lambda br, b: (
                without(br.headers(b), f"{br.prefix}-Signature")
                | {"X-Hub-Signature-256": "sha256=" + hmac_hex(TOKEN, b)}
            ),
            id="signature-only-github-style",
        ),
    ],
)
async def test_only_the_brands_own_signature_header_counts(
    ingress: Ingress, brand: Brand, headers_for: Callable[[Brand, bytes], dict[str, str]]
) -> None:
    got, answer = await ingress.post(brand.path, PUSH, headers_for(brand, PUSH))
    assert got == 400, answer
    assert answer == {"status": "rejected", "code": "signature_invalid", "reason": answer["reason"]}
    assert await ingress.stored() == []


@pytest.mark.parametrize(
    "body",
    [
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
    status, answer = await ingress.post(brand.path, body, brand.headers(body))
    assert status == 400, answer
    assert answer["code"] == "payload_invalid"
    assert await ingress.stored() == []


async def test_fewer_commits_than_pushed_mark_the_paths_incomplete(
    ingress: Ingress, brand: Brand
) -> None:
    body = push_with(total_commits=12)
    status, answer = await ingress.post(brand.path, body, brand.headers(body))
    assert status == 202, answer
    env = await ingress.envelope()
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
    status, answer = await ingress.post(brand.path, body, brand.headers(body))
    assert status == 202, answer
    env = await ingress.envelope()
    assert (env["created"], env["deleted"]) == (created, deleted)
    assert env["paths_complete"] is False


async def test_a_release_keeps_the_repository_and_the_tag(ingress: Ingress, brand: Brand) -> None:
    doc = {
        "action": "published",
        "release": {"tag_name": "v0.9.0", "name": "v0.9.0"},
        "repository": json.loads(PUSH)["repository"],
    }
    body = json.dumps(doc).encode()
    status, answer = await ingress.post(brand.path, body, brand.headers(body, event="release"))
    assert status == 202, answer
    env = await ingress.envelope()
    assert env["ref"] == "refs/tags/v0.9.0"
    assert env["repository"]["full_name"] == "homelab/cluster"
