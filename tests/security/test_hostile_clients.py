"""Hostile clients are bounded: slow request heads (slowloris) are closed after
``--header-timeout`` while other requests are served, slow bodies are cut with 408 after
``--read-timeout``, oversized header lines and too many headers are refused by the parser,
compressed bodies (a real 10 MiB-to-10 KiB gzip bomb among them) are refused with 415 without
being inflated, and JSON nested deeper than 64 levels is a 400 through HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import zlib
from collections.abc import AsyncIterator

import pytest

from receiver.settings import MiB
from tests.support.ingress import Ingress, hmac_hex, path_of, receiver_docs, start_ingress
from tests.support.natsd import NatsServer

BODY = b'{"ref": "refs/heads/main"}'
BOUND = 30.0
"""Seconds a test waits at most for the server to act (a hang fails instead of blocking)."""


def signed(body: bytes, delivery: str = "d-1") -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": "sha256=" + hmac_hex("s3cr3t-s3cr3t-s3cr3t", body),
    }


@pytest.fixture
async def ingress(nats_session: NatsServer) -> AsyncIterator[Ingress]:
    ing = await start_ingress(
        nats_session.url, receiver_docs("gh", "github"), header_timeout=1.0, read_timeout=1.0
    )
    yield ing
    await ing.close()


async def connect(ing: Ingress) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    server = ing.client.server
    return await asyncio.open_connection(server.host, server.port)


async def trickle(writer: asyncio.StreamWriter, pieces: list[bytes], pause: float) -> int:
    """Send ``pieces`` one by one; returns how many were sent before the server hung up."""
    sent = 0
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            sent += 1
            await asyncio.sleep(pause)
    except (ConnectionError, OSError):
        pass
    return sent


async def test_a_request_head_trickled_slowly_is_closed_and_others_are_served(
    ingress: Ingress,
) -> None:
    reader, writer = await connect(ingress)
    head = [f"POST {path_of('gh')} HTTP/1.1\r\nHost: x\r\n".encode()]
    head += [f"X-Pad-{i}: {'y' * 10}\r\n".encode() for i in range(200)]
    sender = asyncio.create_task(trickle(writer, head, 0.1))
    try:
        # While the slow client holds its connection, a normal delivery goes through.
        ok = await ingress.client.post(path_of("gh"), data=BODY, headers=signed(BODY))
        assert ok.status == 202
        try:
            answer = await asyncio.wait_for(reader.read(), BOUND)
        except ConnectionResetError:  # closed while our unread bytes were in its buffer
            answer = b""
        assert answer == b"", "closed without an answer"
        sent = await asyncio.wait_for(sender, BOUND)
        assert sent < len(head), "the server hung up before the head was complete"
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        writer.close()


async def test_an_idle_connection_that_sends_nothing_is_closed(ingress: Ingress) -> None:
    reader, writer = await connect(ingress)
    try:
        assert await asyncio.wait_for(reader.read(), BOUND) == b""
    finally:
        writer.close()


async def test_a_body_trickled_slowly_is_cut_off_with_408(ingress: Ingress) -> None:
    reader, writer = await connect(ingress)
    body = json.dumps({"ref": "refs/heads/main", "pad": "x" * 200}).encode()
    head = (
        f"POST {path_of('gh')} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in signed(body).items())
        + "\r\n"
    ).encode()
    writer.write(head)
    await writer.drain()
    sender = asyncio.create_task(trickle(writer, [body[i : i + 1] for i in range(len(body))], 0.1))
    try:
        status = await asyncio.wait_for(reader.readline(), BOUND)
        # Stop sending once answered: bytes still arriving when the server closes would make
        # its kernel reset the connection, and a reset drops the answer from our buffer.
        sender.cancel()
        assert status.startswith(b"HTTP/1.1 408"), status
        rest = await asyncio.wait_for(reader.read(), BOUND)
        assert b'"request_timeout"' in rest
        assert b"Connection: close" in rest
        ok = await ingress.client.post(path_of("gh"), data=BODY, headers=signed(BODY, "d-2"))
        assert ok.status == 202
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        writer.close()
    assert len(await ingress.stored()) == 1


async def raw_request(ing: Ingress, head: bytes) -> bytes:
    reader, writer = await connect(ing)
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), BOUND)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(f"X-Huge: {'a' * 9000}\r\n", id="one-header-over-8190-bytes"),
        pytest.param("".join(f"X-H{i}: v\r\n" for i in range(130)), id="over-128-headers"),
        pytest.param(f"X-Fold: a\r\n{' b' * 5000}\r\n", id="obsolete-folding"),
    ],
)
async def test_oversized_or_too_many_headers_are_refused(ingress: Ingress, extra: str) -> None:
    head = f"POST {path_of('gh')} HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: 0\r\n\r\n"
    status = await raw_request(ingress, head.encode())
    assert status.split()[1] in (b"400", b"431"), status
    assert await ingress.stored() == []


async def test_a_request_line_over_the_limit_is_refused(ingress: Ingress) -> None:
    head = f"POST {path_of('gh')}?{'q' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n"
    status = await raw_request(ingress, head.encode())
    assert status.split()[1] in (b"400", b"414"), status


GZIP_BOMB = gzip.compress(b"\0" * (10 * MiB), compresslevel=9)


def test_the_gzip_bomb_is_real() -> None:
    assert len(GZIP_BOMB) < 20 * 1024
    assert len(gzip.decompress(GZIP_BOMB)) == 10 * MiB


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        pytest.param("gzip", GZIP_BOMB, id="gzip-bomb-10MiB"),
        pytest.param("gzip", gzip.compress(BODY), id="gzip"),
        pytest.param("deflate", zlib.compress(BODY), id="deflate"),
        pytest.param("br", b"\x0b\x02\x80" + BODY + b"\x03", id="br"),
        pytest.param("identity, gzip", gzip.compress(BODY), id="listed-after-identity"),
        pytest.param("x-custom", BODY, id="unknown"),
    ],
)
async def test_compressed_bodies_are_refused_without_inflating(
    ingress: Ingress, encoding: str, body: bytes
) -> None:
    resp = await ingress.client.post(
        path_of("gh"),
        data=body,
        headers={**signed(body), "Content-Encoding": encoding},
        compress=None,
    )
    assert resp.status == 415
    assert (await resp.json())["code"] == "content_encoding_refused"
    assert ingress.state.metrics.body_sizes.value() == 0, "the body was never read"
    assert await ingress.stored() == []


async def test_identity_encoding_is_accepted(ingress: Ingress) -> None:
    resp = await ingress.client.post(
        path_of("gh"), data=BODY, headers={**signed(BODY), "Content-Encoding": "identity"}
    )
    assert resp.status == 202


def nested(depth: int) -> bytes:
    return b'{"ref": "refs/heads/main", "x": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize(
    ("depth", "status"),
    [
        pytest.param(62, 202, id="63-levels-with-the-object"),
        pytest.param(64, 400, id="65-levels"),
        pytest.param(200_000, 400, id="200k-levels"),
    ],
)
async def test_deeply_nested_json_through_http(ingress: Ingress, depth: int, status: int) -> None:
    body = nested(depth)
    resp = await ingress.client.post(path_of("gh"), data=body, headers=signed(body))
    assert resp.status == status, await resp.text()
    if status == 400:
        answer = await resp.json()
        assert answer["code"] == "payload_invalid"
        assert "nested deeper" in answer["reason"]
