"""The soak's fault proxy and HTTP CDEvents sink, each in a process of its own.

Every API request the reconcilers make passes through the fault proxy, and every CDEvent they
POST lands in the sink. Both used to run on the soak driver's event loop, beside the load
generator, the Flux stand-in and the patch watch. The 1,000-object probe at 43b1405 showed
what that costs: the driver process at 58-66 % of a core, requests waiting ~2.7 s each on the
proxy, the generator sending ~240 of the 500 deliveries/s asked. Such a run measures the
harness, not fluxrelay, so each of the two now has a process (and an event loop) to itself.

Each serves a small control API on loopback that the driver's handles below call: the proxy's
faults (down, up, a status fault, clear) and counts, the sink's slow mode. The sink appends
what it received to a JSON-lines file (one :class:`~bench.soak.observing.SeenEvent` per line)
that the driver reads up to the size the sink reports after a flush, so no event list crosses
the control API and a line being written meanwhile is not read half.

Run as ``python -m bench.soak.sidecars proxy|sink ...``; the soak starts them itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

import aiohttp
import uvloop
from aiohttp import web

from bench.soak.observing import SeenEvent, parse_event
from bench.soak.processes import Proc
from tests.support.faultproxy import FaultProxy
from tests.support.natsd import free_port

# ------------------------------------------------------------------------- the driver's side

CONTROL_ATTEMPTS = 5


class _Sidecar:
    """A sidecar process and its control API."""

    def __init__(self, name: str, args: list[str], workdir: Path) -> None:
        self.port = free_port()
        self.control_port = free_port()
        control = f"http://127.0.0.1:{self.control_port}"
        self._control = control
        cmd = [
            sys.executable, "-m", "bench.soak.sidecars", *args,
            "--port", str(self.port),
            "--control-port", str(self.control_port),
        ]  # fmt: skip
        self.proc = Proc(name, cmd, workdir / f"{name}.log", f"{control}/ready")

    async def start(self) -> None:
        self.proc.start()
        await self.proc.wait_ready()

    async def stop(self) -> None:
        await asyncio.to_thread(self.proc.stop)

    async def _call(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """POST to the control API, tried a few times: a heal (up, clear, fast again) that
        did not arrive would leave its fault on for the rest of the run."""
        for attempt in range(CONTROL_ATTEMPTS):
            try:
                async with (
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
                    session.post(f"{self._control}{path}", json=body or {}) as rsp,
                ):
                    rsp.raise_for_status()
                    return await rsp.json()
            except (aiohttp.ClientError, TimeoutError) as e:
                self.proc.check()
                if attempt + 1 == CONTROL_ATTEMPTS or self.proc.pid is None:
                    raise RuntimeError(
                        f"{self.proc.name} control {path}: {e!r}; see {self.proc.log_path}"
                    ) from e
                await asyncio.sleep(1.0)
        raise AssertionError("unreachable")


class ProxyProcess(_Sidecar):
    """The fault proxy (:class:`~tests.support.faultproxy.FaultProxy`) in its own process."""

    def __init__(self, upstream: str, ca_file: Path | str | None, workdir: Path) -> None:
        args = ["proxy", "--upstream", upstream]
        if ca_file is not None:
            args += ["--ca-file", str(ca_file)]
        super().__init__("fault-proxy", args, workdir)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def go_down(self) -> None:
        await self._call("/down")

    async def come_up(self) -> None:
        await self._call("/up")

    async def fail(self, status: int, *, retry_after: float | None = None) -> None:
        """Answer every request ``status`` (with ``Retry-After``) until :meth:`clear_faults`."""
        await self._call("/fail", {"status": status, "retry_after": retry_after})

    async def clear_faults(self) -> None:
        await self._call("/clear")

    async def counts(self) -> dict[str, int]:
        """Requests received so far by what became of them: ``forwarded``, or the fault that
        answered them (``status:429``, ``down``, ``upstream-unreachable``)."""
        counts: dict[str, int] = await self._call("/counts")
        return counts


class SinkProcess(_Sidecar):
    """The HTTP CDEvents sink in its own process, writing what it received to a file."""

    def __init__(self, workdir: Path) -> None:
        self.events_file = workdir / "http-sink.jsonl"
        super().__init__("http-sink", ["sink", "--events", str(self.events_file)], workdir)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    async def slow(self, seconds: float) -> None:
        """Take ``seconds`` before answering each POST (0: answer at once)."""
        await self._call("/slow", {"seconds": seconds})

    async def events(self) -> list[SeenEvent]:
        """Every event the sink had received when asked, in arrival order (the file up to
        the size the sink reports after its flush: it may go on receiving meanwhile)."""
        size = int((await self._call("/flush"))["bytes"])
        return await asyncio.to_thread(_read_events, self.events_file, size)


def _read_events(path: Path, size: int) -> list[SeenEvent]:
    with path.open("rb") as f:
        data = f.read(size)
    out: list[SeenEvent] = []
    for line in data.splitlines():
        row = json.loads(line)
        for name in _INTERNED:  # few distinct strings, millions of events
            if row[name] is not None:
                row[name] = sys.intern(row[name])
        out.append(SeenEvent(**row))
    return out


_INTERNED = ("type", "pipeline", "outcome")


# ------------------------------------------------------------------------ the sidecar's side


async def _serve_proxy(args: argparse.Namespace, stop: asyncio.Event) -> None:
    proxy = FaultProxy(args.upstream, args.ca_file, port=args.port)

    async def down(_: web.Request) -> web.Response:
        await proxy.go_down()
        return web.json_response({})

    async def up(_: web.Request) -> web.Response:
        await proxy.come_up()
        return web.json_response({})

    async def fail(request: web.Request) -> web.Response:
        body = await request.json()
        proxy.fail(int(body["status"]), times=None, retry_after=body.get("retry_after"))
        return web.json_response({})

    async def clear(_: web.Request) -> web.Response:
        proxy.clear_faults()
        return web.json_response({})

    async def counts(_: web.Request) -> web.Response:
        return web.json_response(dict(Counter(r.fault or "forwarded" for r in proxy.requests)))

    control = [
        web.post("/down", down),
        web.post("/up", up),
        web.post("/fail", fail),
        web.post("/clear", clear),
        web.post("/counts", counts),
    ]
    async with proxy:
        await _serve_control(args.control_port, control, stop)


class _Sink:
    """Receives CDEvents (binary mode: the CDEvent JSON is the body), slowly when asked."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.slow_seconds = 0.0

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.slow_seconds > 0:
            await asyncio.sleep(self.slow_seconds)
        try:
            doc = json.loads(body)
        except ValueError:
            return web.Response(status=400)
        event = parse_event(doc, time.monotonic())  # CLOCK_MONOTONIC: the driver's clock too
        self.out.write(json.dumps(dataclasses.asdict(event)) + "\n")
        return web.Response(status=202)


async def _serve_sink(args: argparse.Namespace, stop: asyncio.Event) -> None:
    out: IO[str] = args.events  # opened by argparse, before the loop runs
    sink = _Sink(out)

    async def slow(request: web.Request) -> web.Response:
        sink.slow_seconds = float((await request.json())["seconds"])
        return web.json_response({})

    async def flush(_: web.Request) -> web.Response:
        out.flush()
        return web.json_response({"bytes": out.tell()})

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post("/events", sink.receive)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", args.port).start()
        control = [web.post("/slow", slow), web.post("/flush", flush)]
        await _serve_control(args.control_port, control, stop)
    finally:
        await runner.cleanup()
        out.close()


async def _serve_control(port: int, routes: list[web.RouteDef], stop: asyncio.Event) -> None:
    async def ready(_: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.add_routes([web.get("/ready", ready), *routes])
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await stop.wait()
    finally:
        await runner.cleanup()


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    serve = _serve_proxy if args.role == "proxy" else _serve_sink
    await serve(args, stop)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak.sidecars", description=__doc__)
    roles = parser.add_subparsers(dest="role", required=True)
    proxy = roles.add_parser("proxy", help="the fault proxy in front of kube-apiserver")
    proxy.add_argument("--upstream", required=True)
    proxy.add_argument("--ca-file")
    sink = roles.add_parser("sink", help="the HTTP CDEvents sink")
    sink.add_argument(
        "--events",
        required=True,
        type=argparse.FileType("w", bufsize=1 << 20),
        help="JSON-lines file of what was received (emptied first)",
    )
    for role in (proxy, sink):
        role.add_argument("--port", type=int, required=True)
        role.add_argument("--control-port", type=int, required=True)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(_main(args))


if __name__ == "__main__":
    main()
