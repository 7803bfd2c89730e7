"""The soak's sidecars (``bench/soak/sidecars.py``): the fault proxy and the HTTP sink, each a
process of its own, driven through their control API as the faults drive them.

Asserts what the soak's books and faults rely on: the sink's events come back field for field
(strings interned again), from this run only (a reused work directory starts empty), and the
read stops at what the sink had flushed; the proxy forwards, answers a status fault and counts
it by kind, refuses connections while down and forwards again once up.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bench.soak.sidecars import ProxyProcess, SinkProcess

QUEUED = {
    "context": {"id": "e-1", "type": "dev.cdevents.pipelinerun.queued.0.2.0", "chainId": "c-1"},
    "subject": {
        "id": "GitRepository/ns/src-1@2026-12-06T08:00:00Z",
        "content": {"pipelineName": "GitRepository/ns/src-1"},
    },
    "customData": {"deliveryId": "d-1", "covered": True},
}
FINISHED = {
    "context": {"id": "e-2", "type": "dev.cdevents.pipelinerun.finished.0.2.0"},
    "subject": {"id": "x", "content": {"pipelineName": "GitRepository/ns/src-1", "outcome": "ok"}},
}


async def test_the_sink_gives_back_what_it_received_in_this_run_only(tmp_path: Path) -> None:
    (tmp_path / "http-sink.jsonl").write_text('{"left": "by an earlier run"}\n')
    sink = SinkProcess(tmp_path)
    await sink.start()
    try:
        async with aiohttp.ClientSession() as session:
            for doc in (QUEUED, FINISHED):
                async with session.post(sink.url, json=doc) as rsp:
                    assert rsp.status == 202
            async with session.post(sink.url, data=b"{not json") as rsp:
                assert rsp.status == 400
        events = await sink.events()
    finally:
        await sink.stop()

    assert [e.id for e in events] == ["e-1", "e-2"]
    queued, finished = events
    assert queued.chain_id == "c-1"
    assert queued.delivery_id == "d-1"
    assert queued.covered is True
    assert queued.run_id == "GitRepository/ns/src-1@2026-12-06T08:00:00Z"
    assert finished.outcome == "ok"
    assert finished.pipeline is sys.intern("GitRepository/ns/src-1")
    assert queued.seen_at <= finished.seen_at
    assert sink.proc.unexpected_exits == []


async def test_events_are_read_up_to_what_the_sink_flushed(tmp_path: Path) -> None:
    """A line the sink is still writing when the driver reads is not read half."""
    sink = SinkProcess(tmp_path)
    await sink.start()
    try:
        async with aiohttp.ClientSession() as session, session.post(sink.url, json=QUEUED):
            pass
        first = await sink.events()
        with sink.events_file.open("a") as f:
            f.write('{"id": "half-writ')  # as if a flush were under way
        again = await sink.events()
    finally:
        await sink.stop()
    assert [e.id for e in first] == [e.id for e in again] == ["e-1"]


@pytest.fixture
async def upstream() -> AsyncIterator[web.AppRunner]:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield runner
    await runner.cleanup()


async def test_the_proxy_forwards_faults_and_counts_by_kind(
    tmp_path: Path, upstream: web.AppRunner
) -> None:
    port = upstream.addresses[0][1]
    proxy = ProxyProcess(f"http://127.0.0.1:{port}", None, tmp_path)
    await proxy.start()
    try:
        async with aiohttp.ClientSession() as session:

            async def status() -> int | str:
                try:
                    async with session.get(f"{proxy.url}/api/v1/x") as rsp:
                        return rsp.status
                except aiohttp.ClientError as e:
                    return type(e).__name__

            assert await status() == 200
            await proxy.fail(429, retry_after=1)
            assert await status() == 429
            assert await status() == 429
            await proxy.clear_faults()
            assert await status() == 200
            await proxy.go_down()
            assert await status() == "ClientConnectorError"
            await proxy.come_up()
            assert await status() == 200
        counts = await proxy.counts()
    finally:
        await proxy.stop()
    # A request on a kept-alive connection while down is reset ("down"); aiohttp then tries
    # a new connection, which is refused.
    assert counts.pop("down", 0) <= 1
    assert counts == {"forwarded": 3, "status:429": 2}
    assert proxy.proc.unexpected_exits == []
