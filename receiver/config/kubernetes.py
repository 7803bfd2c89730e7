"""Receivers read live from the Kubernetes API (``fluxrelay-receiver --kubernetes``).

This module owns the Kubernetes source: one list+watch of Flux ``Receiver`` objects
(``notification.toolkit.fluxcd.io/v1``, namespaced or cluster-wide, label selector applied) and
one of ``Secret`` objects, kept in memory only for the Secrets a Receiver references (values
are never logged; a ``generic-oidc`` Receiver in Flux's form references none and is served
without one). Every change rebuilds the whole table leniently (one broken Receiver never
takes the others down) after a short debounce, and hands it to ``apply``; the swap is a single
assignment, so requests in flight keep the Receiver they looked up.

Both collections are :mod:`runtime.informer` informers (relist on ``410 Gone``, resume from the
last ``resourceVersion`` after a disconnect or an API server restart, back off on errors, read
Secret events larger than aiohttp's line limit); SIGHUP makes both list again. The source only
reads: it never writes a Receiver's status (that is notification-controller's).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.config.config_exception import ConfigException

from receiver.config.sources import Apply, UnservedReport
from receiver.config.spec import ReceiverSpec, resolve, unserved_reason
from receiver.config.table import ReceiverTable, Unserved
from receiver.errors import ConfigError
from receiver.metrics import IngressMetrics
from receiver.settings import ReceiverSettings
from runtime.informer import (
    JSON,
    TRANSIENT,
    ApiError,
    Informer,
    InformerSettings,
    ListCall,
    custom_objects,
    gathered,
    read_json,
)
from schemas.receivers import (
    RECEIVER_GROUP,
    RECEIVER_PLURAL,
    RECEIVER_VERSION,
    ReceiverDef,
    parse_receiver,
    secret_data,
)

log = logging.getLogger(__name__)


Key = tuple[str, str]
"""(namespace, name) of an object."""


@dataclass(frozen=True, kw_only=True)
class WatchTiming:
    """Timings of the list+watch loops (tests shorten them; defaults suit production)."""

    debounce: float = 0.1
    """Seconds to gather a burst of changes into one rebuild."""
    watch_timeout: int = 300
    """Server-side ``timeoutSeconds`` of one watch request; it is then resumed."""
    read_grace: float = 30.0
    """Seconds of silence beyond ``watch_timeout`` after which a watch is presumed dead."""
    request_timeout: float = 30.0
    """Seconds for a list or get request."""
    backoff_min: float = 0.2
    backoff_max: float = 10.0
    """Reconnect delays double from min to max (with jitter) while the API is failing."""
    max_event_bytes: int = 16 * 1024 * 1024
    """Largest single watch event accepted (a Secret may hold up to 1 MiB of data)."""

    def informer(self) -> InformerSettings:
        """The same timings in the informer's terms (one unpaged list: each replaces the set)."""
        return InformerSettings(
            watch_timeout_s=self.watch_timeout,
            read_timeout_s=self.watch_timeout + self.read_grace,
            connect_timeout_s=self.request_timeout,
            list_timeout_s=self.request_timeout,
            backoff_initial_s=self.backoff_min,
            backoff_max_s=self.backoff_max,
            max_event_bytes=self.max_event_bytes,
        )


def _key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or "default"), str(meta.get("name") or ""))


class KubernetesSource:
    """Receivers and their Secrets from the Kubernetes API (the ReceiverSource protocol)."""

    def __init__(
        self,
        settings: ReceiverSettings,
        metrics: IngressMetrics,
        timing: WatchTiming | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.timing = timing or WatchTiming()
        self._api: k8s.ApiClient | None = None
        self.receiver_watch: Informer | None = None
        self.secret_watch: Informer | None = None
        self._defs: dict[Key, ReceiverDef] = {}
        self._invalid: dict[Key, str] = {}
        """Receivers that cannot be parsed, with the reason."""
        self._referenced: set[Key] = set()
        self._secret_values: dict[Key, dict[str, bytes]] = {}
        self._secret_errors: dict[Key, str] = {}
        self._absent: set[Key] = set()
        """Referenced Secrets known not to exist."""
        self._unreadable: dict[Key, str] = {}
        self._fetching: dict[Key, bool] = {}
        """Secrets being fetched: True once the watch said something newer meanwhile."""
        self._dirty = asyncio.Event()
        self.report = UnservedReport(metrics, log)

    # ------------------------------------------------------------------ protocol

    async def load(self) -> ReceiverTable:
        """Connect, list Receivers and Secrets, and build the first table.

        Fails fast (ConfigError) when the API cannot be reached or refuses to list, so a
        misconfigured deployment crash-loops with a clear message instead of serving nothing.
        """
        self._api = await self._connect()
        host = self._host()
        settings = self.timing.informer()

        def informer(
            kind: str,
            call: ListCall,
            on_list: Callable[[list[JSON]], None],
            on_event: Callable[[str, JSON], None],
        ) -> Informer:
            return Informer(
                kind,
                call,
                on_list=gathered(on_list),
                on_event=on_event,
                settings=settings,
                logger=log,
            )

        self.receiver_watch = informer(
            "Receiver", self._receiver_call(), self._list_receivers, self._receiver_event
        )
        self.secret_watch = informer(
            "Secret", self._secret_call(), self._list_secrets, self._secret_event
        )
        try:
            for collection in (self.receiver_watch, self.secret_watch):
                await collection.list()
            table = await self._rebuild()
        except ApiError as e:
            await self.close()
            hint = (
                " (RBAC: list and watch receivers, get/list/watch secrets)"
                if e.status in (401, 403)
                else ""
            )
            raise ConfigError(f"Kubernetes API {host}: listing failed: {e}{hint}") from e
        except TRANSIENT as e:
            await self.close()
            raise ConfigError(f"Kubernetes API {host} unreachable: {type(e).__name__}: {e}") from e
        self._dirty.clear()
        return table

    async def run(self, apply: Apply, reload: asyncio.Event) -> None:
        """Watch until cancelled; SIGHUP (``reload``) forces a relist. Closes the client."""
        if self.receiver_watch is None or self.secret_watch is None:
            raise RuntimeError("KubernetesSource.run() before load()")
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.receiver_watch.run(), name="watch-receivers")
                tasks.create_task(self.secret_watch.run(), name="watch-secrets")
                tasks.create_task(self._rebuilding(apply), name="rebuild-receivers")
                tasks.create_task(self._resyncing(reload), name="resync-receivers")
        finally:
            await self.close()

    async def close(self) -> None:
        """Close the API client (idempotent)."""
        api, self._api = self._api, None
        if api is not None:
            await api.close()

    # ------------------------------------------------------------------ connecting

    async def _connect(self) -> k8s.ApiClient:
        cfg = k8s.Configuration()
        try:
            if self.settings.kubeconfig is not None:
                await k8s_config.load_kube_config(
                    config_file=str(self.settings.kubeconfig),
                    client_configuration=cfg,
                    persist_config=False,
                )
            else:
                k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        except (ConfigException, OSError, ValueError) as e:
            where = self.settings.kubeconfig or "in-cluster service account"
            raise ConfigError(f"Kubernetes configuration ({where}): {e}") from e
        return k8s.ApiClient(configuration=cfg)

    def _host(self) -> str:
        return str(self._api.configuration.host) if self._api is not None else "?"

    def _receiver_call(self) -> ListCall:
        assert self._api is not None
        return custom_objects(
            self._api,
            RECEIVER_GROUP,
            RECEIVER_VERSION,
            RECEIVER_PLURAL,
            namespace=self.settings.namespace,
            label_selector=self.settings.label_selector,
        )

    def _secret_call(self) -> ListCall:
        core = k8s.CoreV1Api(self._api)
        ns = self.settings.namespace

        async def call(**kwargs: Any) -> Any:
            if ns:
                return await core.list_namespaced_secret(ns, **kwargs)
            return await core.list_secret_for_all_namespaces(**kwargs)

        return call

    # ------------------------------------------------------------------ receivers

    def _parse(self, obj: JSON) -> None:
        key = _key(obj)
        self._defs.pop(key, None)
        self._invalid.pop(key, None)
        try:
            self._defs[key] = parse_receiver(obj, "kubernetes")
        except ConfigError as e:
            self._invalid[key] = str(e)

    def _list_receivers(self, items: list[JSON]) -> None:
        self._defs.clear()
        self._invalid.clear()
        for obj in items:
            self._parse(obj)
        self._changed_receivers()

    def _receiver_event(self, kind: str, obj: JSON) -> None:
        if kind == "DELETED":
            key = _key(obj)
            self._defs.pop(key, None)
            self._invalid.pop(key, None)
        else:
            self._parse(obj)
        self._changed_receivers()

    def _changed_receivers(self) -> None:
        self._referenced = {
            (d.namespace, d.secret_name) for d in self._defs.values() if d.secret_name is not None
        }
        self._dirty.set()

    # ------------------------------------------------------------------ secrets

    def _store_secret(self, key: Key, obj: JSON) -> None:
        self._absent.discard(key)
        self._unreadable.pop(key, None)
        self._secret_values.pop(key, None)
        self._secret_errors.pop(key, None)
        try:
            self._secret_values[key] = secret_data(obj, f"Secret {key[0]}/{key[1]}")
        except ConfigError as e:
            self._secret_errors[key] = str(e)

    def _forget_secret(self, key: Key, *, absent: bool) -> None:
        self._secret_values.pop(key, None)
        self._secret_errors.pop(key, None)
        self._unreadable.pop(key, None)
        if absent:
            self._absent.add(key)
        else:
            self._absent.discard(key)

    def _list_secrets(self, items: list[JSON]) -> None:
        for key in list(self._fetching):
            self._fetching[key] = True
        for key in list(self._secret_values) + list(self._secret_errors):
            self._forget_secret(key, absent=False)
        found: set[Key] = set()
        for obj in items:
            key = _key(obj)
            if key in self._referenced:
                self._store_secret(key, obj)
                found.add(key)
        self._absent = self._referenced - found
        self._unreadable.clear()
        self._dirty.set()

    def _secret_event(self, kind: str, obj: JSON) -> None:
        key = _key(obj)
        if key in self._fetching:
            self._fetching[key] = True
        if key not in self._referenced:
            self._forget_secret(key, absent=False)
            return
        if kind == "DELETED":
            self._forget_secret(key, absent=True)
        else:
            self._store_secret(key, obj)
        self._dirty.set()

    async def _fetch_secret(self, key: Key) -> None:
        """Read a newly referenced Secret the watch saw before anything referenced it."""
        assert self._api is not None
        self._fetching[key] = False
        try:
            resp: Any = await k8s.CoreV1Api(self._api).read_namespaced_secret(
                key[1], key[0], _preload_content=False, _request_timeout=self.timing.request_timeout
            )
            try:
                doc: JSON | None = await read_json(resp)
            except ApiError as e:
                if e.status != 404:
                    raise
                doc = None
        except TRANSIENT as e:
            if not self._fetching.pop(key, True):
                self._unreadable[key] = f"{type(e).__name__}: {e}"
            return
        if self._fetching.pop(key, True):
            return  # the watch reported this Secret meanwhile: its word is newer
        if doc is None:
            self._forget_secret(key, absent=True)
        else:
            self._store_secret(key, doc)

    # ------------------------------------------------------------------ rebuilding

    async def _rebuild(self) -> ReceiverTable:
        """Resolve every Receiver against its Secret and build the table leniently."""
        referenced = self._referenced
        for key in [k for k in self._secret_values if k not in referenced]:
            del self._secret_values[key]
        for key in [k for k in self._secret_errors if k not in referenced]:
            del self._secret_errors[key]
        self._absent &= referenced
        for key in [k for k in self._unreadable if k not in referenced]:
            del self._unreadable[key]
        unknown = [
            k
            for k in referenced
            if k not in self._secret_values
            and k not in self._secret_errors
            and k not in self._absent
        ]
        if unknown:
            await asyncio.gather(*(self._fetch_secret(k) for k in unknown))

        specs: list[ReceiverSpec] = []
        unserved = [Unserved(f"{k[0]}/{k[1]}", "invalid", msg) for k, msg in self._invalid.items()]
        for d in self._defs.values():
            where = f"Receiver {d.key}"
            if d.secret_name is None:  # generic-oidc in Flux's form: no Secret to wait for
                try:
                    specs.append(resolve(d, {}, where))
                except ConfigError as e:
                    unserved.append(Unserved(d.key, unserved_reason(e), str(e)))
                continue
            skey = (d.namespace, d.secret_name)
            if skey in self._secret_errors:
                unserved.append(Unserved(d.key, "invalid", f"{where}: {self._secret_errors[skey]}"))
            elif skey in self._unreadable:
                unserved.append(
                    Unserved(
                        d.key,
                        "secret_unreadable",
                        f"{where}: Secret {skey[0]}/{skey[1]} could not be read: "
                        f"{self._unreadable[skey]}",
                    )
                )
            elif skey not in self._secret_values:
                unserved.append(
                    Unserved(
                        d.key, "secret_missing", f"{where}: Secret {skey[0]}/{skey[1]} not found"
                    )
                )
            else:
                try:
                    specs.append(resolve(d, self._secret_values, where))
                except ConfigError as e:
                    unserved.append(Unserved(d.key, unserved_reason(e), str(e)))
        table, more = ReceiverTable.build_lenient(specs)
        unserved.extend(more)
        self.report(table, unserved)
        return table

    async def _rebuilding(self, apply: Apply) -> None:
        """Debounce changes, rebuild, apply; retry Secrets that could not be read."""
        while True:
            if self._unreadable:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._dirty.wait(), self.timing.backoff_max)
                self._unreadable.clear()
            else:
                await self._dirty.wait()
            await asyncio.sleep(self.timing.debounce)
            self._dirty.clear()
            try:
                table = await self._rebuild()
            except Exception:
                log.exception("rebuilding the receiver table failed; keeping the previous one")
                self.metrics.reloads.labels("error").inc()
                continue
            apply(table)
            self.metrics.reloads.labels("ok").inc()
            log.info("serving %d receiver(s), %d not served", len(table), len(self.report.current))

    async def _resyncing(self, reload: asyncio.Event) -> None:
        assert self.receiver_watch is not None and self.secret_watch is not None
        while True:
            await reload.wait()
            reload.clear()
            log.info("SIGHUP: relisting Receivers and Secrets")
            self.receiver_watch.resync()
            self.secret_watch.resync()
