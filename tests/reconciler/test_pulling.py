"""Pull requests bounded in bytes (``reconciler.pulling``) against a real nats-server.

Covers: what is stored comes back at once even when fewer than asked for; an empty stream
waits, then times out, and a message arriving meanwhile ends the wait as soon as it is
stored; ``max_bytes`` bounds what one pull brings (a storm of large bodies cannot arrive in
one pull); a next message larger than the room is refused by the server (NoRoom) and
taken once the room allows it; every message pulled can be acknowledged as usual. Runs on
both server versions (scripts/test.sh): it depends on how the server answers pull requests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from reconciler.pulling import BoundedPull, NoRoom
from tests.reconciler.conftest import Bus

KB = 1000


@pytest.fixture
async def pull(bus: Bus) -> AsyncIterator[BoundedPull]:
    await bus.js.add_consumer(
        bus.stream.name, ConsumerConfig(durable_name="bounded", ack_policy=AckPolicy.EXPLICIT)
    )
    puller = BoundedPull(bus.nc, bus.stream.name, "bounded", pending_bytes=1 << 26)
    await puller.start()
    yield puller
    await puller.unsubscribe()


async def store(bus: Bus, n: int, size: int) -> None:
    for _ in range(n):
        await bus.js.publish(f"{bus.stream.subject_prefix}.x", b"x" * size)


async def test_what_is_stored_comes_back_at_once(bus: Bus, pull: BoundedPull) -> None:
    await store(bus, 5, 100)
    started = time.monotonic()
    msgs = await pull.fetch(128, 1 << 20, 5.0)
    assert len(msgs) == 5
    assert time.monotonic() - started < 2.0  # not the 5 s a full batch would wait for
    for msg in msgs:
        await msg.ack_sync()  # the server confirms: these are ordinary JetStream deliveries
    assert (await bus.js.consumer_info(bus.stream.name, "bounded")).num_ack_pending == 0


async def test_an_empty_stream_times_out_and_a_new_message_ends_the_wait(
    bus: Bus, pull: BoundedPull
) -> None:
    with pytest.raises(TimeoutError):
        await pull.fetch(128, 1 << 20, 0.3)

    async def later() -> None:
        await asyncio.sleep(0.3)
        await store(bus, 1, 100)

    arriving = asyncio.create_task(later())
    started = time.monotonic()
    msgs = await pull.fetch(128, 1 << 20, 5.0)
    await arriving
    assert len(msgs) == 1
    assert time.monotonic() - started < 3.0


async def test_max_bytes_bounds_what_one_pull_brings(bus: Bus, pull: BoundedPull) -> None:
    await store(bus, 50, 100 * KB)  # 5 MB stored
    msgs = await pull.fetch(128, 350 * KB, 5.0)
    assert 1 <= len(msgs) <= 3
    assert sum(len(m.data) for m in msgs) <= 350 * KB
    taken = len(msgs)
    while taken < 50:
        taken += len(await pull.fetch(128, 1 << 30, 5.0))
    assert taken == 50


async def test_a_message_larger_than_the_room_waits_for_room(bus: Bus, pull: BoundedPull) -> None:
    await store(bus, 1, 200 * KB)
    with pytest.raises(NoRoom):
        await pull.fetch(128, 50 * KB, 5.0)
    (msg,) = await pull.fetch(128, 300 * KB, 5.0)
    assert len(msg.data) == 200 * KB
    await msg.ack()
