"""NATS message headers as bytes: checked and encoded once, not rebuilt on every publish.

nats-py encodes a header dict on every publish: per header it strips the key, checks it with
a regular expression, and rewrites CR/LF in the value with ``str.translate`` (a dictionary
lookup per character). On the receiver's hot path that was about a tenth of the CPU spent
per delivery (profiled with py-spy, see the README's performance notes). Here headers that
never change for a Receiver or a stream are encoded once, and per-message lines are built
from values that are safe by construction (hex ids, timestamps, percent-encoded text).

Unlike nats-py, a value holding CR or LF is refused rather than silently rewritten: every
header this project sends is its own, so such a value is a bug to surface, not to patch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

VERSION_LINE = b"NATS/1.0\r\n"
END = b"\r\n"
KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""An RFC 7230 token: what NATS (and nats-py) accept as a header name."""


class HeaderError(ValueError):
    """A header that cannot be written into a NATS header block."""


def line(key: str, value: str) -> bytes:
    """One ``Key: value`` line; the value is stripped (as nats-py does) and must be one line."""
    if not KEY.fullmatch(key):
        raise HeaderError(f"invalid header name {key!r}")
    text = value.strip()
    if "\r" in text or "\n" in text:
        raise HeaderError(f"header {key}: value spans lines")
    try:
        return f"{key}: {text}\r\n".encode()
    except UnicodeEncodeError as e:
        raise HeaderError(f"header {key}: value is not valid Unicode") from e


def lines(headers: Mapping[str, str]) -> bytes:
    """The lines of ``headers``, in order, without the version line or the final blank line."""
    return b"".join(line(key, value) for key, value in headers.items())


def block(header_lines: bytes) -> bytes:
    """A complete header block (version line, the lines, the blank line)."""
    return VERSION_LINE + header_lines + END


def parse(header_lines: bytes) -> dict[str, str]:
    """The mapping ``header_lines`` encodes (the inverse of :func:`lines` for one value per
    key): used where the lines must go through nats-py's own header encoding."""
    out: dict[str, str] = {}
    for raw in header_lines.decode().split("\r\n"):
        if raw:
            key, sep, value = raw.partition(":")
            if not sep:
                raise HeaderError(f"malformed header line {raw!r}")
            out[key] = value.strip()
    return out
