"""The session-wide secret scan (``tests.support.secret_scan``) itself: which constants it
takes for secrets, that it finds a secret in a log record (message, extra field, exception)
or a log file, and that it is installed in this very session and sees the receiver's logs.
The scan of the whole session's logs runs at its end and fails the run on any hit."""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path

from tests.support import secret_scan
from tests.support.ingress import Ingress, path_of, receiver_docs, start_ingress
from tests.support.natsd import NatsServer
from tests.support.secret_scan import SecretScan, is_secret_name

PLANTED_TOKEN = "planted-secret-3e9d"


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("x", logging.INFO, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_secret_names() -> None:
    for name in ("TOKEN", "NEW_TOKEN", "BEARER_TOKEN", "SECRET", "PASSWORD", "HMAC_KEY", "CREDS"):
        assert is_secret_name(name), name
    for name in ("SEEDS", "KID", "TOKENIZER", "AUDIENCE", "JSON", "auth"):
        assert not is_secret_name(name), name


def test_module_constants_and_secret_data_are_collected() -> None:
    module = types.ModuleType("tests.fake_module")
    module.OLD_TOKEN = "old-tok-1234"  # type: ignore[attr-defined]
    module.SECRET = {"token": "secret-data-token", "audience": "https://public", "auth": "hmac"}  # type: ignore[attr-defined]
    module.SECRETS = {"a": {"hmac-key": "nested-hmac-key"}}  # type: ignore[attr-defined]
    module.SHORT_TOKEN = "abc"  # type: ignore[attr-defined]
    module.SEEDS = ["not a secret"]  # type: ignore[attr-defined]
    scan = SecretScan()
    scan.collect_module(module)
    assert set(scan.secrets) == {"old-tok-1234", "secret-data-token", "nested-hmac-key"}
    assert scan.secrets["old-tok-1234"] == "tests.fake_module.OLD_TOKEN"


def test_a_secret_is_found_in_messages_extras_exceptions_and_files(tmp_path: Path) -> None:
    scan = SecretScan()
    scan.register(PLANTED_TOKEN, "PLANTED_TOKEN")
    scan.capture(record("token is %s", PLANTED_TOKEN))
    scan.capture(record("clean", receiver=f"ns/{PLANTED_TOKEN}"))
    try:
        raise ValueError(PLANTED_TOKEN)
    except ValueError:
        failing = record("failed")
        failing.exc_info = sys.exc_info()
    scan.capture(failing)
    scan.capture(record("nothing to see"))
    log = tmp_path / "process.jsonl"  # not *.log: the session scan would rightly flag it
    log.write_text('{"msg": "x", "token": "' + PLANTED_TOKEN + '"}\n')
    clean = tmp_path / "clean.jsonl"
    clean.write_text("all good\n")
    leaks = scan.leaks([log, clean])
    assert [leak.where for leak in leaks] == ["log record of 'x'"] * 3 + [str(log)]
    assert all(leak.secret == "PLANTED_TOKEN" for leak in leaks)
    assert PLANTED_TOKEN not in repr(leaks), "a report names the secret, never shows it"


async def test_the_scan_is_installed_and_sees_this_sessions_receiver_logs(
    nats_session: NatsServer,
) -> None:
    token = "runtime-generated-7f3a"
    secret_scan.register_secret(token, "test_secret_scan runtime token")
    assert token in secret_scan.SCAN.secrets
    assert secret_scan.SCAN.secrets.get(PLANTED_TOKEN) == f"{__name__}.PLANTED_TOKEN", (
        "this module's constants were collected"
    )
    before = len(secret_scan.SCAN.records)
    ing: Ingress = await start_ingress(nats_session.url, receiver_docs("gh", "github", token))
    try:
        resp = await ing.client.post(
            path_of("gh", token),
            data=b"{}",
            headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 64},
        )
        assert resp.status == 400
    finally:
        await ing.close()
    new = secret_scan.SCAN.records[before:]
    assert any(name == "receiver.ingress" and "rejected" in text for name, text in new), (
        "the rejection's INFO line reached the session scan"
    )
    assert not any(token in text for _, text in new)
