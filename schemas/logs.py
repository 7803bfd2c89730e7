"""Structured logging shared by both processes: text or one JSON object per line.

It lives in ``schemas`` because log field names are part of the operational contract: an
operator follows one ``delivery_id`` from the receiver's lines to the reconciler's under the
same keys. Bodies and secrets are never passed to a logger.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

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


def setup(fmt: str = "text", level: str = "INFO") -> None:
    """Configure the root logger once at process start."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
