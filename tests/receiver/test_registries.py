"""Container-registry receivers (harbor, dockerhub, quay, nexus, acr, distribution) against a
real nats-server: their own authentication cases, malformed bodies, the bodies Flux accepts,
the stored artifact block field by field, distribution's media types and multi-event
envelopes. The gcr provider has its own module. The shapes every provider answers (the
ordinary delivery, wrong, empty or no credentials, Nexus' signature formats, content types,
empty and undecodable bodies, pings, ``spec.events``, redelivery) are rows of
test_providers_table.py; the payloads are shared with it, in fixtures/."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from receiver.config.spec import specs_from_documents
from receiver.config.table import ReceiverTable
from receiver.errors import ConfigError
from schemas import envelope
from tests.support.ingress import Ingress, hmac_hex, path_of, receiver_docs, start_ingress
from tests.support.natsd import NatsServer

TOKEN = "s3cr3t-s3cr3t-s3cr3t"
JSON = {"Content-Type": "application/json"}
EVENTS_V1 = "application/vnd.docker.distribution.events.v1+json"
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
DIGEST_C = "sha256:" + "c" * 64

FIXTURES = Path(__file__).parent / "fixtures"
HARBOR_PUSH: dict[str, Any] = json.loads((FIXTURES / "harbor_push.json").read_bytes())
DOCKERHUB_PUSH: dict[str, Any] = json.loads((FIXTURES / "dockerhub_push.json").read_bytes())
QUAY_PUSH: dict[str, Any] = json.loads((FIXTURES / "quay_push.json").read_bytes())
NEXUS_COMPONENT: dict[str, Any] = json.loads((FIXTURES / "nexus_component.json").read_bytes())
ACR_PUSH: dict[str, Any] = json.loads((FIXTURES / "acr_push.json").read_bytes())


def dist_event(event_id: str, action: str, digest: str, tag: str | None) -> dict[str, Any]:
    target: dict[str, Any] = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "size": 700,
        "digest": digest,
        "length": 700,
        "repository": "demo/app",
        "url": f"http://registry.local:5000/v2/demo/app/manifests/{digest}",
    }
    if tag:
        target["tag"] = tag
    return {
        "id": event_id,
        "timestamp": "2024-01-10T12:00:00Z",
        "action": action,
        "target": target,
        "request": {
            "id": "req-1",
            "addr": "10.0.0.9:41234",
            "host": "registry.local:5000",
            "method": "PUT",
            "useragent": "skopeo",
        },
        "actor": {},
        "source": {"addr": "registry-0:5000", "instanceID": "i-1"},
    }


def art(env: Any) -> dict[str, Any]:
    """The stored artifact block, which these deliveries must have."""
    block = env["artifact"]
    assert block is not None
    return dict(block)


def dump(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Content-Type": EVENTS_V1, "Authorization": f"Bearer {token}"}


def nexus_headers(body: bytes, key: str = TOKEN) -> dict[str, str]:
    return {**JSON, "X-Nexus-Webhook-Signature": hmac_hex(key, body, "sha1")}


@pytest.fixture
async def ingress(nats_session: NatsServer) -> AsyncIterator[Ingress]:
    docs = (
        receiver_docs("hb", "harbor", TOKEN)
        + receiver_docs("dh", "dockerhub", TOKEN)
        + receiver_docs("qy", "quay", TOKEN)
        + receiver_docs("nx", "nexus", TOKEN)
        + receiver_docs("az", "acr", TOKEN)
        + receiver_docs("dist", "distribution", TOKEN)
        + receiver_docs("dist-push", "distribution", TOKEN, events=["push"])
        + receiver_docs(
            "dist-hdr", "distribution", TOKEN, extra_secret={"header": "X-Registry-Key"}
        )
    )
    ing = await start_ingress(nats_session.url, docs)
    yield ing
    await ing.close()


async def post(ing: Ingress, name: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    resp = await ing.client.post(path_of(name, TOKEN), data=body, headers=headers)
    return resp.status, await resp.json()


AUTH_CASES = [
    pytest.param(
        "hb",
        dump(HARBOR_PUSH),
        lambda b: {**JSON, "Authorization": f"Bearer {TOKEN}"},
        400,
        id="harbor-bearer-is-not-the-token",
    ),
    pytest.param(
        "hb",
        dump(HARBOR_PUSH),
        lambda b: {**JSON, "Authorization": TOKEN + "x"},
        400,
        id="harbor-token-prefix-only",
    ),
    pytest.param(
        "dist",
        dump({"events": [dist_event("e1", "push", DIGEST_A, "v1")]}),
        lambda b: {"Content-Type": EVENTS_V1, "Authorization": TOKEN},
        202,
        id="distribution-full-value",
    ),
    pytest.param(
        "dist",
        dump({"events": [dist_event("e1", "push", DIGEST_A, "v1")]}),
        lambda b: {"Content-Type": EVENTS_V1, "Authorization": f"bearer {TOKEN}"},
        400,
        id="distribution-scheme-is-case-sensitive",
    ),
    pytest.param(
        "dist-hdr",
        dump({"events": [dist_event("e1", "push", DIGEST_A, "v1")]}),
        lambda b: {"Content-Type": EVENTS_V1, "X-Registry-Key": TOKEN},
        202,
        id="distribution-configured-header",
    ),
    pytest.param(
        "dist-hdr",
        dump({"events": [dist_event("e1", "push", DIGEST_A, "v1")]}),
        lambda b: bearer(),
        400,
        id="distribution-configured-header-not-authorization",
    ),
]


@pytest.mark.parametrize(("name", "body", "headers_for", "status"), AUTH_CASES)
async def test_authentication(
    ingress: Ingress,
    name: str,
    body: bytes,
    headers_for: Callable[[bytes], dict[str, str]],
    status: int,
) -> None:
    code, answer = await post(ingress, name, body, headers_for(body))
    assert code == status, answer
    stored = await ingress.stored()
    if status == 202:
        assert answer["status"] == "accepted"
        assert len(stored) == 1
    else:
        assert answer["code"] == "signature_invalid"
        assert stored == []


def good_headers(name: str, body: bytes) -> dict[str, str]:
    return {
        "hb": {**JSON, "Authorization": TOKEN},
        "nx": nexus_headers(body),
        "dist": bearer(),
    }.get(name, dict(JSON))


MALFORMED = [
    pytest.param(name, body, id=f"{name}-{label}")
    for name, cases in {
        "hb": {
            "resources-object": dump({"type": "PUSH_ARTIFACT", "event_data": {"resources": {}}}),
            "resource-string": dump({"type": "PUSH_ARTIFACT", "event_data": {"resources": ["x"]}}),
            "type-number": dump({"type": 7}),
            "tag-number": dump(
                {"event_data": {"repository": {"repo_full_name": "a/b"}, "resources": [{"tag": 1}]}}
            ),
            "resource-without-repository": dump({"event_data": {"resources": [{"tag": "v1"}]}}),
            "event-data-array": dump({"type": "PUSH_ARTIFACT", "event_data": []}),
        },
        "dh": {
            "array": b"[1]",
            "repository-string": dump({"repository": "acme/podinfo"}),
            "tag-null-repo-number": dump({"repository": {"repo_name": 5}}),
        },
        "qy": {
            "tags-string": dump({"docker_url": "quay.io/a/b", "updated_tags": "v1"}),
            "tags-numbers": dump({"docker_url": "quay.io/a/b", "updated_tags": [1]}),
            "tags-empty-string": dump({"docker_url": "quay.io/a/b", "updated_tags": [""]}),
        },
        "nx": {
            "component-array": dump({"action": "CREATED", "component": []}),
            "name-number": dump({"action": "CREATED", "component": {"name": 1}}),
        },
        "az": {
            "target-list": dump({"id": "1", "action": "push", "target": ["a"]}),
        },
        "dist": {
            "no-events": dump({}),
            "events-empty": dump({"events": []}),
            "events-object": dump({"events": {"id": "x"}}),
            "event-null": dump({"events": [None]}),
            "event-no-id": dump({"events": [{"action": "push", "target": {"repository": "a"}}]}),
            "event-no-action": dump({"events": [{"id": "1", "target": {"repository": "a"}}]}),
            "event-no-repository": dump({"events": [{"id": "1", "action": "push", "target": {}}]}),
            "event-target-string": dump({"events": [{"id": "1", "action": "push", "target": "a"}]}),
        },
    }.items()
    for label, body in cases.items()
]


FLUX_ACCEPTS = [
    pytest.param("hb", b"[]", {"Authorization": TOKEN}, id="hb-array"),
    pytest.param(
        "dh", dump({"push_data": {"tag": "v1"}, "repository": {}}), {}, id="dh-no-repo-name"
    ),
    pytest.param("qy", dump({"updated_tags": ["v1"]}), {}, id="qy-no-docker-url"),
    pytest.param("nx", dump({"repositoryName": "r"}), {}, id="nx-no-action"),
    pytest.param("az", dump({"action": "push", "target": {"repository": "a"}}), {}, id="az-no-id"),
    pytest.param(
        "az",
        dump({"id": "1", "action": "push", "target": {"tag": "v1"}}),
        {},
        id="az-no-repository",
    ),
]


@pytest.mark.parametrize(("name", "body", "headers"), FLUX_ACCEPTS)
async def test_bodies_flux_accepts_are_stored_without_the_fields_they_lack(
    ingress: Ingress, name: str, body: bytes, headers: dict[str, str]
) -> None:
    """Flux only decodes these bodies (Harbor's not even that): a missing repository or id is
    no refusal; the artifact is left out (so only the Receiver's own resources react), the id
    falls back to the body digest."""
    if name == "nx":
        headers = {"X-Nexus-Webhook-Signature": hmac_hex(TOKEN, body, "sha1")}
    code, answer = await post(ingress, name, body, {**JSON, **headers})
    assert code == 202, answer
    [stored] = await ingress.stored()
    env = envelope.validate(stored.envelope)
    if name != "az" or b'"id"' not in body:
        assert env["delivery_id"] == "sha256:" + hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize(("name", "body"), MALFORMED)
async def test_malformed_bodies_are_400_and_nothing_is_stored(
    ingress: Ingress, name: str, body: bytes
) -> None:
    code, answer = await post(ingress, name, body, good_headers(name, body))
    assert code == 400, answer
    assert answer["code"] == "payload_invalid"
    assert await ingress.stored() == []


async def test_harbor_accepts_an_empty_body_like_flux(ingress: Ingress) -> None:
    code, answer = await post(ingress, "hb", b"", {"Authorization": TOKEN})
    assert code == 202, answer
    [stored] = await ingress.stored()
    env = envelope.validate(stored.envelope)
    assert env["artifact"] is None
    assert env["payload"] is None
    assert env["delivery_id"].startswith("sha256:")


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        pytest.param(EVENTS_V1, 202, id="events-v1"),
        pytest.param("application/vnd.docker.distribution.events.v2+json", 202, id="events-v2"),
        pytest.param("application/json; charset=utf-8", 202, id="plain-json"),
    ],
)
async def test_distribution_media_types(ingress: Ingress, content_type: str, status: int) -> None:
    """The media types a registry sends (text and form are rows of test_providers_table.py)."""
    body = dump({"events": [dist_event("e1", "push", DIGEST_A, "v1")]})
    headers = {"Content-Type": content_type, "Authorization": f"Bearer {TOKEN}"}
    code, answer = await post(ingress, "dist", body, headers)
    assert code == status, answer
    assert len(await ingress.stored()) == (1 if status == 202 else 0)


async def test_harbor_stores_one_artifact_per_resource(ingress: Ingress) -> None:
    doc = json.loads(dump(HARBOR_PUSH))
    doc["event_data"]["resources"].append(
        {
            "digest": DIGEST_B,
            "tag": "latest",
            "resource_url": "harbor.example.com:8443/platform/podinfo:latest",
        }
    )
    body = dump(doc)
    code, answer = await post(ingress, "hb", body, {**JSON, "Authorization": TOKEN})
    assert code == 202, answer
    first, second = [envelope.validate(s.envelope) for s in await ingress.stored()]
    assert answer["ids"] == [first["id"], second["id"]]
    assert first["provider"] == "harbor"
    assert first["event"] == second["event"] == "PUSH_ARTIFACT"
    assert first["delivery_id"].endswith("#0") and second["delivery_id"].endswith("#1")
    assert first["artifact"] == {
        "registry": "harbor.example.com",
        "repository": "platform/podinfo",
        "tag": "1.4.0",
        "digest": DIGEST_A,
        "media_type": None,
        "url": "harbor.example.com/platform/podinfo:1.4.0",
    }
    assert second["artifact"] == {
        "registry": "harbor.example.com:8443",
        "repository": "platform/podinfo",
        "tag": "latest",
        "digest": DIGEST_B,
        "media_type": None,
        "url": "harbor.example.com:8443/platform/podinfo:latest",
    }
    assert first["payload"] == doc


async def test_harbor_single_resource_uses_the_body_digest(ingress: Ingress) -> None:
    body = dump(HARBOR_PUSH)
    code, _ = await post(ingress, "hb", body, {**JSON, "Authorization": TOKEN})
    assert code == 202
    [stored] = await ingress.stored()
    assert stored.envelope["delivery_id"] == "sha256:" + hashlib.sha256(body).hexdigest()
    assert stored.envelope["artifact"]["tag"] == "1.4.0"


async def test_dockerhub_artifact(ingress: Ingress) -> None:
    code, _ = await post(ingress, "dh", dump(DOCKERHUB_PUSH), dict(JSON))
    assert code == 202
    [stored] = await ingress.stored()
    env = envelope.validate(stored.envelope)
    assert env["provider"] == "dockerhub"
    assert env["event"] == ""
    assert env["artifact"] == {
        "registry": "docker.io",
        "repository": "acme/podinfo",
        "tag": "6.5.0",
        "digest": None,
        "media_type": None,
        "url": "https://hub.docker.com/r/acme/podinfo",
    }
    assert stored.subject.endswith(".dockerhub.default.dh")


async def test_quay_stores_one_artifact_per_updated_tag(ingress: Ingress) -> None:
    doc = {**QUAY_PUSH, "updated_tags": ["6.5.0", "latest"]}
    code, answer = await post(ingress, "qy", dump(doc), dict(JSON))
    assert code == 202, answer
    envs = [envelope.validate(s.envelope) for s in await ingress.stored()]
    assert [art(e)["tag"] for e in envs] == ["6.5.0", "latest"]
    assert len({e["id"] for e in envs}) == 2
    for env in envs:
        assert env["provider"] == "quay"
        assert art(env)["registry"] == "quay.io"
        assert art(env)["repository"] == "acme/podinfo"
        assert art(env)["url"] == "quay.io/acme/podinfo"
        assert art(env)["digest"] is None


async def test_nexus_artifact_and_event(ingress: Ingress) -> None:
    body = dump(NEXUS_COMPONENT)
    code, _ = await post(ingress, "nx", body, nexus_headers(body))
    assert code == 202
    [stored] = await ingress.stored()
    env = envelope.validate(stored.envelope)
    assert env["event"] == "CREATED"
    assert env["artifact"] == {
        "registry": None,
        "repository": "platform/podinfo",
        "tag": "6.5.0",
        "digest": None,
        "media_type": None,
        "url": None,
    }
    assert env["payload"]["repositoryName"] == "docker-hosted"


async def test_acr_artifact_event_and_delivery_id(ingress: Ingress) -> None:
    code, _ = await post(ingress, "az", dump(ACR_PUSH), dict(JSON))
    assert code == 202
    [stored] = await ingress.stored()
    env = envelope.validate(stored.envelope)
    assert env["event"] == "push"
    assert env["delivery_id"] == ACR_PUSH["id"]
    assert env["artifact"] == {
        "registry": "acme.azurecr.io",
        "repository": "platform/podinfo",
        "tag": "6.5.0",
        "digest": DIGEST_A,
        "media_type": "application/vnd.oci.image.manifest.v1+json",
        "url": None,
    }


async def test_distribution_envelope_stores_each_event_with_its_own_id(ingress: Ingress) -> None:
    doc = {
        "events": [
            dist_event("ev-1", "push", DIGEST_A, "v1"),
            dist_event("ev-2", "push", DIGEST_B, None),
            dist_event("ev-3", "pull", DIGEST_C, "v3"),
        ]
    }
    body = dump(doc)
    code, answer = await post(ingress, "dist", body, bearer())
    assert code == 202, answer
    envs = [envelope.validate(s.envelope) for s in await ingress.stored()]
    assert [e["delivery_id"] for e in envs] == ["ev-1", "ev-2", "ev-3"]
    assert answer["ids"] == [e["id"] for e in envs]
    assert len(set(answer["ids"])) == 3
    assert [e["event"] for e in envs] == ["push", "push", "pull"]
    assert envs[0]["artifact"] == {
        "registry": "registry.local:5000",
        "repository": "demo/app",
        "tag": "v1",
        "digest": DIGEST_A,
        "media_type": "application/vnd.oci.image.manifest.v1+json",
        "url": f"http://registry.local:5000/v2/demo/app/manifests/{DIGEST_A}",
    }
    assert art(envs[1])["tag"] is None
    assert art(envs[2])["digest"] == DIGEST_C

    again = await ingress.client.post(path_of("dist", TOKEN), data=body, headers=bearer())
    assert again.status == 202
    repeat = await again.json()
    assert repeat["ids"] == answer["ids"]
    assert repeat["duplicate"] is True
    assert len(await ingress.stored()) == 3


async def test_distribution_events_are_filtered_one_by_one(ingress: Ingress) -> None:
    """An envelope of nothing allowed is answered 200 "ignored" (a row of the providers
    table); of a pull and a push, only the push is stored."""
    mixed = dump(
        {
            "events": [
                dist_event("p-2", "pull", DIGEST_A, "v1"),
                dist_event("p-3", "push", DIGEST_A, "v1"),
            ]
        }
    )
    code, _ = await post(ingress, "dist-push", mixed, bearer())
    assert code == 202
    [stored] = await ingress.stored()
    assert stored.envelope["event"] == "push"
    assert stored.envelope["delivery_id"] == "p-3"


@pytest.mark.parametrize(
    ("kind", "extra", "message"),
    [
        pytest.param(
            "distribution", {"header": "Bad Header"}, "not an HTTP header", id="dist-header-name"
        ),
        pytest.param(
            "distribution", {"header": "X-A:b"}, "not an HTTP header", id="dist-header-colon"
        ),
    ],
)
def test_invalid_secrets_fail_at_load(kind: str, extra: dict[str, str], message: str) -> None:
    docs = receiver_docs("r", kind, TOKEN, extra_secret=extra)
    with pytest.raises(ConfigError, match=message):
        ReceiverTable.build(specs_from_documents(docs, "test"))
