"""Optional authentication of ``generic`` and ``cdevents`` against a real nats-server: without
``auth`` in the Secret they behave as Flux's (the path is the secret); with ``auth: bearer``
or ``auth: hmac`` a missing or wrong credential is a 400 and nothing is stored; bad settings
fail at load."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from receiver.config.spec import specs_from_documents
from receiver.config.table import ReceiverTable
from receiver.errors import ConfigError
from tests.support.ingress import Ingress, hmac_hex, path_of, receiver_docs, start_ingress
from tests.support.natsd import NatsServer

TOKEN = "s3cr3t-s3cr3t-s3cr3t"
BEARER = "b3ar3r-t0ken"
HMAC_KEY = "hm4c-k3y"
CDEVENT = (
    Path(__file__).resolve().parents[1] / "schemas" / "fixtures" / "cdevents" / "v0_5_1"
) / "change_merged.json"
BODIES = {"generic": b'{"ref": "main"}', "cdevents": CDEVENT.read_bytes()}

Headers = Callable[[bytes], dict[str, str]]
SECRETS: dict[str, dict[str, str]] = {
    "none": {},
    "bearer": {"auth": "bearer"},
    "bearer-key": {"auth": "Bearer\n", "bearer-token": BEARER},
    "hmac": {"auth": "hmac"},
    "hmac-key": {"auth": "hmac", "hmac-key": HMAC_KEY},
}


def name(provider: str, mode: str) -> str:
    return f"{provider}-{mode}"


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for provider in BODIES:
        for mode, extra in SECRETS.items():
            out += receiver_docs(name(provider, mode), provider, TOKEN, extra_secret=extra)
    return out


@pytest.fixture
async def ingress(nats_session: NatsServer, docs: list[dict[str, Any]]) -> AsyncIterator[Ingress]:
    ing = await start_ingress(nats_session.url, docs)
    yield ing
    await ing.close()


def bearer(value: str) -> Headers:
    return lambda body: {"Authorization": f"Bearer {value}"}


def signed(
    key: str, algo: str = "sha256", prefix: str | None = None, upper: bool = False
) -> Headers:
    def headers(body: bytes) -> dict[str, str]:
        digest = hmac_hex(key, body, algo)
        return {"X-Signature": f"{prefix or algo}={digest.upper() if upper else digest}"}

    return headers


def nothing(body: bytes) -> dict[str, str]:
    return {}


CASES = [
    pytest.param("none", nothing, 202, id="no-auth-configured-nothing-sent"),
    pytest.param("none", bearer("anything"), 202, id="no-auth-configured-header-ignored"),
    pytest.param("bearer", bearer(TOKEN), 202, id="bearer-token-key"),
    pytest.param(
        "bearer", lambda b: {"Authorization": f"bearer   {TOKEN}"}, 202, id="bearer-scheme-any-case"
    ),
    pytest.param("bearer", nothing, 400, id="bearer-missing"),
    pytest.param("bearer", bearer("wrong"), 400, id="bearer-wrong"),
    pytest.param("bearer", bearer(TOKEN + "x"), 400, id="bearer-longer"),
    pytest.param(
        "bearer", lambda b: {"Authorization": f"Basic {TOKEN}"}, 400, id="bearer-other-scheme"
    ),
    pytest.param("bearer", lambda b: {"Authorization": TOKEN}, 400, id="bearer-bare-token"),
    pytest.param("bearer-key", bearer(BEARER), 202, id="bearer-own-key"),
    pytest.param("bearer-key", bearer(TOKEN), 400, id="bearer-own-key-not-token"),
    pytest.param("hmac", signed(TOKEN), 202, id="hmac-sha256"),
    pytest.param("hmac", signed(TOKEN, "sha512"), 202, id="hmac-sha512"),
    pytest.param("hmac", signed(TOKEN, upper=True), 202, id="hmac-upper-case-hex"),
    pytest.param("hmac", signed(TOKEN, "sha1"), 400, id="hmac-sha1-not-offered"),
    pytest.param("hmac", signed(TOKEN, prefix="SHA256"), 400, id="hmac-upper-case-prefix"),
    pytest.param("hmac", signed("wrong"), 400, id="hmac-wrong-key"),
    pytest.param("hmac", nothing, 400, id="hmac-missing"),
    pytest.param("hmac", bearer(TOKEN), 400, id="hmac-bearer-instead"),
    pytest.param("hmac-key", signed(HMAC_KEY), 202, id="hmac-own-key"),
    pytest.param("hmac-key", signed(TOKEN), 400, id="hmac-own-key-not-token"),
]


@pytest.mark.parametrize("provider", ["generic", "cdevents"])
@pytest.mark.parametrize(("mode", "headers_for", "status"), CASES)
async def test_optional_auth(
    ingress: Ingress, provider: str, mode: str, headers_for: Headers, status: int
) -> None:
    body = BODIES[provider]
    headers = {"Content-Type": "application/json", **headers_for(body)}
    resp = await ingress.client.post(
        path_of(name(provider, mode), TOKEN), data=body, headers=headers
    )
    answer = await resp.json()
    assert resp.status == status, answer
    stored = await ingress.stored()
    if status == 202:
        [one] = stored
        assert one.envelope["provider"] == provider
        assert one.envelope["payload"] == json.loads(body)
    else:
        assert answer["code"] == "signature_invalid"
        assert stored == []


async def test_a_signed_body_that_is_tampered_with_is_refused(ingress: Ingress) -> None:
    body = BODIES["generic"]
    headers = {"Content-Type": "application/json", **signed(TOKEN)(body)}
    resp = await ingress.client.post(
        path_of(name("generic", "hmac"), TOKEN), data=body + b" ", headers=headers
    )
    assert resp.status == 400
    assert await ingress.stored() == []


@pytest.mark.parametrize("provider", ["generic", "cdevents"])
@pytest.mark.parametrize(
    ("secret", "message"),
    [
        pytest.param({"auth": "basic"}, "must be 'bearer' or 'hmac'", id="unknown-mode"),
        pytest.param({"auth": ""}, "must be 'bearer' or 'hmac'", id="empty-mode"),
        pytest.param(
            {"auth": "bearer", "bearer-token": "tok\n"}, "trailing newline", id="bearer-newline"
        ),
    ],
)
def test_bad_auth_settings_fail_at_load(
    provider: str, secret: dict[str, str], message: str
) -> None:
    docs = receiver_docs("r", provider, TOKEN, extra_secret=secret)
    with pytest.raises(ConfigError, match=message):
        ReceiverTable.build(specs_from_documents(docs, "test"))


def test_a_token_with_a_newline_cannot_be_the_bearer() -> None:
    """Flux keeps a Secret token's trailing newline; no Authorization header can carry one."""
    docs = receiver_docs("r", "generic", TOKEN + "\n", extra_secret={"auth": "bearer"})
    with pytest.raises(ConfigError, match="'token' has leading or trailing whitespace"):
        ReceiverTable.build(specs_from_documents(docs, "test"))


def test_generic_hmac_ignores_auth() -> None:
    """``generic-hmac`` always checks its own signature; ``auth`` does not change it."""
    docs = receiver_docs("r", "generic-hmac", TOKEN, extra_secret={"auth": "nonsense"})
    assert len(ReceiverTable.build(specs_from_documents(docs, "test"))) == 1
