"""The long soak's plan: its options (the load, the system, the budgets) and when each fault comes.

Kept apart from the run (``long.py``) because the verdicts (``verdicts.py``: budgets, slope
limit, slope window) and the per-phase books (``phases.py``: the faults as they happened) read
it too, and the run reads them: the plan is what they share.

Load is signed GitHub pushes at ``--rate`` for ``--duration`` seconds::

    | warm-up | fault | quiet | fault | quiet | ... | all-together | quiet | slope window |

The faults of ``--faults`` come in turn, with equal quiet load between them, then
``all-together``, all before the last ``--slope-window`` seconds (600: "the last 10
minutes"), which are quiet load only: a fault's backlog legitimately holds memory, and a leak
is memory that keeps growing once nothing is wrong. The quiet after ``all-together`` lets its
backlog drain before that window opens.

Shape: ``--objects`` GitRepositories (1000) and as many Receivers; Receiver ``r`` names
objects ``r`` and ``r+1``, so each delivery targets 2 objects and each object is named by two
Receivers (deliveries for one object arrive through two hooks and coalesce, as a push into a
monorepo watched by two Flux objects does), ``2 * rate / objects`` requests per object per
second (1/s at the defaults). The reconcilers run with their **default flags**: only what the
system needs to exist is passed (config, kubeconfig, namespace, NATS URL, metrics port, the
CDEvents NATS stream and HTTP sink); ack wait, coalescing, QPS/burst, outbox size and log
format are theirs. The receiver gets ``--retry-after 1`` (how fast the driver, a provider
that retries, comes back) and ``--stream-replicas 3`` (the cluster).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.soak.faulting import FAULTS
from bench.soak.system import SoakSettings

ALL_TOGETHER = "all-together"
DUPLICATE_WINDOW = 3600.0  # the receiver's default --stream-duplicate-window


@dataclass(frozen=True)
class LongOptions:
    """One long soak's knobs (``tests/soak/test_soak_memory.py`` uses small ones)."""

    duration: float = 1800.0
    rate: float = 500.0
    objects: int = 1000
    targets: int = 2
    faults: tuple[str, ...] = tuple(FAULTS)
    scale: float = 1.0  # multiplies every fault's length
    warmup: float = 60.0
    slope_window: float = 600.0
    every: float = 5.0
    reconciler_budget_mib: float = 250.0
    receiver_budget_mib: float = 100.0
    slope_limit: float = 0.5  # MiB/min
    settle_timeout: float = 600.0
    current_within: float = 120.0
    quiet: float = 5.0
    retry_deadline: float = 180.0
    junk_fraction: float = 0.02
    workdir: Path | None = None

    def settings(self) -> SoakSettings:
        """The system: as many Receivers as objects, the reconcilers' own defaults."""
        return SoakSettings(
            receivers=self.objects,
            objects=self.objects,
            targets=self.targets,
            nats="cluster",
            ack_wait=None,
            coalesce_window=None,
            qps=None,
            burst=None,
            cdevents_outbox=None,
            log_format=None,
        )

    def budget(self, process: str) -> float | None:
        """The RSS budget of a fluxrelay process (None: not judged, e.g. a nats-server)."""
        if process == "receiver":
            return self.receiver_budget_mib
        if process.startswith("reconciler"):
            return self.reconciler_budget_mib
        return None


@dataclass(frozen=True)
class Slot:
    """One fault of the schedule: when it starts (s after the load's start) and how long."""

    fault: str
    start: float
    length: float


def schedule(options: LongOptions) -> list[Slot]:
    """The faults in turn (``all-together`` last) with equal quiet gaps, all of them done
    before the slope window; ValueError when they do not fit."""
    unknown = [f for f in options.faults if f not in FAULTS]
    if unknown:
        raise ValueError(f"unknown fault(s) {unknown}; known: {', '.join(FAULTS)}")
    if options.duration > DUPLICATE_WINDOW - 600:
        raise ValueError(
            f"--duration {options.duration:g} s: the redelivery after the drain would fall "
            f"outside the receiver's {DUPLICATE_WINDOW:g} s duplicate window"
        )
    names = [f for f in options.faults if f != ALL_TOGETHER]
    names += [ALL_TOGETHER] if ALL_TOGETHER in options.faults else []
    lengths = [FAULTS[name].length * options.scale for name in names]
    span = options.duration - options.slope_window - options.warmup
    gap = (span - sum(lengths)) / max(len(names), 1)
    if span <= 0 or gap < 0:
        raise ValueError(
            f"{len(names)} faults ({sum(lengths):g} s) do not fit in {options.duration:g} s "
            f"after {options.warmup:g} s of warm-up and before the {options.slope_window:g} s "
            f"slope window; lengthen --duration or shorten with --scale"
        )
    out: list[Slot] = []
    start = options.warmup
    for name, length in zip(names, lengths, strict=True):
        out.append(Slot(name, start, length))
        start += length + gap
    return out


@dataclass
class FaultWindow:
    """A fault as it happened (seconds after the load's start)."""

    fault: str
    planned_start_s: float
    start_s: float
    end_s: float
    notes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
