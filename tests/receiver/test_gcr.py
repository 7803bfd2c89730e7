"""The gcr receiver (GCR/Artifact Registry via Pub/Sub push) against a real nats-server, with
Google ID tokens signed by a key generated here and a JWKS injected into the provider, so the
tests run offline: every claim check (signature, aud, iss, email, email_verified — the
CVE-2026-40109 case —, expiry, kid, alg), the payload, redelivery with a fresh token, and the
background key refresh served by a local JWKS endpoint. The shapes every provider answers (a
token signed by another key, no Authorization, content types, an empty body, ``spec.events``
ignored as Flux ignores it) are rows of test_providers_table.py."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import RSAAlgorithm

from receiver.config.spec import specs_from_documents
from receiver.config.table import ReceiverTable
from receiver.errors import ConfigError, SignatureInvalid
from receiver.providers import PROVIDERS
from receiver.providers.base import Request
from receiver.providers.gcr import GCR, RemoteKeys, StaticKeys
from schemas import envelope
from tests.support.ingress import Ingress, path_of, receiver_docs, start_ingress
from tests.support.natsd import NatsServer

TOKEN = "s3cr3t-s3cr3t-s3cr3t"
EMAIL = "pubsub-push@acme-prod.iam.gserviceaccount.com"
AUDIENCE = "https://relay.acme.example/hook"
KID = "test-key-1"
SECRET = {"email": EMAIL, "audience": AUDIENCE}
DIGEST = "sha256:" + "d" * 64

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks(*pairs: tuple[str, rsa.RSAPrivateKey]) -> dict[str, Any]:
    keys = []
    for kid, key in pairs:
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        keys.append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})
    return {"keys": keys}


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "aud": AUDIENCE,
        "azp": "113774264463038321964",
        "email": EMAIL,
        "email_verified": True,
        "exp": now + 3600,
        "iat": now,
        "iss": "https://accounts.google.com",
        "sub": "113774264463038321964",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def id_token(
    key: rsa.RSAPrivateKey = KEY, kid: str = KID, drop: tuple[str, ...] = (), **overrides: Any
) -> str:
    body = {k: v for k, v in claims(**overrides).items() if k not in drop}
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid})


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token() -> str:
    """``alg: none``: a token that carries no signature at all."""
    header = b64url(json.dumps({"alg": "none", "kid": KID, "typ": "JWT"}).encode())
    return f"{header}.{b64url(json.dumps(claims()).encode())}."


def hs256_with_public_key() -> str:
    """The algorithm-confusion attack: HMAC keyed with the (public) RSA key's PEM."""
    header = b64url(json.dumps({"alg": "HS256", "kid": KID, "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims()).encode())
    pem = KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    sig = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(sig)}"


def push_body(data: dict[str, Any] | None = None, message_id: str = "2070443601311540") -> bytes:
    inner = data or {
        "action": "INSERT",
        "digest": f"us-east1-docker.pkg.dev/acme-prod/apps/podinfo@{DIGEST}",
        "tag": "us-east1-docker.pkg.dev/acme-prod/apps/podinfo:6.5.0",
    }
    return json.dumps(
        {
            "message": {
                "attributes": {},
                "data": base64.b64encode(json.dumps(inner).encode()).decode(),
                "messageId": message_id,
                "message_id": message_id,
                "publishTime": "2024-01-10T12:00:00.000Z",
            },
            "subscription": "projects/acme-prod/subscriptions/fluxrelay",
        }
    ).encode()


def auth(token: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}


@pytest.fixture
async def ingress(
    nats_session: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Ingress]:
    monkeypatch.setitem(PROVIDERS, "gcr", GCR(StaticKeys(jwks((KID, KEY)))))
    docs = receiver_docs("gc", "gcr", TOKEN, extra_secret=SECRET)
    ing = await start_ingress(nats_session.url, docs)
    yield ing
    await ing.close()


async def post(ing: Ingress, body: bytes, headers: dict[str, str], name: str = "gc") -> Any:
    resp = await ing.client.post(path_of(name, TOKEN), data=body, headers=headers)
    return resp.status, await resp.json()


async def test_a_valid_push_is_stored_with_its_artifact(ingress: Ingress) -> None:
    body = push_body()
    status, answer = await post(ingress, body, auth(id_token()))
    assert status == 202, answer
    [stored] = await ingress.stored()
    env = envelope.validate(stored.envelope)
    assert env["provider"] == "gcr"
    assert env["event"] == "INSERT"
    assert env["delivery_id"] == "2070443601311540"
    assert env["artifact"] == {
        "registry": "us-east1-docker.pkg.dev",
        "repository": "acme-prod/apps/podinfo",
        "tag": "6.5.0",
        "digest": DIGEST,
        "media_type": None,
        "url": None,
    }
    assert env["payload"] == json.loads(body)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        pytest.param(
            lambda: id_token(aud="https://other.example/hook"), "Audience", id="wrong-aud"
        ),
        pytest.param(lambda: id_token(aud=[AUDIENCE + "x"]), "Audience", id="wrong-aud-list"),
        pytest.param(lambda: id_token(drop=("aud",)), "aud", id="no-aud"),
        pytest.param(lambda: id_token(iss="https://evil.example"), "issuer", id="wrong-iss"),
        pytest.param(lambda: id_token(iss="accounts.google.com.evil"), "issuer", id="iss-suffix"),
        pytest.param(lambda: id_token(iss="google.com"), "issuer", id="iss-substring"),
        pytest.param(lambda: id_token(drop=("iss",)), "iss", id="no-iss"),
        pytest.param(
            lambda: id_token(email="attacker@evil.iam.gserviceaccount.com"),
            "email",
            id="wrong-email",
        ),
        pytest.param(lambda: id_token(drop=("email",)), "email", id="no-email"),
        pytest.param(
            lambda: id_token(email_verified=False), "email_verified", id="email-unverified-cve"
        ),
        pytest.param(
            lambda: id_token(drop=("email_verified",)),
            "email_verified",
            id="email-verified-missing",
        ),
        pytest.param(
            lambda: id_token(email_verified="true"), "email_verified", id="email-verified-string"
        ),
        pytest.param(
            lambda: id_token(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200),
            "expired",
            id="expired",
        ),
        pytest.param(lambda: id_token(drop=("exp",)), "exp", id="no-exp"),
        pytest.param(lambda: id_token()[:-4] + "AAAA", "Signature", id="tampered-signature"),
        pytest.param(lambda: id_token(kid="rotated-away"), "unknown signing key", id="unknown-kid"),
        pytest.param(unsigned_token, "algorithm", id="alg-none"),
        pytest.param(hs256_with_public_key, "algorithm", id="alg-hs256-confusion"),
        pytest.param(lambda: "not-a-jwt", "malformed", id="garbage"),
    ],
)
async def test_token_checks(ingress: Ingress, token: Any, reason: str) -> None:
    status, answer = await post(ingress, push_body(), auth(token()))
    assert status == 400, answer
    assert answer["code"] == "signature_invalid"
    assert reason in answer["reason"]
    assert await ingress.stored() == []


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Authorization": f"Basic {id_token()}"}, id="basic-scheme"),
        pytest.param({"Authorization": "Bearer "}, id="empty-bearer"),
    ],
)
async def test_foreign_authorization(ingress: Ingress, headers: dict[str, str]) -> None:
    status, answer = await post(ingress, push_body(), headers)
    assert status == 400
    assert answer["code"] == "signature_invalid"
    assert await ingress.stored() == []


async def test_the_short_issuer_form_is_accepted(ingress: Ingress) -> None:
    status, answer = await post(ingress, push_body(), auth(id_token(iss="accounts.google.com")))
    assert status == 202, answer


async def test_redelivery_of_a_message_id_is_stored_once(ingress: Ingress) -> None:
    first = await post(ingress, push_body(), auth(id_token()))
    again = await post(ingress, push_body(), auth(id_token(iat=int(time.time()) - 5)))
    assert first[0] == again[0] == 202
    assert first[1]["id"] == again[1]["id"]
    assert again[1]["duplicate"] is True
    assert len(await ingress.stored()) == 1


async def test_a_digest_only_delete_names_the_repository(ingress: Ingress) -> None:
    body = push_body({"action": "DELETE", "digest": f"gcr.io/acme/app@{DIGEST}"}, "m-3")
    status, _ = await post(ingress, body, auth(id_token()))
    assert status == 202
    [stored] = await ingress.stored()
    assert stored.envelope["artifact"] == {
        "registry": "gcr.io",
        "repository": "acme/app",
        "tag": None,
        "digest": DIGEST,
        "media_type": None,
        "url": None,
    }


def wrap(message: Any) -> bytes:
    return json.dumps({"message": message, "subscription": "projects/p/subscriptions/s"}).encode()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[]", id="array"),
        pytest.param(wrap(None), id="no-message"),
        pytest.param(wrap([]), id="message-array"),
        pytest.param(wrap({"messageId": "1"}), id="no-data"),
        pytest.param(wrap({"messageId": "1", "data": 5}), id="data-number"),
        pytest.param(wrap({"messageId": "1", "data": "%%%"}), id="data-not-base64"),
        pytest.param(wrap({"messageId": "1", "data": "bm90IGpzb24="}), id="data-not-json"),
        pytest.param(wrap({"messageId": "1", "data": "WzFd"}), id="data-array"),
        pytest.param(
            wrap(
                {
                    "messageId": "1",
                    "data": base64.b64encode(b'{"action":"INSERT","tag":7}').decode(),
                }
            ),
            id="tag-number",
        ),
    ],
)
async def test_malformed_payloads_are_400(ingress: Ingress, body: bytes) -> None:
    status, answer = await post(ingress, body, auth(id_token()))
    assert status == 400, answer
    assert answer["code"] == "payload_invalid"
    assert await ingress.stored() == []


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        pytest.param({"audience": AUDIENCE}, "'email' required", id="no-email"),
        pytest.param({"email": EMAIL}, "'audience' required", id="no-audience"),
        pytest.param(
            {"email": EMAIL + "\n", "audience": AUDIENCE}, "whitespace", id="email-newline"
        ),
        pytest.param(
            {"email": EMAIL, "audience": " " + AUDIENCE}, "whitespace", id="audience-space"
        ),
    ],
)
def test_secret_keys_are_checked_at_load(
    secret: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(PROVIDERS, "gcr", GCR(StaticKeys(jwks((KID, KEY)))))
    docs = receiver_docs("gc", "gcr", TOKEN, extra_secret=secret)
    with pytest.raises(ConfigError, match=message):
        ReceiverTable.build(specs_from_documents(docs, "test"))


def test_verify_never_waits_for_a_key_fetch() -> None:
    """An unknown kid is refused at once while the fetch it triggered is still blocked."""
    release = threading.Event()
    started = threading.Event()

    def blocked_fetch(url: str, timeout: float) -> tuple[bytes, float | None]:
        started.set()
        release.wait(30)
        return json.dumps(jwks((KID, KEY))).encode(), None

    keys = RemoteKeys("https://keys.invalid/certs", fetch=blocked_fetch, min_interval=0)
    provider = GCR(keys)
    [spec] = specs_from_documents(receiver_docs("gc", "gcr", TOKEN, extra_secret=SECRET), "t")
    request = Request.of(auth(id_token()), push_body())
    try:
        with pytest.raises(SignatureInvalid, match="unknown signing key"):
            provider.verify(spec, request)
        assert started.wait(10), "the refused token started a background fetch"
        assert keys.fetches == 0
    finally:
        release.set()
    for _ in range(200):
        if keys.fetches:
            break
        time.sleep(0.01)
    provider.verify(spec, request)


async def test_remote_keys_load_at_startup_and_refresh_on_an_unknown_kid(
    nats_session: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The production key source against a local JWKS endpoint: primed when the Receiver is
    loaded; a token signed by a rotated-in key is refused until the refresh it triggers has
    loaded that key, then accepted; a failing endpoint keeps the keys already loaded."""
    served: dict[str, Any] = {"jwks": jwks((KID, KEY)), "status": 200, "hits": 0}

    async def certs(request: web.Request) -> web.Response:
        served["hits"] += 1
        if served["status"] != 200:
            return web.Response(status=served["status"])
        return web.json_response(served["jwks"], headers={"Cache-Control": "public, max-age=3600"})

    app = web.Application()
    app.router.add_get("/oauth2/v3/certs", certs)
    server = TestServer(app)
    await server.start_server()
    keys = RemoteKeys(str(server.make_url("/oauth2/v3/certs")), min_interval=0)
    monkeypatch.setitem(PROVIDERS, "gcr", GCR(keys))
    ing = await start_ingress(
        nats_session.url, receiver_docs("gc", "gcr", TOKEN, extra_secret=SECRET)
    )
    try:

        async def fetched(count: int) -> None:
            for _ in range(500):
                if keys.fetches >= count:
                    return
                await asyncio.sleep(0.01)
            pytest.fail(f"key fetch {count} never completed")

        await fetched(1)
        status, _ = await post(ing, push_body(), auth(id_token()))
        assert status == 202

        served["jwks"] = jwks((KID, KEY), ("rotated-in", OTHER_KEY))
        rotated = id_token(key=OTHER_KEY, kid="rotated-in")
        body = push_body(message_id="m-rotated")
        status, answer = await post(ing, body, auth(rotated))
        assert status == 400
        assert "unknown signing key" in answer["reason"]
        await fetched(2)
        status, answer = await post(ing, body, auth(rotated))
        assert status == 202, answer

        served["status"] = 500
        hits = served["hits"]
        assert keys.refresh_soon()
        await fetched(3)
        assert served["hits"] == hits + 1
        status, _ = await post(ing, push_body(message_id="m-after-outage"), auth(id_token()))
        assert status == 202
        assert len(await ing.stored()) == 3
    finally:
        await ing.close()
        await server.close()


def test_refreshes_are_rate_limited() -> None:
    calls: list[str] = []

    def fetch(url: str, timeout: float) -> tuple[bytes, float | None]:
        calls.append(url)
        return json.dumps(jwks((KID, KEY))).encode(), None

    keys = RemoteKeys("https://keys.invalid/certs", fetch=fetch, min_interval=3600)
    assert keys.refresh_soon() is True
    for _ in range(500):
        if keys.fetches:
            break
        time.sleep(0.01)
    assert keys.key("unknown-kid") is None
    assert keys.refresh_soon() is False
    assert calls == ["https://keys.invalid/certs"]
