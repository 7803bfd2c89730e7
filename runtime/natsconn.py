"""Connecting to NATS the way both services do: one set of options, one retry loop.

nats-py reconnects an established connection by itself (``max_reconnect_attempts=-1``);
what it does not do is retry the *first* connect, which fails while NATS is still starting
(a pod scheduled before the server, a quick start racing its own nats-server). ``connect``
retries that with :mod:`runtime.backoff` until it works, logging each failure, so a service
can start before its bus and become ready when the bus is there. A NATS connection is then
reported through the three callbacks (disconnected, reconnected, error) that every caller
logs the same way and may extend (the receiver re-ensures its streams on reconnect).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError

from runtime import backoff

log = logging.getLogger(__name__)

RECONNECT_WAIT_S = 0.5
"""Between nats-py's own reconnect attempts of an established connection."""
CONNECT_TIMEOUT_S = 2.0
FIRST_CONNECT_BACKOFF = (0.2, 5.0)
"""Initial and longest delay between tries of the first connect."""


def servers(urls: str) -> list[str]:
    """The server list of a ``--nats-url`` value: comma-separated, blanks ignored."""
    return [u.strip() for u in urls.split(",") if u.strip()]


async def _log_disconnected() -> None:
    log.warning("disconnected from NATS")


async def _log_reconnected() -> None:
    log.info("reconnected to NATS")


async def _log_error(e: Exception) -> None:
    log.warning("NATS: %s", e)


async def connect(
    urls: Sequence[str],
    options: dict[str, Any],
    *,
    on_reconnected: Callable[[], Awaitable[None]] | None = None,
    on_error: Callable[[Exception], Awaitable[None]] | None = None,
    retry: bool = True,
) -> Client:
    """A connected client; with ``retry``, keeps trying until NATS answers (cancel to give up).

    ``options`` are the caller's own ``nats.connect`` arguments: credentials and TLS from
    :meth:`runtime.natsauth.NatsAuth.connect_options`, the service's ``inbox_prefix``.
    Without ``retry`` the first failure is raised (a caller with its own retry policy).
    """

    async def reconnected() -> None:
        await _log_reconnected()
        if on_reconnected is not None:
            await on_reconnected()

    delays = backoff.Backoff(*FIRST_CONNECT_BACKOFF)
    while True:
        try:
            return await nats.connect(
                servers=list(urls),
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=RECONNECT_WAIT_S,
                connect_timeout=CONNECT_TIMEOUT_S,
                disconnected_cb=_log_disconnected,
                reconnected_cb=reconnected,
                error_cb=on_error or _log_error,
                **options,
            )
        except (NatsError, OSError, TimeoutError) as e:
            if not retry:
                raise
            wait = delays.next()
            log.warning("cannot connect to NATS yet (%s); retrying in %.1fs", e, wait)
            await asyncio.sleep(wait)
