"""Observing what the system did: reconcile requests on the objects and CDEvents emitted.

The books must not trust the reconciler's own word, so this module watches the outcome where
it lands: a list+watch straight on the real API server (not through the fault proxy) records
every new ``reconcile.fluxcd.io/requestedAt`` value of every object with the time it was
seen; :func:`parse_event` keeps what the books need of a CDEvent that the HTTP sink
(``sidecars.py``) received; and :func:`read_cdevents_stream` reads back the JetStream stream
the reconciler publishes CDEvents to. Watches resume from the last resourceVersion so no
value is skipped; a relist (HTTP 410) is counted as a gap. :func:`reconcile_states` reads
where each object stands at the end (its last request and the one Flux handled),
:func:`consumer_backlog` what the reconcilers' durable still has to ack, :func:`process_rss`
and :func:`scrape` what the processes hold, and :func:`process_cpu_seconds` and
:func:`machine_cpu_seconds` the CPU time they and the machine have used.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import nats
from kubernetes_asyncio import client as k8s_client
from nats.aio.client import Client

log = logging.getLogger(__name__)

REQUESTED_AT = "reconcile.fluxcd.io/requestedAt"
DELIVERY_ANNOTATION = "fluxrelay.io/delivery"


@dataclass(frozen=True)
class SeenPatch:
    """One reconcile request as it appeared on an object."""

    obj: str  # Kind/namespace/name, the reconciler's ObjectRef.key
    requested_at: str
    seen_at: float  # time.monotonic() of the watch event
    delivery: str | None  # the envelope id the reconciler wrote last (annotation)


@dataclass
class PatchWatcher:
    """Records every new requestedAt value of one kind's objects in one namespace."""

    api: k8s_client.ApiClient
    namespace: str
    group: str
    version: str
    plural: str
    kind: str
    patches: list[SeenPatch] = field(default_factory=list)
    by_object: dict[str, list[SeenPatch]] = field(default_factory=lambda: defaultdict(list))
    gaps: int = 0
    _last: dict[str, str] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _synced: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> PatchWatcher:
        self._task = asyncio.create_task(self._run(), name=f"soak-watch-{self.plural}")
        await asyncio.wait_for(self._synced.wait(), 30)
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def key(self, name: str) -> str:
        return f"{self.kind}/{self.namespace}/{name}"

    def last_seen(self) -> float:
        return self.patches[-1].seen_at if self.patches else 0.0

    def _note(self, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        value = annotations.get(REQUESTED_AT)
        key = self.key(meta.get("name", ""))
        if not value or self._last.get(key) == value:
            return
        self._last[key] = value
        seen = SeenPatch(key, value, time.monotonic(), annotations.get(DELIVERY_ANNOTATION))
        self.patches.append(seen)
        self.by_object[key].append(seen)

    async def _run(self) -> None:
        custom = k8s_client.CustomObjectsApi(self.api)
        version: str | None = None
        while True:
            try:
                if version is None:
                    listing = await custom.list_namespaced_custom_object(
                        self.group, self.version, self.namespace, self.plural
                    )
                    for obj in listing["items"]:
                        if self._synced.is_set():
                            self._note(obj)
                        else:  # values present before the soak started are not patches of it
                            meta = obj["metadata"]
                            value = (meta.get("annotations") or {}).get(REQUESTED_AT)
                            if value:
                                self._last[self.key(meta["name"])] = value
                    version = listing["metadata"]["resourceVersion"]
                    self._synced.set()
                version = await self._watch(custom, version)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # API server restarting, dropped stream: resume
                log.info("soak watch of %s resumes after %r", self.plural, e)
                await asyncio.sleep(0.2)

    async def _watch(self, custom: k8s_client.CustomObjectsApi, version: str) -> str | None:
        response = await custom.list_namespaced_custom_object(
            self.group,
            self.version,
            self.namespace,
            self.plural,
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=120,
            _preload_content=False,
        )
        async with response:
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                if event["type"] == "ERROR":
                    self.gaps += 1  # 410: relist; values changed meanwhile may be skipped
                    return None
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if rv:
                    version = rv
                if event["type"] in ("ADDED", "MODIFIED"):
                    self._note(obj)
        return version


# ---------------------------------------------------------------------- CDEvents seen


@dataclass(frozen=True, slots=True)
class SeenEvent:
    """One CDEvent as a consumer received it (fields the books need).

    Slotted, with the few distinct strings interned: a long soak keeps millions of these.
    """

    id: str
    type: str
    chain_id: str | None
    delivery_id: str | None
    run_id: str | None  # pipelinerun subject id: "<Kind>/<ns>/<name>@<requestedAt>"
    pipeline: str | None  # pipelinerun pipelineName: the object key
    outcome: str | None
    seen_at: float
    covered: bool = False  # a queued event whose request another replica made (customData)


def parse_event(doc: dict[str, Any], seen_at: float) -> SeenEvent:
    context = doc.get("context") or {}
    subject = doc.get("subject") or {}
    content = subject.get("content") or {}
    custom = doc.get("customData") or {}
    delivery = custom.get("deliveryId") if isinstance(custom, dict) else None
    return SeenEvent(
        id=str(context.get("id")),
        type=sys.intern(str(context.get("type"))),
        chain_id=context.get("chainId"),
        delivery_id=delivery,
        run_id=subject.get("id") if "pipelinerun" in str(context.get("type")) else None,
        pipeline=_interned(content.get("pipelineName")),
        outcome=_interned(content.get("outcome")),
        seen_at=seen_at,
        covered=isinstance(custom, dict) and custom.get("covered") is True,
    )


def _interned(value: Any) -> str | None:
    return sys.intern(value) if isinstance(value, str) else None


async def read_cdevents_stream(servers: str, stream: str, within: float = 60.0) -> list[SeenEvent]:
    """Every CDEvent stored in ``stream`` (an ordered read from the first message)."""
    nc = await nats.connect(servers=servers.split(","), connect_timeout=3)
    out: list[SeenEvent] = []
    try:
        js = nc.jetstream(timeout=10)
        info = await js.stream_info(stream)
        last = info.state.last_seq
        if info.state.messages == 0:
            return out
        sub = await js.subscribe(">", stream=stream, ordered_consumer=True)
        deadline = time.monotonic() + within
        try:
            while time.monotonic() < deadline:
                try:
                    msg = await sub.next_msg(timeout=5)
                except (TimeoutError, nats.errors.TimeoutError):
                    break
                out.append(parse_event(json.loads(msg.data), time.monotonic()))
                if msg.metadata.sequence.stream >= last:
                    break
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()
    return out


async def _ignore(error: Exception) -> None:
    """A NATS error callback that drops the error (the caller answers None instead)."""


async def consumer_backlog(servers: str, stream: str, durable: str) -> int | None:
    """Messages of ``stream`` not yet acked by ``durable`` (pending + ack pending; None while
    NATS or the consumer cannot be asked)."""
    nc = Client()
    try:
        # One pass over the servers, quietly: with nats-py's defaults a client that is refused
        # everywhere goes round the list for minutes, logging each refusal, and a sample
        # taken while NATS is down would wait for it.
        await nc.connect(
            servers=servers.split(","),
            connect_timeout=2,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0,
            error_cb=_ignore,
        )
    except Exception:
        # A node that accepts the socket but not yet the handshake (one restarting) leaves
        # nats-py's socket open unless the client is closed (a ResourceWarning otherwise).
        with contextlib.suppress(Exception):
            await nc.close()
        return None
    try:
        info = await nc.jetstream(timeout=3).consumer_info(stream, durable)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


@dataclass(frozen=True)
class ReconcileState:
    """Where one object stands: the last reconcile request on it and the one Flux handled."""

    requested_at: str | None  # annotation reconcile.fluxcd.io/requestedAt
    handled_at: str | None  # status.lastHandledReconcileAt
    delivery: str | None  # the envelope id the reconciler wrote with its last request


async def reconcile_states(
    api: k8s_client.ApiClient, namespace: str, group: str, version: str, plural: str, kind: str
) -> dict[str, ReconcileState]:
    """Every object of one kind in ``namespace`` by key (``Kind/namespace/name``)."""
    custom = k8s_client.CustomObjectsApi(api)
    listing = await custom.list_namespaced_custom_object(group, version, namespace, plural)
    out: dict[str, ReconcileState] = {}
    for obj in listing["items"]:
        meta = obj.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        out[f"{kind}/{namespace}/{meta.get('name', '')}"] = ReconcileState(
            annotations.get(REQUESTED_AT),
            (obj.get("status") or {}).get("lastHandledReconcileAt"),
            annotations.get(DELIVERY_ANNOTATION),
        )
    return out


def process_rss(pid: int | None) -> int | None:
    """Resident set size in bytes of a live process (None when it is gone)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def process_cpu_seconds(pid: int | None) -> float | None:
    """CPU time (user + system, in seconds) a live process has used so far (None when gone)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime


def machine_cpu_seconds() -> float:
    """CPU time the machine's cores have been busy since boot: user, nice, system, irq and
    softirq (not idle, iowait or steal; guest time is already inside user and nice)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, f.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / _CLOCK_TICKS


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


async def scrape(url: str) -> dict[str, float]:
    """A Prometheus text page as ``{"name{labels}": value}`` (empty when unreachable)."""
    out: dict[str, float] = {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.get(url) as rsp,
        ):
            text = await rsp.text()
    except (aiohttp.ClientError, TimeoutError, OSError):
        return out
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[name] = float(value)
    return out


def metric_sum(metrics: dict[str, float], name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for key, value in metrics.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total
