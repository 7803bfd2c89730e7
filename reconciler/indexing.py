"""The source index: a :class:`reconciler.sourcetable.SourceTable` kept current by list+watch.

``SourceIndex`` feeds a ``SourceTable`` from the API server: one informer per kind
(:mod:`runtime.informer`: a paged list, then a watch resumed from the last resourceVersion,
relisted after 410 Gone, reconnected with capped, jittered backoff). A kind whose CRD is not
served (404, e.g. Flux installed without image automation) counts as listed-empty and is
retried slowly. What is filed from each kind, and why, is in :mod:`reconciler.sourcetable`.

Sharding as Flux: with ``shard=KEY`` only objects labelled ``sharding.fluxcd.io/key=KEY`` are
listed; without, only objects without that label (label selectors, filtered by the server).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio import client as k8s_client

from reconciler.decisions import Decisions
from reconciler.kinds import KINDS, ObjectRef, shard_selector
from reconciler.sourcetable import ObjKey, SourceTable
from runtime.informer import Informer, InformerSettings, custom_objects

logger = logging.getLogger(__name__)

INDEXED_KINDS = ("GitRepository", "OCIRepository", "ImageRepository", "HelmRepository", "HelmChart")
"""Listed and watched, in this order. Bucket is deliberately absent (see
:mod:`reconciler.sourcetable`)."""


@dataclass(frozen=True, kw_only=True)
class IndexSettings(InformerSettings):
    """How the index talks to the API server: an informer's settings, paged, and with kinds
    whose CRD is not installed looked for again every minute."""

    page_size: int | None = 500
    not_served_retry_s: float | None = 60.0


class SourceIndex:
    """A SourceTable kept current from the API server (list, then watch, per indexed kind)."""

    def __init__(
        self,
        api: k8s_client.ApiClient,
        *,
        namespace: str | None = None,
        shard: str | None = None,
        settings: IndexSettings | None = None,
    ) -> None:
        self._api = api
        self._namespace = namespace
        self._selector = shard_selector(shard)
        self._settings = settings or IndexSettings()
        self.table = SourceTable()
        self._listed: set[str] = set()
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def ready(self) -> bool:
        """True once every indexed kind has been listed (or found not served) once."""
        return self._ready.is_set()

    def match(self, envelope: Mapping[str, Any]) -> list[ObjectRef]:
        """The sources an event moves (see :meth:`SourceTable.match`)."""
        return self.table.match(envelope)

    def explain(self, envelope: Mapping[str, Any], into: Decisions) -> None:
        """Why no source moves on this event (see :meth:`SourceTable.explain`)."""
        self.table.explain(envelope, into)

    async def start(self) -> None:
        """Start listing and watching; return once every kind is listed (wrap in a timeout).

        Returns early, not ready, if :meth:`stop` is called meanwhile.
        """
        if self._tasks:
            return
        tasks = [
            asyncio.create_task(self._run(kind), name=f"source-index-{kind}")
            for kind in INDEXED_KINDS
        ]
        self._tasks = tasks
        # Return when ready, or when stop() ends the watches first (then ``ready`` stays False).
        waiter = asyncio.ensure_future(self._ready.wait())
        try:
            await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter

    async def stop(self) -> None:
        """Cancel the watches and wait for them to end."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------------- per kind

    async def _run(self, kind: str) -> None:
        known = KINDS[kind]
        call = custom_objects(
            self._api,
            known.group,
            known.version,
            known.plural,
            namespace=self._namespace,
            label_selector=self._selector,
        )
        informer = Informer(
            kind,
            call,
            on_list=lambda: _KindListing(self, kind),
            on_event=self._apply,
            settings=self._settings,
            logger=logger,
        )
        await informer.run()

    def _mark_listed(self, kind: str) -> None:
        self._listed.add(kind)
        if len(self._listed) == len(INDEXED_KINDS) and not self._ready.is_set():
            logger.info("source index ready: %d sources filed", len(self.table))
            self._ready.set()

    def _apply(self, event: str, obj: Mapping[str, Any]) -> None:
        if event == "DELETED":
            self.table.remove(obj)
        else:
            self.table.upsert(obj)


@dataclass(slots=True)
class _KindListing:
    """One list of one kind, filed page by page as it arrives (only the keys are kept, so a
    large list never holds more than one page of objects); what it no longer shows is pruned
    at the end."""

    index: SourceIndex
    kind: str
    listed: set[ObjKey] = field(default_factory=set)

    def add(self, items: list[dict[str, Any]]) -> None:
        known = KINDS[self.kind]
        for item in items:
            # Items of a list may lack kind/apiVersion; watch events always carry them.
            item.setdefault("kind", self.kind)
            item.setdefault("apiVersion", known.api_version)
            key = self.index.table.upsert(item)
            if key is not None:
                self.listed.add(key)

    def done(self) -> None:
        self.index.table.prune_kind(self.kind, self.listed)
        self.index._mark_listed(self.kind)
