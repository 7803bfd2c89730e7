"""A fault-injecting HTTP proxy in front of the real kube-apiserver, for tests.

This module owns the faults a real API server will not produce on demand: 429 with
``Retry-After``, 500s, added latency, a server that is down (connections refused, open ones
reset) and dropped streams. It listens on plain HTTP on loopback and forwards every request to the
real HTTPS server (verifying its CA), streaming responses chunk by chunk so long-lived watches
pass through unbuffered. It records every request it receives (method, path, query, content type,
body, arrival time, what it answered) so tests can count writes ("exactly one PATCH", "never more
than N writes per second").

Use it from a test's own event loop (``async with FaultProxy(...)``) or, from synchronous code or
another thread, via :class:`FaultProxyThread`, which runs it on a private loop in a thread.
Control methods that only change rules or read records are synchronous and thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import aiohttp
from aiohttp import web

logger = logging.getLogger(__name__)

T = TypeVar("T")

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
_REASONS = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the proxy received it and what it did with it."""

    method: str
    path: str
    query: str
    content_type: str | None
    body: bytes
    at: float  # time.monotonic() on arrival
    fault: str | None  # e.g. "status:429", "down", "upstream-unreachable"; None if forwarded


@dataclass
class _StatusFault:
    status: int
    remaining: int | None  # None: until cleared
    retry_after: float | None
    method: str | None
    path: re.Pattern[str] | None

    def matches(self, method: str, path: str) -> bool:
        return _matches(self.method, self.path, method, path)


@dataclass
class _Latency:
    seconds: float
    method: str | None
    path: re.Pattern[str] | None

    def matches(self, method: str, path: str) -> bool:
        return _matches(self.method, self.path, method, path)


def _matches(
    want_method: str | None, want_path: re.Pattern[str] | None, method: str, path: str
) -> bool:
    if want_method is not None and want_method.upper() != method.upper():
        return False
    return want_path is None or want_path.search(path) is not None


def _status_body(status: int, retry_after: float | None) -> bytes:
    doc: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"injected by the test fault proxy (HTTP {status})",
        "reason": _REASONS.get(status, "InternalError"),
        "code": status,
    }
    if retry_after is not None:
        doc["details"] = {"retryAfterSeconds": int(retry_after)}
    return json.dumps(doc).encode()


@dataclass
class _InFlight:
    transport: asyncio.Transport | None
    task: asyncio.Task[Any] | None
    started: float = field(default_factory=time.monotonic)


class FaultProxy:
    """Plain-HTTP proxy on 127.0.0.1 forwarding to ``upstream`` (an https URL) with faults."""

    def __init__(
        self,
        upstream: str,
        ca_file: Path | str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.ca_file = ca_file
        self.host = host
        self._port = port
        self._lock = threading.Lock()
        self._faults: list[_StatusFault] = []
        self._latencies: list[_Latency] = []
        self._records: list[RecordedRequest] = []
        self._recorded = asyncio.Event()
        self._down = False
        self._in_flight: dict[int, _InFlight] = {}
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._session: aiohttp.ClientSession | None = None

    # ----------------------------------------------------------------------------- lifecycle

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: point a client (or a kubeconfig) here."""
        return f"http://{self.host}:{self._port}"

    @property
    def down(self) -> bool:
        return self._down

    async def start(self) -> FaultProxy:
        ssl_ctx: ssl.SSLContext | bool = True
        if self.ca_file is not None:
            ssl_ctx = ssl.create_default_context(cafile=str(self.ca_file))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_ctx),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None
        )
        await self._runner.setup()
        await self._listen()
        logger.info("fault proxy %s -> %s", self.url, self.upstream)
        return self

    async def stop(self) -> None:
        await self.drop_connections()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self.host, self._port, reuse_address=True)
        await self._site.start()
        if self._port == 0:
            self._port = int(self._runner.addresses[0][1])

    # ------------------------------------------------------------------------------ faults

    def fail(
        self,
        status: int = 429,
        *,
        times: int | None = 1,
        retry_after: float | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """Answer the next ``times`` matching requests (``None``: until cleared) with ``status``.

        ``path`` is a regular expression searched in the request path (no query string);
        ``retry_after`` adds a ``Retry-After`` header (whole seconds).
        """
        pattern = re.compile(path) if path is not None else None
        with self._lock:
            self._faults.append(_StatusFault(status, times, retry_after, method, pattern))

    def delay(self, seconds: float, *, method: str | None = None, path: str | None = None) -> None:
        """Hold matching requests for ``seconds`` before forwarding them (until cleared)."""
        pattern = re.compile(path) if path is not None else None
        with self._lock:
            self._latencies.append(_Latency(seconds, method, pattern))

    def clear_faults(self) -> None:
        """Remove every status fault and latency rule (down mode is separate)."""
        with self._lock:
            self._faults.clear()
            self._latencies.clear()

    async def go_down(self) -> None:
        """Stop listening (new connections are refused) and reset every open connection."""
        self._down = True
        if self._site is not None:
            await self._site.stop()
            self._site = None
        await self.drop_connections()

    async def come_up(self) -> None:
        """Listen again on the same port."""
        if self._site is None:
            await self._listen()
        self._down = False

    async def drop_connections(self) -> None:
        """Reset every connection with a request in flight (e.g. a watch), like a network drop."""
        with self._lock:
            in_flight = list(self._in_flight.values())
        for item in in_flight:
            if item.transport is not None:
                item.transport.abort()
            if item.task is not None:
                item.task.cancel()
        await asyncio.sleep(0)

    # ----------------------------------------------------------------------------- records

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._records)

    def matching(
        self, method: str | None = None, path: str | None = None, *, forwarded: bool | None = None
    ) -> list[RecordedRequest]:
        """Recorded requests by method, path regex and whether they reached the server."""
        pattern = re.compile(path) if path is not None else None
        return [
            r
            for r in self.requests
            if _matches(method, pattern, r.method, r.path)
            and (forwarded is None or (r.fault is None) == forwarded)
        ]

    def count(
        self, method: str | None = None, path: str | None = None, *, forwarded: bool | None = None
    ) -> int:
        return len(self.matching(method, path, forwarded=forwarded))

    def reset_records(self) -> None:
        with self._lock:
            self._records.clear()

    async def wait_for_count(
        self,
        n: int,
        method: str | None = None,
        path: str | None = None,
        *,
        forwarded: bool | None = None,
    ) -> int:
        """Wait until at least ``n`` matching requests arrived; returns the count.

        Call it on the proxy's own loop and bound it with ``asyncio.timeout``.
        """
        while True:
            self._recorded.clear()
            seen = self.count(method, path, forwarded=forwarded)
            if seen >= n:
                return seen
            await self._recorded.wait()

    # ------------------------------------------------------------------------------ serving

    def _take_fault(self, method: str, path: str) -> _StatusFault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path) and (fault.remaining is None or fault.remaining > 0):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    return fault
            return None

    def _latency(self, method: str, path: str) -> float:
        with self._lock:
            return sum(rule.seconds for rule in self._latencies if rule.matches(method, path))

    def _record(self, request: web.Request, body: bytes, fault: str | None) -> None:
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            query=request.query_string,
            content_type=request.headers.get("Content-Type"),
            body=body,
            at=time.monotonic(),
            fault=fault,
        )
        with self._lock:
            self._records.append(record)
        self._recorded.set()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        key = id(request)
        with self._lock:
            self._in_flight[key] = _InFlight(request.transport, asyncio.current_task())
        try:
            return await self._serve(request)
        finally:
            with self._lock:
                self._in_flight.pop(key, None)

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self._down:
            self._record(request, body, "down")
            self._reset(request)
        fault = self._take_fault(request.method, request.path)
        if fault is not None:
            self._record(request, body, f"status:{fault.status}")
            headers = {"Content-Type": "application/json"}
            if fault.retry_after is not None:
                headers["Retry-After"] = str(int(fault.retry_after))
            return web.Response(
                status=fault.status,
                body=_status_body(fault.status, fault.retry_after),
                headers=headers,
            )
        latency = self._latency(request.method, request.path)
        if latency > 0:
            await asyncio.sleep(latency)
        return await self._forward(request, body)

    def _reset(self, request: web.Request) -> NoReturn:
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError  # nothing more to say on a reset connection

    async def _forward(self, request: web.Request, body: bytes) -> web.StreamResponse:
        assert self._session is not None
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
        url = self.upstream + request.rel_url.raw_path_qs
        try:
            upstream_cm = self._session.request(
                request.method,
                url,
                headers=headers,
                data=body if body else None,
                allow_redirects=False,
            )
            upstream = await upstream_cm.__aenter__()
        except (aiohttp.ClientError, OSError) as exc:
            logger.info("fault proxy: upstream unreachable: %s", type(exc).__name__)
            self._record(request, body, "upstream-unreachable")
            self._reset(request)
        self._record(request, body, None)
        try:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    response.headers.add(name, value)
            if "Content-Length" in upstream.headers:
                response.content_length = int(upstream.headers["Content-Length"])
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except (aiohttp.ClientError, OSError):
                # The server went away mid-stream (e.g. restarted): the client sees a reset.
                self._reset(request)
            await response.write_eof()
            return response
        finally:
            await upstream_cm.__aexit__(None, None, None)


class FaultProxyThread:
    """Runs a :class:`FaultProxy` on its own event loop in a daemon thread.

    For synchronous tests or code running in another thread. Rule and record methods are
    reached through :attr:`proxy` (thread-safe); the async ones have blocking wrappers here.
    """

    def __init__(self, upstream: str, ca_file: Path | str | None = None, *, port: int = 0) -> None:
        self.proxy = FaultProxy(upstream, ca_file, port=port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fault-proxy", daemon=True
        )

    @property
    def url(self) -> str:
        return self.proxy.url

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> FaultProxyThread:
        self._thread.start()
        self._call(self.proxy.start())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self.proxy.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def go_down(self) -> None:
        self._call(self.proxy.go_down())

    def come_up(self) -> None:
        self._call(self.proxy.come_up())

    def drop_connections(self) -> None:
        self._call(self.proxy.drop_connections())

    def __enter__(self) -> FaultProxyThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
