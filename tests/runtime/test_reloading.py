"""``runtime.reloading.FileReloader`` on real files.

Covers: an unchanged file is never reloaded; a new (mtime, size) pair is a change, either
half of it alone too; a wake-up (SIGHUP) reloads an unchanged file at once; a reload that
raises one of the caller's errors is logged with the previous content kept, reported once and
not retried until the next change; a file that disappears and comes back is reloaded; an edit
made right after ``mark()`` is seen; an error the caller did not name is not swallowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runtime.reloading import FileReloader, stamp_of

INTERVAL = 0.02
LOGGER = "tests.runtime.reloading"


class BadFile(ValueError):
    """What the test's reload raises for content it refuses."""


@dataclass
class Config:
    """The caller's side: the content in use, replaced only by a good read."""

    path: Path
    content: str = ""
    reads: int = 0
    results: list[str] = field(default_factory=list)

    def reload(self) -> None:
        self.reads += 1
        text = self.path.read_text() if self.path.exists() else None
        if text is None or text.startswith("bad"):
            raise BadFile(f"{self.path.name}: refused")
        self.content = text


@dataclass
class Running:
    config: Config
    reloader: FileReloader
    wake: asyncio.Event
    task: asyncio.Task[None]


async def eventually(check: Callable[[], bool], what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within:.0f}s: {what}")
        await asyncio.sleep(INTERVAL)


async def polls(n: int = 5) -> None:
    """Let the reloader look at the file ``n`` times."""
    await asyncio.sleep(INTERVAL * n)


@pytest.fixture
async def started(tmp_path: Path) -> AsyncIterator[Callable[..., Running]]:
    runs: list[Running] = []

    def start(errors: tuple[type[Exception], ...] = (BadFile,), *, first: str = "one") -> Running:
        path = tmp_path / "config.yaml"
        path.write_text(first)
        config = Config(path)
        reloader = FileReloader(
            path, INTERVAL, what="settings", errors=errors, logger=logging.getLogger(LOGGER)
        )
        reloader.mark()
        config.reload()
        wake = asyncio.Event()

        async def run() -> None:
            await reloader.run(config.reload, wake=wake, on_result=config.results.append)

        running = Running(config, reloader, wake, asyncio.create_task(run()))
        runs.append(running)
        return running

    yield start
    for running in runs:
        running.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await running.task


def swap_in(path: Path, content: str, mtime_ns: int) -> None:
    """Replace the file in one step (as a ConfigMap update does), with a chosen mtime: the
    reloader never sees a half-made change."""
    staged = path.with_suffix(".staged")
    staged.write_text(content)
    os.utime(staged, ns=(mtime_ns, mtime_ns))
    staged.replace(path)


async def test_an_unchanged_file_is_not_reloaded(started: Callable[..., Running]) -> None:
    run = started()
    await polls(10)
    assert run.config.reads == 1 and run.config.results == []


@pytest.mark.parametrize(
    ("content", "same_mtime"),
    [
        pytest.param("two, longer", False, id="new-content"),
        pytest.param("two, longer", True, id="size-changed-mtime-kept"),
        pytest.param("two", False, id="same-size-new-mtime"),
    ],
)
async def test_a_new_mtime_or_size_is_a_change(
    started: Callable[..., Running], content: str, same_mtime: bool
) -> None:
    run = started()
    path = run.config.path
    before = stamp_of(path)
    assert before is not None
    swap_in(path, content, before[0] if same_mtime else before[0] + 1_000_000_000)
    await eventually(lambda: run.config.content == content, "the reload")
    assert run.config.results == ["ok"]
    await polls()
    assert run.config.reads == 2  # once per change, not once per poll


async def test_a_wake_up_reloads_an_unchanged_file_at_once(
    started: Callable[..., Running],
) -> None:
    run = started()
    run.wake.set()
    await eventually(lambda: run.config.reads == 2, "the forced reload")
    assert run.config.results == ["ok"]
    assert not run.wake.is_set()  # taken: one wake-up, one reload
    await polls()
    assert run.config.reads == 2


async def test_a_bad_edit_is_logged_once_and_the_previous_content_kept(
    started: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER)
    run = started()
    run.config.path.write_text("bad: [unclosed")
    await eventually(lambda: run.config.results == ["error"], "the failed reload")
    await polls()
    assert run.config.content == "one"
    assert run.config.reads == 2  # not retried while the file stays as it is
    [line] = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert line == "reload failed, keeping the previous settings: config.yaml: refused"
    run.config.path.write_text("fixed")
    await eventually(lambda: run.config.content == "fixed", "the next change")
    assert run.config.results == ["error", "ok"]


async def test_a_file_that_disappears_and_returns_is_reloaded(
    started: Callable[..., Running],
) -> None:
    run = started()
    run.config.path.unlink()
    await eventually(lambda: run.config.results == ["error"], "the missing file reported")
    assert run.config.content == "one"
    run.config.path.write_text("back")
    await eventually(lambda: run.config.content == "back", "the file read again")
    assert run.config.results == ["error", "ok"]


async def test_an_edit_right_after_mark_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("one")
    reloader = FileReloader(
        path, INTERVAL, what="settings", errors=(BadFile,), logger=logging.getLogger(LOGGER)
    )
    reloader.mark()
    path.write_text("edited during the first read")
    assert reloader.changed()
    assert not reloader.changed()


async def test_an_error_the_caller_did_not_name_is_not_swallowed(
    started: Callable[..., Running],
) -> None:
    run = started(errors=(KeyError,))
    run.config.path.write_text("bad")
    with pytest.raises(BadFile):
        await asyncio.wait_for(run.task, 10)
    assert run.config.results == []
