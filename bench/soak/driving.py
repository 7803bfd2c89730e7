"""Driving load: signed GitHub push deliveries at a steady rate, retried like a provider.

Each delivery has its own ``X-GitHub-Delivery`` id and goes to one of the soak's Receivers
(round robin), HMAC-signed with that Receiver's token. A delivery is sent until it is answered
202 (a 503 from the receiver while NATS is away is retried after its ``Retry-After``, as a
provider that retries would), or until the retry deadline passes. Every answer is recorded: the
first send time and the 202 time are what the books measure latency from. A small share of junk
(bad signatures, unparseable bodies, unknown paths) goes to the first Receiver alongside, to
show bad input is refused without disturbing anyone else. Loopback only; the rate loop stops
by itself after the given duration, and the number of deliveries in flight is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.ingress import hmac_hex

ROOT = Path(__file__).resolve().parents[2]
PUSH = (ROOT / "tests" / "receiver" / "fixtures" / "github_push.json").read_bytes()


@dataclass(frozen=True)
class Hook:
    """One Receiver as the driver sees it: where to send, how to sign, what it targets."""

    index: int
    url: str
    token: str
    targets: tuple[str, ...]  # object keys, Kind/namespace/name

    @property
    def signature(self) -> str:
        return "sha256=" + hmac_hex(self.token, PUSH)


@dataclass
class Delivery:
    """One delivery and what happened to it at the receiver."""

    delivery_id: str
    hook: Hook
    first_sent: float  # time.monotonic()
    accepted_at: float | None = None
    envelope_id: str | None = None
    attempts: int = 0
    answers: Counter[str] = field(default_factory=Counter)


RETRIED = frozenset({0, 429, 500, 502, 503, 504})
"""Answers a sender tries again (0: no answer, the connection failed or timed out)."""
REDELIVERY_ATTEMPTS = 5


@dataclass
class Driver:
    """Sends deliveries at ``rate`` per second to ``hooks`` (round robin)."""

    hooks: list[Hook]
    rate: float
    retry_deadline: float = 180.0
    max_in_flight: int = 20_000
    junk_fraction: float = 0.02
    run_tag: str = field(default_factory=lambda: f"{random.getrandbits(32):08x}")
    deliveries: list[Delivery] = field(default_factory=list)
    junk: Counter[str] = field(default_factory=Counter)
    redelivered: Counter[str] = field(default_factory=Counter)
    stalls: int = 0  # ticks where the in-flight bound held the sender back
    connections: int = 256
    _session: aiohttp.ClientSession | None = None
    _slots: asyncio.Semaphore | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _sending: bool = False

    async def __aenter__(self) -> Driver:
        # A send waits for one of ``connections`` slots before its clock starts: the timeout
        # is the receiver's answer, not the sender's own queue. (Waiting in aiohttp's pool
        # counted against ``total``: when the driver fell behind, queued sends timed out,
        # were sent again and queued again, and the offered rate collapsed.)
        self._slots = asyncio.Semaphore(self.connections)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.connections),
            timeout=aiohttp.ClientTimeout(total=15),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    @property
    def accepted(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.accepted_at is not None]

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def run(self, duration: float) -> None:
        """Send at the configured rate for ``duration`` seconds (then return; retries go on)."""
        start = time.monotonic()
        sent = 0
        n = 0
        while True:
            now = time.monotonic()
            if now - start >= duration:
                break
            due = int((now - start) * self.rate) - sent
            for _ in range(max(due, 0)):
                if len(self._tasks) >= self.max_in_flight:
                    self.stalls += 1
                    break
                hook = self.hooks[n % len(self.hooks)]
                n += 1
                sent += 1
                self._spawn(self._deliver(hook, f"soak-{self.run_tag}-{n}"))
                if self.junk_fraction and random.random() < self.junk_fraction:
                    self._spawn(self._send_junk(self.hooks[0]))
            await asyncio.sleep(0.005)

    async def settle(self, within: float) -> None:
        """Wait until every delivery was answered 202 or gave up (at most ``within`` s)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=within)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _headers(self, hook: Hook, delivery_id: str) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": delivery_id,
            "X-Hub-Signature-256": hook.signature,
        }

    async def _post(
        self, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, object], float]:
        """(status, JSON body or {}, Retry-After seconds); status 0 on a connection error."""
        assert self._session is not None and self._slots is not None
        try:
            async with self._slots, self._session.post(url, data=body, headers=headers) as rsp:
                doc: dict[str, object] = {}
                with contextlib.suppress(aiohttp.ContentTypeError, ValueError):
                    doc = await rsp.json()
                retry = float(rsp.headers.get("Retry-After", "1") or 1)
                return rsp.status, doc, retry
        except (aiohttp.ClientError, TimeoutError, OSError):
            return 0, {}, 1.0

    async def _deliver(self, hook: Hook, delivery_id: str) -> None:
        record = Delivery(delivery_id, hook, time.monotonic())
        self.deliveries.append(record)
        headers = self._headers(hook, delivery_id)
        while time.monotonic() - record.first_sent < self.retry_deadline:
            record.attempts += 1
            status, doc, retry_after = await self._post(hook.url, PUSH, headers)
            record.answers[str(status)] += 1
            if status == 202:
                record.accepted_at = time.monotonic()
                record.envelope_id = str(doc.get("id"))
                return
            if status not in RETRIED:
                return  # a refusal: not retried (the books count it)
            await asyncio.sleep(min(max(retry_after, 0.2), 5.0))

    async def _send_junk(self, hook: Hook) -> None:
        kind = random.choice(("bad-signature", "unparseable", "unknown-path"))
        delivery_id = f"junk-{self.run_tag}-{random.getrandbits(48):012x}"
        headers = self._headers(hook, delivery_id)
        url, body = hook.url, PUSH
        if kind == "bad-signature":
            headers["X-Hub-Signature-256"] = "sha256=" + "0" * 64
        elif kind == "unparseable":
            body = b'{"ref": "refs/heads/main", "repository": [' + b"[" * 64
            headers["X-Hub-Signature-256"] = "sha256=" + hmac_hex(hook.token, body)
        else:
            url = hook.url.rsplit("/", 1)[0] + "/" + "0" * 64
        status, _, _ = await self._post(url, body, headers)
        self.junk[f"{kind}:{status}"] += 1

    async def redeliver(self, deliveries: list[Delivery]) -> None:
        """Send accepted deliveries again, same id, body and signature (a provider's retry)."""

        async def one(record: Delivery) -> None:
            # Retried like the first send (a provider retries a failed connection or a 503);
            # the answer that ends it is the one judged.
            headers = self._headers(record.hook, record.delivery_id)
            for _ in range(REDELIVERY_ATTEMPTS):
                status, doc, retry_after = await self._post(record.hook.url, PUSH, headers)
                if status not in RETRIED:
                    break
                await asyncio.sleep(min(max(retry_after, 0.2), 5.0))
            same = doc.get("id") == record.envelope_id
            dup = bool(doc.get("duplicate"))
            self.redelivered[
                f"{status}:{'duplicate' if dup else 'new'}:{'same-id' if same else 'other-id'}"
            ] += 1

        semaphore = asyncio.Semaphore(128)

        async def bounded(record: Delivery) -> None:
            async with semaphore:
                await one(record)

        await asyncio.gather(*(bounded(r) for r in deliveries))
