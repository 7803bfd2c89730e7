"""Reading this process's memory and its container's limit (``runtime.memory``).

Covers: sizes written as Kubernetes and people write them, refusing anything else; the
cgroup v2 file (``max`` means none), the v1 file (its huge "unlimited" value means none),
neither present; the RSS of this very process read from /proc, checked against its own
``VmRSS`` line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime import memory


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("268435456", 268_435_456),
        ("256Mi", 256 * 1024**2),
        ("1Gi", 1024**3),
        ("1G", 10**9),
        ("512M", 512 * 10**6),
        ("64MB", 64 * 10**6),
        ("1.5Gi", int(1.5 * 1024**3)),
        (" 10Ki ", 10 * 1024),
        ("0", 0),
    ],
)
def test_sizes_are_read_as_kubernetes_writes_them(text: str, size: int) -> None:
    assert memory.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "Mi", "-1Mi", "12 apples", "1e9", "0x10"])
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        memory.parse_size(text)


def test_the_cgroup_limit_is_read_from_v2_then_v1(tmp_path: Path) -> None:
    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    assert memory.cgroup_limit(v2, v1) is None  # neither file: not in a limited cgroup
    v1.write_text("536870912\n")
    assert memory.cgroup_limit(v2, v1) == 512 * 1024**2
    v1.write_text("9223372036854771712\n")  # v1's "unlimited"
    assert memory.cgroup_limit(v2, v1) is None
    v2.write_text("max\n")
    assert memory.cgroup_limit(v2, v1) is None
    v2.write_text("268435456\n")
    assert memory.cgroup_limit(v2, v1) == 256 * 1024**2


def test_rss_is_this_process_resident_size() -> None:
    status = Path("/proc/self/status").read_text()
    (line,) = [x for x in status.splitlines() if x.startswith("VmRSS:")]
    vm_rss = int(line.split()[1]) * 1024
    measured = memory.rss()
    assert measured is not None
    assert abs(measured - vm_rss) < 16 * 1024**2  # read a moment apart
    assert memory.rss(Path("/nonexistent/statm")) is None
