"""Quoting what a sender wrote, bounded: refusal reasons and log lines name the culprit
without carrying it whole.

A refusal that quotes the offending value (an unknown CDEvent type, an unsupported ref type)
is answered to the sender and logged by the receiver; quoted whole, one 3 MiB value made a
3 MiB answer and a 3 MiB log line per request, the log growing as fast as an attacker sends.
"""

from __future__ import annotations

MAX_QUOTED = 80
"""Characters of a sender's value quoted at most: enough to recognise any real type, ref or
version, short enough that a log line stays a line."""


def excerpt(value: str, limit: int = MAX_QUOTED) -> str:
    """``repr(value)`` when ``value`` is at most ``limit`` characters, else the repr of its
    first ``limit`` characters followed by how long it was. Costs ``O(limit)``, never the
    length of ``value``."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def clipped(text: str, limit: int = MAX_QUOTED) -> str:
    """``text`` itself when at most ``limit`` characters (a JSON Pointer, a path), else its
    first ``limit`` characters followed by how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"
