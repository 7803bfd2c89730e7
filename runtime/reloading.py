"""Re-reading a configuration file when it changes, or when asked (SIGHUP).

Both services can take their Receivers from a file that an operator (or a mounted ConfigMap)
edits in place. Watching it with inotify would miss a ConfigMap's symlink swap and needs a
platform API; a ``stat`` every couple of seconds is cheap and sees every kind of replacement.
A change is a new ``(mtime, size)`` pair: the modification time alone misses an edit within
the file system's timestamp granularity that changes the length, and the pair is what a
rewrite always moves. A missing file is a stamp too (``None``), so its return is a change.

What a reload does is the caller's. When it raises one of the caller's configuration errors
the error is logged and the previous content stays in use: a bad edit must not take down a
process that is serving the good one. The stamp is updated either way, so a broken file is
reported once, not once per poll, and read again at its next change (or on SIGHUP).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

Stamp = tuple[int, int] | None
"""``(mtime in ns, size)`` of the file, ``None`` while it cannot be read."""


def stamp_of(path: Path) -> Stamp:
    """The file's current stamp."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


class FileReloader:
    """Polls one file and calls a reload function when it changed or when ``wake`` is set."""

    def __init__(
        self,
        path: Path,
        interval: float,
        *,
        what: str,
        errors: tuple[type[Exception], ...],
        logger: logging.Logger,
    ) -> None:
        """``what`` names the content in the failure line ("keeping the previous <what>");
        ``errors`` are what a reload raises for a bad file; ``logger`` is the caller's."""
        self.path = path
        self.interval = interval
        self._what = what
        self._errors = errors
        self._log = logger
        self._stamp: Stamp = None

    def mark(self) -> None:
        """Remember the file as it is now: call it just before the first read, so that an
        edit made during that read is seen as a change."""
        self._stamp = stamp_of(self.path)

    def changed(self) -> bool:
        """Whether the stamp moved since the last look (and remember the new one)."""
        stamp = stamp_of(self.path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return True

    async def run(
        self,
        reload: Callable[[], None],
        *,
        wake: asyncio.Event | None = None,
        on_result: Callable[[str], None] | None = None,
    ) -> NoReturn:
        """Every ``interval`` seconds, or at once when ``wake`` is set, call ``reload`` if the
        file changed (always when woken). ``on_result`` hears ``"ok"`` or ``"error"``."""
        while True:
            forced = await self._wait(wake)
            if not self.changed() and not forced:
                continue
            try:
                reload()
            except self._errors as e:
                self._log.error("reload failed, keeping the previous %s: %s", self._what, e)
                if on_result is not None:
                    on_result("error")
                continue
            if on_result is not None:
                on_result("ok")

    async def _wait(self, wake: asyncio.Event | None) -> bool:
        """Sleep one interval, or less if woken; whether it was a wake-up."""
        if wake is None:
            await asyncio.sleep(self.interval)
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=self.interval)
        forced = wake.is_set()
        wake.clear()
        return forced
