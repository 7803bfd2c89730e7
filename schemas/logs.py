"""Structured logging shared by both processes: text or one JSON object per line.

It lives in ``schemas`` because log field names are part of the operational contract: an
operator follows one ``delivery_id`` from the receiver's lines to the reconciler's under the
same keys. Bodies and secrets are never passed to a logger.

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
import json
import logging
import queue
import signal
import sys
import threading
from logging.handlers import QueueHandler, QueueListener
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
    """The queue, the writer thread and the direct handler of one :func:`setup`."""

    def __init__(self, handler: logging.Handler) -> None:
        self.handler = handler
        self.queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self.listener = QueueListener(self.queue, handler)
        self.listener.start()

    def stop(self) -> None:
        """Write everything queued, then leave the caller to log directly."""
        self.listener.stop()
        # A record put between the listener's sentinel and the switch back to the direct
        # handler (another thread logging during shutdown) is still on the queue.
        while True:
            try:
                record = self.queue.get_nowait()
            except queue.Empty:
                break
            self.handler.handle(record)
        self.handler.flush()


class _Current:
    """The writer of the last :func:`setup` (one per process), guarded by ``lock``."""

    lock = threading.Lock()
    writer: _Writer | None = None


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
    root.setLevel(level.upper())
    _exit_on_sigterm()


def shutdown() -> None:
    """Write every queued line and log directly from now on (idempotent, safe at exit).

    Lines logged after this (late ``atexit`` hooks, threads still running) are written on
    the caller's thread by the same handler, so they are not lost either.
    """
    with _Current.lock:
        writer, _Current.writer = _Current.writer, None
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
