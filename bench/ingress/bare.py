"""The bare ceiling: an aiohttp handler that reads the body and answers 202 JSON.

Same framework, same event loop (uvloop), same response shape as the receiver, nothing
verified, stored or logged; written the way an aiohttp service usually is (an application
with a router, ``json_response``), which is the comparison earlier results were stated in.
The receiver pays for neither the router nor ``json_response``, so receiver/bare flatters
it; :mod:`bench.ingress.strict` is the ceiling without them.
"""

from __future__ import annotations

import sys

import uvloop
from aiohttp import web


async def handle(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"status": "accepted", "id": "0"}, status=202)


def main() -> None:
    port = int(sys.argv[1])
    app = web.Application()
    app.router.add_post("/hook/{digest}", handle)
    uvloop.run(web._run_app(app, host="127.0.0.1", port=port, print=None, access_log=None))


if __name__ == "__main__":
    main()
