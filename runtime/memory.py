"""This process's memory: resident size, the container's limit, sizes written as people do.

Read from ``/proc`` and the cgroup files on each call (a few microseconds; a service samples
it about once a second), so a limit changed under a running container is seen. Linux only:
elsewhere the readers return ``None`` and memory-based decisions are off.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
UNLIMITED = 1 << 60
"""cgroup v1 reports "no limit" as a huge number (about 2^63 rounded to pages)."""

CGROUP_V2 = Path("/sys/fs/cgroup/memory.max")
CGROUP_V1 = Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?|[kKMGT]B?)?\s*$")
_UNITS = {
    "": 1,
    "K": 1000, "KB": 1000, "k": 1000, "kB": 1000,
    "M": 1000**2, "MB": 1000**2,
    "G": 1000**3, "GB": 1000**3,
    "T": 1000**4, "TB": 1000**4,
    "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4,
}  # fmt: skip


def parse_size(text: str) -> int:
    """Bytes in ``text``: a number with an optional Kubernetes-style (``512Mi``, ``1G``) or
    ``MB`` suffix; ValueError otherwise."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (e.g. 512Mi, 1G, 268435456)")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit or ""])


def rss(statm: Path = Path("/proc/self/statm")) -> int | None:
    """Resident set size of this process in bytes (what the OOM killer and cgroups count)."""
    try:
        return int(statm.read_text().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return None


def cgroup_limit(v2: Path = CGROUP_V2, v1: Path = CGROUP_V1) -> int | None:
    """The memory limit of this process's container (cgroup v2, else v1), None without one."""
    for path in (v2, v1):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            continue
        return value if 0 < value < UNLIMITED else None
    return None
