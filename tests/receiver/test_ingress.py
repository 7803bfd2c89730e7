"""The ingress edge, provider-independent: body cap (exactly 3 MiB accepted, one byte more
413, also on unknown paths), 404 for unknown hooks and odd paths, 405, suspension, probes."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from receiver.app import create_metrics_app
from receiver.ingress import json_response
from receiver.settings import MiB
from tests.support.ingress import Ingress, hmac_hex, path_of, receiver_docs, start_ingress
from tests.support.natsd import NatsServer


@pytest.fixture
async def ingress(nats_session: NatsServer) -> AsyncIterator[Ingress]:
    docs = receiver_docs("gen", "github") + receiver_docs("off", "github", suspend=True)
    ing = await start_ingress(nats_session.url, docs)
    yield ing
    await ing.close()


def push_headers(body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": "d-1",
        "X-Hub-Signature-256": "sha256=" + hmac_hex("s3cr3t-s3cr3t-s3cr3t", body),
    }


def json_of_size(size: int) -> bytes:
    head = b'{"ref": "refs/heads/main", "pad": "'
    tail = b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


async def test_a_body_of_exactly_the_cap_is_accepted(ingress: Ingress) -> None:
    body = json_of_size(3 * MiB)
    assert len(body) == 3 * MiB
    resp = await ingress.client.post(
        path_of("gen"), data=io.BytesIO(body), headers=push_headers(body)
    )
    assert resp.status == 202, await resp.text()
    [stored] = await ingress.stored()
    assert len(stored.envelope["payload"]["pad"]) > 3 * MiB - 100


@pytest.mark.parametrize("path", [path_of("gen"), "/hook/" + "0" * 64, "/elsewhere"])
async def test_one_byte_over_the_cap_is_413_on_any_path(ingress: Ingress, path: str) -> None:
    body = json_of_size(3 * MiB + 1)
    resp = await ingress.client.post(path, data=io.BytesIO(body), headers=push_headers(body))
    assert resp.status == 413
    assert (await resp.json())["code"] == "body_too_large"


async def test_a_chunked_body_over_the_cap_is_cut_off_with_413(ingress: Ingress) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"x" * MiB

    resp = await ingress.client.post(path_of("gen"), data=chunks(), headers=push_headers(b""))
    assert resp.status == 413
    assert await ingress.stored() == []


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/hook/" + "0" * 64, id="unknown-digest"),
        pytest.param(path_of("gen").upper().replace("/HOOK/", "/hook/"), id="upper-case-digest"),
        pytest.param(path_of("gen") + "/", id="trailing-slash"),
        pytest.param("/hook/", id="no-digest"),
    ],
)
async def test_unknown_paths_are_404(ingress: Ingress, path: str) -> None:
    resp = await ingress.client.post(path, data=b"{}")
    assert resp.status == 404
    assert (await resp.json())["code"] == "not_found"


async def test_query_string_is_ignored_like_flux(ingress: Ingress) -> None:
    body = json_of_size(200)
    resp = await ingress.client.post(path_of("gen") + "?x=1", data=body, headers=push_headers(body))
    assert resp.status == 202


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_other_methods_are_405(ingress: Ingress, method: str) -> None:
    resp = await ingress.client.request(method, path_of("gen"))
    assert resp.status == 405
    assert resp.headers["Allow"] == "POST"


async def test_a_suspended_receiver_answers_503(ingress: Ingress) -> None:
    body = json_of_size(100)
    resp = await ingress.client.post(path_of("off"), data=body, headers=push_headers(body))
    assert resp.status == 503
    assert (await resp.json())["code"] == "suspended"
    assert await ingress.stored() == []


async def test_probes_are_served_on_the_metrics_port(ingress: Ingress) -> None:
    client = TestClient(TestServer(create_metrics_app(ingress.state)))
    await client.start_server()
    try:
        assert (await client.get("/healthz")).status == 200
        ready = await client.get("/readyz")
        assert ready.status == 200
        assert (await ready.json())["receivers"] == 2
        assert (await client.head("/readyz")).status == 200
    finally:
        await client.close()


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
async def test_the_hook_port_serves_no_probe(ingress: Ingress, path: str, method: str) -> None:
    refused = await ingress.client.request(method, path, data=b"{}" if method == "POST" else None)
    assert refused.status == 404


async def raw_exchange(ingress: Ingress, head: str, body: bytes | None) -> tuple[bytes, bytes]:
    """Send ``head``; read what comes before the body is sent (with a short wait), then send
    ``body`` (if any) and read the rest. Returns (before, after)."""
    server = ingress.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(head.encode())
        await writer.drain()
        try:
            before = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        except TimeoutError:
            before = b""
        after = b""
        if body is not None and before.startswith(b"HTTP/1.1 100"):
            writer.write(body)
            await writer.drain()
            after = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        return before, after
    finally:
        writer.close()


def expect_head(path: str, body: bytes, expect: str = "100-continue") -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: x", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in push_headers(body).items()]
    lines += [f"Expect: {expect}", "Connection: close"]
    return "\r\n".join(lines) + "\r\n\r\n"


async def test_expect_100_continue_asks_for_the_body_then_stores_it(ingress: Ingress) -> None:
    body = json_of_size(300)
    before, after = await raw_exchange(ingress, expect_head(path_of("gen"), body), body)
    assert before == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert after.startswith(b"HTTP/1.1 202")
    assert len(await ingress.stored()) == 1


@pytest.mark.parametrize(
    ("path", "status"),
    [
        pytest.param("/hook/" + "0" * 64, b"404", id="unknown-hook"),
        pytest.param(path_of("off"), b"503", id="suspended"),
    ],
)
async def test_a_refused_expect_100_continue_never_uploads_the_body(
    ingress: Ingress, path: str, status: bytes
) -> None:
    body = json_of_size(300)
    before, after = await raw_exchange(ingress, expect_head(path, body), body)
    assert before.startswith(b"HTTP/1.1 " + status), before
    assert after == b""
    assert await ingress.stored() == []


@pytest.mark.parametrize("expect", ["fly", "\xff\xfe-continue"], ids=["unknown", "not-utf8"])
async def test_an_unknown_expectation_is_417(ingress: Ingress, expect: str) -> None:
    body = json_of_size(300)
    head = expect_head(path_of("gen"), body, expect).encode("latin-1")
    server = ingress.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(head)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 417"), answer[:100]
    assert b'"code":"expectation_failed"' in answer
    assert await ingress.stored() == []


def test_an_answer_quoting_undecodable_request_text_is_still_json() -> None:
    """aiohttp hands a non-UTF-8 header byte over as a lone surrogate; an answer quoting it
    is written ASCII-escaped rather than failing into a 500."""
    response = json_response({"reason": "bad \udcff value"}, 400)
    assert response.status == 400
    assert isinstance(response.body, bytes)
    assert json.loads(response.body) == {"reason": "bad \udcff value"}
