"""Pull requests bounded in bytes: what one pull may bring from JetStream.

nats-py's ``PullSubscription.fetch`` asks for a number of messages only (nats-py 2.16). A
pull of N messages of unknown size can bring N times the server's ``max_payload`` (128 x
8 MiB with deploy/'s settings), which would make the reconciler's byte budget a wish. A
JetStream pull request also takes ``max_bytes``: the server stops before a message that
would pass it. So the consumer sends its own pull requests, in the JetStream pull protocol
(a JSON request on ``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>`` whose reply subject is
an inbox of ours; the messages arrive on that inbox, and a status message, 404 no messages,
408 request expired or 409 such as "Message Size Exceeds MaxBytes", ends a request early).
The messages are nats-py ``Msg`` objects with their ``$JS.ACK`` reply subjects: ack, nak,
``in_progress`` and metadata work as they do for ``fetch``.

One pull is at most two requests: a ``no_wait`` one that takes what is stored now, and when
nothing is, a waiting one for a single message (so a quiet stream answers as soon as
anything arrives, not when a batch is full). One request is outstanding at a time; a message
that arrives after its request was given up on (a reconnect) is returned by the next pull.
"""

from __future__ import annotations

import json
import time

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import TimeoutError as NatsTimeoutError

STATUS_HEADER = "Status"
HEARTBEAT = "100"
CONFLICT = "409"
API_PREFIX = "$JS.API"
GRACE = 0.5
"""Seconds past a request's expiry we wait for its closing status before giving up on it."""


class NoRoom(Exception):
    """The next message is larger than the ``max_bytes`` asked for (status 409): pull again
    when more room is free."""


class BoundedPull:
    """Pull requests for a durable consumer, bounded in count and bytes."""

    def __init__(self, nc: Client, stream: str, durable: str, *, pending_bytes: int) -> None:
        """``pending_bytes``: what the inbox may buffer (at least one pull's ``max_bytes``)."""
        self._nc = nc
        self._subject = f"{API_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._pending_bytes = pending_bytes
        self._sub: Subscription | None = None

    async def start(self) -> None:
        inbox = self._nc.new_inbox()  # under the reconciler's inbox prefix (permissions)
        self._sub = await self._nc.subscribe(inbox, pending_bytes_limit=self._pending_bytes)

    async def unsubscribe(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await sub.unsubscribe()

    async def fetch(self, batch: int, max_bytes: int, wait: float) -> list[Msg]:
        """Up to ``batch`` messages of at most ``max_bytes`` together; TimeoutError when none
        arrived within ``wait`` seconds, :class:`NoRoom` when the next is larger."""
        assert self._sub is not None, "start() first"
        msgs = await self._leftovers()
        if msgs:
            return msgs
        msgs, status = await self._request(batch, max_bytes, None)
        if msgs:
            return msgs
        if status == CONFLICT:
            raise NoRoom
        first, status = await self._request(1, max_bytes, wait)
        if not first:
            raise NoRoom if status == CONFLICT else TimeoutError
        size = sum(message_size(m) for m in first)
        if batch > 1 and max_bytes > size:
            first += (await self._request(batch - 1, max_bytes - size, None))[0]
        return first

    async def _leftovers(self) -> list[Msg]:
        """Messages (not statuses) already in the inbox from a request given up on."""
        assert self._sub is not None
        out: list[Msg] = []
        while self._sub.pending_msgs:
            msg = await self._sub.next_msg(timeout=1.0)  # queued: returns at once
            if _status(msg) is None:
                out.append(msg)
        return out

    async def _request(
        self, batch: int, max_bytes: int, expires: float | None
    ) -> tuple[list[Msg], str | None]:
        """One pull request: its messages until it is full or its closing status arrives,
        and that status."""
        assert self._sub is not None
        request: dict[str, object] = {"batch": batch, "max_bytes": max_bytes}
        if expires is None:
            request["no_wait"] = True
            wait = 5.0  # the server answers a no_wait request at once; this is for a lost one
        else:
            request["expires"] = int(expires * 1e9)
            wait = expires + GRACE
        await self._nc.publish(self._subject, json.dumps(request).encode(), self._sub.subject)
        deadline = time.monotonic() + wait
        msgs: list[Msg] = []
        while len(msgs) < batch:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                msg = await self._sub.next_msg(timeout=left)
            except (TimeoutError, NatsTimeoutError):
                break
            status = _status(msg)
            if status is None:
                msgs.append(msg)
            elif status != HEARTBEAT:
                return msgs, status  # 404, 408, 409: this request is over
        return msgs, None


def _status(msg: Msg) -> str | None:
    if msg.headers is None or msg.data:
        return None
    return msg.headers.get(STATUS_HEADER)


def message_size(msg: Msg) -> int:
    """What the server counts against ``max_bytes``: data and headers (approximately); the
    consumer charges held messages by it too (``reconciler.backpressure``)."""
    headers = msg.headers or {}
    return len(msg.data) + sum(len(k) + len(v) + 4 for k, v in headers.items())
