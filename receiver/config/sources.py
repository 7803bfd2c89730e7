"""Where Receivers come from: a YAML file (reloaded on change or SIGHUP) or, in
``receiver.config.kubernetes``, the Kubernetes API. A source hands complete tables to
``apply``; the swap is one assignment, so requests in flight keep the Receiver they looked up.

Both sources serve every Receiver they can and report the others (:class:`UnservedReport`):
an API server accepts a Receiver whose Secret is missing or whose token is short, and
notification-controller keeps serving its other Receivers meanwhile, so one such object in
a file must not stop the process either. A file that is not YAML, or holds a document that is
not a named Secret or Receiver, still fails the start (and a reload keeps the previous
table): that file is not the Receiver list it is meant to be, and serving part of it would
hide the mistake.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from receiver.config.spec import ReceiverSpec, resolve, unserved_reason
from receiver.config.table import ReceiverTable, Unserved
from receiver.errors import ConfigError
from receiver.metrics import IngressMetrics
from runtime.reloading import FileReloader
from schemas.receivers import Documents, read_documents

log = logging.getLogger(__name__)

Apply = Callable[[ReceiverTable], None]

REASONS = ("secret_missing", "secret_unreadable", "invalid", "weak_token", "collision")
"""Every reason a known Receiver may go unserved; each is exported (0 when none)."""


def build_lenient(found: Documents) -> tuple[ReceiverTable, list[Unserved]]:
    """The table of every Receiver of ``found`` that can be served, and the others with
    their reason. A name defined twice serves neither definition: which one was meant is
    not knowable (``kubectl apply`` would keep the last, silently)."""
    unserved = [Unserved(key, "invalid", message) for key, message in found.invalid.items()]
    counts: dict[str, int] = {}
    for _, d in found.receivers:
        counts[d.key] = counts.get(d.key, 0) + 1
    specs: list[ReceiverSpec] = []
    for where, d in found.receivers:
        at = f"{where} (Receiver {d.key})"
        if counts[d.key] > 1:
            unserved.append(Unserved(d.key, "invalid", f"{at}: defined {counts[d.key]} times"))
            counts[d.key] = -1  # reported once
            continue
        if counts[d.key] < 0:
            continue
        secret_error = found.secret_errors.get((d.namespace, d.secret_name or ""))
        if d.secret_name is not None and secret_error is not None:
            unserved.append(Unserved(d.key, "invalid", f"{at}: {secret_error}"))
            continue
        try:
            specs.append(resolve(d, found.secrets, at))
        except ConfigError as e:
            unserved.append(Unserved(d.key, unserved_reason(e), str(e)))
    table, more = ReceiverTable.build_lenient(specs)
    return table, unserved + more


class UnservedReport:
    """Logs which Receivers are not served (once per change, by name and reason: never a
    token or a hook path) and exports their count per reason."""

    def __init__(self, metrics: IngressMetrics | None, logger: logging.Logger = log) -> None:
        self.metrics = metrics
        self.log = logger
        """The source's own logger: operators filter on it."""
        self.current: dict[str, tuple[str, str]] = {}

    def __call__(self, table: ReceiverTable, unserved: list[Unserved]) -> None:
        now = {u.key: (u.reason, u.message) for u in unserved}
        for key, (reason, message) in sorted(now.items()):
            if self.current.get(key) != (reason, message):
                self.log.warning("not serving Receiver %s (%s): %s", key, reason, message)
        served = {spec.key for spec in table}
        for key in sorted(self.current.keys() - now.keys()):
            if key in served:
                self.log.info("serving Receiver %s again", key)
        self.current = now
        if self.metrics is None:
            return
        counts = dict.fromkeys(REASONS, 0)
        for u in unserved:
            counts[u.reason] = counts.get(u.reason, 0) + 1
        for reason, count in counts.items():
            self.metrics.receivers_unserved.labels(reason).set(count)
        self.metrics.receivers.set(len(table))


class ReceiverSource(Protocol):
    async def load(self) -> ReceiverTable:
        """The first table; raise ConfigError to refuse to start."""

    async def run(self, apply: Apply, reload: asyncio.Event) -> None:
        """Keep the table current until cancelled; ``reload`` is set on SIGHUP."""

    async def close(self) -> None:
        """Release connections (idempotent)."""


class FileSource:
    """Receivers from a YAML file; a Receiver that cannot be served is reported and the
    others served; a file that cannot be read as Receivers keeps the previous table."""

    def __init__(
        self,
        path: Path,
        interval: float,
        on_reload: Callable[[str], None],
        metrics: IngressMetrics | None = None,
    ) -> None:
        self.path = path
        self.interval = interval
        self._on_reload = on_reload
        self._reloader = FileReloader(
            path, interval, what="receivers", errors=(ConfigError,), logger=log
        )
        self.report = UnservedReport(metrics)

    def _build(self) -> ReceiverTable:
        table, unserved = build_lenient(read_documents(self.path, lenient=True))
        self.report(table, unserved)
        return table

    async def load(self) -> ReceiverTable:
        self._reloader.mark()
        return self._build()

    async def close(self) -> None:
        """Nothing to release: the file is read and closed on each load."""

    async def run(self, apply: Apply, reload: asyncio.Event) -> None:
        def rebuild() -> None:
            table = self._build()
            apply(table)
            log.info(
                "reloaded %d receiver(s) from %s, %d not served",
                len(table),
                self.path,
                len(self.report.current),
            )

        await self._reloader.run(rebuild, wake=reload, on_result=self._on_reload)
