"""Shared fixtures: a real nats-server per test session and per test, and a guard that
fails any test leaving asyncio tasks behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.natsd import NATS_SERVER, NATS_SERVER_VARIABLE, NatsServer, nats_version

pytest_plugins = ["tests.support.kube_fixtures", "tests.support.secret_scan"]


def pytest_report_header() -> str:
    """Name the nats-server of this run: results on 2.9 and on the newest are different facts."""
    version = ".".join(map(str, nats_version()))
    return f"nats-server: {NATS_SERVER} v{version} (choose with ${NATS_SERVER_VARIABLE})"


@pytest.fixture(scope="session")
def nats_session() -> Iterator[NatsServer]:
    """One nats-server for tests that only need a working bus (isolated by stream names)."""
    server = NatsServer(name="session").start()
    yield server
    server.cleanup()


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    """A private nats-server a test may stop, kill and restart."""
    server = NatsServer().start()
    yield server
    server.cleanup()


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves tasks running: they hide unawaited work and flaky teardown."""
    before = asyncio.all_tasks()
    yield
    await asyncio.sleep(0)
    leaked = [
        t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()
    ]
    for task in leaked:
        task.cancel()
    assert not leaked, f"leaked asyncio tasks: {[t.get_name() for t in leaked]}"
