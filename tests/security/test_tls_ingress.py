"""HTTPS on the hook listener (``--tls-cert``/``--tls-key``), with certificates made here by
``cryptography``: the real ``serve()`` answers over TLS; rotating the files makes new
handshakes present the new certificate while a connection opened before keeps working with
the old one; a half-rotated pair (certificate not matching the key) is refused and the
previous pair stays in use until the files are fixed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from receiver.certificates import ServerCertificates
from receiver.cli import serve_parser, settings_from
from receiver.errors import ConfigError
from receiver.serving import serve
from receiver.settings import ReceiverSettings, StreamSettings
from tests.support.certs import Issued, issue, make_ca
from tests.support.ingress import dump_yaml, receiver_docs
from tests.support.natsd import NatsServer, free_port

BOUND = 30.0


def der(issued: Issued) -> bytes:
    return issued.cert.public_bytes(serialization.Encoding.DER)


def client_context(ca: Issued) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=ca.cert_pem.decode())


def install(issued: Issued, cert: Path, key: Path) -> None:
    """Replace both files atomically, as a Secret volume update does (new inode each)."""
    for path, data in ((key, issued.key_pem), (cert, issued.cert_pem)):
        tmp = path.with_suffix(".new")
        tmp.write_bytes(data)
        os.replace(tmp, path)


async def open_tls(port: int, ca: Issued) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_context(ca), server_hostname="localhost"
    )


def peer(writer: asyncio.StreamWriter) -> bytes:
    sslobj = writer.get_extra_info("ssl_object")
    cert: bytes = sslobj.getpeercert(binary_form=True)
    return cert


async def healthz(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """One keep-alive GET on an open connection; returns the status (404: the hook port
    serves no probe, and any answer shows the TLS session works)."""
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND)
    lines = head.decode().split("\r\n")
    length = next(int(v) for k, _, v in (h.partition(": ") for h in lines) if k == "Content-Length")
    await reader.readexactly(length)
    return int(lines[0].split()[1])


async def presented(port: int, ca: Issued) -> bytes:
    reader, writer = await open_tls(port, ca)
    try:
        assert await healthz(reader, writer) == 404
        return peer(writer)
    finally:
        writer.close()


@pytest.fixture
async def https(
    tmp_path: Path, nats_session: NatsServer
) -> AsyncIterator[tuple[int, Issued, Path, Path]]:
    ca = make_ca()
    cert, key = issue(ca, "first").write(tmp_path, "hook")
    config = tmp_path / "receivers.yaml"
    config.write_text(dump_yaml(receiver_docs("gh", "github")))
    suffix = uuid.uuid4().hex[:8].upper()
    port = free_port()
    args = serve_parser().parse_args(
        ["--config", str(config), "--tls-cert", str(cert), "--tls-key", str(key)]
    )
    base = settings_from(args, {})
    settings = ReceiverSettings(
        config=base.config,
        tls_cert=base.tls_cert,
        tls_key=base.tls_key,
        nats_url=nats_session.url,
        listen_host="127.0.0.1",
        listen_port=port,
        metrics_host="127.0.0.1",
        metrics_port=free_port(),
        reload_interval=0.1,
        stream=StreamSettings(
            name=f"TLS_{suffix}",
            subject_prefix=f"tls{suffix.lower()}.events",
            dead_name=f"TLSDEAD_{suffix}",
            dead_subject_prefix=f"tls{suffix.lower()}.dead",
            storage="memory",
        ),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop), name="serve-tls")
    try:
        for _ in range(300):
            if task.done():
                task.result()
            with contextlib.suppress(OSError):
                await presented(port, ca)
                break
            await asyncio.sleep(0.05)
        yield port, ca, cert, key
    finally:
        stop.set()
        await asyncio.wait_for(task, BOUND)


async def test_rotated_files_reach_new_handshakes_and_old_connections_keep_working(
    https: tuple[int, Issued, Path, Path],
) -> None:
    port, ca, cert, key = https
    first = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    reader, writer = await open_tls(port, ca)
    try:
        assert peer(writer) == first
        assert await healthz(reader, writer) == 404
        second = issue(ca, "second")
        install(second, cert, key)
        for _ in range(int(BOUND / 0.05)):
            if await presented(port, ca) == der(second):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("new handshakes never presented the rotated certificate")
        assert await healthz(reader, writer) == 404, "the connection opened before still works"
        assert peer(writer) == first
    finally:
        writer.close()


async def test_plain_http_is_not_answered_on_the_tls_listener(
    https: tuple[int, Issued, Path, Path],
) -> None:
    port = https[0]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), BOUND)
    except ConnectionResetError:
        answer = b""
    finally:
        writer.close()
    assert b"200 OK" not in answer


async def test_a_half_rotated_pair_is_refused_and_the_previous_one_kept(tmp_path: Path) -> None:
    ca = make_ca()
    first = issue(ca, "first")
    cert, key = first.write(tmp_path, "hook")
    results: list[str] = []
    certs = ServerCertificates(cert, key, results.append)
    certs.load()
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=certs.context)
    port = server.sockets[0].getsockname()[1]

    async def handshake() -> bytes:
        _, writer = await open_tls(port, ca)
        try:
            return peer(writer)
        finally:
            writer.close()

    try:
        assert await handshake() == der(first)
        second = issue(ca, "second")
        cert.write_bytes(second.cert_pem)  # the key is not updated yet
        assert certs.check() is False
        assert results == ["error"]
        assert await handshake() == der(first), "the previous pair is still served"
        assert certs.check() is False, "unchanged files are not retried"
        key.write_bytes(second.key_pem)
        assert certs.check() is True
        assert results == ["error", "ok"]
        assert await handshake() == der(second)
    finally:
        server.close()
        await server.wait_closed()


def test_unusable_files_or_a_lone_flag_fail_at_start(tmp_path: Path) -> None:
    ca = make_ca()
    cert, _ = issue(ca, "a").write(tmp_path, "a")
    _, other_key = issue(ca, "b").write(tmp_path, "b")
    with pytest.raises(ConfigError, match="tls-cert"):
        ServerCertificates(cert, other_key).load()
    with pytest.raises(ConfigError, match="go together"):
        settings_from(serve_parser().parse_args(["--tls-cert", str(cert)]), {})
