"""``runtime.informer`` against the real kube-apiserver + etcd, faults from the fault proxy.

Covers: a paged list (``limit``/``continue``) handed over page by page, then ADDED, MODIFIED
and DELETED events in order; a label selector on a custom resource (:func:`custom_objects`);
a dropped watch resumes from its resourceVersion without listing; 410 Gone, as an answer to
the watch request and as the real server's ERROR event for a resourceVersion too old, lists
again; a relist drops what it no longer shows; failures back off and the backoff starts over
once a watch has worked; a kind not served counts as listed empty and is found once served;
a kind served before keeps what it knew across a few 404s; an event larger than the bound is
refused; a handler that raises is logged and the collection listed again; ``resync()``
lists again at once; ``list()`` raises what the API answered. Unit: the line parser, table
of named cases.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp.base_protocol import BaseProtocol
from kubernetes_asyncio import client as k8s

from runtime.informer import (
    TRANSIENT_NOT_FOUND,
    ApiError,
    Gone,
    Informer,
    InformerSettings,
    ListCall,
    Listing,
    custom_objects,
    gathered,
    read_events,
)
from tests.support.faultproxy import FaultProxy, RecordedRequest
from tests.support.fluxobjects import flux_manifest
from tests.support.kubeapi import KubeAPI

WAIT_S = 30.0
FAST = InformerSettings(watch_timeout_s=30, backoff_initial_s=0.05, backoff_max_s=0.2)
LOGGER = "tests.runtime.informer"
log = logging.getLogger(LOGGER)


# ------------------------------------------------------------------------------ helpers


@dataclass
class Collection:
    """What a caller keeps: the objects by name, with a record of every page and event."""

    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    pages: list[int] = field(default_factory=list)
    lists: int = 0
    events: list[tuple[str, str]] = field(default_factory=list)
    fail_on: str | None = None
    """An object name whose event raises once (a handler bug)."""

    def listing(self) -> Listing:
        collection = self

        class _Page:
            def __init__(self) -> None:
                self.seen: dict[str, dict[str, Any]] = {}

            def add(self, items: list[dict[str, Any]]) -> None:
                collection.pages.append(len(items))
                self.seen.update((item["metadata"]["name"], item) for item in items)

            def done(self) -> None:
                collection.objects = self.seen
                collection.lists += 1

        return _Page()

    def event(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if name == self.fail_on:
            self.fail_on = None
            raise RuntimeError(f"handler bug on {name}")
        self.events.append((kind, name))
        if kind == "DELETED":
            self.objects.pop(name, None)
        else:
            self.objects[name] = obj

    def names(self) -> list[str]:
        return sorted(self.objects)


async def eventually(check: Callable[[], bool], what: str, within: float = WAIT_S) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within:.0f}s: {what}")
        await asyncio.sleep(0.05)


def config_map(name: str, data: str = "v") -> k8s.V1ConfigMap:
    return k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name=name), data={"k": data})


def watches(proxy: FaultProxy) -> list[RecordedRequest]:
    return [r for r in proxy.matching("GET", "configmaps") if "watch=true" in r.query.lower()]


def lists(proxy: FaultProxy) -> list[RecordedRequest]:
    return [r for r in proxy.matching("GET", "configmaps") if "watch=true" not in r.query.lower()]


def delays(caplog: pytest.LogCaptureFixture, text: str) -> list[float]:
    """The delays the informer announced in log lines containing ``text``."""
    return [
        float(r.args[-1])  # type: ignore[index,arg-type]
        for r in caplog.records
        if r.name == LOGGER and text in r.getMessage()
    ]


@dataclass
class Cluster:
    """The namespace under test and clients straight to the server and through the proxy."""

    kube: KubeAPI
    namespace: str
    direct: k8s.ApiClient
    proxied: k8s.ApiClient
    proxy: FaultProxy

    @property
    def core(self) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(self.direct)

    async def create(self, name: str, data: str = "v") -> None:
        await self.core.create_namespaced_config_map(self.namespace, config_map(name, data))

    async def update(self, name: str, data: str) -> None:
        await self.core.replace_namespaced_config_map(name, self.namespace, config_map(name, data))

    async def delete(self, name: str) -> None:
        await self.core.delete_namespaced_config_map(name, self.namespace)

    def config_maps(self, *, proxied: bool = True) -> ListCall:
        api = k8s.CoreV1Api(self.proxied if proxied else self.direct)
        return functools.partial(api.list_namespaced_config_map, self.namespace)


@pytest.fixture
async def cluster(
    kube: KubeAPI, kube_namespace: str, kube_client: k8s.ApiClient, kube_proxy: FaultProxy
) -> AsyncIterator[Cluster]:
    async with await kube.api_client(server=kube_proxy.url) as proxied:
        yield Cluster(kube, kube_namespace, kube_client, proxied, kube_proxy)


@pytest.fixture
async def running() -> AsyncIterator[Callable[[Informer], None]]:
    """Run informers in the background; they are cancelled after the test."""
    tasks: list[asyncio.Task[None]] = []

    def start(informer: Informer) -> None:
        tasks.append(asyncio.create_task(informer.run(), name=f"informer-{informer.name}"))

    yield start
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def informer_for(
    collection: Collection,
    call: ListCall,
    settings: InformerSettings = FAST,
    **kwargs: Any,
) -> Informer:
    return Informer(
        "ConfigMap",
        call,
        on_list=collection.listing,
        on_event=collection.event,
        settings=settings,
        logger=log,
        **kwargs,
    )


# ------------------------------------------------------------------------------ list and watch


async def test_a_paged_list_is_handed_over_page_by_page_then_events_follow_in_order(
    cluster: Cluster, running: Callable[[Informer], None]
) -> None:
    for i in range(5):
        await cluster.create(f"cm-{i}")
    collection = Collection()
    settings = InformerSettings(page_size=2, watch_timeout_s=30, backoff_initial_s=0.05)
    informer = informer_for(collection, cluster.config_maps(), settings)
    running(informer)
    await eventually(lambda: collection.lists == 1, "the first list")
    assert collection.pages == [2, 2, 1]
    assert collection.names() == [f"cm-{i}" for i in range(5)]
    paged = lists(cluster.proxy)
    assert len(paged) == 3 and all("limit=2" in r.query for r in paged)
    assert [("continue=" in r.query) for r in paged] == [False, True, True]

    await cluster.create("later")
    await cluster.update("cm-0", "changed")
    await cluster.delete("cm-1")
    await eventually(lambda: len(collection.events) == 3, "three events")
    assert collection.events == [("ADDED", "later"), ("MODIFIED", "cm-0"), ("DELETED", "cm-1")]
    assert collection.objects["cm-0"]["data"] == {"k": "changed"}
    assert "cm-1" not in collection.objects
    assert informer.lists == 1 and informer.watches == 1
    assert all("allowwatchbookmarks=true" in r.query.lower() for r in watches(cluster.proxy))


async def test_custom_objects_lists_and_watches_only_what_the_selector_picks(
    kube: KubeAPI,
    kube_namespace: str,
    kube_client: k8s.ApiClient,
    running: Callable[[Informer], None],
) -> None:
    run = uuid.uuid4().hex[:8]

    def git(name: str, team: str) -> dict[str, Any]:
        doc = flux_manifest("GitRepository", name)
        doc["metadata"]["labels"] = {"run": run, "team": team}
        return doc

    await asyncio.to_thread(kube.apply, git("red-1", "red"), namespace=kube_namespace)
    await asyncio.to_thread(kube.apply, git("blue-1", "blue"), namespace=kube_namespace)
    collection = Collection()
    call = custom_objects(
        kube_client,
        "source.toolkit.fluxcd.io",
        "v1",
        "gitrepositories",
        namespace=kube_namespace,
        label_selector=f"run={run},team=red",
    )
    informer = Informer(
        "GitRepository", call, on_list=collection.listing, on_event=collection.event, settings=FAST
    )
    running(informer)
    await eventually(lambda: collection.lists == 1, "the first list")
    assert collection.names() == ["red-1"]
    await asyncio.to_thread(kube.apply, git("blue-2", "blue"), namespace=kube_namespace)
    await asyncio.to_thread(kube.apply, git("red-2", "red"), namespace=kube_namespace)
    await eventually(lambda: collection.names() == ["red-1", "red-2"], "the red one watched")
    assert collection.events == [("ADDED", "red-2")]


async def test_a_whole_list_can_be_gathered_into_one_call(
    cluster: Cluster, running: Callable[[Informer], None]
) -> None:
    for i in range(3):
        await cluster.create(f"cm-{i}")
    received: list[list[str]] = []
    informer = Informer(
        "ConfigMap",
        cluster.config_maps(),
        on_list=gathered(lambda items: received.append([i["metadata"]["name"] for i in items])),
        on_event=lambda kind, obj: None,
        settings=InformerSettings(page_size=2),
    )
    await informer.list()
    assert received == [["cm-0", "cm-1", "cm-2"]]
    assert informer.resource_version


# ------------------------------------------------------------------------------ faults


async def test_a_dropped_watch_resumes_from_its_resource_version_without_listing(
    cluster: Cluster, running: Callable[[Informer], None]
) -> None:
    await cluster.create("before")
    collection = Collection()
    informer = informer_for(collection, cluster.config_maps())
    running(informer)
    await eventually(lambda: len(watches(cluster.proxy)) == 1, "the first watch")
    await cluster.create("while-watching")
    await eventually(lambda: "while-watching" in collection.objects, "a watched create")
    seen = informer.resource_version
    await cluster.proxy.drop_connections()
    await cluster.create("after-the-drop")
    await eventually(lambda: "after-the-drop" in collection.objects, "a create after the drop")
    resumed = watches(cluster.proxy)[1:]
    assert resumed and f"resourceVersion={seen}" in resumed[0].query
    assert len(lists(cluster.proxy)) == 1 and collection.lists == 1
    assert collection.events == [("ADDED", "while-watching"), ("ADDED", "after-the-drop")]


async def test_410_gone_on_the_watch_lists_again_and_the_relist_drops_what_is_gone(
    cluster: Cluster, running: Callable[[Informer], None]
) -> None:
    await cluster.create("kept")
    await cluster.create("deleted-while-away")
    collection = Collection()
    restarts: list[str] = []
    informer = informer_for(collection, cluster.config_maps(), on_restart=restarts.append)
    running(informer)
    await eventually(lambda: len(watches(cluster.proxy)) == 1, "the first watch")
    # The API is out of reach while the object is deleted, and the resumed watch is told its
    # resourceVersion is gone: only a relist can show the deletion.
    await cluster.proxy.go_down()
    await cluster.delete("deleted-while-away")
    cluster.proxy.fail(410, path="configmaps", method="GET", times=1)
    await cluster.proxy.come_up()
    await eventually(lambda: collection.lists == 2, "a relist after 410")
    assert collection.names() == ["kept"]
    assert ("DELETED", "deleted-while-away") not in collection.events
    assert "gone" in restarts
    await cluster.create("after")
    await eventually(lambda: "after" in collection.objects, "events after the relist")


async def compact_etcd(kube: KubeAPI) -> None:
    """Compact etcd's history up to now, as the API server itself does every five minutes."""
    etcd = f"http://127.0.0.1:{kube._etcd_port}/v3/kv"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{etcd}/range", json={"key": "Lw=="}) as resp:
            revision = int((await resp.json())["header"]["revision"])
        async with http.post(f"{etcd}/compaction", json={"revision": revision}) as resp:
            assert resp.status == 200, await resp.text()


async def test_the_servers_own_410_error_event_lists_again(
    cluster: Cluster, running: Callable[[Informer], None], caplog: pytest.LogCaptureFixture
) -> None:
    """A watch from a resourceVersion etcd has compacted away is accepted (200) and then told
    Gone by an ERROR event: the stream, not the status, says so. Events are watched here
    because the API server keeps no watch cache for them, so its watch reads etcd itself."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    core = cluster.core

    async def record(name: str) -> None:
        event = k8s.CoreV1Event(
            metadata=k8s.V1ObjectMeta(name=name),
            involved_object=k8s.V1ObjectReference(
                kind="ConfigMap", name="x", namespace=cluster.namespace
            ),
        )
        await core.create_namespaced_event(cluster.namespace, event)

    await record("one")
    collection = Collection()
    call = functools.partial(core.list_namespaced_event, cluster.namespace)
    informer = informer_for(collection, call)
    await informer.list()
    stale = informer.resource_version
    await record("two")
    await record("three")  # the watch would start after "one": compact past that
    await compact_etcd(cluster.kube)
    running(informer)
    await eventually(lambda: collection.lists == 2, "a relist after the ERROR event")
    # The first watch was accepted (its stream, not its status, said Gone), so the watch
    # after the relist is the second accepted one; it is counted once the server accepts it,
    # which may be a moment after the relist is done.
    await eventually(lambda: informer.watches == 2, "the watch after the relist")
    [gone] = [r for r in caplog.records if r.name == LOGGER and "(410 Gone)" in r.getMessage()]
    assert f"resourceVersion {stale} " in gone.getMessage()
    assert collection.names() == ["one", "three", "two"] and collection.events == []
    await record("four")
    await eventually(lambda: "four" in collection.objects, "events after the relist")


async def test_failures_back_off_and_the_backoff_starts_over_once_a_watch_worked(
    cluster: Cluster, running: Callable[[Informer], None], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    settings = InformerSettings(watch_timeout_s=30, backoff_initial_s=0.1, backoff_max_s=5.0)
    cluster.proxy.fail(500, path="configmaps", times=4)
    collection = Collection()
    informer = informer_for(collection, cluster.config_maps(), settings)
    running(informer)
    await eventually(lambda: collection.lists == 1, "a list after four 500s")
    failing = delays(caplog, "interrupted (ApiError: HTTP 500")
    assert len(failing) == 4
    # Equal jitter: try n waits between half and all of 0.1 * 2**(n-1).
    for n, delay in enumerate(failing, start=1):
        assert 0.1 * 2 ** (n - 1) / 2 <= delay <= 0.1 * 2 ** (n - 1)
    await eventually(lambda: len(watches(cluster.proxy)) == 1, "the watch")
    await asyncio.sleep(1.2)  # the watch works (open longer than SHORT_WATCH_S)
    caplog.clear()
    await cluster.proxy.drop_connections()
    await cluster.create("after")
    await eventually(lambda: "after" in collection.objects, "a resumed watch")
    [after_drop] = delays(caplog, "interrupted")
    assert 0.05 <= after_drop <= 0.1  # the first delay again, not the fifth


async def test_a_handler_that_raises_is_logged_and_the_collection_listed_again(
    cluster: Cluster, running: Callable[[Informer], None], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER)
    collection = Collection(fail_on="poison")
    informer = informer_for(collection, cluster.config_maps())
    running(informer)
    await eventually(lambda: collection.lists == 1, "the first list")
    await cluster.create("poison")
    await eventually(lambda: collection.lists == 2, "a relist after the handler failed")
    assert "poison" in collection.objects  # the relist shows what the event could not apply
    [record] = [r for r in caplog.records if "failed unexpectedly" in r.getMessage()]
    assert record.exc_info is not None and "handler bug" in str(record.exc_info[1])
    await cluster.create("next")
    await eventually(lambda: "next" in collection.objects, "events after the relist")


async def test_an_event_larger_than_the_bound_is_refused(
    cluster: Cluster, running: Callable[[Informer], None], caplog: pytest.LogCaptureFixture
) -> None:
    """200 KB in one line: longer than aiohttp's line limit (which the parser does not use)
    and, here, than the informer's bound."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    big = InformerSettings(watch_timeout_s=30, backoff_initial_s=0.05, max_event_bytes=400_000)
    small = InformerSettings(watch_timeout_s=30, backoff_initial_s=0.05, max_event_bytes=100_000)
    accepting, refusing = Collection(), Collection()
    running(informer_for(accepting, cluster.config_maps(proxied=False), big))
    running(informer_for(refusing, cluster.config_maps(proxied=False), small))
    await eventually(lambda: accepting.lists == refusing.lists == 1, "the first lists")
    await cluster.create("big", "x" * 200_000)
    await eventually(lambda: "big" in accepting.objects, "the big event read")
    await eventually(
        lambda: bool(delays(caplog, "watch event larger than 100000 bytes")), "the refusal"
    )
    assert "big" not in refusing.objects


async def test_resync_ends_the_watch_and_lists_again_at_once(
    cluster: Cluster, running: Callable[[Informer], None]
) -> None:
    collection = Collection()
    informer = informer_for(collection, cluster.config_maps())
    running(informer)
    await eventually(lambda: informer.watches == 1, "the first watch")
    began = time.monotonic()
    informer.resync()
    await eventually(lambda: collection.lists == 2 and informer.watches == 2, "a relist")
    assert time.monotonic() - began < 5
    await cluster.create("after")
    await eventually(lambda: "after" in collection.objects, "events after the resync")


@pytest.mark.parametrize(
    ("status", "error"),
    [
        pytest.param(403, ApiError, id="forbidden"),
        pytest.param(410, Gone, id="gone"),
        pytest.param(500, ApiError, id="server-error"),
    ],
)
async def test_list_raises_what_the_api_answered(
    cluster: Cluster, status: int, error: type[ApiError]
) -> None:
    cluster.proxy.fail(status, path="configmaps", times=1)
    informer = informer_for(Collection(), cluster.config_maps())
    with pytest.raises(error, match=f"HTTP {status}") as raised:
        await informer.list()
    assert raised.value.status == status
    assert informer.resource_version is None and informer.lists == 0


# ------------------------------------------------------------------------------ kinds not served

WIDGETS = ("example.fluxrelay.io", "v1", "widgets")
"""A custom resource no CRD defines: the server answers 404."""


async def test_a_kind_not_served_counts_as_listed_empty_and_is_looked_for_again(
    cluster: Cluster, running: Callable[[Informer], None], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    collection = Collection(objects={"stale": {}})
    settings = InformerSettings(watch_timeout_s=30, not_served_retry_s=0.2)
    call = custom_objects(cluster.proxied, *WIDGETS, namespace=cluster.namespace)
    informer = informer_for(collection, call, settings)
    running(informer)
    await eventually(lambda: collection.lists >= 2, "two looks at the missing kind")
    assert collection.objects == {}
    assert informer.lists == 0
    assert any("is not served (CRD missing?)" in r.getMessage() for r in caplog.records)
    looks = cluster.proxy.count("GET", "widgets")
    await eventually(lambda: cluster.proxy.count("GET", "widgets") > looks, "a later look")


async def test_a_404_without_a_not_served_retry_is_an_error_like_any_other(
    cluster: Cluster, running: Callable[[Informer], None], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    collection = Collection()
    call = custom_objects(cluster.proxied, *WIDGETS, namespace=cluster.namespace)
    running(informer_for(collection, call))
    await eventually(lambda: len(delays(caplog, "interrupted (ApiError: HTTP 404")) >= 2, "retries")
    assert collection.lists == 0


async def test_a_kind_served_before_keeps_its_objects_across_a_few_404s(
    cluster: Cluster, running: Callable[[Informer], None], caplog: pytest.LogCaptureFixture
) -> None:
    """An API server that restarts answers 404 for custom resources until it has loaded their
    CRDs; only a 404 that lasts past ``TRANSIENT_NOT_FOUND`` tries means the kind is gone."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    await cluster.create("kept")
    collection = Collection()
    settings = InformerSettings(
        watch_timeout_s=30, backoff_initial_s=0.01, backoff_max_s=0.02, not_served_retry_s=30
    )
    informer = informer_for(collection, cluster.config_maps(), settings)
    running(informer)
    await eventually(lambda: informer.watches == 1, "the first watch")
    cluster.proxy.fail(404, path="configmaps", times=3)
    await cluster.proxy.drop_connections()
    await eventually(lambda: informer.watches == 2, "served again after three 404s")
    assert len(delays(caplog, "answered 404 after being served")) == 3
    assert collection.names() == ["kept"] and collection.lists == 2

    await asyncio.sleep(1.2)  # the watch works: the backoff starts over when it ends
    caplog.clear()
    cluster.proxy.fail(404, path="configmaps", times=None)  # the CRD was really deleted
    await cluster.proxy.drop_connections()
    await eventually(lambda: collection.lists == 3, "counted as not served")
    assert collection.objects == {}
    # The drop took the first delay; the 404s the next ones, up to TRANSIENT_NOT_FOUND tries.
    assert len(delays(caplog, "answered 404 after being served")) == TRANSIENT_NOT_FOUND
    assert any("is not served" in r.getMessage() for r in caplog.records)
    cluster.proxy.clear_faults()


# ------------------------------------------------------------------------------ the line parser


def stream_of(chunks: list[bytes]) -> aiohttp.StreamReader:
    loop = asyncio.get_running_loop()
    # A limit high enough that feeding never pauses reading (there is no transport here).
    reader = aiohttp.StreamReader(BaseProtocol(loop), 2**30, loop=loop)
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    return reader


LONG = b'{"type":"ADDED","object":{"data":"' + b"x" * 300_000 + b'"}}'


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        pytest.param([b'{"a":1}\n{"a":2}\n'], [1, 2], id="two-lines-one-chunk"),
        pytest.param([b'{"a"', b':1}\n{"a":', b"2}\n"], [1, 2], id="lines-cut-across-chunks"),
        pytest.param([b'{"a":1}\n\n  \n{"a":2}\n'], [1, 2], id="blank-lines-skipped"),
        pytest.param([b'{"a":1}\n{"a":2}'], [1, 2], id="last-line-without-newline"),
        pytest.param([b'{"a":1}\r\n'], [1], id="crlf"),
        pytest.param([], [], id="empty-stream"),
    ],
)
async def test_the_parser_yields_one_event_per_line(
    chunks: list[bytes], expected: list[int]
) -> None:
    got = [event["a"] async for event in read_events(stream_of(chunks), 1000)]
    assert got == expected


async def test_the_parser_joins_a_long_line_from_small_chunks() -> None:
    chunks = [LONG[i : i + 1000] for i in range(0, len(LONG), 1000)] + [b"\n"]
    [event] = [e async for e in read_events(stream_of(chunks), 1_000_000)]
    assert len(event["object"]["data"]) == 300_000


@pytest.mark.parametrize(
    ("chunks", "error"),
    [
        pytest.param([LONG + b"\n"], "larger than 1000 bytes", id="long-line-in-one-chunk"),
        pytest.param([LONG[:600], LONG[600:1200]], "larger than 1000 bytes", id="growing-line"),
        pytest.param([b"[1, 2]\n"], "not a JSON object", id="not-an-object"),
        pytest.param([b"{broken\n"], None, id="not-json"),
    ],
)
async def test_the_parser_refuses_what_is_not_a_bounded_event(
    chunks: list[bytes], error: str | None
) -> None:
    with pytest.raises(ValueError, match=error):
        _ = [e async for e in read_events(stream_of(chunks), 1000)]
