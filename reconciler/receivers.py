"""Which Receivers exist, and what each one targets: from a YAML file or the Kubernetes API.

The reconciler reads the same Receivers the receiver serves, for ``spec.resources``,
``spec.resourceFilter`` and the targeting annotation; it never reads a Secret (a Secret in
the file is skipped, the Kubernetes source lists and watches Receivers only). The current set
lives in a :class:`ReceiverBook` that a source replaces or updates in one step, so a message
being targeted sees either the old or the new definition, never half of each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import watch as k8s_watch
from kubernetes_asyncio.client.exceptions import ApiException

from schemas.receivers import (
    RECEIVER_GROUP,
    ConfigError,
    ReceiverDef,
    is_receiver,
    parse_receiver,
    read_documents,
)

log = logging.getLogger(__name__)

RECEIVER_VERSION = "v1"
RECEIVER_PLURAL = "receivers"


class ReceiverBook:
    """The Receivers known right now, by ``(namespace, name)``."""

    def __init__(self) -> None:
        self._defs: dict[tuple[str, str], ReceiverDef] = {}
        self.loaded = asyncio.Event()

    def __len__(self) -> int:
        return len(self._defs)

    def get(self, namespace: str, name: str) -> ReceiverDef | None:
        return self._defs.get((namespace, name))

    def all(self) -> list[ReceiverDef]:
        return list(self._defs.values())

    def replace(self, defs: Iterable[ReceiverDef]) -> None:
        self._defs = {(d.namespace, d.name): d for d in defs}
        self.loaded.set()

    def put(self, definition: ReceiverDef) -> None:
        self._defs[(definition.namespace, definition.name)] = definition

    def remove(self, namespace: str, name: str) -> None:
        self._defs.pop((namespace, name), None)


def load_file(path: Path) -> list[ReceiverDef]:
    """Receivers of a manifest file (Secrets in it are parsed by the shared reader but unused)."""
    return [definition for _, definition in read_documents(path).receivers]


class FileReceivers:
    """Receivers from a YAML file; a bad edit keeps the previous set and is logged."""

    def __init__(self, path: Path, interval: float, book: ReceiverBook) -> None:
        self.path = path
        self.interval = interval
        self.book = book
        self._stamp: tuple[int, int] | None = None

    def _current_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    async def load(self) -> None:
        """First read; raises ConfigError so the process refuses to start on a bad file."""
        self._stamp = self._current_stamp()
        self.book.replace(load_file(self.path))
        log.info("loaded %d receiver(s) from %s", len(self.book), self.path)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            stamp = self._current_stamp()
            if stamp == self._stamp:
                continue
            self._stamp = stamp
            try:
                defs = load_file(self.path)
            except ConfigError as e:
                log.error("reload failed, keeping the previous receivers: %s", e)
                continue
            self.book.replace(defs)
            log.info("reloaded %d receiver(s) from %s", len(self.book), self.path)


def _parse(obj: Mapping[str, Any]) -> ReceiverDef | None:
    meta = obj.get("metadata") or {}
    where = f"Receiver {meta.get('namespace')}/{meta.get('name')}"
    if not is_receiver(obj):
        return None
    try:
        return parse_receiver(obj, where)
    except ConfigError as e:
        log.warning("ignoring invalid receiver: %s", e)
        return None


class KubeReceivers:
    """Receivers by list+watch of ``notification.toolkit.fluxcd.io/v1`` (never Secrets)."""

    def __init__(
        self,
        api: k8s.ApiClient,
        book: ReceiverBook,
        *,
        namespace: str | None,
        label_selector: str | None,
        watch_timeout: int,
    ) -> None:
        self._custom = k8s.CustomObjectsApi(api)
        self.book = book
        self.namespace = namespace
        self.label_selector = label_selector
        self.watch_timeout = watch_timeout

    def _list_call(self) -> Any:
        if self.namespace:
            return self._custom.list_namespaced_custom_object
        return self._custom.list_cluster_custom_object

    def _args(self) -> tuple[str, ...]:
        base = (RECEIVER_GROUP, RECEIVER_VERSION)
        if self.namespace:
            return (*base, self.namespace, RECEIVER_PLURAL)
        return (*base, RECEIVER_PLURAL)

    def _selector(self) -> dict[str, str]:
        return {"label_selector": self.label_selector} if self.label_selector else {}

    async def relist(self) -> str:
        """List every Receiver, replace the book, return the list's resourceVersion."""
        listing = await self._list_call()(*self._args(), **self._selector())
        defs = [d for d in (_parse(item) for item in listing.get("items", [])) if d]
        self.book.replace(defs)
        version: str = listing.get("metadata", {}).get("resourceVersion", "")
        log.info("listed %d receiver(s)", len(defs))
        return version

    async def run(self) -> None:
        delay = 0.5
        while True:
            try:
                version = await self.relist()
                delay = 0.5
                while True:
                    version = await self._watch(version)
            except (ApiException, OSError, TimeoutError, ValueError) as e:
                log.warning("receiver watch failed (%s), listing again", type(e).__name__)
            except Exception as e:  # aiohttp errors from a dropped stream
                log.warning("receiver watch ended (%s), listing again", type(e).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _watch(self, version: str) -> str:
        """One watch request from ``version``; returns the version to continue from."""
        async with k8s_watch.Watch().stream(
            self._list_call(),
            *self._args(),
            resource_version=version,
            timeout_seconds=self.watch_timeout,
            allow_watch_bookmarks=True,
            **self._selector(),
        ) as events:
            async for event in events:
                version = self._apply(event) or version
        return version

    def _apply(self, event: Mapping[str, Any]) -> str | None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            raise ValueError(f"watch error: {obj.get('message', obj)}")
        meta = obj.get("metadata") or {}
        version = meta.get("resourceVersion")
        if kind == "BOOKMARK":
            return str(version) if version else None
        namespace, name = meta.get("namespace") or "default", meta.get("name")
        if not name:
            return None
        if kind == "DELETED":
            self.book.remove(namespace, name)
        else:
            definition = _parse(obj)
            if definition is None:
                self.book.remove(namespace, name)
            else:
                self.book.put(definition)
        return str(version) if version else None
