"""Targeting: from one envelope to exactly the Flux objects its Receiver names.

Explicit targeting follows Flux's Receiver semantics: each ``spec.resources[]`` entry has a
kind, an apiVersion (optional only for the kinds notification-controller defaults, see
``kinds.DEFAULT_API_VERSIONS``; any other kind without one is refused as Flux refuses it), a
name or ``*`` with ``matchLabels`` (required with ``*``, as Flux requires), and a namespace
defaulting to the Receiver's (cross-namespace references can be forbidden, like Flux's
``--no-cross-namespace-refs``). Candidates pass ``spec.resourceFilter`` and the entry's own
``filter`` (CEL, see ``filtering``). Sharding is applied to every candidate: with a shard key
only objects labelled ``sharding.fluxcd.io/key=<key>``, without one only unlabelled objects.

Lookups read no API in the steady state: objects' metadata is kept by one metadata informer
per kind named (``reconciler.metadata``), as notification-controller's cached client keeps
it. Before a kind is listed, and for an object the cache does not hold, they read the API: a
wildcard is then one list call with a label selector (the shard requirement included, so the
server filters), and concurrent deliveries for the same object or selector share one request
whose answer is reused for a short TTL.

A Receiver annotated ``fluxrelay.io/targeting: auto`` also gets the Flux sources that follow
the pushed repository and ref, from the source index (``reconciler.indexing``), built on
first use; its ``spec.resourceFilter`` applies to them as to named resources.

Every object considered is recorded with why it was or was not reconciled
(``reconciler.decisions``): the chain carries it, and a delivery that reconciled nothing says
why.

A problem with one resource entry (not found, forbidden reference, bad filter) does not stop
the others: the good targets are patched and the problems are reported together, so the
message is dead-lettered with the reason after its good targets were handled.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from kubernetes_asyncio import client as k8s

from reconciler.decisions import (
    CROSS_NAMESPACE,
    FILTER_FALSE,
    INVALID_RESOURCE,
    MATCH_LABELS,
    NOT_FOUND,
    RECONCILED,
    SHARD,
    Decisions,
)
from reconciler.errors import PermanentError, TemporaryError
from reconciler.filtering import Filters, resource_view
from reconciler.kinds import KINDS, SHARD_LABEL, ObjectRef, default_api_version, shard_selector
from reconciler.metadata import MetadataCache
from reconciler.metrics import ReconcilerMetrics
from reconciler.receivers import ReceiverBook
from reconciler.throttling import ApiGate
from schemas.envelope import Envelope
from schemas.receivers import ReceiverDef

log = logging.getLogger(__name__)

TARGETING_ANNOTATION = "fluxrelay.io/targeting"
"""Set to ``auto`` on a Receiver to add the sources found by the source index."""
AUTO = "auto"
MIN_CACHE = 256


class SourceMatcher(Protocol):
    """What targeting needs of ``reconciler.indexing.SourceIndex``."""

    @property
    def ready(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def match(self, envelope: Mapping[str, Any]) -> list[ObjectRef]: ...

    def explain(self, envelope: Mapping[str, Any], into: Decisions) -> None: ...


@dataclass
class Targets:
    """Objects to patch for one envelope, the resource entries that failed for good, and why
    each object considered was or was not reconciled (``reconciler.decisions``)."""

    refs: list[ObjectRef] = field(default_factory=list)
    failures: list[PermanentError] = field(default_factory=list)
    decisions: Decisions = field(default_factory=Decisions)


@dataclass
class _Entry:
    task: asyncio.Task[Any]
    expires: float = float("inf")


class SharedLookups:
    """Single-flight, short-TTL cache of API reads keyed by what was asked.

    Bounded by the API budget rather than by what deliveries name: every entry cost one
    request under the rate limit, so no more than ``qps x ttl + burst`` of them can be fresh
    at once; expired ones are dropped when that many are held, and if a limit set lower
    than that is still reached the oldest go (the reads in flight carry on for whoever
    awaits them, unshared).
    """

    def __init__(self, ttl: float, limit: int = 10_000) -> None:
        self.ttl = ttl
        self.limit = max(limit, MIN_CACHE)
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str, fetch: Callable[[], Awaitable[Any]]) -> Any:
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is None or entry.expires <= now:
            if len(self._entries) >= self.limit:
                self._prune(now)
            entry = _Entry(asyncio.ensure_future(fetch()))
            self._entries[key] = entry
            entry.task.add_done_callback(functools.partial(self._done, key, entry))
        return await asyncio.shield(entry.task)

    def _done(self, key: str, entry: _Entry, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is not None:
            if self._entries.get(key) is entry:
                del self._entries[key]
        else:
            entry.expires = time.monotonic() + self.ttl

    def _prune(self, now: float) -> None:
        for key in [k for k, e in self._entries.items() if e.expires <= now]:
            del self._entries[key]
        for key in list(self._entries)[: max(0, len(self._entries) - self.limit + 1)]:
            del self._entries[key]  # oldest first: dicts keep insertion order

    async def close(self) -> None:
        tasks = [entry.task for entry in self._entries.values()]
        self._entries.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


IndexFactory = Callable[[], SourceMatcher]

_FAILURE_REASONS = {"not_found": NOT_FOUND, "cross_namespace": CROSS_NAMESPACE}
"""PermanentError reasons of a Receiver entry, as decision reasons (the rest: invalid)."""


def _entry_name(index: int, resource: Mapping[str, Any]) -> str:
    """``Kind/namespace/name`` of a Receiver entry as written, for a decision about it."""
    namespace = resource.get("namespace") or "-"
    return f"resources[{index}] {resource.get('kind')}/{namespace}/{resource.get('name')}"


class Targeter:
    """Resolves an envelope's Receiver into the object references to patch."""

    def __init__(
        self,
        api: k8s.ApiClient,
        gate: ApiGate,
        book: ReceiverBook,
        metrics: ReconcilerMetrics,
        *,
        shard: str | None,
        allow_cross_namespace: bool,
        cache_ttl: float,
        index_factory: IndexFactory | None = None,
        metadata: MetadataCache | None = None,
    ) -> None:
        self._custom = k8s.CustomObjectsApi(api)
        self._gate = gate
        self.book = book
        self._metrics = metrics
        self.shard = shard
        self.allow_cross_namespace = allow_cross_namespace
        self.filters = Filters()
        budget = gate.settings
        self._lookups = SharedLookups(cache_ttl, math.ceil(budget.qps * cache_ttl) + budget.burst)
        self._index_factory = index_factory
        self.metadata = metadata
        self.index: SourceMatcher | None = None
        self._index_starting: asyncio.Task[None] | None = None

    async def targets(self, envelope: Envelope) -> Targets:
        """The objects ``envelope`` concerns; TemporaryError when that cannot be known yet."""
        receiver = self.book.get(envelope["receiver"]["namespace"], envelope["receiver"]["name"])
        if receiver is None:
            raise TemporaryError(
                f"receiver {envelope['receiver']['namespace']}/{envelope['receiver']['name']} "
                "is not known (yet)",
                reason="unknown_receiver",
                delay=5.0,
            )
        result = Targets()
        for index, resource in enumerate(receiver.resources):
            try:
                refs = await self._explicit(receiver, resource, envelope, result.decisions)
            except PermanentError as e:
                result.decisions.add(
                    _entry_name(index, resource),
                    _FAILURE_REASONS.get(e.reason, INVALID_RESOURCE),
                    str(e),
                )
                log.warning(
                    "resources[%d] of %s: %s",
                    index,
                    receiver.key,
                    e,
                    extra={"delivery_id": envelope["delivery_id"], "receiver": receiver.key},
                )
                result.failures.append(e)
                continue
            result.refs.extend(refs)
            self._metrics.targets.labels("explicit").inc(len(refs))
        if receiver.annotations.get(TARGETING_ANNOTATION) == AUTO:
            found = await self._auto(envelope)
            noted = len(result.decisions)
            if found and receiver.resource_filter:
                found = await self._filter_auto(receiver, found, envelope, result.decisions)
            result.refs.extend(found)
            self._metrics.targets.labels("auto").inc(len(found))
            for ref in found:
                result.decisions.add(ref.key, RECONCILED, "automatic: follows this push")
            if not found and len(result.decisions) == noted and self.index is not None:
                self.index.explain(envelope, result.decisions)
        result.refs = sorted(set(result.refs))
        return result

    # ------------------------------------------------------------------------------ explicit

    def _in_shard(self, obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if not self.shard:
            return SHARD_LABEL not in labels
        return bool(labels.get(SHARD_LABEL) == self.shard)

    async def _explicit(
        self,
        receiver: ReceiverDef,
        resource: Mapping[str, Any],
        envelope: Envelope,
        decisions: Decisions,
    ) -> list[ObjectRef]:
        kind = str(resource.get("kind", ""))
        if kind not in KINDS:
            raise PermanentError(f"kind {kind!r} is not a Flux kind", reason="unknown_kind")
        namespace = str(resource.get("namespace") or receiver.namespace)
        if namespace != receiver.namespace and not self.allow_cross_namespace:
            raise PermanentError(
                f"{kind} in namespace {namespace}: cross-namespace references are not allowed",
                reason="cross_namespace",
            )
        api_version = str(resource.get("apiVersion") or "") or default_api_version(kind)
        if api_version is None:
            # notification-controller refuses such an entry with these words; so does fluxrelay.
            raise PermanentError(
                f"apiVersion must be specified for kind {kind!r}", reason="missing_api_version"
            )
        name = str(resource.get("name", ""))
        probe = ObjectRef.of(kind, namespace, name, api_version)
        if name == "*":
            match_labels = resource.get("matchLabels")
            if not isinstance(match_labels, Mapping) or not match_labels:
                raise PermanentError(
                    f"{kind} '*': matchLabels is required with the wildcard name",
                    reason="wildcard_without_labels",
                )
            candidates = await self._list(probe, match_labels)
            if not candidates:
                selector = ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))
                decisions.add(
                    f"{kind}/{namespace}/*", MATCH_LABELS, f"no object in this shard has {selector}"
                )
        else:
            obj = await self._get(probe)
            candidates = [obj]
            if not self._in_shard(obj):
                candidates = []
                decisions.add(probe.key, SHARD, f"not in shard {self.shard or '(none)'}")
        refs: list[ObjectRef] = []
        claims = envelope.get("claims") or {}
        for obj in candidates:
            meta = obj.get("metadata") or {}
            view = resource_view(obj)
            ref = ObjectRef(
                kind,
                str(meta.get("namespace", namespace)),
                str(meta["name"]),
                probe.group,
                probe.version,
                probe.plural,
            )
            refused = next(
                (
                    str(expr)
                    for expr in (receiver.resource_filter, resource.get("filter"))
                    if expr
                    and not self.filters.matches(str(expr), view, envelope["payload"], claims)
                ),
                None,
            )
            if refused is None:
                refs.append(ref)
                decisions.add(ref.key, RECONCILED)
            else:
                decisions.add(ref.key, FILTER_FALSE, refused)
        return refs

    async def _get(self, ref: ObjectRef) -> dict[str, Any]:
        if self.metadata is not None and (held := self.metadata.get(ref)) is not None:
            return held

        async def fetch() -> dict[str, Any]:
            async def request() -> dict[str, Any]:
                obj: dict[str, Any] = await self._custom.get_namespaced_custom_object(
                    ref.group, ref.version, ref.namespace, ref.plural, ref.name
                )
                return obj

            return await self._gate.call("get", ref.key, request)

        key = f"get/{ref.group}/{ref.version}/{ref.key}"
        found: dict[str, Any] = await self._lookups.get(key, fetch)
        return found

    async def _list(
        self, probe: ObjectRef, match_labels: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        if self.metadata is not None:
            held = self.metadata.select(probe, match_labels)
            if held is not None:
                return [obj for obj in held if self._in_shard(obj)]
        selector = ",".join(
            [f"{k}={v}" for k, v in sorted(match_labels.items())] + [shard_selector(self.shard)]
        )
        what = f"{probe.kind}/{probe.namespace}?{selector}"

        async def fetch() -> list[dict[str, Any]]:
            async def request() -> list[dict[str, Any]]:
                listing = await self._custom.list_namespaced_custom_object(
                    probe.group,
                    probe.version,
                    probe.namespace,
                    probe.plural,
                    label_selector=selector,
                )
                items: list[dict[str, Any]] = listing.get("items", [])
                return items

            return await self._gate.call("list", what, request)

        items: list[dict[str, Any]] = await self._lookups.get(
            f"list/{probe.group}/{probe.version}/{what}", fetch
        )
        # The server already filtered; checking again guards against a selector typo here.
        return [obj for obj in items if self._in_shard(obj)]

    # ---------------------------------------------------------------------------------- auto

    async def _filter_auto(
        self,
        receiver: ReceiverDef,
        found: list[ObjectRef],
        envelope: Envelope,
        decisions: Decisions,
    ) -> list[ObjectRef]:
        """``spec.resourceFilter`` applied to indexed sources as to named resources. The index
        keeps no metadata, so each source is looked up like a named resource (the metadata
        cache, or a read): a Receiver without a filter pays nothing; one deleted since it was
        indexed is skipped."""
        expression = str(receiver.resource_filter)
        claims = envelope.get("claims") or {}
        kept: list[ObjectRef] = []
        for ref in found:
            try:
                obj = await self._get(ref)
            except PermanentError as e:
                decisions.add(ref.key, NOT_FOUND, str(e))
                continue
            if self.filters.matches(expression, resource_view(obj), envelope["payload"], claims):
                kept.append(ref)
            else:
                decisions.add(ref.key, FILTER_FALSE, expression)
        return kept

    async def _auto(self, envelope: Envelope) -> list[ObjectRef]:
        if self.index is None:
            if self._index_factory is None:
                raise PermanentError(
                    "automatic targeting is not available in this process", reason="no_index"
                )
            self.index = self._index_factory()
            self._index_starting = asyncio.create_task(self.index.start(), name="source-index")
        if not self.index.ready:
            raise TemporaryError("source index is not ready yet", reason="index_warming", delay=2.0)
        return list(self.index.match(envelope))

    async def close(self) -> None:
        await self._lookups.close()
        if self.metadata is not None:
            await self.metadata.close()
        if self._index_starting is not None and not self._index_starting.done():
            self._index_starting.cancel()
        if self.index is not None:
            await self.index.stop()
