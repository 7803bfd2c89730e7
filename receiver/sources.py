"""Where Receivers come from: a YAML file (reloaded on change or SIGHUP) or, in
``receiver.watching``, the Kubernetes API. A source hands complete tables to ``apply``; the
swap is one assignment, so requests in flight keep the Receiver they looked up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from receiver.errors import ConfigError
from receiver.receivers import load_file
from receiver.registry import ReceiverTable

log = logging.getLogger(__name__)

Apply = Callable[[ReceiverTable], None]


class ReceiverSource(Protocol):
    async def load(self) -> ReceiverTable:
        """The first table; raise ConfigError to refuse to start."""

    async def run(self, apply: Apply, reload: asyncio.Event) -> None:
        """Keep the table current until cancelled; ``reload`` is set on SIGHUP."""

    async def close(self) -> None:
        """Release connections (idempotent)."""


class FileSource:
    """Receivers from a YAML file; a bad edit keeps the previous table and is logged."""

    def __init__(self, path: Path, interval: float, on_reload: Callable[[str], None]) -> None:
        self.path = path
        self.interval = interval
        self._on_reload = on_reload
        self._stamp: tuple[int, int] | None = None

    def _current_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    async def load(self) -> ReceiverTable:
        self._stamp = self._current_stamp()
        return ReceiverTable.build(load_file(self.path))

    async def close(self) -> None:
        """Nothing to release: the file is read and closed on each load."""

    async def run(self, apply: Apply, reload: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reload.wait(), timeout=self.interval)
            forced = reload.is_set()
            reload.clear()
            stamp = self._current_stamp()
            if not forced and stamp == self._stamp:
                continue
            self._stamp = stamp
            try:
                table = ReceiverTable.build(load_file(self.path))
            except ConfigError as e:
                log.error("reload failed, keeping the previous receivers: %s", e)
                self._on_reload("error")
                continue
            apply(table)
            log.info("reloaded %d receiver(s) from %s", len(table), self.path)
            self._on_reload("ok")
