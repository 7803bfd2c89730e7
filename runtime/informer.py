"""The Kubernetes informer: one collection of objects kept in memory by list, then watch.

Both services keep Kubernetes objects in memory (the receiver its Receivers and their Secrets;
the reconciler its Receivers, the source index and the outcome caches), and every one of them
needs the same loop, so it lives here once:

- **list** the collection (paged with ``limit``/``continue`` when asked: a large collection is
  then never held in one response; an expired continue token starts the list over);
- **watch** from the list's resourceVersion with ``allowWatchBookmarks`` (bookmarks keep the
  resourceVersion current while nothing changes), and after a watch ends or its connection
  drops **resume** from the last resourceVersion seen, without listing again;
- **410 Gone** (the resourceVersion left the server's window): list again;
- **errors**: the failures a network or a restarting API server produce (:data:`TRANSIENT`) are
  retried after a delay from :class:`runtime.backoff.Backoff`, which starts over once a watch
  has worked (accepted, and open for :data:`SHORT_WATCH_S`); anything else (a bug in a
  handler) is logged with its traceback and the collection listed again, so one bad object
  never stops the informer for good;
- a **kind not served** (404, a CRD not installed) counts as listed empty and is looked for
  again slowly, when the caller asks for that (``not_served_retry_s``);
- **resync on demand** (:meth:`Informer.resync`, SIGHUP): ends the current watch and lists.

The caller says which list call (a ``list_*`` function of kubernetes_asyncio, see
:func:`custom_objects`), what to do with a listed set (:class:`Listing`, page by page) and with
each ADDED/MODIFIED/DELETED event. Its log lines go to the caller's logger, so operators keep
filtering on the service's module.

Why not ``kubernetes_asyncio.watch.Watch``: it retries 410 only once and never relists, gives no
hook for backoff, reads lines through aiohttp's line limit (a Secret event can be larger) and
deserialises into models the callers do not want. Every response here is read raw
(``_preload_content=False``), so an error answer is seen as a status, never as an empty list.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn, Protocol

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

from runtime.backoff import Backoff

log = logging.getLogger(__name__)

Restart = Literal["gone", "error"]
"""Why a watch is started over: its resourceVersion expired (410), or it failed."""

JSON = dict[str, Any]
ListCall = Callable[..., Awaitable[Any]]
"""A kubernetes_asyncio ``list_*`` call with its positional arguments bound: it takes the list
and watch keywords (``watch``, ``resource_version``, ``limit``, ``_continue``...)."""

SHORT_WATCH_S = 1.0
"""A watch open for less than this did not work: a stream that a proxy closes at once must
back off rather than spin, and must not reset the backoff."""
TRANSIENT_NOT_FOUND = 8
"""404s in a row, for a kind served before, taken for an API server still loading CRDs (about
a minute and a half at the default backoff); past them the kind counts as not served."""


class ApiError(Exception):
    """The API server answered a list, watch or get with a status other than 2xx."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status


class Gone(ApiError):
    """410: the resourceVersion (or continue token) is too old; the collection must be listed
    again."""

    def __init__(self, body: str = "") -> None:
        super().__init__(410, body)


TRANSIENT: tuple[type[Exception], ...] = (
    ApiError,
    ApiException,
    aiohttp.ClientError,
    TimeoutError,
    OSError,
    ValueError,
)
"""What a list or a watch may fail with and be retried after a delay: the API's answers, the
network's failures, and a truncated or malformed stream (``ValueError``, JSON's too)."""


def error_for(status: int, body: bytes | str) -> ApiError:
    """The error of a non-2xx answer (``Gone`` for 410)."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    return Gone(text) if status == 410 else ApiError(status, text)


async def read_json(resp: aiohttp.ClientResponse) -> JSON:
    """The body of a non-streaming answer as a JSON object; a non-2xx status raises."""
    try:
        raw = await resp.read()
    finally:
        resp.release()
    if not 200 <= resp.status < 300:
        raise error_for(resp.status, raw)
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise ValueError("API answer is not a JSON object")
    return doc


async def read_events(content: aiohttp.StreamReader, limit: int) -> AsyncGenerator[JSON, None]:
    """Watch events from newline-delimited JSON, however the stream is cut into chunks.

    aiohttp's ``readline`` refuses lines over its buffer limit, and a Secret event may be
    larger; joining chunks in a ``bytearray`` keeps a long line linear in its length. A line
    longer than ``limit`` raises ``ValueError`` instead of growing without bound.
    """
    line = bytearray()
    async for chunk in content.iter_any():
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            line += chunk[start:end]
            start = end + 1
            if len(line) > limit:
                raise ValueError(f"watch event larger than {limit} bytes")
            if line and not line.isspace():
                yield _event(line)
            line.clear()
        line += chunk[start:]
        if len(line) > limit:
            raise ValueError(f"watch event larger than {limit} bytes")
    if line and not line.isspace():
        yield _event(line)


def _event(line: bytearray) -> JSON:
    event = json.loads(line)
    if not isinstance(event, dict):
        raise ValueError("watch event is not a JSON object")
    return event


def _status_of(error: BaseException) -> int | None:
    status = getattr(error, "status", None)
    return status if isinstance(status, int) else None


def custom_objects(
    api: k8s.ApiClient,
    group: str,
    version: str,
    plural: str,
    *,
    namespace: str | None = None,
    label_selector: str | None = None,
    metadata_only: bool = False,
) -> ListCall:
    """The list call of a custom resource, in one namespace or (``None``) all of them.

    ``metadata_only``: ask for ``PartialObjectMetadata``, as client-go's metadata informers
    and controller-runtime's cache for metadata do. ``CustomObjectsApi`` always sends
    ``Accept: application/json``, so that goes through the client's ``call_api`` with the
    Accept header that selects the metadata form: the server then never sends a spec or a
    status, which keeps each event small whatever the objects hold.
    """
    if metadata_only:
        return _metadata_call(api, group, version, plural, namespace, label_selector)
    custom = k8s.CustomObjectsApi(api)
    selector: dict[str, Any] = {"label_selector": label_selector} if label_selector else {}

    async def call(**kwargs: Any) -> Any:
        if namespace:
            return await custom.list_namespaced_custom_object(
                group, version, namespace, plural, **selector, **kwargs
            )
        return await custom.list_cluster_custom_object(group, version, plural, **selector, **kwargs)

    return call


_QUERY = {
    "watch": "watch",
    "resource_version": "resourceVersion",
    "allow_watch_bookmarks": "allowWatchBookmarks",
    "timeout_seconds": "timeoutSeconds",
    "limit": "limit",
    "_continue": "continue",
}
"""The list and watch keywords an informer passes, as query parameters."""

_AS_METADATA = "application/json;as={};g=meta.k8s.io;v=v1,application/json"
"""Accept header asking for objects as PartialObjectMetadata (a list: ...List), falling back to
whole objects from a server that cannot convert (callers keep only ``metadata`` either way)."""


def _metadata_call(
    api: k8s.ApiClient,
    group: str,
    version: str,
    plural: str,
    namespace: str | None,
    label_selector: str | None,
) -> ListCall:
    path = f"/apis/{group}/{version}/" + (
        f"namespaces/{namespace}/{plural}" if namespace else plural
    )

    async def call(**kwargs: Any) -> Any:
        query = [(_QUERY[k], v) for k, v in kwargs.items() if k in _QUERY and v is not None]
        if label_selector:
            query.append(("labelSelector", label_selector))
        form = "PartialObjectMetadata" if kwargs.get("watch") else "PartialObjectMetadataList"
        return await api.call_api(
            path,
            "GET",
            query_params=query,
            header_params={"Accept": _AS_METADATA.format(form)},
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
            _preload_content=kwargs.get("_preload_content", True),
            _request_timeout=kwargs.get("_request_timeout"),
        )

    return call


class Listing(Protocol):
    """What a caller does with one list: its pages as they arrive, then its end.

    A new Listing is asked for each list attempt, so pages of an attempt that was started
    over (an expired continue token) are never mixed with the next one's.
    """

    def add(self, items: list[JSON]) -> None:
        """One page of objects (items of a list may lack ``kind`` and ``apiVersion``)."""

    def done(self) -> None:
        """The list is complete: whatever it did not show is gone."""


@dataclass
class _Gathered:
    on_list: Callable[[list[JSON]], None]
    items: list[JSON] = field(default_factory=list)

    def add(self, items: list[JSON]) -> None:
        self.items.extend(items)

    def done(self) -> None:
        self.on_list(self.items)


def gathered(on_list: Callable[[list[JSON]], None]) -> Callable[[], Listing]:
    """Listings that hand ``on_list`` the whole set at once (for collections that do not page,
    or callers that replace everything in one step)."""
    return lambda: _Gathered(on_list)


@dataclass(frozen=True, kw_only=True)
class InformerSettings:
    """How an informer talks to the API server (tests shorten the timings)."""

    page_size: int | None = None
    """Objects per list page (``limit``/``continue``), bounding one response's memory;
    ``None``: one unpaged list."""
    watch_timeout_s: int = 300
    """Server-side ``timeoutSeconds`` of one watch request; it is then resumed."""
    read_timeout_s: float = 360.0
    """Client read timeout on a watch: a silently dead connection is dropped after this."""
    connect_timeout_s: float = 10.0
    """Seconds to get a connection for a watch request."""
    list_timeout_s: float | None = None
    """Seconds for one list request (``None``: the client's default, no limit)."""
    backoff_initial_s: float = 0.5
    """First reconnect delay after an error; doubled per failure, with jitter."""
    backoff_max_s: float = 30.0
    """Longest reconnect delay."""
    max_event_bytes: int = 16 * 1024 * 1024
    """Largest single watch event accepted (a Secret may hold up to 1 MiB of data)."""
    not_served_retry_s: float | None = None
    """How often to look again for a kind whose CRD is not installed (404); it counts as
    listed empty meanwhile. ``None``: a 404 is an error like any other."""


class Informer:
    """One list+watch loop over one collection; see the module docstring."""

    def __init__(
        self,
        name: str,
        call: ListCall,
        *,
        on_list: Callable[[], Listing],
        on_event: Callable[[str, JSON], None],
        settings: InformerSettings | None = None,
        logger: logging.Logger = log,
        on_restart: Callable[[Restart], None] | None = None,
    ) -> None:
        """``name`` names the collection in log lines (a kind); ``on_restart("gone")`` or
        ``on_restart("error")`` is called each time a watch has to be started over."""
        self.name = name
        self._call = call
        self._on_list = on_list
        self._on_event = on_event
        self._settings = settings or InformerSettings()
        self._log = logger
        self._on_restart = on_restart
        self.resource_version: str | None = None
        """Where the next watch resumes (``None``: list first)."""
        self.lists = 0
        """Complete lists done (the first, then one per 410 Gone or resync)."""
        self.watches = 0
        """Watch requests the server accepted (each resumes from ``resource_version``)."""
        self._current: asyncio.Task[None] | None = None
        self._resync = False
        self._wake = asyncio.Event()
        self._accepted = False
        self._served = False
        self._gone_before = False

    # ------------------------------------------------------------------------------ API

    async def list(self) -> None:
        """List the collection (page by page) and remember its resourceVersion; errors raise."""
        s = self._settings
        listing = self._on_list()
        count = 0
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"_preload_content": False}
            if s.list_timeout_s is not None:
                kwargs["_request_timeout"] = s.list_timeout_s
            if s.page_size:
                kwargs["limit"] = s.page_size
            if token:
                kwargs["_continue"] = token
            try:
                doc = await read_json(await self._call(**kwargs))
            except Gone:
                if not token:
                    raise
                listing, count, token = self._on_list(), 0, None  # token expired: start over
                continue
            items = [item for item in doc.get("items") or () if isinstance(item, dict)]
            listing.add(items)
            count += len(items)
            meta = doc.get("metadata") or {}
            token = meta.get("continue") or None
            if token is None:
                listing.done()
                self.lists += 1
                self._served = True
                self.resource_version = str(meta.get("resourceVersion") or "")
                self._log.debug(
                    "listed %d %s at resourceVersion %s", count, self.name, self.resource_version
                )
                return

    def resync(self) -> None:
        """List again as soon as possible (SIGHUP): ends the current watch or delay."""
        self._resync = True
        self._wake.set()
        if self._current is not None:
            self._current.cancel()

    async def run(self) -> NoReturn:
        """List (unless :meth:`list` already did) and watch until cancelled."""
        s = self._settings
        backoff = Backoff(s.backoff_initial_s, s.backoff_max_s)
        loop = asyncio.get_running_loop()
        while True:
            failure: Exception | None = None
            self._accepted = False
            began = loop.time()
            try:
                if self._resync or not self.resource_version:
                    self._resync = False
                    await self.list()
                began = loop.time()
                await self._watch_in_task()
            except Exception as e:  # classified by _recover; cancellation passes
                failure = e
            worked = self._accepted and loop.time() - began >= SHORT_WATCH_S
            if worked:
                backoff.reset()
                self._gone_before = False
            delay = self._recover(failure, worked, backoff)
            if delay > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)

    # ------------------------------------------------------------------------ internals

    def _recover(self, failure: Exception | None, worked: bool, backoff: Backoff) -> float:
        """Decide what a watch's end means; returns the seconds to wait before going on."""
        if self._resync:
            return 0.0  # a relist was asked for: whatever happened, list now
        if failure is None:
            # The server ended the watch (timeoutSeconds): resume at once, unless it ended
            # so soon that going on at once would spin.
            return 0.0 if worked else backoff.next()
        status = _status_of(failure)
        if status == 410:
            self._restarted("gone")
            self._log.info(
                "watch of %s expired at resourceVersion %s (410 Gone); listing again",
                self.name,
                self.resource_version,
            )
            self.resource_version = None
            # Relist at once; but a relisted watch that is Gone again before it worked is a
            # server (or proxy) in trouble, and waits like any failure.
            again, self._gone_before = self._gone_before, True
            return backoff.next() if again else 0.0
        if status == 404 and self._settings.not_served_retry_s is not None:
            return self._not_found(backoff)
        self._restarted("error")
        delay = backoff.next()
        if isinstance(failure, TRANSIENT):
            self._log.warning(
                "watch of %s interrupted (%s: %s); retrying in %.1fs",
                self.name,
                type(failure).__name__,
                failure,
                delay,
            )
            return delay
        self._log.error(
            "watch of %s failed unexpectedly; listing again in %.1fs",
            self.name,
            delay,
            exc_info=failure,
        )
        self.resource_version = None
        return delay

    def _not_found(self, backoff: Backoff) -> float:
        """A 404 for a kind that callers allow to be missing (a CRD not installed)."""
        self.resource_version = None
        if self._served:
            # Served before: an API server that restarts answers 404 for custom resources
            # until it has loaded their CRDs. Keep what is known (dropping it would leave the
            # kind empty for a minute) and retry as for any other error; a CRD really deleted
            # shows as a 404 that lasts.
            self._served = backoff.attempts < TRANSIENT_NOT_FOUND
            delay = backoff.next()
            self._restarted("error")
            self._log.warning(
                "%s answered 404 after being served; retrying in %.1fs", self.name, delay
            )
            return delay
        self._log.warning("%s is not served (CRD missing?); looking again later", self.name)
        self._on_list().done()
        assert self._settings.not_served_retry_s is not None
        return self._settings.not_served_retry_s

    def _restarted(self, why: Restart) -> None:
        if self._on_restart is not None:
            self._on_restart(why)

    async def _watch_in_task(self) -> None:
        """Run one watch in a child task, so :meth:`resync` can end it without ending
        :meth:`run`."""
        if self._resync:
            return  # asked for while listing: list again first
        me = asyncio.current_task()
        self._current = asyncio.create_task(self._watch(), name=f"watch-{self.name}")
        try:
            await self._current
        except asyncio.CancelledError:
            if (me is not None and me.cancelling()) or not self._resync:
                raise
        finally:
            self._current = None

    async def _watch(self) -> None:
        """One watch request from the current resourceVersion, until the server ends it."""
        s = self._settings
        resp: aiohttp.ClientResponse = await self._call(
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=s.watch_timeout_s,
            _preload_content=False,
            _request_timeout=aiohttp.ClientTimeout(
                connect=s.connect_timeout_s,
                sock_connect=s.connect_timeout_s,
                sock_read=s.read_timeout_s,
            ),
        )
        try:
            if not 200 <= resp.status < 300:
                raise error_for(resp.status, await resp.read())
            self.watches += 1
            self._accepted = True
            async with contextlib.aclosing(read_events(resp.content, s.max_event_bytes)) as events:
                async for event in events:
                    self._apply(event)
        except BaseException:
            resp.close()  # a stream cut short: its connection cannot be reused
            raise
        resp.release()

    def _apply(self, event: JSON) -> None:
        obj = event.get("object")
        if not isinstance(obj, dict):
            return
        kind = event.get("type")
        if kind == "ERROR":
            code = obj.get("code")
            raise error_for(code if isinstance(code, int) else 0, str(obj.get("message")))
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self._on_event(str(kind), obj)
        meta = obj.get("metadata")
        version = meta.get("resourceVersion") if isinstance(meta, dict) else None
        if version:
            self.resource_version = str(version)
