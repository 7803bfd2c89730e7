"""What one request may cost, tried as an attacker holding a hook path or a token would, on
the real receiver and a real nats-server: each attack of the probe that found them, shown
refused or bounded.

- **Fan-out.** A delivery naming thousands of items (quay tags, harbor resources,
  distribution events, Bitbucket ref changes) is a 413 before anything is stored, and the
  heap it costs stays small; one whose messages would store more than
  ``--max-delivery-bytes`` in all is a 413 with nothing stored; within both bounds every
  item is stored, and no more bytes than the bound.
- **Logs.** The real receiver process, with text and with JSON logs, is sent deliveries,
  unknown and percent-encoded paths and requests its HTTP parser refuses (a NUL byte after a
  token): no hook digest and no token reaches the log, the parser's refusals are a JSON 400
  and take one short line per ten seconds, never a traceback.
- **Smaller.** Probes are not served on the hook port; ``/hook%2F<digest>`` is no hook path;
  tokens shorter than 16 bytes are refused at load (the message names the minimum, never the
  token); hex signatures with white space inside are refused.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from receiver.config.spec import MIN_TOKEN_BYTES, specs_from_documents
from receiver.errors import ConfigError
from receiver.providers import common
from receiver.settings import MiB
from tests.support.ingress import (
    Ingress,
    dump_yaml,
    hmac_hex,
    path_of,
    receiver_docs,
    start_ingress,
)
from tests.support.natsd import NatsServer, free_port

GITHUB_TOKEN = "gh-token-7f3a9c1e5b2d"
QUAY_TOKEN = "quay-token-0b8e4d2a61c9"
GITLAB_TOKEN = "gl-token-c4d19e7a2f60"
JSON = {"Content-Type": "application/json"}


def quay_body(tags: int, padding: int = 0) -> bytes:
    doc: dict[str, Any] = {
        "docker_url": "quay.io/org/app",
        "repository": "org/app",
        "updated_tags": [f"v1.0.{i}" for i in range(tags)],
    }
    if padding:
        doc["padding"] = "x" * padding
    return json.dumps(doc).encode()


def harbor_body(resources: int) -> bytes:
    return json.dumps(
        {
            "type": "PUSH_ARTIFACT",
            "event_data": {
                "repository": {"repo_full_name": "org/app"},
                "resources": [
                    {"tag": f"v{i}", "resource_url": f"harbor.example/org/app:v{i}"}
                    for i in range(resources)
                ],
            },
        }
    ).encode()


def distribution_body(events: int) -> bytes:
    return json.dumps(
        {
            "events": [
                {
                    "id": f"ev-{i}",
                    "action": "push",
                    "target": {"repository": "org/app", "tag": f"v{i}"},
                    "request": {"host": "registry.example"},
                }
                for i in range(events)
            ]
        }
    ).encode()


@pytest.fixture
async def registries(nats_session: NatsServer) -> AsyncIterator[Ingress]:
    docs = (
        receiver_docs("quay", "quay", QUAY_TOKEN)
        + receiver_docs("harbor", "harbor", QUAY_TOKEN)
        + receiver_docs("registry", "distribution", QUAY_TOKEN)
    )
    ing = await start_ingress(nats_session.url, docs, max_delivery_bytes=1 * MiB)
    yield ing
    await ing.close()


async def stream_bytes(ing: Ingress) -> tuple[int, int]:
    """(messages, bytes) JetStream holds for this test's stream."""
    await ing.stored()  # connects the reading client
    info = await ing._nc.jetstream().stream_info(ing.stream)
    return info.state.messages, info.state.bytes


@pytest.mark.parametrize(
    ("receiver", "body", "headers"),
    [
        pytest.param("quay", quay_body(8000), JSON, id="quay-8000-tags"),
        pytest.param(
            "harbor", harbor_body(1500), {"Authorization": QUAY_TOKEN, **JSON}, id="harbor-1500"
        ),
        pytest.param(
            "registry",
            distribution_body(1000),
            {"Authorization": f"Bearer {QUAY_TOKEN}", **JSON},
            id="distribution-1000-events",
        ),
    ],
)
async def test_a_delivery_naming_thousands_of_items_is_refused_before_anything_is_stored(
    registries: Ingress, receiver: str, body: bytes, headers: dict[str, str]
) -> None:
    tracemalloc.start()
    try:
        resp = await registries.client.post(
            path_of(receiver, QUAY_TOKEN), data=io.BytesIO(body), headers=headers
        )
        answer = await resp.json()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert resp.status == 413, answer
    assert answer["code"] == "delivery_too_large"
    assert f"at most {common.MAX_ITEMS}" in answer["reason"]
    assert await stream_bytes(registries) == (0, 0)
    # Before the cap, 71 KB of quay tags raised RSS by ~400 MiB: the refusal now comes from
    # the list's length, before one item is built. Parsing the body is what remains.
    assert peak < 40 * len(body) + 8 * MiB, peak


async def test_a_delivery_whose_messages_would_store_too_much_is_refused_whole(
    registries: Ingress,
) -> None:
    body = quay_body(50, padding=100_000)  # 50 messages of ~100 KB each: ~5 MB > 1 MiB
    resp = await registries.client.post(
        path_of("quay", QUAY_TOKEN), data=io.BytesIO(body), headers=JSON
    )
    answer = await resp.json()
    assert resp.status == 413, answer
    assert answer["code"] == "delivery_too_large"
    assert str(1 * MiB) in answer["reason"]
    assert await stream_bytes(registries) == (0, 0), "nothing half-published"


async def test_within_the_bounds_every_item_is_stored_and_no_more_than_the_bound(
    registries: Ingress,
) -> None:
    body = quay_body(common.MAX_ITEMS, padding=5_000)
    resp = await registries.client.post(
        path_of("quay", QUAY_TOKEN), data=io.BytesIO(body), headers=JSON
    )
    answer = await resp.json()
    assert resp.status == 202, answer
    assert len(answer["ids"]) == common.MAX_ITEMS
    messages, stored = await stream_bytes(registries)
    assert messages == common.MAX_ITEMS
    assert stored <= 1 * MiB + common.MAX_ITEMS * 1024  # plus JetStream's per-message record
    tags = {m.envelope["artifact"]["tag"] for m in await registries.stored()}
    assert tags == {f"v1.0.{i}" for i in range(common.MAX_ITEMS)}


async def test_a_one_item_delivery_is_bounded_by_the_body_limit_alone(
    registries: Ingress,
) -> None:
    body = quay_body(1, padding=2 * MiB)  # over --max-delivery-bytes, one message
    resp = await registries.client.post(
        path_of("quay", QUAY_TOKEN), data=io.BytesIO(body), headers=JSON
    )
    assert resp.status == 202, await resp.text()
    assert (await stream_bytes(registries))[0] == 1


# ----------------------------------------------------------------------------- the process


def raw_exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
            if b"\r\n\r\n" in b"".join(chunks) and b"Connection: close" not in data:
                head, _, rest = b"".join(chunks).partition(b"\r\n\r\n")
                length = [
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ]
                if length and len(rest) >= length[0]:
                    break
        return b"".join(chunks)


def status_and_body(response: bytes) -> tuple[int, bytes, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


class Receiver:
    """The receiver as users run it (``python -m receiver``), its log in a file."""

    def __init__(self, tmp_path: Path, nats: NatsServer, log_format: str) -> None:
        config = tmp_path / "receivers.yaml"
        docs = (
            receiver_docs("gh", "github", GITHUB_TOKEN)
            + receiver_docs("quay", "quay", QUAY_TOKEN)
            + receiver_docs("gl", "gitlab", GITLAB_TOKEN)
        )
        config.write_text(dump_yaml(docs))
        self.port, self.metrics = free_port(), free_port()
        self.log = tmp_path / f"receiver-{log_format}.log"
        self._out = self.log.open("w")
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "receiver", "--config", str(config)),
                *("--nats-url", nats.url, "--log-format", log_format),
                *("--listen", f"127.0.0.1:{self.port}"),
                *("--metrics-listen", f"127.0.0.1:{self.metrics}"),
            ],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, FLUXRELAY_STREAM_STORAGE="memory"),
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                got = raw_exchange(self.metrics, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
                if status_and_body(got)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)

    def post(self, target: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes, bytes]:
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head = f"POST {target} HTTP/1.1\r\nHost: x\r\n{lines}Content-Length: {len(body)}\r\n"
        request = head.encode() + b"Connection: close\r\n\r\n" + body
        return status_and_body(raw_exchange(self.port, request))

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        self._out.close()
        return self.log.read_text(errors="replace")


@pytest.fixture(params=["text", "json"])
def receiver(
    request: pytest.FixtureRequest, tmp_path: Path, nats_session: NatsServer
) -> Iterator[Receiver]:
    proc = Receiver(tmp_path, nats_session, request.param)
    yield proc
    if proc.proc.poll() is None:
        proc.proc.kill()
        proc.proc.wait()


def test_the_log_holds_no_hook_path_no_token_and_no_parser_traceback(receiver: Receiver) -> None:
    gh, quay, gl = (
        path_of("gh", GITHUB_TOKEN),
        path_of("quay", QUAY_TOKEN),
        path_of("gl", GITLAB_TOKEN),
    )
    body = b'{"ref": "refs/heads/main", "after": "' + b"a" * 40 + b'"}'
    signature = "sha256=" + hmac_hex(GITHUB_TOKEN, body)
    github = {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": "d-1",
        "X-Hub-Signature-256": signature,
    }
    assert receiver.post(gh, {**github, **JSON}, body)[0] == 202
    assert receiver.post(quay, JSON, quay_body(2))[0] == 202
    assert receiver.post(quay + "x", JSON, b"{}")[0] == 404
    assert (
        receiver.post(gh, {**github, "X-Hub-Signature-256": "sha256=" + "0" * 64}, body)[0] == 400
    )

    # Percent-encoded or probe paths on the hook port: no route.
    assert receiver.post(quay.replace("/hook/", "/hook%2F"), JSON, quay_body(1))[0] == 404
    status, _, _ = status_and_body(
        raw_exchange(
            receiver.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    )
    assert status == 404

    # The parser refuses a header with a NUL byte after the token, 40 times over.
    nul = (
        f"POST {gl} HTTP/1.1\r\nHost: x\r\nX-Gitlab-Event: Push Hook\r\n"
        f"X-Gitlab-Token: {GITLAB_TOKEN}\x00\r\nContent-Length: 2\r\n\r\n{{}}"
    ).encode()
    for _ in range(40):
        status, head, answer = status_and_body(raw_exchange(receiver.port, nul))
        assert status == 400
        assert b"application/json" in head
        assert json.loads(answer)["code"] == "malformed_request"
        assert GITLAB_TOKEN.encode() not in answer

    log = receiver.stop()
    assert "stored 1 event(s)" in log or "stored 2 event(s)" in log, log  # it did log deliveries
    for secret in (gh, quay, gl, GITHUB_TOKEN, QUAY_TOKEN, GITLAB_TOKEN):
        digest = secret.removeprefix("/hook/")
        assert digest not in log, f"{'digest' if secret.startswith('/') else 'token'} leaked"
    assert "Traceback" not in log
    refusals = [line for line in log.splitlines() if "malformed HTTP request" in line]
    assert 1 <= len(refusals) <= 2, refusals  # one line, then counted until 10 s have passed


# ----------------------------------------------------------------------------- smaller


@pytest.mark.parametrize("length", [1, MIN_TOKEN_BYTES - 1])
def test_a_token_shorter_than_the_minimum_is_refused_at_load_without_quoting_it(
    length: int,
) -> None:
    token = "@" * length
    with pytest.raises(ConfigError, match=f"shorter than {MIN_TOKEN_BYTES} bytes") as refused:
        specs_from_documents(receiver_docs("weak", "github", token), "test")
    assert token not in str(refused.value).replace(f"{MIN_TOKEN_BYTES}", "")


def test_a_short_previous_token_is_refused_too() -> None:
    docs = receiver_docs(
        "weak",
        "github",
        "k" * MIN_TOKEN_BYTES,
        extra_secret={"previous-token": "old", "previous-token-expires": "2999-01-01T00:00:00Z"},
    )
    with pytest.raises(ConfigError, match="'previous-token' is shorter than 16 bytes"):
        specs_from_documents(docs, "test")


def test_a_token_of_the_minimum_length_is_served() -> None:
    (spec,) = specs_from_documents(receiver_docs("ok", "github", "k" * MIN_TOKEN_BYTES), "t")
    assert spec.name == "ok"


@pytest.mark.parametrize(
    "given",
    [
        pytest.param(lambda h: h[:10] + " " + h[10:], id="space-inside"),
        pytest.param(
            lambda h: " ".join(h[i : i + 2] for i in range(0, len(h), 2)), id="spaced-pairs"
        ),
        pytest.param(lambda h: h[:10] + "\t" + h[10:], id="tab-inside"),
    ],
)
def test_hex_signatures_are_read_strictly(given: Any) -> None:
    body = b"{}"
    digest = hmac_hex(GITHUB_TOKEN, body)
    assert common.hmac_hex_matches(GITHUB_TOKEN.encode(), body, "sha256", digest)
    assert common.hmac_hex_matches(GITHUB_TOKEN.encode(), body, "sha256", digest.upper())
    assert not common.hmac_hex_matches(GITHUB_TOKEN.encode(), body, "sha256", given(digest))


def test_the_receiver_process_serves_the_others_and_reports_a_weak_token(
    tmp_path: Path, nats_session: NatsServer
) -> None:
    """A short token is not served (reason ``weak_token``), but no longer stops the process:
    Flux's CRD accepts that Receiver, and its neighbours must keep working."""
    weak = "weak-tok-1234"  # 13 bytes
    strong = "strong-token-0123456789"
    config = tmp_path / "receivers.yaml"
    config.write_text(
        dump_yaml(receiver_docs("weak", "quay", weak) + receiver_docs("ok", "quay", strong))
    )
    port, metrics = free_port(), free_port()
    log_path = tmp_path / "receiver.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "receiver",
                "--config",
                str(config),
                "--nats-url",
                nats_session.url,
                "--listen",
                f"127.0.0.1:{port}",
                "--metrics-listen",
                f"127.0.0.1:{metrics}",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, FLUXRELAY_STREAM_STORAGE="memory"),
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/readyz", timeout=2):
                        break
                except OSError:
                    assert time.monotonic() < deadline, "never ready"
                    assert proc.poll() is None, log_path.read_text()
                    time.sleep(0.1)

            def post(path: str) -> int:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}{path}",
                    data=b'{"docker_url": "quay.io/a/b", "updated_tags": ["v1"]}',
                    headers={"Content-Type": "application/json"},
                )
                try:
                    with urllib.request.urlopen(request, timeout=5) as resp:
                        return int(resp.status)
                except urllib.error.HTTPError as e:
                    return int(e.code)

            assert post(path_of("ok", strong)) == 202
            assert post(path_of("weak", weak)) == 404
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as r:
                exported = r.read().decode()
            assert 'fluxrelay_receiver_receivers_unserved{reason="weak_token"} 1.0' in exported
        finally:
            proc.terminate()
            proc.wait(30)
    log = log_path.read_text()
    assert "not serving Receiver default/weak (weak_token)" in log
    assert f"shorter than {MIN_TOKEN_BYTES} bytes" in log
    assert weak not in log
    assert path_of("weak", weak).removeprefix("/hook/") not in log
