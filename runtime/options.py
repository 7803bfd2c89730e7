"""Option tables: how both services turn flags and ``FLUXRELAY_*`` variables into settings.

Each service declares its options once, as a table of :class:`Option` (flag, variable, help,
and where the parsed value goes). The same table renders ``--help``, fills the settings tree
and generates ``docs/configuration.md``, so the three cannot drift. A flag wins over its
variable and a variable over the settings' default; an empty variable counts as unset, so a
manifest can blank a value out without removing the variable.

The receiver and the reconciler run the same way (parse, build the settings, set up logging,
serve on uvloop, report a configuration error with exit code 2), connect to the same NATS and
log the same way, so that tail and the options they share are written here once and are
spelled the same in both (:data:`NATS_URL`, :data:`NATS_AUTH_FLAGS`, :data:`METRICS_LISTEN`,
:data:`LOG_OPTIONS`...). Each service's ``cli`` keeps only its own table and subcommands.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from runtime import logs
from runtime.natsauth import NATS_AUTH_OPTIONS
from schemas.receivers import ConfigError

Sections = dict[str, dict[str, Any]]
"""Keyword arguments collected per settings section, :data:`TOP` being the root object."""
Apply = Callable[[Sections, str], None]
"""Stores one raw value into the sections; raises ValueError (or ConfigError) to refuse it."""
Number = TypeVar("Number", int, float)

TOP = "top"
"""Section of the root settings object's own fields."""
NATS_AUTH = "nats_auth"
"""Section of :class:`runtime.natsauth.NatsAuth`'s raw strings."""
EPILOG = "Every option can also be set by the environment variable shown."


@dataclass(frozen=True)
class Option:
    """One setting as the command line and the environment spell it."""

    flag: str
    env: str
    help: str
    apply: Apply
    is_bool: bool = False
    """A flag without a value; the variable takes 1/true/yes/on (anything else is false)."""
    metavar: str | None = None
    repeat: bool = False
    """Flag may be given several times; the variable holds whitespace-separated values."""

    @property
    def dest(self) -> str:
        """The attribute argparse stores the flag's value under."""
        return self.flag.lstrip("-").replace("-", "_")


def into(key: str, parse: Callable[[str], Any] = str, section: str = TOP) -> Apply:
    """Stores ``parse(raw)`` as ``key`` of ``section``."""

    def apply(sections: Sections, raw: str) -> None:
        sections[section][key] = parse(raw)

    return apply


def host_port(prefix: str) -> Apply:
    """Stores ``HOST:PORT`` as ``<prefix>_host`` and ``<prefix>_port`` of the root settings;
    an empty host (``:9090``) listens everywhere, brackets around an IPv6 host are dropped."""

    def apply(sections: Sections, raw: str) -> None:
        host, sep, port = raw.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"expected HOST:PORT, got {raw!r}")
        sections[TOP][f"{prefix}_host"] = host.strip("[]") or "0.0.0.0"
        sections[TOP][f"{prefix}_port"] = int(port)

    return apply


def boolean(raw: str) -> bool:
    """What a variable of an :attr:`Option.is_bool` option means: lenient, as shells write it."""
    return raw.lower() in ("1", "true", "yes", "on")


def positive(parse: Callable[[str], Number]) -> Callable[[str], Number]:
    """``parse``, refusing zero, negative values and NaN: counts, rates and timeouts that
    cannot work at zero."""

    def parse_positive(raw: str) -> Number:
        value = parse(raw)
        if not value > 0:
            raise ValueError("must be positive")
        return value

    return parse_positive


def non_negative(raw: str) -> float:
    """Seconds where 0 means "off" rather than "at once"."""
    value = float(raw)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def seconds_list(raw: str) -> tuple[float, ...]:
    """Comma-separated non-negative seconds (a delay per attempt); empty parts are skipped."""
    values = tuple(float(part) for part in raw.split(",") if part.strip())
    if not values or any(v < 0 for v in values):
        raise ValueError("expected comma-separated non-negative seconds")
    return values


NATS_URL = Option("--nats-url", "FLUXRELAY_NATS_URL",
                  "NATS server URL(s), comma-separated (default nats://127.0.0.1:4222)",
                  into("nats_url"), metavar="URL")  # fmt: skip
NATS_AUTH_FLAGS: tuple[Option, ...] = tuple(
    Option(o.flag, o.env, o.help, into(o.key, section=NATS_AUTH), metavar=o.metavar)
    for o in NATS_AUTH_OPTIONS
)
"""TLS and credentials of the NATS connection; collected into :data:`NATS_AUTH` as strings,
since :meth:`runtime.natsauth.NatsAuth.from_strings` checks them together."""
METRICS_LISTEN = Option("--metrics-listen", "FLUXRELAY_METRICS_LISTEN",
                        "metrics and probes listener (default 0.0.0.0:9090)",
                        host_port("metrics"), metavar="HOST:PORT")  # fmt: skip
LABEL_SELECTOR = Option("--label-selector", "FLUXRELAY_LABEL_SELECTOR",
                        "only Receivers matching this selector", into("label_selector"),
                        metavar="SEL")  # fmt: skip
LOG_OPTIONS: tuple[Option, ...] = (
    Option("--log-format", "FLUXRELAY_LOG_FORMAT", "text or json (default text)",
           into("log_format"), metavar="FORMAT"),
    Option("--log-level", "FLUXRELAY_LOG_LEVEL", "log level (default INFO)",
           into("log_level"), metavar="LEVEL"),
)  # fmt: skip


def kubeconfig(help: str) -> Option:
    """``--kubeconfig``; the services describe the in-cluster fallback in their own words."""
    return Option("--kubeconfig", "FLUXRELAY_KUBECONFIG", help, into("kubeconfig", Path),
                  metavar="FILE")  # fmt: skip


def stream_subject_prefix(section: str) -> Option:
    """``--stream-subject-prefix``: where the receiver stores deliveries and the reconciler
    reads them, so both must take the same value."""
    return Option("--stream-subject-prefix", "FLUXRELAY_STREAM_SUBJECT_PREFIX",
                  "subject prefix of stored deliveries (default fluxrelay.events)",
                  into("subject_prefix", section=section), metavar="PREFIX")  # fmt: skip


def dead_subject_prefix(section: str) -> Option:
    """``--dead-subject-prefix``: the dead-letter subjects both services publish to."""
    return Option("--dead-subject-prefix", "FLUXRELAY_DEAD_SUBJECT_PREFIX",
                  "subject prefix of dead letters (default fluxrelay.dead)",
                  into("dead_subject_prefix", section=section), metavar="PREFIX")  # fmt: skip


class Logged(Protocol):
    """What :meth:`Command.main` needs of a settings tree before serving it."""

    @property
    def log_format(self) -> str: ...

    @property
    def log_level(self) -> str: ...


SettingsT = TypeVar("SettingsT", bound=Logged)


@dataclass(frozen=True)
class Command(Generic[SettingsT]):
    """One service's command line: its option table, how the collected values become its
    settings, and what serving them means."""

    prog: str
    description: str
    options: tuple[Option, ...]
    build: Callable[[Sections], SettingsT]
    """The settings tree from the collected sections; checks what spans several options."""
    serve: Callable[[SettingsT], Coroutine[Any, Any, None]]
    """Runs until stopped; imports the service's serving code only when called, so
    ``--help`` and the subcommands stay quick."""
    sections: tuple[str, ...] = ()
    """Sections besides :data:`TOP` and :data:`NATS_AUTH` that options write to."""
    subcommands: Mapping[str, Callable[[list[str]], int]] = field(default_factory=dict)
    """Commands selected by the first argument, given the rest; they return the exit code."""
    require: Callable[[SettingsT], None] | None = None
    """A start-time check (raising ConfigError) that tests building settings can skip."""
    own_messages: bool = False
    """True: a ConfigError an option raises is shown as written (it names its option or
    problem); False: every refused value is shown as ``FLAG / VAR: invalid value RAW``."""

    def parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(
            prog=self.prog, description=self.description, epilog=EPILOG
        )
        for opt in self.options:
            text = f"{opt.help} [env {opt.env}]"
            if opt.is_bool:
                parser.add_argument(
                    opt.flag, action="store_const", const="true", default=None, help=text
                )
            elif opt.repeat:
                parser.add_argument(
                    opt.flag, metavar=opt.metavar, action="append", default=None, help=text
                )
            else:
                parser.add_argument(opt.flag, metavar=opt.metavar, default=None, help=text)
        return parser

    def collect(self, args: argparse.Namespace, environ: Mapping[str, str]) -> Sections:
        """Every option's value, flags winning over variables; a refused value is a
        ConfigError naming the option."""
        sections: Sections = {name: {} for name in (TOP, NATS_AUTH, *self.sections)}
        for opt in self.options:
            raw = getattr(args, opt.dest)
            if raw is None:
                raw = environ.get(opt.env)
                if opt.repeat and raw:
                    raw = raw.split()
            if raw is None or raw == "":
                continue
            try:
                for value in raw if isinstance(raw, list) else [raw]:
                    opt.apply(sections, value)
            except ValueError as e:  # ConfigError is one too
                if self.own_messages and isinstance(e, ConfigError):
                    raise
                raise ConfigError(f"{opt.flag} / {opt.env}: invalid value {raw!r}") from e
        if sections[TOP].get("log_format", "text") not in ("text", "json"):
            raise ConfigError("--log-format: text or json")
        return sections

    def settings(self, args: argparse.Namespace, environ: Mapping[str, str]) -> SettingsT:
        """Flags win over variables, variables over defaults."""
        return self.build(self.collect(args, environ))

    def main(self, argv: Sequence[str] | None = None) -> int:
        """The process: a subcommand, or parse, check, log and serve. A configuration error,
        found at parsing or when serving starts, exits 2 with one line on stderr."""
        argv = list(sys.argv[1:] if argv is None else argv)
        if argv and argv[0] in self.subcommands:
            return self.subcommands[argv[0]](argv[1:])
        args = self.parser().parse_args(argv)
        try:
            settings = self.settings(args, os.environ)
            if self.require is not None:
                self.require(settings)
        except ConfigError as e:
            print(f"{self.prog}: {e}", file=sys.stderr)
            return 2
        logs.setup(settings.log_format, settings.log_level)
        try:
            run(self.serve(settings))
        except ConfigError as e:
            # Lines still queued for the log writer come first, as they happened first.
            logs.shutdown()
            print(f"{self.prog}: invalid configuration: {e}", file=sys.stderr)
            return 2
        finally:
            logs.shutdown()
        return 0


def run(coro: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when installed (5-15% more throughput measured), else asyncio."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)
