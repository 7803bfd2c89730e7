"""Logging through the writer thread writes exactly what a direct handler writes.

``runtime.logs.setup`` moves formatting and writing off the caller's thread; operators'
parsers and the documented line formats must not notice. The same calls (arguments, context
fields, an exception, a mapping argument, a mutable argument changed right after the call)
are logged once through :func:`setup` and once through a plain ``StreamHandler`` with the
same formatter, and the bytes are compared. :func:`shutdown` writes everything queued, and
lines logged after it are still written.
"""

from __future__ import annotations

import io
import logging
import signal
from collections.abc import Callable, Iterator

import pytest

from runtime import logs


@pytest.fixture
def clean_root() -> Iterator[io.StringIO]:
    """A stream to log to; the root logger and SIGTERM disposition restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    sigterm = signal.getsignal(signal.SIGTERM)
    out = io.StringIO()
    yield out
    logs.shutdown()
    root.handlers[:] = handlers
    root.setLevel(level)
    signal.signal(signal.SIGTERM, sigterm)


def calls(log: logging.Logger) -> None:
    mutable = ["before"]
    log.info("stored %d event(s)", 2, extra={"receiver": "ns/r", "delivery_id": "d-1"})
    log.warning("plain line")
    log.info("%(a)s and %(b)s", {"a": "mapping", "b": 1})
    log.info("list %s", mutable, extra={"attempt": 3, "object": None})
    mutable.append("after")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed", extra={"code": "bad", "status": 500})
    log.debug("below the level")
    log.info({"not": "a string"})


def direct(fmt: str, when: Callable[[logging.Logger], None]) -> str:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.formatter(fmt))
    log = logging.Logger("fluxrelay.test.direct", logging.INFO)
    log.addHandler(handler)
    when(log)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_writer_thread_output_is_byte_identical(clean_root: io.StringIO, fmt: str) -> None:
    logs.setup(fmt, "INFO", clean_root)
    calls(logging.getLogger("fluxrelay.test.direct"))
    logs.shutdown()
    got = clean_root.getvalue()
    want = direct(fmt, calls)
    # Timestamps differ by when each copy ran; everything else must match byte for byte.

    def strip(line: str) -> str:
        return line.split('"level"', 1)[1] if fmt == "json" else line[23:]

    assert len(got.splitlines()) == len(want.splitlines())
    got_lines = [strip(line) for line in got.split("\n") if line.startswith(("{", "2"))]
    want_lines = [strip(line) for line in want.split("\n") if line.startswith(("{", "2"))]
    assert got_lines == want_lines
    assert "['before']" in got and "after" not in got
    assert "ValueError: boom" in got


def test_shutdown_writes_everything_and_later_lines_too(clean_root: io.StringIO) -> None:
    logs.setup("text", "INFO", clean_root)
    log = logging.getLogger("fluxrelay.test.volume")
    for n in range(5000):
        log.info("line %d", n)
    logs.shutdown()
    log.info("after shutdown")
    logs.shutdown()  # idempotent
    lines = clean_root.getvalue().splitlines()
    assert [line.rsplit(" ", 1)[1] for line in lines[:5000]] == [str(n) for n in range(5000)]
    assert lines[-1].endswith("fluxrelay.test.volume: after shutdown")


def test_setup_again_replaces_the_writer(clean_root: io.StringIO) -> None:
    logs.setup("text", "INFO", clean_root)
    logging.getLogger("a").info("first")
    logs.setup("json", "INFO", clean_root)
    logging.getLogger("b").info("second")
    logs.shutdown()
    first, second = clean_root.getvalue().splitlines()
    assert first.endswith("INFO a: first")
    assert second.startswith("{") and '"msg": "second"' in second


CONTEXT = {
    "receiver": "ns/r",
    "provider": "github",
    "delivery_id": "d-1",
    "event": "push",
    "event_id": "0123abcd",
    "status": None,
}


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_the_fast_info_line_is_the_line_a_record_would_make(
    clean_root: io.StringIO, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``logs.info`` (the receiver's per-delivery line) skips the ``LogRecord``; what it writes
    must still be what the formatter writes for a record with the same message, fields and
    time, timestamp included."""
    now = 1_780_000_000.25
    monkeypatch.setattr("runtime.logs.time.time", lambda: now)
    logs.setup(fmt, "INFO", clean_root)
    log = logging.getLogger("receiver.ingress")
    logs.info(log, "stored 1 event(s)", CONTEXT)
    log.warning("a record between two fast lines keeps its place")
    logs.info(log, "stored 2 event(s)", {**CONTEXT, "event": "tag push"})
    logs.shutdown()
    got = clean_root.getvalue().splitlines()

    record = logging.LogRecord("receiver.ingress", logging.INFO, __file__, 1, "%s", None, None)
    record.created, record.msecs = now, 250.0
    formatter = logs.formatter(fmt)
    want = []
    for message, event in (("stored 1 event(s)", "push"), ("stored 2 event(s)", "tag push")):
        record.args = (message,)
        record.__dict__.update({**CONTEXT, "event": event})
        want.append(formatter.format(record))
    assert [got[0], got[2]] == want
    assert "a record between two fast lines" in got[1]


def test_without_the_writer_the_fast_line_is_an_ordinary_record(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Tests that capture records (and the secret scan) still see the line."""
    logs.shutdown()
    with caplog.at_level(logging.INFO):
        logs.info(logging.getLogger("receiver.ingress"), "stored 1 event(s)", CONTEXT)
    [record] = caplog.records
    assert record.getMessage() == "stored 1 event(s)"
    assert record.__dict__["delivery_id"] == "d-1"
