"""``generic`` and ``generic-hmac`` receivers against a real nats-server: any JSON value or an
empty body is stored as the payload (null when empty) under the body digest, anything else is
a 400; ``generic-hmac`` takes sha1 and sha512 as well as sha256 in ``X-Signature``, no other
algorithm or header, including over the empty body; identical bodies are one delivery. The
``X-Signature`` formats (hex case, exact prefix, wrong, empty or no signature, over a body and
over the empty body), content types and redelivery are rows of test_providers_table.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from receiver.providers.common import body_digest
from tests.support.ingress import Ingress, hmac_hex, path_of, receiver_docs, start_ingress
from tests.support.natsd import NatsServer

TOKEN = "s3cr3t-s3cr3t-s3cr3t"
GENERIC = path_of("plain")
HMAC = path_of("signed")
BODY = b'{"image": "ghcr.io/acme/app:1.4.2", "cluster": "prod-eu"}'


@pytest.fixture
async def ingress(nats_session: NatsServer) -> AsyncIterator[Ingress]:
    docs = receiver_docs("plain", "generic", TOKEN) + receiver_docs("signed", "generic-hmac", TOKEN)
    ing = await start_ingress(nats_session.url, docs)
    yield ing
    await ing.close()


def signed(body: bytes, algo: str = "sha256") -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Signature": f"{algo}={hmac_hex(TOKEN, body, algo)}",
    }


@pytest.mark.parametrize(
    ("path", "headers_for"),
    [
        pytest.param(GENERIC, lambda b: {"Content-Type": "application/json"}, id="generic"),
        pytest.param(HMAC, signed, id="generic-hmac"),
    ],
)
@pytest.mark.parametrize(
    ("body", "payload"),
    [
        pytest.param(BODY, json.loads(BODY), id="object"),
        pytest.param(b"", None, id="empty"),
        pytest.param(b"  \n", None, id="blank"),
        pytest.param(b"[1, 2, 3]", [1, 2, 3], id="array"),
        pytest.param(b'"deploy"', "deploy", id="string"),
        pytest.param(b"42", 42, id="number"),
        pytest.param(b"null", None, id="json-null"),
        pytest.param(b'{"m": "\\ud83d\\ude80"}', {"m": "\U0001f680"}, id="surrogate-pair"),
    ],
)
async def test_any_json_or_empty_body_is_stored_as_the_payload(
    ingress: Ingress,
    path: str,
    headers_for: Callable[[bytes], dict[str, str]],
    body: bytes,
    payload: Any,
) -> None:
    status, answer = await ingress.post(path, body, headers_for(body))
    assert status == 202, answer
    env = await ingress.envelope()
    assert env["id"] == answer["id"]
    assert env["provider"] == ("generic" if path == GENERIC else "generic-hmac")
    assert env["event"] == ""
    assert env["delivery_id"] == body_digest(body)
    assert env["payload"] == payload
    for absent in ("repository", "ref", "changed_paths", "artifact"):
        assert absent not in env


@pytest.mark.parametrize(
    ("path", "headers_for"),
    [
        pytest.param(GENERIC, lambda b: {}, id="generic"),
        pytest.param(HMAC, signed, id="generic-hmac"),
    ],
)
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"payload=%7B%7D", id="form-encoded"),
        pytest.param(b"\xff\xfe\x00", id="not-utf8"),
        pytest.param(b'{"m": "\\udc80"}', id="lone-surrogate-escape"),
        pytest.param(b"[" * 200 + b"]" * 200, id="deeply-nested"),
    ],
)
async def test_bodies_that_are_not_json_are_400(
    ingress: Ingress, path: str, headers_for: Callable[[bytes], dict[str, str]], body: bytes
) -> None:
    status, answer = await ingress.post(path, body, headers_for(body))
    assert status == 400, answer
    assert answer["code"] == "payload_invalid"
    assert await ingress.stored() == []


@pytest.mark.parametrize(
    ("headers_for", "status"),
    [
        pytest.param(lambda b: signed(b, "sha1"), 202, id="generic-hmac-sha1"),
        pytest.param(lambda b: signed(b, "sha512"), 202, id="generic-hmac-sha512"),
        pytest.param(
            lambda b: {"X-Signature": "md5=" + hmac_hex(TOKEN, b, "md5")},
            400,
            id="generic-hmac-md5",
        ),
        pytest.param(
            lambda b: {"X-Hub-Signature-256": "sha256=" + hmac_hex(TOKEN, b)},
            400,
            id="generic-hmac-github-header-instead",
        ),
    ],
)
@pytest.mark.parametrize("body", [pytest.param(BODY, id="body"), pytest.param(b"", id="empty")])
async def test_signature_algorithms_and_header(
    ingress: Ingress, headers_for: Callable[[bytes], dict[str, str]], status: int, body: bytes
) -> None:
    got, answer = await ingress.post(HMAC, body, headers_for(body))
    assert got == status, answer
    stored = await ingress.stored()
    if status == 202:
        assert len(stored) == 1
    else:
        assert answer["code"] == "signature_invalid"
        assert stored == []


async def test_a_signature_over_another_body_is_refused(ingress: Ingress) -> None:
    status, answer = await ingress.post(HMAC, BODY, signed(b""))
    assert (status, answer["code"]) == (400, "signature_invalid")


async def test_generic_needs_no_headers_at_all(ingress: Ingress) -> None:
    resp = await ingress.client.post(GENERIC, data=BODY, skip_auto_headers=["Content-Type"])
    assert resp.status == 202, await resp.text()
    assert (await ingress.envelope())["payload"] == json.loads(BODY)


@pytest.mark.parametrize(
    ("path", "headers_for"),
    [
        pytest.param(GENERIC, lambda b: {}, id="generic"),
        pytest.param(HMAC, signed, id="generic-hmac"),
    ],
)
async def test_identical_bodies_are_one_delivery_different_bodies_two(
    ingress: Ingress, path: str, headers_for: Callable[[bytes], dict[str, str]]
) -> None:
    other = b'{"image": "ghcr.io/acme/app:1.4.3"}'
    first_status, first = await ingress.post(path, BODY, headers_for(BODY))
    again_status, again = await ingress.post(path, BODY, headers_for(BODY))
    third_status, third = await ingress.post(path, other, headers_for(other))
    assert first_status == again_status == third_status == 202
    assert first["id"] == again["id"] != third["id"]
    assert again["duplicate"] is True
    assert [s.envelope["payload"] for s in await ingress.stored()] == [
        json.loads(BODY),
        json.loads(other),
    ]
