"""Structured logging shared by both processes: text or one JSON object per line.

Both processes log through it so that field names agree: an operator follows one
``delivery_id`` from the receiver's lines to the reconciler's under the same keys. Bodies
and secrets are never passed to a logger.

Formatting and writing happen on a writer thread, not where the record is made: at the
default level the receiver logs one line per delivery, and formatting that line and writing
it to stderr cost about as much as the rest of the delivery on the event loop. The loop only
makes the record and puts it on a queue. The thread formats with the same formatters as
before, so the output is byte for byte what a direct handler writes. The queue is drained
at exit (:func:`shutdown`, also registered with ``atexit``, and SIGTERM before the process
installs its own handler exits through it), so stopping a process never drops a line.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import queue
import signal
import sys
import threading
import time
from logging.handlers import QueueHandler
from types import FrameType
from typing import Any, TextIO

CONTEXT_FIELDS = (
    "delivery_id",
    "receiver",
    "provider",
    "event",
    "status",
    "code",
    "event_id",
    "kind",
    "object",
    "chain_id",
    "attempt",
    "sink",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record with the context fields that were given."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                doc[name] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable line with ``key=value`` context appended."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(
            f"{name}={record.__dict__[name]}"
            for name in CONTEXT_FIELDS
            if record.__dict__.get(name) is not None
        )
        return f"{line} {context}" if context else line


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def formatter(fmt: str) -> logging.Formatter:
    """The formatter of ``--log-format`` (``json``, anything else is text)."""
    return JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT)


class DeferredHandler(QueueHandler):
    """Puts records on the writer's queue, leaving the formatting to the writer thread.

    The stock ``QueueHandler.prepare`` formats the whole line and copies the record on the
    caller's thread, which is the cost this module moves away. Only the message is merged
    with its arguments here (a ``%`` substitution): an argument could be a mutable object
    changed after the call, and the line must show it as it was when logged. Everything
    else (time, level, context fields, JSON, the traceback of ``exc_info``) is left for the
    writer, which reads fields fixed when the record was made.
    """

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        return record


class _Writer:
    """The queue, the writer thread and the direct handler of one :func:`setup`.

    The thread takes every record waiting, formats them and writes them with one write and
    one flush: under load that is one system call for many lines instead of one (or two)
    per line, which is what the stock ``QueueListener`` with a ``StreamHandler`` costs.
    """

    _STOP = None

    def __init__(self, handler: logging.StreamHandler[TextIO]) -> None:
        self.handler = handler
        self.queue: queue.SimpleQueue[logging.LogRecord | Line | None] = queue.SimpleQueue()
        self.json = isinstance(handler.formatter, JsonFormatter)
        self.thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            batch = [self.queue.get()]
            while len(batch) < _BATCH:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(r is None for r in batch)
            self._write([r for r in batch if r is not None])
            if stop:
                return

    def _write(self, records: list[logging.LogRecord | Line]) -> None:
        if not records:
            return
        handler = self.handler
        lines = []
        for record in records:
            if type(record) is tuple:
                lines.append(self._line(record) + handler.terminator)
                continue
            assert isinstance(record, logging.LogRecord)
            if record.levelno < handler.level:
                continue
            try:
                lines.append(handler.format(record) + handler.terminator)
            except Exception:  # a record that cannot be formatted must not stop the writer
                handler.handleError(record)
        if not lines:
            return
        with handler.lock or contextlib.nullcontext():
            try:
                handler.stream.write("".join(lines))
                handler.flush()
            except Exception:  # a closed or full stream: reported, the writer goes on
                last = records[-1]
                if isinstance(last, logging.LogRecord):
                    handler.handleError(last)

    def stop(self) -> None:
        """Write everything queued, then leave the caller to log directly."""
        self.queue.put(self._STOP)
        self.thread.join()
        # A record put after the stop marker (another thread logging during shutdown) is
        # still on the queue.
        late: list[logging.LogRecord | Line] = []
        while True:
            try:
                record = self.queue.get_nowait()
            except queue.Empty:
                break
            if record is not None:
                late.append(record)
        self._write(late)
        self.handler.flush()

    def _line(self, line: Line) -> str:
        """An INFO line of :func:`info`, as the configured formatter writes a record with
        the same message and context fields (byte for byte: ``tests/schemas/test_logs.py``)."""
        created, name, message, context = line
        seconds = int(created)
        if self.json:
            doc: dict[str, Any] = {
                "time": _local(seconds, "%Y-%m-%dT%H:%M:%S"),
                "level": "info",
                "logger": name,
                "msg": message,
            }
            for key in CONTEXT_FIELDS:
                value = context.get(key)
                if value is not None:
                    doc[key] = value
            return json.dumps(doc, default=str)
        millis = int((created - seconds) * 1000)
        text = f"{_local(seconds, '%Y-%m-%d %H:%M:%S')},{millis:03d} INFO {name}: {message}"
        fields = " ".join(
            f"{key}={context[key]}" for key in CONTEXT_FIELDS if context.get(key) is not None
        )
        return f"{text} {fields}" if fields else text


Line = tuple[float, str, str, dict[str, Any]]
"""(time, logger name, message, context fields) of an INFO line made by :func:`info`."""


@functools.lru_cache(maxsize=4)
def _local(seconds: int, fmt: str) -> str:
    """Local time of a whole second, formatted once per second (as logging's converter)."""
    return time.strftime(fmt, time.localtime(seconds))


def info(logger: logging.Logger, message: str, context: dict[str, Any]) -> None:
    """Log one INFO line with context fields, cheaply: the receiver logs one per delivery.

    With the writer running and no handler but the writer's on the root logger, the line
    goes on the writer's queue as a plain tuple: no ``LogRecord`` is made (its constructor,
    the caller lookup and the handler chain cost more per delivery than verifying and storing
    the delivery, measured with ``bench.ingress``), and the writer formats it exactly as the
    formatter would format the record. Otherwise (tests capturing records, a process that
    never called :func:`setup`) it is an ordinary ``logger.info``. ``message`` is final text
    (no ``%`` arguments), and the caller has checked ``logger.isEnabledFor(logging.INFO)``.
    """
    writer = _Current.writer
    if writer is None or logging.getLogger().handlers != _Current.handlers:
        logger.info("%s", message, extra=context)
        return
    writer.queue.put((time.time(), logger.name, message, context))


_BATCH = 512
"""Records written with one system call at most."""


class _Current:
    """The writer of the last :func:`setup` (one per process), guarded by ``lock``."""

    lock = threading.Lock()
    writer: _Writer | None = None
    handlers: list[logging.Handler] = []
    """The root logger's handlers as :func:`setup` left them."""


def setup(fmt: str = "text", level: str = "INFO", stream: TextIO | None = None) -> None:
    """Configure the root logger once at process start: records go through the writer thread.

    ``stream`` is where lines go (stderr, the processes' only log destination, by default).
    """
    shutdown()
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    with _Current.lock:
        writer = _Current.writer = _Writer(handler)
        root.handlers[:] = [DeferredHandler(writer.queue)]
        _Current.handlers = list(root.handlers)
    root.setLevel(level.upper())
    _exit_on_sigterm()


def shutdown() -> None:
    """Write every queued line and log directly from now on (idempotent, safe at exit).

    Lines logged after this (late ``atexit`` hooks, threads still running) are written on
    the caller's thread by the same handler, so they are not lost either.
    """
    with _Current.lock:
        writer, _Current.writer = _Current.writer, None
        _Current.handlers = []
        if writer is None:
            return
        root = logging.getLogger()
        root.handlers[:] = [writer.handler]
    writer.stop()


atexit.register(shutdown)


def _exit_on_sigterm() -> None:
    """Make a SIGTERM that comes before the process's own handler exit through ``atexit``.

    Both processes stop gracefully on SIGTERM once their event loop runs; before that (while
    loading configuration, connecting) the default action would kill the process with
    lines still on the queue. Only the default disposition is replaced, never a handler
    someone installed on purpose, and only from the main thread (where Python allows it).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_exit)


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)
