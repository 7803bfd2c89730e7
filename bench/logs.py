"""Per-record cost of fluxrelay's log formatters, and what the caller pays with each handler.

The receiver logs one ``stored`` line per delivery at the default level, so the cost of a
record is part of the cost of a delivery. For the receiver's ``stored`` line (the same
message and context fields as ``receiver/ingress.py`` logs) in both formats this measures:

* ``format``: the formatter alone (what the writer thread spends per line);
* ``direct``: ``logger.info`` through a ``StreamHandler`` writing to a file, the handler
  fluxrelay used before (all of it on the event loop);
* ``deferred``: ``logger.info`` through ``runtime.logs.setup`` (record made and queued on
  the caller's thread; timing stops when the call returns), then the wall time until the
  writer thread has written everything (``drain``, per record).

Each figure is the median of ``--runs`` runs of ``--records`` records, in microseconds per
record, with the spread (min-max) of the runs. Run: ``python -m bench.logs``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from runtime import logs

CONTEXT = {
    "receiver": "flux-system/github-receiver",
    "provider": "github",
    "delivery_id": "0b4c1e3a-6f7d-11ef-8a0e-3c7a9d2f1b44",
    "event": "push",
    "event_id": "5f1c2d3e4a5b6c7d8e9f0a1b2c3d4e5f",
}


def make_record(n: int) -> logging.LogRecord:
    return logging.LogRecord(
        "receiver.ingress", logging.INFO, __file__, n, "stored %d event(s)", (1,), None
    )


def per_record(runs: int, records: int, one_run: Callable[[], float]) -> tuple[float, float, float]:
    """(median, min, max) over ``runs`` of ``one_run`` (seconds), in µs per record."""
    times = sorted(one_run() * 1e6 / records for _ in range(runs))
    return statistics.median(times), times[0], times[-1]


def bench_format(fmt: str, records: int) -> float:
    formatter = logs.formatter(fmt)
    batch = []
    for n in range(records):
        record = make_record(n)
        record.__dict__.update(CONTEXT)
        batch.append(record)
    t0 = time.perf_counter()
    for record in batch:
        formatter.format(record)
    return time.perf_counter() - t0


def bench_direct(fmt: str, records: int, folder: Path) -> float:
    with (folder / f"direct-{fmt}.log").open("w") as out:
        handler = logging.StreamHandler(out)
        handler.setFormatter(logs.formatter(fmt))
        log = logging.Logger("receiver.ingress", logging.INFO)
        log.addHandler(handler)
        t0 = time.perf_counter()
        for _ in range(records):
            log.info("stored %d event(s)", 1, extra=CONTEXT)
        return time.perf_counter() - t0


def bench_deferred(fmt: str, records: int, folder: Path, drains: list[float]) -> float:
    with (folder / f"deferred-{fmt}.log").open("w") as out:
        logs.setup(fmt, "INFO", out)
        log = logging.getLogger("receiver.ingress")
        t0 = time.perf_counter()
        for _ in range(records):
            log.info("stored %d event(s)", 1, extra=CONTEXT)
        caller = time.perf_counter() - t0
        logs.shutdown()
        drains.append(time.perf_counter() - t0)
    return caller


def measure(
    fmt: str, runs: int, records: int, folder: Path
) -> dict[str, tuple[float, float, float]]:
    drains: list[float] = []
    rows = {
        "format": per_record(runs, records, lambda: bench_format(fmt, records)),
        "direct": per_record(runs, records, lambda: bench_direct(fmt, records, folder)),
        "deferred (caller)": per_record(
            runs, records, lambda: bench_deferred(fmt, records, folder, drains)
        ),
    }
    drained = sorted(d * 1e6 / records for d in drains)
    rows["deferred (drain)"] = (statistics.median(drained), drained[0], drained[-1])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--records", type=int, default=20000)
    args = parser.parse_args()
    runs, records = args.runs, args.records
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    print(f"µs per record, median (min-max) of {runs} runs x {records} records")
    with tempfile.TemporaryDirectory(prefix="fluxrelay-bench-logs-") as tmp:
        folder = Path(tmp)
        for fmt in ("text", "json"):
            for name, (median, low, high) in measure(fmt, runs, records, folder).items():
                print(f"{fmt:5} {name:18} {median:6.2f}  ({low:.2f}-{high:.2f})")
    root.handlers[:], _ = saved
    root.setLevel(saved[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
