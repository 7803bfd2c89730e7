"""Flux objects' metadata kept in memory by list+watch, so explicit targeting reads no API.

Why: a Receiver's named resources used to be read with one GET each, shared and cached for
``--object-cache-ttl``. A Receiver naming 1,000 objects then cost about 100 reads a second
out of the 50 QPS the patches need, and a busy replica spent its budget reading what it was
about to patch. notification-controller does not pay that either: its receiver handler reads
``PartialObjectMetadata`` through controller-runtime's cached client, which starts one
metadata informer per kind on first use. fluxrelay does the same here.

What: one informer (:mod:`runtime.informer`, metadata only: the server sends neither spec
nor status) per group/version/plural that targeting asks about, started on first use and
scoped like the source index (``--namespace``, the shard's label selector). Until its first
list is complete a lookup answers ``None`` and targeting reads from the API as before, so a
new kind costs no delay. An object it does not hold is read from the API too. It may have
been created a moment ago, or be in another shard, and that read says which.

Memory: one entry per object of a kind some Receiver names, in this shard: its metadata
without ``managedFields``. Those are the server's field-ownership records, often larger than
the rest, and ``resourceFilter`` has no use for them. The bound is the cluster's objects,
never the rate of deliveries (README, memory budget).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio import client as k8s

from reconciler.kinds import ObjectRef, shard_selector
from reconciler.metrics import ReconcilerMetrics
from reconciler.patching import LastRequest
from runtime.informer import Informer, InformerSettings, custom_objects

log = logging.getLogger(__name__)

JSON = dict[str, Any]
Gvr = tuple[str, str, str]
"""group, version, plural: what one informer lists."""


def trimmed(obj: Mapping[str, Any], kind: str, api_version: str) -> JSON:
    """What is kept of one object: what ``resourceFilter`` sees (``filtering.resource_view``),
    with the kind and apiVersion it was asked for (a metadata answer says
    ``PartialObjectMetadata``) and no ``managedFields``."""
    meta = obj.get("metadata") or {}
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {k: v for k, v in meta.items() if k != "managedFields"},
    }


@dataclass(eq=False)
class _Collection:
    """The objects of one group/version/plural, by namespace then name: a label selection
    (a Receiver's ``matchLabels``) looks at one namespace's objects, not the cluster's."""

    kind: str
    api_version: str
    namespaces: dict[str, dict[str, JSON]] = field(default_factory=dict)
    size: int = 0
    listed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def get(self, namespace: str, name: str) -> JSON | None:
        return self.namespaces.get(namespace, {}).get(name)

    def put(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        if isinstance(name, str):
            names = self.namespaces.setdefault(str(meta.get("namespace") or ""), {})
            self.size += name not in names
            names[name] = trimmed(obj, self.kind, self.api_version)

    def drop(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        namespace = str(meta.get("namespace") or "")
        names = self.namespaces.get(namespace, {})
        if names.pop(str(meta.get("name")), None) is not None:
            self.size -= 1
            if not names:
                del self.namespaces[namespace]


@dataclass(eq=False)
class _Listing:
    """One list of a collection, page by page; it replaces what was held when complete."""

    collection: _Collection
    cache: MetadataCache
    fresh: _Collection | None = None

    def add(self, items: list[JSON]) -> None:
        if self.fresh is None:
            self.fresh = _Collection(self.collection.kind, self.collection.api_version)
        for item in items:
            self.fresh.put(item)

    def done(self) -> None:
        fresh = self.fresh or _Collection(self.collection.kind, self.collection.api_version)
        self.collection.namespaces, self.collection.size = fresh.namespaces, fresh.size
        self.collection.listed.set()
        self.cache._count(self.collection)


class MetadataCache:
    """Metadata of the Flux objects targeting asks about, one informer per kind named."""

    def __init__(
        self,
        api: k8s.ApiClient,
        metrics: ReconcilerMetrics,
        *,
        namespace: str | None = None,
        shard: str | None = None,
        settings: InformerSettings | None = None,
    ) -> None:
        self._api = api
        self._metrics = metrics
        self._namespace = namespace
        self.selector = shard_selector(shard)
        # A version the server does not serve lists as empty (lookups then read from the
        # API, whose 404 says "not found") and is looked for again every minute.
        self._settings = settings or InformerSettings(page_size=500, not_served_retry_s=60.0)
        self._collections: dict[Gvr, _Collection] = {}

    def get(self, ref: ObjectRef) -> JSON | None:
        """The object's metadata, or ``None`` when this cache cannot say (not listed yet, not
        held: the caller reads it from the API)."""
        collection = self._collection(ref)
        if collection is None:
            return None
        return collection.get(ref.namespace, ref.name)

    def last_request(self, ref: ObjectRef) -> LastRequest | None:
        """The object's last reconcile request as last seen (``requestedAt``, fluxrelay's
        ``stored-through``, the resource version), when its kind is kept already (this never
        starts keeping one: the coalescer asks about every object it patches, explicit
        targeting decides which kinds are kept)."""
        collection = self._collections.get((ref.group, ref.version, ref.plural))
        if collection is None or not collection.listed.is_set():
            return None
        obj = collection.get(ref.namespace, ref.name)
        return None if obj is None else LastRequest.of(obj["metadata"])

    def saw(self, ref: ObjectRef, obj: Mapping[str, Any]) -> None:
        """``obj`` as a request for it just answered (``Patcher``): kept in place of what the
        watch showed, if held (the watch's own event for it follows; one older than it may
        come first and put an older version back, which costs a conflict, no more)."""
        collection = self._collections.get((ref.group, ref.version, ref.plural))
        if collection is not None and collection.get(ref.namespace, ref.name) is not None:
            collection.put(obj)

    def select(self, probe: ObjectRef, match_labels: Mapping[str, Any]) -> list[JSON] | None:
        """The objects in ``probe``'s namespace whose labels include ``match_labels`` (as a
        label selector of equalities selects), or ``None`` when not listed yet."""
        collection = self._collection(probe)
        if collection is None:
            return None
        wanted = {str(k): str(v) for k, v in match_labels.items()}
        found = []
        for obj in collection.namespaces.get(probe.namespace, {}).values():
            labels = obj["metadata"].get("labels") or {}
            if all(labels.get(k) == v for k, v in wanted.items()):
                found.append(obj)
        return found

    async def listed(self, ref: ObjectRef) -> None:
        """Start keeping ``ref``'s kind if it is not kept yet, and return once its first list
        is complete (from then on lookups of that kind read no API)."""
        self._collection(ref)
        await self._collections[(ref.group, ref.version, ref.plural)].listed.wait()

    def __len__(self) -> int:
        return sum(c.size for c in self._collections.values())

    async def close(self) -> None:
        tasks = [c.task for c in self._collections.values() if c.task is not None]
        self._collections.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------------ internals

    def _collection(self, ref: ObjectRef) -> _Collection | None:
        """The listed collection of ``ref``'s kind; starts its informer on first use."""
        key = (ref.group, ref.version, ref.plural)
        collection = self._collections.get(key)
        if collection is None:
            collection = _Collection(ref.kind, f"{ref.group}/{ref.version}")
            self._collections[key] = collection
            collection.task = asyncio.create_task(
                self._run(key, collection), name=f"metadata-{ref.plural}"
            )
        return collection if collection.listed.is_set() else None

    async def _run(self, key: Gvr, collection: _Collection) -> None:
        group, version, plural = key
        call = custom_objects(
            self._api,
            group,
            version,
            plural,
            namespace=self._namespace,
            label_selector=self.selector,
            metadata_only=True,
        )

        def on_event(event: str, obj: JSON) -> None:
            if event == "DELETED":
                collection.drop(obj)
            else:
                collection.put(obj)
            self._count(collection)

        informer = Informer(
            f"{collection.kind} metadata",
            call,
            on_list=lambda: _Listing(collection, self),
            on_event=on_event,
            settings=self._settings,
            logger=log,
        )
        await informer.run()

    def _count(self, collection: _Collection) -> None:
        self._metrics.cached_objects.labels(collection.kind).set(collection.size)
