"""Fixtures for reconciler tests: private streams on the real nats-server, envelopes published
the way the receiver stores them, Flux objects on the real API server, and in-process
reconcilers wired exactly as the CLI wires them (``reconciler.running.Reconciler``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from receiver.publishing import ensure_streams
from receiver.settings import StreamSettings
from reconciler.kinds import KINDS, REQUESTED_AT
from reconciler.running import Reconciler
from reconciler.settings import ConsumerSettings, PatchSettings, ReconcilerSettings
from schemas import envelope as envelopes
from schemas import natsbinding, subjects
from tests.support.fluxobjects import flux_spec
from tests.support.kubeapi import KubeAPI
from tests.support.natsd import NatsServer

WAIT = 60.0
"""Upper bound of any wait for an eventual outcome (a hang fails, a slow machine does not)."""


def flux_object(
    kind: str, name: str, labels: dict[str, str] | None = None, spec: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A ``kind`` object valid under Flux's CRDs: the docs example, ``spec``'s fields replacing."""
    k = KINDS[kind]
    return {
        "apiVersion": k.api_version,
        "kind": kind,
        "metadata": {"name": name, "labels": labels or {}},
        "spec": flux_spec(kind, spec),
    }


def receiver_manifest(
    name: str,
    namespace: str,
    resources: list[dict[str, Any]],
    *,
    resource_filter: str | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": "github",
        "secretRef": {"name": f"{name}-token"},
        "resources": resources,
    }
    if resource_filter:
        spec["resourceFilter"] = resource_filter
    return {
        "apiVersion": "notification.toolkit.fluxcd.io/v1",
        "kind": "Receiver",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
        "spec": spec,
    }


def make_envelope(
    namespace: str, receiver: str, payload: Any = None, **fields: Any
) -> dict[str, Any]:
    delivery = uuid.uuid4().hex
    doc: dict[str, Any] = {
        "specversion": "1",
        "id": uuid.uuid4().hex,
        "receiver": {"namespace": namespace, "name": receiver},
        "provider": "github",
        "event": "push",
        "delivery_id": delivery,
        "received_at": "2025-01-01T00:00:00Z",
        "payload": payload if payload is not None else {"ref": "refs/heads/main"},
    }
    doc.update(fields)
    envelopes.validate(doc)
    return doc


def message_headers(doc: dict[str, Any]) -> dict[str, str]:
    """Headers as the receiver writes them (CloudEvents NATS binary mode + Nats-Msg-Id)."""
    headers = natsbinding.to_headers(
        {
            "specversion": "1.0",
            "id": doc["id"],
            "source": f"/fluxrelay/receivers/{doc['receiver']['namespace']}/x",
            "type": envelopes.CLOUDEVENT_TYPE,
            "time": doc["received_at"],
        }
    )
    headers["Nats-Msg-Id"] = doc["id"]
    return headers


@dataclass
class Bus:
    """A private events stream + dead-letter stream on the session nats-server."""

    url: str
    stream: StreamSettings
    nc: Client
    js: JetStreamContext

    @property
    def done_bucket(self) -> str:
        """This bus's own done-memory bucket (``reconciler.done``)."""
        return "DONE_" + self.stream.name.removeprefix("EV_")

    def consumer_settings(self, **overrides: Any) -> ConsumerSettings:
        base = ConsumerSettings(
            stream=self.stream.name,
            subject_prefix=self.stream.subject_prefix,
            dead_stream=self.stream.dead_name,
            dead_subject_prefix=self.stream.dead_subject_prefix,
            done_bucket=self.done_bucket,
            fetch_timeout=0.3,
            ack_wait=10.0,
            max_deliver=5,
            backoff=(0.2, 0.5, 1.0),
            lag_interval=0.5,
        )
        return replace(base, **overrides)

    async def publish(self, doc: dict[str, Any], *, raw: bytes | None = None,
                      headers: dict[str, str] | None = None) -> None:  # fmt: skip
        subject = subjects.event_subject(
            "github", doc["receiver"]["namespace"], doc["receiver"]["name"],
            self.stream.subject_prefix,
        )  # fmt: skip
        data = raw if raw is not None else json.dumps(doc).encode()
        await self.js.publish(
            subject, data, stream=self.stream.name,
            headers=headers if headers is not None else message_headers(doc),
        )  # fmt: skip

    async def dead(self) -> list[tuple[str, dict[str, str], bytes]]:
        info = await self.js.stream_info(self.stream.dead_name)
        out: list[tuple[str, dict[str, str], bytes]] = []
        if info.state.messages:
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await self.js.get_msg(self.stream.dead_name, seq)
                out.append((msg.subject or "", dict(msg.headers or {}), msg.data or b""))
        return out


@pytest.fixture
async def bus(nats_session: NatsServer) -> AsyncIterator[Bus]:
    suffix = uuid.uuid4().hex[:10].upper()
    stream = StreamSettings(
        name=f"EV_{suffix}",
        subject_prefix=f"t{suffix.lower()}.events",
        dead_name=f"DEAD_{suffix}",
        dead_subject_prefix=f"t{suffix.lower()}.dead",
        storage="memory",
    )
    nc = await nats.connect(nats_session.url)
    js = nc.jetstream()
    await ensure_streams(js, stream)
    bus = Bus(nats_session.url, stream, nc, js)
    yield bus
    for name in (stream.name, stream.dead_name):
        await js.delete_stream(name)
    with contextlib.suppress(NotFoundError):  # made by the first consumer started on the bus
        await js.delete_stream(f"KV_{bus.done_bucket}")
    await nc.close()


@dataclass
class Fleet:
    """In-process reconcilers started by a test, stopped at its end."""

    kube: KubeAPI
    bus: Bus
    tmp: Path
    started: list[Reconciler] = field(default_factory=list)

    def write_receivers(self, manifests: list[dict[str, Any]], name: str = "receivers") -> Path:
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(manifests))
        return path

    def settings(
        self,
        receivers: Path | None,
        *,
        server: str | None = None,
        token: str | None = None,
        consumer: dict[str, Any] | None = None,
        patch: dict[str, Any] | None = None,
        **top: Any,
    ) -> ReconcilerSettings:
        kubeconfig = self.kube.write_kubeconfig(
            self.tmp / f"kubeconfig-{uuid.uuid4().hex[:6]}", server=server, token=token
        )
        return ReconcilerSettings(
            nats_url=self.bus.url,
            kubeconfig=kubeconfig,
            config=receivers,
            metrics_host="127.0.0.1",
            metrics_port=0,
            coalesce_window=top.pop("coalesce_window", 0.05),
            consumer=self.bus.consumer_settings(**(consumer or {})),
            patch=replace(PatchSettings(retry_base=0.05, retry_max=0.5), **(patch or {})),
            **top,
        )

    async def start(self, settings: ReconcilerSettings, **kwargs: Any) -> Reconciler:
        reconciler = Reconciler(settings, **kwargs)
        await reconciler.start()
        self.started.append(reconciler)
        await wait_for(lambda: reconciler.ready, "reconciler ready")
        return reconciler

    async def stop_all(self) -> None:
        for reconciler in self.started:
            await reconciler.stop()
        self.started.clear()


@pytest.fixture
async def fleet(kube: KubeAPI, bus: Bus, tmp_path: Path) -> AsyncIterator[Fleet]:
    f = Fleet(kube, bus, tmp_path)
    yield f
    await f.stop_all()


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]], what: str, limit: float = WAIT
) -> None:
    """Poll ``predicate`` until true; fail the test (not time it) if it never becomes true."""
    try:
        async with asyncio.timeout(limit):
            while True:
                result = predicate()
                if not isinstance(result, bool):
                    result = await result
                if result:
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


def annotations_of(kube: KubeAPI, namespace: str, kind: str, name: str) -> dict[str, str]:
    k = KINDS[kind]
    _, obj = kube.request(
        "GET", f"/apis/{k.group}/{k.version}/namespaces/{namespace}/{k.plural}/{name}"
    )
    found: dict[str, str] = obj["metadata"].get("annotations") or {}
    return found


def requested_at(kube: KubeAPI, namespace: str, kind: str, name: str) -> str | None:
    return annotations_of(kube, namespace, kind, name).get(REQUESTED_AT)
