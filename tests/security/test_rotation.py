"""Token rotation without downtime: a Secret's ``previous-token`` is honoured until
``previous-token-expires``, both as the old hook path (Flux derives the path from the token)
and as the old key or value, for HMAC and token-equality providers alike; after the deadline
the old path is 404 and the old signature 400, with no reload. Use of the previous token is
logged once and counted. Malformed rotation keys fail at load."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from receiver.config.rotation import verify
from receiver.config.spec import specs_from_documents
from receiver.config.table import ReceiverTable
from receiver.errors import ConfigError
from receiver.providers import PROVIDERS
from receiver.providers.base import Request
from tests.support.ingress import Ingress, hmac_hex, path_of, receiver_docs, start_ingress
from tests.support.natsd import NatsServer

NEW_TOKEN = "rot-new-7d1f0c93"
OLD_TOKEN = "rot-old-41b2e8aa"
WRONG_TOKEN = "rot-wrong-0000-0000"
PAD = "0123456789abcdef"
"""Makes the colliding tokens below long enough to be served."""
DEADLINE = "2030-01-01T00:00:00Z"
BEFORE = datetime(2029, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
AFTER = datetime(2030, 1, 1, 0, 0, 0, tzinfo=UTC).timestamp()
ROTATING = {"previous-token": OLD_TOKEN, "previous-token-expires": DEADLINE}
FIXTURES = Path(__file__).parent.parent / "receiver" / "fixtures"
GITHUB_BODY = b'{"ref": "refs/heads/main"}'
GITLAB_BODY = (FIXTURES / "gitlab_push.json").read_bytes()
DOCKERHUB_BODY = b'{"repository": {"repo_name": "team/app"}, "push_data": {"tag": "1"}}'


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def docs() -> list[dict[str, Any]]:
    return (
        receiver_docs("gh", "github", NEW_TOKEN, extra_secret=ROTATING)
        + receiver_docs("gl", "gitlab", NEW_TOKEN, extra_secret=ROTATING)
        + receiver_docs("dh", "dockerhub", NEW_TOKEN, extra_secret=ROTATING)
    )


@pytest.fixture
async def rotating(nats_session: NatsServer) -> AsyncIterator[tuple[Ingress, Clock]]:
    ing = await start_ingress(nats_session.url, docs())
    clock = Clock(BEFORE)
    ing.state.table = ReceiverTable.build(specs_from_documents(docs(), "test"), clock=clock)
    yield ing, clock
    await ing.close()


async def github(ing: Ingress, path_token: str, key: str, delivery: str) -> int:
    resp = await ing.client.post(
        path_of("gh", path_token),
        data=GITHUB_BODY,
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": "sha256=" + hmac_hex(key, GITHUB_BODY),
        },
    )
    return resp.status


async def gitlab(ing: Ingress, path_token: str, token: str, delivery: str) -> int:
    resp = await ing.client.post(
        path_of("gl", path_token),
        data=GITLAB_BODY,
        headers={
            "Content-Type": "application/json",
            "X-Gitlab-Event": "Push Hook",
            "X-Gitlab-Token": token,
            "X-Gitlab-Event-UUID": delivery,
        },
    )
    return resp.status


CASES = [
    pytest.param(NEW_TOKEN, NEW_TOKEN, 202, 202, id="new-path-new-key"),
    pytest.param(NEW_TOKEN, OLD_TOKEN, 202, 400, id="new-path-old-key"),
    pytest.param(OLD_TOKEN, OLD_TOKEN, 202, 404, id="old-path-old-key"),
    pytest.param(OLD_TOKEN, NEW_TOKEN, 202, 404, id="old-path-new-key"),
    pytest.param(NEW_TOKEN, WRONG_TOKEN, 400, 400, id="new-path-wrong-key"),
    pytest.param(OLD_TOKEN, WRONG_TOKEN, 400, 404, id="old-path-wrong-key"),
]


@pytest.mark.parametrize(("path_token", "key", "before", "after"), CASES)
async def test_hmac_provider_before_and_after_the_deadline(
    rotating: tuple[Ingress, Clock], path_token: str, key: str, before: int, after: int
) -> None:
    ing, clock = rotating
    assert await github(ing, path_token, key, "d-before") == before
    clock.now = AFTER
    assert await github(ing, path_token, key, "d-after") == after
    assert len(await ing.stored()) == (before == 202) + (after == 202)


@pytest.mark.parametrize(("path_token", "token", "before", "after"), CASES)
async def test_token_provider_before_and_after_the_deadline(
    rotating: tuple[Ingress, Clock], path_token: str, token: str, before: int, after: int
) -> None:
    ing, clock = rotating
    assert await gitlab(ing, path_token, token, "u-before") == before
    clock.now = AFTER
    assert await gitlab(ing, path_token, token, "u-after") == after


async def test_path_only_provider_keeps_its_old_path_until_the_deadline(
    rotating: tuple[Ingress, Clock],
) -> None:
    ing, clock = rotating
    headers = {"Content-Type": "application/json"}
    for token in (NEW_TOKEN, OLD_TOKEN):
        resp = await ing.client.post(path_of("dh", token), data=DOCKERHUB_BODY, headers=headers)
        assert resp.status == 202
    clock.now = AFTER
    old = await ing.client.post(path_of("dh", OLD_TOKEN), data=DOCKERHUB_BODY, headers=headers)
    assert old.status == 404
    new = await ing.client.post(path_of("dh", NEW_TOKEN), data=DOCKERHUB_BODY, headers=headers)
    assert new.status == 202


async def test_use_of_the_previous_token_is_warned_once_and_counted(
    rotating: tuple[Ingress, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    ing, _ = rotating
    caplog.set_level(logging.WARNING, logger="receiver.ingress")
    assert await github(ing, NEW_TOKEN, NEW_TOKEN, "d1") == 202
    assert not caplog.records, "the current token is not worth a warning"
    for n in range(3):
        assert await github(ing, NEW_TOKEN, OLD_TOKEN, f"d-old-key-{n}") == 202
    assert await github(ing, OLD_TOKEN, NEW_TOKEN, "d-old-path") == 202
    warnings = [r for r in caplog.records if "previous token" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].__dict__["receiver"] == "default/gh"
    counter = ing.state.metrics.previous_token_used.labels("default/gh")
    assert counter._value.get() == 4
    for record in caplog.records:
        assert OLD_TOKEN not in record.getMessage()
        assert NEW_TOKEN not in record.getMessage()


def test_both_keys_are_tried_when_the_current_one_matches() -> None:
    """The previous key is checked even when the current one matched (no timing shortcut)."""
    [spec] = specs_from_documents(
        receiver_docs("gh", "github", NEW_TOKEN, extra_secret=ROTATING), "t"
    )
    calls: list[bytes] = []
    github_provider = PROVIDERS["github"]

    class Recording:
        name = "github"
        filters_events = True

        def validate(self, s: Any) -> None:
            github_provider.validate(s)

        def verify(self, s: Any, request: Request) -> None:
            calls.append(s.token)
            github_provider.verify(s, request)

        def parse(self, s: Any, request: Request) -> Any:
            return github_provider.parse(s, request)

    request = Request.of(
        {"X-Hub-Signature-256": "sha256=" + hmac_hex(NEW_TOKEN, GITHUB_BODY)}, GITHUB_BODY
    )
    assert verify(Recording(), spec, spec.rotation, request, BEFORE) is False
    assert calls == [NEW_TOKEN.encode(), OLD_TOKEN.encode()]
    calls.clear()
    assert verify(Recording(), spec, spec.rotation, request, AFTER) is False
    assert calls == [NEW_TOKEN.encode()], "after the deadline only the current key is tried"


def test_a_deadline_already_past_at_load_serves_only_the_new_path() -> None:
    specs = specs_from_documents(
        receiver_docs(
            "gh",
            "github",
            NEW_TOKEN,
            extra_secret={**ROTATING, "previous-token-expires": "2001-01-01T00:00:00+00:00"},
        ),
        "t",
    )
    table = ReceiverTable.build(specs)
    assert table.route(path_of("gh", OLD_TOKEN).removeprefix("/hook/")) is None
    assert table.route(path_of("gh", NEW_TOKEN).removeprefix("/hook/")) is not None


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        pytest.param({"previous-token": OLD_TOKEN}, "needs 'previous-token-expires'", id="no-end"),
        pytest.param(
            {"previous-token-expires": DEADLINE}, "without 'previous-token'", id="no-token"
        ),
        pytest.param({**ROTATING, "previous-token-expires": "soon"}, "RFC 3339", id="garbage"),
        pytest.param(
            {**ROTATING, "previous-token-expires": "2030-01-01T00:00:00"},
            "offset",
            id="no-offset",
        ),
        pytest.param(
            {**ROTATING, "previous-token-expires": "2030-01-01"}, "date-time", id="date-only"
        ),
    ],
)
def test_malformed_rotation_keys_fail_at_load(secret: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        specs_from_documents(receiver_docs("gh", "github", NEW_TOKEN, extra_secret=secret), "t")


def test_a_previous_path_taken_by_another_receiver_is_refused() -> None:
    # "ab" + "c" and "a" + "bc" hash alike (Flux concatenates token, name and namespace).
    docs = receiver_docs("bc", "github", PAD + "a") + receiver_docs(
        "c",
        "github",
        "zzz-current-token",
        extra_secret={"previous-token": PAD + "ab", **_deadline()},
    )
    specs = specs_from_documents(docs, "t")
    with pytest.raises(ConfigError, match="previous token's hook path"):
        ReceiverTable.build(specs)
    table, unserved = ReceiverTable.build_lenient(specs)
    assert unserved == []
    served = table.lookup(path_of("bc", PAD + "a").removeprefix("/hook/"))
    assert served is not None
    assert served.name == "bc", "the current path wins over another Receiver's previous one"


def _deadline() -> dict[str, str]:
    return {"previous-token-expires": DEADLINE}
