"""The strict ceiling: the receiver's own HTTP stack with nothing behind it.

The bare handler (:mod:`bench.ingress.bare`) is what an aiohttp service usually looks like
(application, router, ``json_response``); the receiver does not pay for those, so the bare
handler flatters it. This one serves the way the receiver does, minus the receiver's work:
uvloop, aiohttp's low-level ``web.Server`` with one handler and the receiver's own
``server_options`` (head limits, no access log, keep-alive and lingering timers, no
decompression), the same listening backlog, the same garbage-collector settings after
startup. The handler takes the body (as the receiver does when it arrived with the head:
no copy) and answers 202 with a JSON body encoded once. Every step costs at most what the
receiver's does, so receiver/strict is what verifying, parsing, storing and logging cost
on top of the HTTP layer they share.

    python -m bench.ingress.strict PORT
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import uvloop
from aiohttp import web

from receiver.app import server_options
from receiver.serving import settle_heap
from receiver.settings import ReceiverSettings
from receiver.state import IngressState

BODY = b'{"status":"accepted","id":"0"}'


class _Options:
    """What :func:`receiver.app.server_options` reads of the ingress state: the settings
    (the receiver's defaults, as the bench runs it), without a publisher or metrics."""

    settings = ReceiverSettings()


async def handle(request: web.BaseRequest) -> web.Response:
    content = request.content
    length = request.content_length
    if length is not None and content.total_bytes >= length:
        content.read_nowait(-1)
    else:
        await request.read()
    return web.Response(body=BODY, status=202, content_type="application/json")


async def serve(port: int) -> None:
    options = server_options(cast(IngressState, _Options()))
    runner = web.ServerRunner(web.Server(handle, **options))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    settle_heap()
    try:
        await asyncio.Event().wait()  # until SIGTERM
    finally:
        await runner.cleanup()


def main() -> None:
    uvloop.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
