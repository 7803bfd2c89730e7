"""The reconciler's error tree: whether a failure is worth another delivery.

Every stage (decoding, targeting, patching) raises one of two errors and the consumer loop
alone maps them to JetStream: a :class:`TemporaryError` becomes ``nak(delay)`` (the message
comes back later), a :class:`PermanentError` becomes ``term`` plus a dead letter naming the
``reason``. Nothing else decides, so the policy can be read in one place (``consuming.py``).
"""

from __future__ import annotations

from typing import Any


class ReconcilerError(Exception):
    """Base of the reconciler's own errors."""

    reason: str

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
        """Short machine-readable cause; becomes the last token of a dead-letter subject."""


class TemporaryError(ReconcilerError):
    """Worth retrying later (API 429/5xx/unreachable, configuration not loaded yet)."""

    def __init__(self, message: str, *, reason: str = "temporary", delay: float = 1.0) -> None:
        super().__init__(message, reason=reason)
        self.delay = delay
        """Seconds before the message should be tried again (from ``Retry-After`` when given)."""


class Conflict(TemporaryError):
    """409 for a request made on condition of a resource version the object no longer has:
    someone changed it since it was last seen. ``current``: its metadata as read since, when
    the caller read it (``reconciler.patching``), to decide again from."""

    def __init__(self, message: str, *, current: dict[str, Any] | None = None) -> None:
        super().__init__(message, reason="conflict", delay=0.0)
        self.current = current


class PermanentError(ReconcilerError):
    """No redelivery can help (invalid envelope, object not found, forbidden reference)."""

    def __init__(self, message: str, *, reason: str = "permanent") -> None:
        super().__init__(message, reason=reason)
