"""The reconciler's command line and message decoding, as tables: flags and FLUXRELAY_*
variables (flags win), durable names per shard, nak delays per delivery, invalid values
refused with the option named; messages that are not envelopes get a permanent reason."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli import parser, settings_from
from reconciler.consuming import decode
from reconciler.errors import PermanentError
from reconciler.settings import ConsumerSettings
from schemas.receivers import ConfigError
from tests.reconciler.conftest import make_envelope, message_headers
from tests.support.kubeapi import REPO_ROOT


def settings(argv: list[str], env: dict[str, str] | None = None) -> Any:
    return settings_from(parser().parse_args(argv), env or {})


@pytest.mark.parametrize(
    ("argv", "env", "check"),
    [
        pytest.param(
            [],
            {},
            lambda s: (
                (s.durable, s.shard, s.patch.qps, s.patch.burst)
                == ("fluxrelay-reconciler", None, 50.0, 100)
            ),
            id="defaults-like-flux",
        ),
        pytest.param(
            ["--shard", "team.a"],
            {},
            lambda s: s.durable == "fluxrelay-reconciler-team_a",
            id="shard-durable",
        ),
        pytest.param([], {"FLUXRELAY_SHARD": "b"}, lambda s: s.shard == "b", id="env"),
        pytest.param(
            [],
            {"FLUXRELAY_SHARD": ""},
            lambda s: (s.shard, s.durable) == (None, "fluxrelay-reconciler"),
            id="empty-shard-is-no-shard",
        ),
        pytest.param(
            ["--shard", "flag"],
            {"FLUXRELAY_SHARD": "env"},
            lambda s: s.shard == "flag",
            id="flag-wins",
        ),
        pytest.param(
            ["--durable", "mine", "--shard", "x"],
            {},
            lambda s: s.durable == "mine",
            id="durable-override",
        ),
        pytest.param(
            ["--no-cross-namespace-refs"],
            {},
            lambda s: not s.allow_cross_namespace,
            id="no-cross-namespace",
        ),
        pytest.param(
            [],
            {"FLUXRELAY_NO_CROSS_NAMESPACE_REFS": "false"},
            lambda s: s.allow_cross_namespace,
            id="cross-namespace-env-false",
        ),
        pytest.param(
            ["--backoff", "1,5,30", "--max-deliver", "4"],
            {},
            lambda s: (s.consumer.backoff, s.consumer.max_deliver) == ((1.0, 5.0, 30.0), 4),
            id="backoff-list",
        ),
        pytest.param(
            ["--metrics-listen", "127.0.0.1:9999"],
            {},
            lambda s: (s.metrics_host, s.metrics_port) == ("127.0.0.1", 9999),
            id="metrics-listen",
        ),
        pytest.param(
            ["--kubeconfig", "/k", "--config", "/c"],
            {},
            lambda s: (s.kubeconfig, s.config) == (Path("/k"), Path("/c")),
            id="paths",
        ),
        pytest.param(
            ["--qps", "5", "--burst", "10", "--max-concurrency", "4"],
            {},
            lambda s: (s.patch.qps, s.patch.burst, s.patch.max_concurrency) == (5.0, 10, 4),
            id="api-discipline",
        ),
        pytest.param(
            ["--coalesce-window", "0.5"],
            {},
            lambda s: s.coalesce_window == 0.5,
            id="coalesce-window",
        ),
    ],
)
def test_options(argv: list[str], env: dict[str, str], check: Any) -> None:
    assert check(settings(argv, env))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["--qps", "0"], "--qps"),
        pytest.param(["--shard", "a,team=b"], "--shard"),
        pytest.param(["--shard", "a-"], "--shard"),
        pytest.param(["--shard", "abc\n"], "--shard", id="shard-trailing-newline"),
        pytest.param(["--shard", "x" * 64], "--shard"),
        pytest.param(["--burst", "many"], "--burst"),
        pytest.param(["--backoff", "1,-2"], "--backoff"),
        pytest.param(["--metrics-listen", "nope"], "HOST:PORT"),
        pytest.param(["--log-format", "xml"], "--log-format"),
        pytest.param(["--config", "/c", "--kubernetes"], "exclusive"),
        pytest.param(["--min-concurrency", "8", "--max-concurrency", "4"], "--min-concurrency"),
    ],
)
def test_invalid_options_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings(argv)


def test_the_nak_delay_follows_the_backoff_list_and_repeats_its_last_value() -> None:
    consumer = ConsumerSettings(backoff=(1.0, 2.0, 5.0))
    assert [consumer.nak_delay(n) for n in range(1, 7)] == [1.0, 2.0, 5.0, 5.0, 5.0, 5.0]


def test_the_cli_refuses_to_start_without_a_receiver_source() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "reconciler"],
        check=False,
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert b"--config FILE or --kubernetes" in done.stderr


def test_help_lists_every_option_with_its_variable() -> None:
    text = parser().format_help()
    for flag, env in (("--shard", "FLUXRELAY_SHARD"), ("--nats-url", "FLUXRELAY_NATS_URL")):
        assert flag in text
        assert env in text


GOOD = make_envelope("ns", "hook")


@pytest.mark.parametrize(
    ("headers", "data", "reason"),
    [
        pytest.param(message_headers(GOOD), b"{", "invalid_envelope", id="not-json"),
        pytest.param(message_headers(GOOD), json.dumps({**GOOD, "id": ""}).encode(),
                     "invalid_envelope", id="schema-violation"),
        pytest.param({"Content-Type": "application/json"}, json.dumps(GOOD).encode(),
                     "invalid_event", id="not-a-cloudevent"),
        pytest.param({**message_headers(GOOD), "ce-type": "dev.cdevents.change.merged.0.2.0"},
                     json.dumps(GOOD).encode(), "invalid_event", id="foreign-type"),
        pytest.param({**message_headers(GOOD), "ce-specversion": "0.3"},
                     json.dumps(GOOD).encode(), "invalid_event", id="old-specversion"),
    ],
)  # fmt: skip
def test_messages_that_are_not_envelopes_fail_for_good(
    headers: dict[str, str], data: bytes, reason: str
) -> None:
    with pytest.raises(PermanentError) as caught:
        decode(headers, data)
    assert caught.value.reason == reason


def test_a_stored_envelope_decodes() -> None:
    assert decode(message_headers(GOOD), json.dumps(GOOD).encode()) == GOOD
