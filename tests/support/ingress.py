"""Running the real receiver app in-process against a real nats-server, for tests.

``Ingress`` wires the production pieces (Publisher, ReceiverTable, app factory) with a
private stream per test, and reads back what JetStream stored, so assertions are made on
the stored message and not on what the handler claims.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import nats
import yaml
from aiohttp.test_utils import RawTestServer, TestClient
from aiohttp.web import ServerRunner

from receiver.app import create_server
from receiver.config.hooks import hook_path
from receiver.config.spec import specs_from_documents
from receiver.config.table import ReceiverTable
from receiver.ingress import create_handler
from receiver.metrics import IngressMetrics
from receiver.publishing import Publisher
from receiver.settings import ReceiverSettings, StreamSettings
from receiver.state import IngressState
from schemas import envelope, natsbinding


def receiver_docs(
    name: str,
    kind: str,
    token: str = "s3cr3t-s3cr3t-s3cr3t",
    namespace: str = "default",
    events: list[str] | None = None,
    extra_secret: Mapping[str, str] | None = None,
    suspend: bool = False,
    resources: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """A Receiver manifest and its Secret, as a user would write them."""
    secret = {"token": token, **(extra_secret or {})}
    spec: dict[str, Any] = {
        "type": kind,
        "secretRef": {"name": f"{name}-token"},
        "resources": resources or [{"kind": "GitRepository", "name": "app"}],
    }
    if events:
        spec["events"] = events
    if suspend:
        spec["suspend"] = True
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"{name}-token", "namespace": namespace},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in secret.items()},
        },
        {
            "apiVersion": "notification.toolkit.fluxcd.io/v1",
            "kind": "Receiver",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        },
    ]


def path_of(name: str, token: str = "s3cr3t-s3cr3t-s3cr3t", namespace: str = "default") -> str:
    return hook_path(token.encode(), name, namespace)


def hmac_hex(key: str | bytes, body: bytes, algo: str = "sha256") -> str:
    k = key.encode() if isinstance(key, str) else key
    return hmac.new(k, body, getattr(hashlib, algo)).hexdigest()


def repository(http: str, ssh: str, web: str, full_name: str | None) -> dict[str, Any]:
    """A stored envelope's ``repository`` block: the three URLs, listed and by kind."""
    return {"urls": [http, ssh, web], "http": http, "ssh": ssh, "web": web, "full_name": full_name}


def dump_yaml(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs)


@dataclass
class Stored:
    subject: str
    headers: dict[str, str]
    envelope: dict[str, Any]


@dataclass
class Ingress:
    """A started receiver app + its publisher and a NATS client to read the stream back."""

    client: TestClient[Any, Any]
    state: IngressState
    nats_url: str
    stream: str
    _nc: Any = field(default=None, repr=False)

    async def stored(self) -> list[Stored]:
        """Every message in this test's stream, decoded (binding checked on the way)."""
        if self._nc is None:
            self._nc = await nats.connect(self.nats_url)
        js = self._nc.jetstream()
        info = await js.stream_info(self.stream)
        out: list[Stored] = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            if info.state.messages == 0:
                break
            msg = await js.get_msg(self.stream, seq)
            headers = dict(msg.headers or {})
            natsbinding.from_message(headers, msg.data or b"")
            out.append(Stored(msg.subject, headers, json.loads(msg.data or b"")))
        return out

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, Any]:
        """POST ``body`` to ``path``: the status and the JSON answer."""
        resp = await self.client.post(path, data=body, headers=dict(headers))
        return resp.status, await resp.json()

    async def envelopes(self) -> list[dict[str, Any]]:
        """The stored envelopes, each checked against the envelope schema."""
        docs = [s.envelope for s in await self.stored()]
        for doc in docs:
            envelope.validate(doc)
        return docs

    async def envelope(self) -> dict[str, Any]:
        """The one stored envelope; fails unless exactly one was stored."""
        [only] = await self.envelopes()
        return only

    async def dead(self) -> list[Stored]:
        if self._nc is None:
            self._nc = await nats.connect(self.nats_url)
        js = self._nc.jetstream()
        name = self.state.settings.stream.dead_name
        info = await js.stream_info(name)
        out: list[Stored] = []
        if info.state.messages:
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(name, seq)
                out.append(Stored(msg.subject, dict(msg.headers or {}), {"raw": msg.data}))
        return out

    def reload(self, docs: list[dict[str, Any]]) -> None:
        self.state.table = ReceiverTable.build(specs_from_documents(docs, "test"))

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.close()
        await self.client.close()
        await self.state.publisher.close()


class IngressTestServer(RawTestServer):
    """aiohttp's test server around the receiver's own ``create_server`` (its protocol and
    options), not a plain ``web.Server`` with the handler."""

    def __init__(self, state: IngressState) -> None:
        super().__init__(create_handler(state))
        self.state = state

    async def _make_runner(self, debug: bool = True, **kwargs: Any) -> ServerRunner:
        server = create_server(self.state, loop=self._loop, debug=debug, **kwargs)
        return ServerRunner(server, debug=debug)


async def start_ingress(
    nats_url: str, docs: list[dict[str, Any]], storage: str = "memory", **overrides: Any
) -> Ingress:
    """Start the receiver app on a private stream (memory storage, unique names)."""
    suffix = uuid.uuid4().hex[:10].upper()
    stream = StreamSettings(
        name=f"EV_{suffix}",
        subject_prefix=f"t{suffix.lower()}.events",
        dead_name=f"DEAD_{suffix}",
        dead_subject_prefix=f"t{suffix.lower()}.dead",
        storage=storage,  # type: ignore[arg-type]
    )
    settings = ReceiverSettings(nats_url=nats_url, stream=stream, publish_timeout=2.0, **overrides)
    publisher = Publisher(nats_url, stream, settings.publish_timeout)
    table = ReceiverTable.build(specs_from_documents(docs, "test"))
    state = IngressState(settings, publisher, IngressMetrics(), table, loaded=True)
    await publisher.start()
    for _ in range(200):
        if publisher.ready:
            break
        import asyncio

        await asyncio.sleep(0.02)
    else:
        raise RuntimeError("publisher never became ready")
    server = IngressTestServer(state)
    await server.start_server()
    client: TestClient[Any, Any] = TestClient(server)
    await client.start_server()
    return Ingress(client, state, nats_url, stream.name)
