"""The option-table framework both CLIs are built on (``runtime.options``), on a small table.

Covers: a flag wins over its variable and a variable over the default, an empty variable is
unset; boolean variables' spellings; repeatable options from flags and from a
whitespace-separated variable; a refused value named by flag and variable, or shown as the
option's own ConfigError when the command says so; HOST:PORT, positive numbers (NaN refused),
non-negative seconds and second lists; the log format checked for every command; ``--help``
showing each variable; and ``main``: subcommands, exit code 2 with one line for a
configuration error (at parsing, in the start-time check, or raised while serving), logging
set up from the settings, 0 after serving.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest

from runtime import logs, options
from runtime.options import (
    LOG_OPTIONS,
    METRICS_LISTEN,
    NATS_AUTH,
    NATS_AUTH_FLAGS,
    NATS_URL,
    TOP,
    Command,
    Option,
    Sections,
    boolean,
    into,
    non_negative,
    positive,
    seconds_list,
)
from schemas.receivers import ConfigError


@dataclass(frozen=True)
class Settings:
    top: dict[str, Any]
    nats_auth: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)
    log_format: str = "text"
    log_level: str = "INFO"


def _words(sections: Sections, raw: str) -> None:
    if raw == "refused":
        raise ConfigError(f"--word {raw}: the option's own message")
    sections["extra"].setdefault("words", []).append(raw)


OPTIONS: tuple[Option, ...] = (
    NATS_URL,
    *NATS_AUTH_FLAGS,
    METRICS_LISTEN,
    *LOG_OPTIONS,
    Option("--count", "FLUXRELAY_COUNT", "a count", into("count", positive(int)), metavar="N"),
    Option("--on", "FLUXRELAY_ON", "a switch", into("on", boolean), is_bool=True),
    Option("--word", "FLUXRELAY_WORDS", "repeatable", _words, metavar="W", repeat=True),
)


def build(sections: Sections) -> Settings:
    top = dict(sections[TOP])
    log = {k: top.pop(k) for k in ("log_format", "log_level") if k in top}
    return Settings(top, sections[NATS_AUTH], sections["extra"], **log)


def command(**overrides: Any) -> Command[Settings]:
    async def serve(settings: Settings) -> None:
        pass

    kwargs: dict[str, Any] = {
        "prog": "fluxrelay-test",
        "description": "A test command.",
        "options": OPTIONS,
        "build": build,
        "serve": serve,
        "sections": ("extra",),
        **overrides,
    }
    return Command(**kwargs)


def settings(argv: list[str], env: dict[str, str] | None = None, **overrides: Any) -> Settings:
    cmd = command(**overrides)
    return cmd.settings(cmd.parser().parse_args(argv), env or {})


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        pytest.param([], {}, {}, id="nothing-given-leaves-the-defaults"),
        pytest.param(["--count", "3"], {}, {"count": 3}, id="flag"),
        pytest.param([], {"FLUXRELAY_COUNT": "4"}, {"count": 4}, id="variable"),
        pytest.param(["--count", "3"], {"FLUXRELAY_COUNT": "4"}, {"count": 3}, id="flag-wins"),
        pytest.param([], {"FLUXRELAY_COUNT": ""}, {}, id="empty-variable-is-unset"),
        pytest.param(["--on"], {}, {"on": True}, id="boolean-flag"),
        pytest.param([], {"FLUXRELAY_ON": "Yes"}, {"on": True}, id="boolean-variable-yes"),
        pytest.param([], {"FLUXRELAY_ON": "off"}, {"on": False}, id="boolean-variable-off"),
        pytest.param([], {"FLUXRELAY_ON": "2"}, {"on": False}, id="boolean-variable-other"),
        pytest.param(
            ["--metrics-listen", "[::1]:9999"],
            {},
            {"metrics_host": "::1", "metrics_port": 9999},
            id="host-port-ipv6",
        ),
        pytest.param(
            [],
            {"FLUXRELAY_METRICS_LISTEN": ":8080"},
            {"metrics_host": "0.0.0.0", "metrics_port": 8080},
            id="host-port-empty-host-listens-everywhere",
        ),
        pytest.param(
            ["--nats-url", "nats://a:4222,nats://b:4222"],
            {},
            {"nats_url": "nats://a:4222,nats://b:4222"},
            id="nats-url",
        ),
    ],
)
def test_flags_win_over_variables_and_variables_over_defaults(
    argv: list[str], env: dict[str, str], expected: dict[str, Any]
) -> None:
    assert settings(argv, env).top == expected


def test_nats_auth_flags_are_collected_as_strings_for_natsauth() -> None:
    got = settings(["--nats-token-file", "/t"], {"FLUXRELAY_NATS_TLS_CA": "/ca"})
    assert got.nats_auth == {"token_file": "/t", "tls_ca": "/ca"}


@pytest.mark.parametrize(
    ("argv", "env", "words"),
    [
        pytest.param(["--word", "a", "--word", "b"], {}, ["a", "b"], id="flag-given-twice"),
        pytest.param([], {"FLUXRELAY_WORDS": " a  b\nc "}, ["a", "b", "c"], id="variable-split"),
        pytest.param(["--word", "a"], {"FLUXRELAY_WORDS": "b c"}, ["a"], id="flags-win"),
    ],
)
def test_repeatable_options_take_several_values(
    argv: list[str], env: dict[str, str], words: list[str]
) -> None:
    assert settings(argv, env).extra == {"words": words}


@pytest.mark.parametrize(
    ("argv", "env", "own_messages", "message"),
    [
        pytest.param(
            ["--count", "0"],
            {},
            False,
            "^--count / FLUXRELAY_COUNT: invalid value '0'$",
            id="value-error-names-flag-and-variable",
        ),
        pytest.param(
            [],
            {"FLUXRELAY_COUNT": "x"},
            True,
            "^--count / FLUXRELAY_COUNT: invalid value 'x'$",
            id="value-error-from-the-variable",
        ),
        pytest.param(
            ["--metrics-listen", "nope"],
            {},
            False,
            "^--metrics-listen / FLUXRELAY_METRICS_LISTEN: invalid value 'nope'$",
            id="config-error-named-by-the-option",
        ),
        pytest.param(
            ["--metrics-listen", "nope"],
            {},
            True,
            "^expected HOST:PORT, got 'nope'$",
            id="config-error-shown-as-written",
        ),
        pytest.param(
            ["--word", "ok", "--word", "refused"],
            {},
            True,
            "^--word refused: the option's own message$",
            id="repeatable-own-message",
        ),
        pytest.param(
            ["--word", "ok", "--word", "refused"],
            {},
            False,
            r"^--word / FLUXRELAY_WORDS: invalid value \['ok', 'refused'\]$",
            id="repeatable-named-with-all-values",
        ),
        pytest.param(
            ["--log-format", "xml", "--count", "2"],
            {},
            False,
            "^--log-format: text or json$",
            id="log-format-checked-for-every-command",
        ),
    ],
)
def test_refused_values_name_the_option(
    argv: list[str], env: dict[str, str], own_messages: bool, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        settings(argv, env, own_messages=own_messages)


@pytest.mark.parametrize(
    ("parse", "raw", "expected"),
    [
        pytest.param(positive(int), "3", 3, id="positive-int"),
        pytest.param(positive(int), "0", None, id="positive-int-zero"),
        pytest.param(positive(int), "1.5", None, id="positive-int-not-int"),
        pytest.param(positive(float), "0.5", 0.5, id="positive-float"),
        pytest.param(positive(float), "-1", None, id="positive-float-negative"),
        pytest.param(positive(float), "nan", None, id="positive-float-nan"),
        pytest.param(non_negative, "0", 0.0, id="non-negative-zero"),
        pytest.param(non_negative, "-0.1", None, id="non-negative-negative"),
        pytest.param(seconds_list, "1, 2,,5", (1.0, 2.0, 5.0), id="seconds-list"),
        pytest.param(seconds_list, ",", None, id="seconds-list-empty"),
        pytest.param(seconds_list, "1,-2", None, id="seconds-list-negative"),
    ],
)
def test_value_parsers(parse: Callable[[str], Any], raw: str, expected: Any) -> None:
    if expected is None:
        with pytest.raises(ValueError):
            parse(raw)
    else:
        assert parse(raw) == expected


def test_help_shows_every_option_with_its_variable() -> None:
    text = command().parser().format_help()
    for opt in OPTIONS:
        assert opt.flag in text
        assert opt.env in text
    assert text.rstrip().endswith(options.EPILOG)


class Recorded:
    """Stands in for logging setup and the event loop, so ``main`` runs in-process."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[Any] = []
        monkeypatch.setattr(logs, "setup", lambda *a: self.calls.append(("setup", a)))
        monkeypatch.setattr(logs, "shutdown", lambda: self.calls.append("shutdown"))
        monkeypatch.setattr(options, "run", self.run)
        for opt in OPTIONS:
            monkeypatch.delenv(opt.env, raising=False)
        monkeypatch.setenv("FLUXRELAY_LOG_LEVEL", "debug")

    def run(self, coro: Coroutine[Any, Any, None]) -> None:
        self.calls.append("run")
        with pytest.raises(StopIteration):
            coro.send(None)


def test_main_sets_up_logging_from_the_settings_and_serves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorded = Recorded(monkeypatch)
    served: list[Settings] = []

    async def serve(settings: Settings) -> None:
        served.append(settings)

    assert command(serve=serve).main(["--log-format", "json", "--count", "2"]) == 0
    assert served[0].top == {"count": 2}
    assert recorded.calls == [("setup", ("json", "debug")), "run", "shutdown"]


def test_main_runs_a_subcommand_with_the_remaining_arguments() -> None:
    seen: list[list[str]] = []

    def sub(argv: list[str]) -> int:
        seen.append(argv)
        return 7

    assert command(subcommands={"sub": sub}).main(["sub", "--x", "y"]) == 7
    assert seen == [["--x", "y"]]


def raise_config_error(message: str) -> Callable[..., Any]:
    def fail(*args: Any) -> Any:
        raise ConfigError(message)

    return fail


def serving_fails(settings: Settings) -> Coroutine[Any, Any, None]:
    async def serve() -> None:
        raise ConfigError("receiver x: no secret")

    return serve()


@pytest.mark.parametrize(
    ("argv", "overrides", "stderr", "served"),
    [
        pytest.param(
            ["--count", "-1"],
            {},
            "fluxrelay-test: --count / FLUXRELAY_COUNT: invalid value '-1'\n",
            False,
            id="refused-value",
        ),
        pytest.param(
            [],
            {"require": raise_config_error("either --a or --b is required")},
            "fluxrelay-test: either --a or --b is required\n",
            False,
            id="start-time-check",
        ),
        pytest.param(
            [],
            {"serve": serving_fails},
            "fluxrelay-test: invalid configuration: receiver x: no secret\n",
            True,
            id="refused-while-serving",
        ),
    ],
)
def test_a_configuration_error_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    overrides: dict[str, Any],
    stderr: str,
    served: bool,
) -> None:
    recorded = Recorded(monkeypatch)
    assert command(**overrides).main(argv) == 2
    assert capsys.readouterr().err == stderr
    assert ("run" in recorded.calls) is served


def test_an_unknown_flag_is_argparse_s_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        command().main(["--nope"])
    assert exited.value.code == 2
    assert "fluxrelay-test: error: unrecognized arguments: --nope" in capsys.readouterr().err
