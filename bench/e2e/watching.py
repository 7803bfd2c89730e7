"""Watching the benchmark's Flux objects: when did each reconcile request become visible?

One watch per namespace on Kustomizations, straight to the kube-apiserver (never through
the fault proxy, so the proxy's hop does not delay what is measured). Every ADDED/MODIFIED
event is recorded with its arrival time and the two annotations a reconcile request
writes, ``reconcile.fluxcd.io/requestedAt`` and ``fluxrelay.io/delivery``. The watch
starts from the resourceVersion of an initial list, so nothing written after
:meth:`AnnotationWatcher.start` returns is missed; an ended watch resumes from the last
version seen.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from typing import Any

import aiohttp

from bench.e2e.analysing import Seen

log = logging.getLogger(__name__)

REQUESTED_AT = "reconcile.fluxcd.io/requestedAt"
DELIVERY = "fluxrelay.io/delivery"
COLLECTION = "/apis/kustomize.toolkit.fluxcd.io/v1/namespaces/{ns}/kustomizations"


def annotations_of(obj: dict[str, Any]) -> tuple[str, str | None, str | None]:
    meta = obj.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    return str(meta.get("name")), annotations.get(REQUESTED_AT), annotations.get(DELIVERY)


class AnnotationWatcher:
    """Records every change of the reconcile annotations on one namespace's Kustomizations."""

    def __init__(self, url: str, token: str, ca_file: str, namespace: str) -> None:
        self._url = url.rstrip("/") + COLLECTION.format(ns=namespace)
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self._ssl = ssl.create_default_context(cafile=ca_file)
        self.events: list[Seen] = []
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._version = ""

    async def current(self) -> dict[str, tuple[str | None, str | None]]:
        """Each object's (requestedAt, delivery) now, from a fresh list."""
        listing = await self._list()
        out: dict[str, tuple[str | None, str | None]] = {}
        for item in listing.get("items", []):
            name, requested_at, delivery = annotations_of(item)
            out[name] = (requested_at, delivery)
        return out

    async def _list(self) -> dict[str, Any]:
        assert self._session is not None
        async with self._session.get(self._url, headers=self._headers, ssl=self._ssl) as resp:
            resp.raise_for_status()
            listing: dict[str, Any] = await resp.json()
            return listing

    async def start(self) -> AnnotationWatcher:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)
        )
        listing = await self._list()
        self._version = listing["metadata"]["resourceVersion"]
        self._task = asyncio.create_task(self._watch(), name="bench-watch")
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # wait() and not ``suppress(CancelledError)``: a cancel of the caller must not be
            # swallowed along with the watch task's own.
            await asyncio.wait({self._task})
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def clear(self) -> None:
        self.events.clear()

    async def _watch(self) -> None:
        assert self._session is not None
        while True:
            params = {"watch": "1", "resourceVersion": self._version, "timeoutSeconds": "600"}
            try:
                async with self._session.get(
                    self._url, headers=self._headers, params=params, ssl=self._ssl
                ) as resp:
                    resp.raise_for_status()
                    async for line in resp.content:
                        if line.strip():
                            self._on_event(json.loads(line), time.monotonic())
            except (aiohttp.ClientError, ValueError) as e:
                log.warning("bench watch ended (%s); resuming", type(e).__name__)
                await asyncio.sleep(0.2)

    def _on_event(self, event: dict[str, Any], at: float) -> None:
        obj = event.get("object") or {}
        if event.get("type") == "ERROR":
            # 410 Gone: the version is too old; relisting would lose events, so say so loudly.
            log.error("bench watch error: %s", obj.get("message"))
            raise ValueError("watch error")
        self._version = (obj.get("metadata") or {}).get("resourceVersion", self._version)
        if event.get("type") in ("ADDED", "MODIFIED"):
            name, requested_at, delivery = annotations_of(obj)
            self.events.append(Seen(at, name, requested_at, delivery))
