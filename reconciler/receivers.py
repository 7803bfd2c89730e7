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

from runtime.informer import Informer, InformerSettings, custom_objects, gathered
from runtime.reloading import FileReloader
from schemas.receivers import (
    RECEIVER_GROUP,
    RECEIVER_PLURAL,
    RECEIVER_VERSION,
    ConfigError,
    ReceiverDef,
    is_receiver,
    parse_receiver,
    read_documents,
)

log = logging.getLogger(__name__)

WATCH_READ_GRACE_S = 60
"""Seconds of silence beyond the watch's own timeout after which its connection is presumed
dead (the server ends a watch at ``watch_timeout``, so longer silence means a lost peer)."""


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
        self._reloader = FileReloader(
            path, interval, what="receivers", errors=(ConfigError,), logger=log
        )

    async def load(self) -> None:
        """First read; raises ConfigError so the process refuses to start on a bad file."""
        self._reloader.mark()
        self.book.replace(load_file(self.path))
        log.info("loaded %d receiver(s) from %s", len(self.book), self.path)

    async def run(self) -> None:
        """Re-read the file whenever it changes, until cancelled."""
        await self._reloader.run(self._reload)

    def _reload(self) -> None:
        self.book.replace(load_file(self.path))
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
        self.book = book
        self.namespace = namespace
        self.label_selector = label_selector
        self.watch_timeout = watch_timeout
        call = custom_objects(
            api,
            RECEIVER_GROUP,
            RECEIVER_VERSION,
            RECEIVER_PLURAL,
            namespace=namespace,
            label_selector=label_selector,
        )
        self.informer = Informer(
            "Receiver",
            call,
            on_list=gathered(self._replace),
            on_event=self._apply,
            settings=InformerSettings(
                watch_timeout_s=watch_timeout,
                read_timeout_s=watch_timeout + WATCH_READ_GRACE_S,
                backoff_max_s=10.0,
            ),
            logger=log,
        )

    async def run(self) -> None:
        """List, then watch until cancelled (``book.loaded`` is set by the first list)."""
        await self.informer.run()

    def _replace(self, items: list[dict[str, Any]]) -> None:
        defs = [d for d in (_parse(item) for item in items) if d]
        self.book.replace(defs)
        log.info("listed %d receiver(s)", len(defs))

    def _apply(self, kind: str, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        namespace, name = meta.get("namespace") or "default", meta.get("name")
        if not name:
            return
        if kind == "DELETED":
            self.book.remove(namespace, name)
            return
        definition = _parse(obj)
        if definition is None:
            self.book.remove(namespace, name)
        else:
            self.book.put(definition)
