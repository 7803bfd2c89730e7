"""A pytest plugin that fails the session when any secret a test used shows up in a log.

Secrets are every string constant of a test module whose name says it is one (a word ``TOKEN``,
``SECRET``, ``PASSWORD``... including the string values of such dicts), the suite's
default token, whatever a test or helper made at run time and passed to
:func:`register_secret`, and every token and hook digest the session computes a hook path from
(``receiver.config.hooks.hook_digest`` is wrapped: the receiver computes one per Receiver it loads,
the tests one per path they call, so no Receiver of any test escapes the scan; for Receivers
that sign nothing the digest is the credential). Logs are every record any logger emits
during the session (the root logger is set to INFO, the processes' default level, for the
session) and every ``*.log`` file written under pytest's temporary folders or passed to
:func:`register_log_file` (subprocess logs). The scan runs at the end of the session; a hit
is printed (where, which secret by name, never the value) and the exit status becomes 1.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from receiver.config import hooks, spec

SECRET_WORDS = frozenset(
    {"TOKEN", "TOKENS", "SECRET", "SECRETS", "PASSWORD", "PASSWORDS", "PASSWD", "CREDS"}
)
"""A constant is a secret when a word of its name (split at ``_``) is one of these, or its
name ends in ``HMAC_KEY``/``API_KEY``."""
MIN_LENGTH = 6
"""Shorter values would match ordinary text (and no test secret is that short)."""
DEFAULT_SECRETS = {"tests.support.ingress default token": "s3cr3t-s3cr3t-s3cr3t"}
THIRD_PARTY_LOGS = frozenset({"registry.log"})
"""Log files of other programs the tests run, not scanned: the distribution registry prints
its configured notification headers, which carry the test's token by that test's design."""
MAX_CAPTURED = 200 * 1024 * 1024
"""Bytes of rendered log text kept for the scan; beyond it the scan says it was partial."""

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


@dataclass
class Leak:
    where: str
    secret: str
    """The secret's name (never its value)."""


@dataclass
class SecretScan:
    """Collected secrets and captured log text of one session."""

    secrets: dict[str, str] = field(default_factory=dict)
    """value -> where it was defined."""
    digests: dict[str, str] = field(default_factory=dict)
    """hook digest -> whose; found by a pattern, not one substring search per digest."""
    records: list[tuple[str, str]] = field(default_factory=list)
    """(logger name, rendered text) of every record."""
    log_files: set[Path] = field(default_factory=set)
    captured: int = 0
    partial: bool = False

    def register(self, value: str | bytes, name: str) -> None:
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        text = text.strip()
        if len(text) >= MIN_LENGTH:
            self.secrets.setdefault(text, name)

    def collect_module(self, module: ModuleType) -> None:
        for attr, value in vars(module).items():
            if not is_secret_name(attr):
                continue
            for text in _strings(value):
                self.register(text, f"{module.__name__}.{attr}")

    def capture(self, record: logging.LogRecord) -> None:
        if self.captured > MAX_CAPTURED:
            self.partial = True
            return
        text = render(record)
        self.captured += len(text)
        self.records.append((record.name, text))

    def leaks(self, extra_files: Iterable[Path] = ()) -> list[Leak]:
        found: list[Leak] = []
        for logger, text in self.records:
            found += self._found_in(text, f"log record of {logger!r}")
        for path in sorted({*self.log_files, *extra_files}):
            try:
                text = path.read_text("utf-8", "replace")
            except OSError:
                continue
            found += self._found_in(text, str(path))
        return found

    def _found_in(self, text: str, where: str) -> list[Leak]:
        found = [Leak(where, name) for value, name in self.secrets.items() if value in text]
        found += [
            Leak(where, self.digests[run])
            for run in set(_HEX_RUN.findall(text.lower()))
            if run in self.digests
        ]
        return found


def is_secret_name(name: str) -> bool:
    upper = name.upper()
    words = set(upper.split("_"))
    return bool(SECRET_WORDS & words) or upper.endswith(("HMAC_KEY", "API_KEY"))


def _strings(value: Any) -> list[str]:
    """The strings of a secret constant; in a dict (a Secret's data), only the values under
    keys that name a secret themselves (``token``, ``hmac-key``...; not ``audience``)."""
    if isinstance(value, str | bytes):
        return [value.decode("utf-8", "replace") if isinstance(value, bytes) else value]
    if isinstance(value, dict):
        return [
            v
            for key, item in value.items()
            if isinstance(item, dict) or is_secret_name(str(key).replace("-", "_"))
            for v in _strings(item)
        ]
    if isinstance(value, list | tuple | set | frozenset):
        return [v for item in value for v in _strings(item)]
    return []


def render(record: logging.LogRecord) -> str:
    """Everything a formatter could print: message, extra fields, exception, stack."""
    try:
        parts = [record.getMessage()]
    except Exception:  # a broken format string still shows its parts
        parts = [str(record.msg), repr(record.args)]
    parts += [f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD]
    if record.exc_info and record.exc_info[1] is not None:
        parts.append(logging.Formatter().formatException(record.exc_info))
    if record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(record.stack_info)
    return "\n".join(parts)


SCAN = SecretScan()
for _name, _value in DEFAULT_SECRETS.items():
    SCAN.register(_value, _name)

_HEX_RUN = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")
_hook_digest = hooks.hook_digest


def _recorded_hook_digest(token: bytes, name: str, namespace: str) -> str:
    digest = _hook_digest(token, name, namespace)
    SCAN.digests.setdefault(digest, f"hook digest of Receiver {namespace}/{name}")
    SCAN.register(token, f"token of Receiver {namespace}/{name}")
    return digest


hooks.hook_digest = _recorded_hook_digest
spec.hook_digest = _recorded_hook_digest  # type: ignore[attr-defined]  # bound at import


def register_secret(value: str | bytes, name: str = "registered at run time") -> None:
    """Add a secret made at run time (generated key, seed, token) to the scan."""
    SCAN.register(value, name)


def register_log_file(path: Path) -> None:
    """Scan this file at the end of the session too (wherever it was written)."""
    SCAN.log_files.add(path)


class _Capture(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        SCAN.capture(record)


_HANDLER = _Capture(level=logging.NOTSET)
_LEAKS = pytest.StashKey[list[Leak]]()


def pytest_sessionstart(session: pytest.Session) -> None:
    root = logging.getLogger()
    root.addHandler(_HANDLER)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    seen: set[str] = set()
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and module.__name__ not in seen:
            seen.add(module.__name__)
            SCAN.collect_module(module)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    logging.getLogger().removeHandler(_HANDLER)
    files: list[Path] = []
    factory = getattr(session.config, "_tmp_path_factory", None)
    basetemp = getattr(factory, "_basetemp", None) if factory is not None else None
    if basetemp is not None and Path(basetemp).is_dir():
        files = [
            p
            for p in Path(basetemp).rglob("*.log")
            if p.is_file() and p.name not in THIRD_PARTY_LOGS
        ]
    leaks = SCAN.leaks(files)
    session.config.stash[_LEAKS] = leaks
    if leaks and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    leaks = config.stash.get(_LEAKS, [])
    name = "secret scan"
    if leaks:
        terminalreporter.section(f"{name}: SECRETS FOUND IN LOGS", sep="=", red=True)
        unique = sorted({(leak.secret, leak.where) for leak in leaks})
        for secret, where in unique[:50]:
            terminalreporter.line(f"{secret} appears in {where}")
    else:
        terminalreporter.line(
            f"{name}: {len(SCAN.secrets)} secret(s) checked against {len(SCAN.records)} log "
            f"record(s) and the test log files: none found"
            + (" (log capture was partial)" if SCAN.partial else "")
        )
