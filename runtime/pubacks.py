"""Storing a message on JetStream and reading its PubAck, as both processes do it.

The receiver stores every accepted delivery and the reconciler every CDEvent it emits; both
must know the message is in the stream before they move on. nats-py's
``JetStreamContext.publish`` does this, but per message it draws a random reply token from
the OS, wraps the wait in ``asyncio.wait_for`` and decodes the ack into a dataclass, which
together cost about as much as the rest of the publish (measured on the receiver's hot path,
see the README). :class:`AckedPublisher` speaks the same protocol (a request whose reply
subject the stream answers with its PubAck JSON) with one wildcard reply subscription per
connection, counter tokens, one timer handle per wait and orjson.

Replies are handed over without the subscription's queue and task: the inbox is subscribed
with ``future=`` set to a :class:`_Replies` object, which nats-py resolves in its read loop
for every message (``set_result``), and which completes the waiting publish directly.

It also writes the ``HPUB`` command itself, from header lines encoded once
(:mod:`runtime.natsheaders`), and hands it to the connection's pending buffer the way
``Client.publish`` does (without its two coroutines per message). That uses private members
of nats-py's client (the ``_pending`` buffer and its size and limit, ``_flush_pending`` and
``_flush_queue``), checked when attaching: if a
nats-py release drops them, publishing falls back to ``Client.publish`` with a header dict
(slower, same bytes on the wire). ``pyproject.toml`` bounds nats-py to the tested major
version, and the tests run both paths against a real server.

Both processes store messages this way (the receiver its events and dead letters, the
reconciler's NATS sink its CDEvents), so it is written once here.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import BadSubjectError
from nats.errors import Error as NatsError

from runtime import natsheaders

EXPECTED_STREAM = "Nats-Expected-Stream"
"""The stream must be this one, or the server refuses the message (a subject captured by
another stream, say after a misconfiguration, is an error rather than a silent store)."""


@dataclass(slots=True)
class Stored:
    """What JetStream acknowledged. (Not frozen: one per publish, never changed, and a
    frozen ``__init__`` costs four times as much.)"""

    stream: str
    seq: int
    duplicate: bool


class NotAcknowledged(Exception):
    """No PubAck. ``refused`` when the server answered: no stream took the subject (deleted,
    or a memory stream lost with a restart) or the stream refused the message, so the caller
    may check its stream before trying again; otherwise there was no answer at all and the
    message may or may not be stored."""

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


def read_pub_ack(reply: Msg) -> Stored:
    """A PubAck, or :class:`NotAcknowledged` for an error or "no responders"."""
    if reply.headers and reply.headers.get("Status") == "503":
        raise NotAcknowledged("no stream for the subject", refused=True)
    try:
        ack = orjson.loads(reply.data)
    except orjson.JSONDecodeError as e:
        raise NotAcknowledged("unreadable acknowledgement") from e
    if not isinstance(ack, dict):
        raise NotAcknowledged("unreadable acknowledgement")
    error = ack.get("error")
    if error is not None:
        code = error.get("err_code") if isinstance(error, dict) else None
        raise NotAcknowledged(f"refused by the stream (error {code})", refused=True)
    try:
        return Stored(str(ack["stream"]), int(ack["seq"]), bool(ack.get("duplicate", False)))
    except (KeyError, TypeError, ValueError) as e:
        raise NotAcknowledged("unreadable acknowledgement") from e


_SUBJECT_BREAKS = re.compile(r"[\s]")


@functools.lru_cache(maxsize=4096)
def _subject_bytes(subject: str) -> bytes:
    """A subject checked (no whitespace: it would end the protocol line) and encoded, once."""
    if not subject or _SUBJECT_BREAKS.search(subject):
        raise BadSubjectError
    return subject.encode()


@functools.lru_cache(maxsize=64)
def _stream_line(stream: str) -> bytes:
    return natsheaders.line(EXPECTED_STREAM, stream)


class _Replies:
    """Stands in for the subscription's future: nats-py calls ``set_result(msg)`` for each
    message on a subscription that has one (``cancelled()`` is asked first), in its read loop.
    Each reply completes the publish waiting for its token, then the next may arrive."""

    __slots__ = ("_publisher",)

    def __init__(self, publisher: AckedPublisher) -> None:
        self._publisher = publisher

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return False

    def set_result(self, msg: Msg) -> None:
        self._publisher.deliver(msg)


def _raw_capable(nc: Client) -> bool:
    """Whether this nats-py client has the members :meth:`AckedPublisher._write` uses."""
    return all(hasattr(nc, name) for name in _RAW_MEMBERS)


_RAW_MEMBERS = (
    "_pending",
    "_pending_data_size",
    "_max_pending_size",
    "_flush_pending",
    "_flush_queue",
)


SWEEP_SECONDS = 0.1
"""How often waits past their ``ack_wait`` are failed (so a timeout fires at most this late).
One repeating timer per publisher, instead of a timer armed and cancelled per message."""


class AckedPublisher:
    """Publishes with a reply subject and waits for the stream's PubAck, on one connection.

    :meth:`attach` must run once after connecting (it subscribes the reply inbox; nats-py
    renews the subscription after a reconnect). A wait that outlives ``ack_wait`` raises
    :class:`NotAcknowledged` and its reply, if it comes later, is ignored.

    ``failure`` turns a :class:`NotAcknowledged` into the caller's own error (the receiver's
    503), so a caller needs no coroutine of its own around :meth:`publish` to translate it.
    """

    def __init__(self, failure: Callable[[NotAcknowledged], Exception] | None = None) -> None:
        self._failure = failure
        self._nc: Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._prefix = ""
        self._tokens = itertools.count()
        self._waiting: dict[str, tuple[asyncio.Future[Msg], float]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweeper_loop: asyncio.AbstractEventLoop | None = None
        self.raw = True
        """Write HPUB commands directly and take replies without the subscription queue
        (see the module docstring); False uses ``Client.publish`` and a callback. Set at
        :meth:`attach` from what the client offers."""

    @property
    def attached(self) -> bool:
        return self._nc is not None

    @property
    def waiting(self) -> int:
        """Publishes waiting for their PubAck now."""
        return len(self._waiting)

    async def attach(self, nc: Client) -> None:
        prefix = nc.new_inbox() + "."
        # The client's loop, kept: asyncio.get_running_loop() is a getpid() syscall per call.
        self._loop = asyncio.get_running_loop()
        self.raw = self.raw and _raw_capable(nc)
        self._prefix = prefix
        if self.raw:
            replies: Any = _Replies(self)
            await nc.subscribe(prefix + "*", future=replies)
        else:
            await nc.subscribe(prefix + "*", cb=self._on_reply)
        self._nc = nc

    async def publish(
        self,
        subject: str,
        payload: bytes,
        headers: Mapping[str, str] | bytes,
        stream: str,
        ack_wait: float,
    ) -> Stored:
        """Store one message on ``stream`` or raise :class:`NotAcknowledged`.

        ``headers`` is a mapping, or header lines already encoded with
        :mod:`runtime.natsheaders` (the hot path: constant lines are encoded once).
        Invalid headers or subject raise :class:`~runtime.natsheaders.HeaderError` /
        ``BadSubjectError`` before anything is sent.
        """
        try:
            nc = self._nc
            loop = self._loop
            if nc is None or loop is None or not nc.is_connected:
                raise NotAcknowledged("not connected")
            header_lines = headers if isinstance(headers, bytes) else natsheaders.lines(headers)
            header_block = natsheaders.block(header_lines + _stream_line(stream))
            subject_bytes = _subject_bytes(subject)
            token = str(next(self._tokens))
            future: asyncio.Future[Msg] = loop.create_future()
            self._waiting[token] = (future, loop.time() + ack_wait)
            if self._sweeper is None or self._sweeper_loop is not loop:
                self._sweeper = loop.call_later(SWEEP_SECONDS, self._sweep, loop)
                self._sweeper_loop = loop
            try:
                if self.raw:
                    flush = self._write(
                        nc, subject_bytes, self._prefix + token, header_block, payload
                    )
                    if flush is not None:
                        await flush
                else:
                    await nc.publish(
                        subject,
                        payload,
                        reply=self._prefix + token,
                        headers=natsheaders.parse(header_block[len(natsheaders.VERSION_LINE) :]),
                    )
                reply = await future
            except (NatsError, TimeoutError, OSError) as e:
                raise NotAcknowledged(type(e).__name__) from e
            finally:
                del self._waiting[token]
            return read_pub_ack(reply)
        except NotAcknowledged as e:
            if self._failure is None:
                raise
            raise self._failure(e) from e

    def _write(
        self, nc: Client, subject: bytes, reply: str, header_block: bytes, payload: bytes
    ) -> Awaitable[Any] | None:
        """Append the ``HPUB`` to the connection's pending buffer, as ``Client.publish`` does,
        without its two coroutines per message; returns the flush to await when this write
        must kick the flusher (the first of a batch) or the buffer is over its limit."""
        if nc.is_closed:
            raise NotAcknowledged("connection closed")
        if nc.is_draining_pubs:
            raise NotAcknowledged("connection draining")
        if len(payload) > nc.max_payload:
            raise NotAcknowledged("message exceeds the server's max_payload")
        client: Any = nc  # private members, checked by _raw_capable at attach
        command = b"HPUB %b %b %d %d\r\n%b%b\r\n" % (
            subject,
            reply.encode(),
            len(header_block),
            len(header_block) + len(payload),
            header_block,
            payload,
        )
        client._pending.append(command)
        client._pending_data_size += len(command)
        nc.stats["out_msgs"] += 1
        nc.stats["out_bytes"] += len(payload)
        if 0 < client._max_pending_size < client._pending_data_size:
            flush: Awaitable[Any] = client._flush_pending(force_flush=True)
            return flush
        if client._flush_queue is not None and client._flush_queue.empty():
            flush = client._flush_pending()
            return flush
        return None

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail the waits past their deadline; re-arm while anything is waiting."""
        now = loop.time()
        expired = [f for f, deadline in self._waiting.values() if deadline <= now]
        for future in expired:
            if not future.done():
                future.set_exception(TimeoutError())
        if self._waiting and not loop.is_closed():
            self._sweeper = loop.call_later(SWEEP_SECONDS, self._sweep, loop)
        else:
            self._sweeper = None

    def deliver(self, msg: Msg) -> None:
        """Complete the publish waiting for ``msg`` (a late or unknown reply is dropped)."""
        waiting = self._waiting.get(msg.subject[len(self._prefix) :])
        if waiting is not None and not waiting[0].done():
            waiting[0].set_result(msg)

    async def _on_reply(self, msg: Msg) -> None:
        self.deliver(msg)
