"""The generic-oidc receiver in fluxrelay's Secret form (``secretRef`` with ``issuers`` and
``audience`` keys, an extension Flux's CRD refuses; Flux's own form is tested in
test_generic_oidc_flux.py) against a real nats-server, with ID tokens signed by keys generated
here and key sets injected per issuer, so the tests run offline: valid RSA and EC tokens,
claims stored in the envelope, every refusal (issuer, audience, expiry, ``alg: none``, unknown
``kid``, HS256 keyed with the public key, key/algorithm mismatch, tampering), the Secret's
settings, and OIDC discovery against a local issuer. Token checks are shared by both forms.
The shapes every provider answers (a token signed by another key, no Authorization, content
types, bodies that are not JSON, dedup) are rows of test_providers_table.py."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from receiver.config.spec import specs_from_documents
from receiver.errors import ConfigError
from receiver.providers import PROVIDERS, jwks
from receiver.providers.generic_oidc import GenericOIDC
from schemas import envelope
from tests.support.ingress import Ingress, path_of, receiver_docs, start_ingress
from tests.support.natsd import NatsServer

TOKEN = "s3cr3t-s3cr3t-s3cr3t"
CI = "https://token.ci.example.com"
CLUSTER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "fluxrelay"
SECRET = {"issuers": f"{CI},\n{CLUSTER}\n", "audience": AUDIENCE}
PATH = path_of("oidc")
BODY = b'{"app": "podinfo", "ref": "refs/heads/main"}'

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    return {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "use": "sig"}


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    return {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "alg": "ES256"}


KEYS = {
    CI: jwks.StaticKeys({"keys": [rsa_jwk(RSA_KEY, "ci-1")]}),
    CLUSTER: jwks.StaticKeys({"keys": [ec_jwk(EC_KEY, "k8s-1")]}),
}


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": CI,
        "aud": AUDIENCE,
        "sub": "repo:acme/podinfo:ref:refs/heads/main",
        "repository": "acme/podinfo",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "5f1c7b2e-3d0a-4b7e-9c55-0a1d2e3f4a5b",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def ci_token(key: Any = RSA_KEY, kid: str = "ci-1", alg: str = "RS256", **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers={"kid": kid})


def cluster_token(**overrides: Any) -> str:
    body = claims(iss=CLUSTER, sub="system:serviceaccount:ci:deployer", **overrides)
    return jwt.encode(body, EC_KEY, algorithm="ES256", headers={"kid": "k8s-1"})


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(alg: str, signature: bytes | None = None, kid: str = "ci-1") -> str:
    header = b64url(json.dumps({"alg": alg, "kid": kid, "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims()).encode())
    if signature is None:
        pem = RSA_KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        signature = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(signature)}"


def tampered() -> str:
    header, _, signature = ci_token().split(".")
    payload = b64url(json.dumps(claims(sub="repo:evil/repo:ref:refs/heads/main")).encode())
    return f"{header}.{payload}.{signature}"


def auth(token: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}


@pytest.fixture
async def ingress(
    nats_session: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Ingress]:
    monkeypatch.setitem(PROVIDERS, "generic-oidc", GenericOIDC(lambda iss, url: KEYS[iss]))
    ing = await start_ingress(
        nats_session.url, receiver_docs("oidc", "generic-oidc", TOKEN, extra_secret=SECRET)
    )
    yield ing
    await ing.close()


async def test_a_valid_token_is_accepted_with_its_claims_stored(ingress: Ingress) -> None:
    token = ci_token()
    resp = await ingress.client.post(PATH, data=BODY, headers=auth(token))
    assert resp.status == 202, await resp.text()
    [stored] = await ingress.stored()
    env = envelope.validate(stored.envelope)
    assert env["provider"] == "generic-oidc"
    assert env["event"] == ""
    assert env["claims"] == jwt.decode(token, options={"verify_signature": False})
    assert env["claims"]["repository"] == "acme/podinfo"
    assert env["payload"] == json.loads(BODY)
    digest = "sha256:" + hashlib.sha256(BODY).hexdigest()
    assert env["delivery_id"] == f"5f1c7b2e-3d0a-4b7e-9c55-0a1d2e3f4a5b/{digest}"


async def test_an_ec_token_from_the_second_issuer_is_accepted(ingress: Ingress) -> None:
    resp = await ingress.client.post(PATH, data=BODY, headers=auth(cluster_token(jti=None)))
    assert resp.status == 202, await resp.text()
    [stored] = await ingress.stored()
    assert stored.envelope["claims"]["iss"] == CLUSTER
    # no jti: identical bodies are the same delivery
    assert stored.envelope["delivery_id"] == "sha256:" + hashlib.sha256(BODY).hexdigest()


async def test_one_token_for_two_deliveries_stores_both(ingress: Ingress) -> None:
    """A token may be reused within its lifetime: its jti alone must not merge deliveries."""
    token = ci_token()
    first = await ingress.client.post(PATH, data=BODY, headers=auth(token))
    second = await ingress.client.post(PATH, data=b'{"other": 1}', headers=auth(token))
    again = await ingress.client.post(PATH, data=BODY, headers=auth(token))
    assert (first.status, second.status, again.status) == (202, 202, 202)
    assert (await again.json())["duplicate"] is True
    assert len(await ingress.stored()) == 2


async def test_an_audience_list_containing_ours_is_accepted(ingress: Ingress) -> None:
    token = ci_token(aud=["other", AUDIENCE])
    resp = await ingress.client.post(PATH, data=BODY, headers=auth(token))
    assert resp.status == 202, await resp.text()


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        pytest.param(
            auth(ci_token(iss="https://evil.example.com")), "issuer", id="unconfigured-issuer"
        ),
        pytest.param(auth(ci_token(iss=CI + "/")), "issuer", id="issuer-trailing-slash"),
        pytest.param(auth(ci_token(iss=CLUSTER)), "unknown signing key", id="other-issuers-kid"),
        pytest.param(auth(ci_token(aud="someone-else")), "Audience", id="wrong-audience"),
        pytest.param(auth(ci_token(aud=None)), "aud", id="no-audience"),
        pytest.param(
            auth(ci_token(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200)),
            "expired",
            id="expired",
        ),
        pytest.param(auth(ci_token(exp=None)), "exp", id="no-expiry"),
        pytest.param(
            auth(ci_token(nbf=int(time.time()) + 3600)), "not yet valid", id="not-yet-valid"
        ),
        pytest.param(auth(forged("none", b"")), "algorithm 'none'", id="alg-none"),
        pytest.param(
            auth(forged("HS256")), "algorithm 'HS256'", id="hs256-keyed-with-the-public-key"
        ),
        pytest.param(auth(ci_token(kid="rotated-2")), "unknown signing key", id="unknown-kid"),
        pytest.param(
            auth(ci_token(key=OTHER_RSA, kid="k8s-1", iss=CLUSTER)),
            "does not match key",
            id="rsa-alg-on-an-ec-key",
        ),
        pytest.param(auth(tampered()), "Signature verification failed", id="tampered-claims"),
        pytest.param(auth("not-a-jwt"), "parse bearer token", id="garbage"),
        pytest.param({"Authorization": f"Basic {ci_token()}"}, "missing", id="not-a-bearer-scheme"),
    ],
)
async def test_refused_tokens(ingress: Ingress, headers: dict[str, str], reason: str) -> None:
    resp = await ingress.client.post(PATH, data=BODY, headers=headers)
    answer = await resp.json()
    assert resp.status == 400, answer
    assert answer["code"] == "signature_invalid"
    assert reason in answer["reason"]
    assert await ingress.stored() == []


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        pytest.param({"audience": AUDIENCE}, "'issuers' required", id="no-issuers"),
        pytest.param({"issuers": CI}, "'audience' required", id="no-audience"),
        pytest.param(
            {"issuers": "token.ci.example.com", "audience": AUDIENCE},
            "not an http",
            id="issuer-not-a-url",
        ),
        pytest.param(
            {**SECRET, "jwks-url": f"{CI}/keys"}, "one URL for a single issuer", id="ambiguous-url"
        ),
        pytest.param(
            {**SECRET, "jwks-url": "https://other.example.com https://other.example.com/keys"},
            "not in issuers",
            id="url-for-unknown-issuer",
        ),
        pytest.param(
            {"issuers": CI, "audience": AUDIENCE, "jwks-url": "keys.json"},
            "not an http",
            id="url-not-http",
        ),
    ],
)
def test_secret_settings_are_checked_at_load(secret: dict[str, str], message: str) -> None:
    provider = GenericOIDC(lambda iss, url: KEYS[CI])
    [spec] = specs_from_documents(
        receiver_docs("oidc", "generic-oidc", TOKEN, extra_secret=secret), "test"
    )
    with pytest.raises(ConfigError, match=message):
        provider.validate(spec)


@pytest.mark.parametrize(
    ("jwks_url", "expected"),
    [
        pytest.param(None, {(CI, None), (CLUSTER, None)}, id="discovery"),
        pytest.param(
            f"{CLUSTER} https://10.0.0.1/openid/v1/jwks",
            {(CI, None), (CLUSTER, "https://10.0.0.1/openid/v1/jwks")},
            id="one-pair",
        ),
    ],
)
def test_key_sources_follow_the_secret(
    jwks_url: str | None, expected: set[tuple[str, str | None]]
) -> None:
    asked: set[tuple[str, str | None]] = set()

    def keys_for(issuer: str, url: str | None) -> jwks.KeySource:
        asked.add((issuer, url))
        return KEYS[issuer]

    secret = dict(SECRET) if jwks_url is None else {**SECRET, "jwks-url": jwks_url}
    [spec] = specs_from_documents(
        receiver_docs("oidc", "generic-oidc", TOKEN, extra_secret=secret), "test"
    )
    provider = GenericOIDC(keys_for)
    provider.validate(spec)
    provider.validate(spec)  # a reload reuses the cached sources
    assert asked == expected


def test_a_single_issuer_takes_a_bare_jwks_url() -> None:
    asked: list[tuple[str, str | None]] = []

    def keys_for(issuer: str, url: str | None) -> jwks.KeySource:
        asked.append((issuer, url))
        return KEYS[CI]

    secret = {"issuers": CI, "audience": AUDIENCE, "jwks-url": f"{CI}/.well-known/jwks\n"}
    docs = receiver_docs("oidc", "generic-oidc", TOKEN, extra_secret=secret)
    GenericOIDC(keys_for).validate(specs_from_documents(docs, "test")[0])
    assert asked == [(CI, f"{CI}/.well-known/jwks")]


def test_keys_from_jwks_skip_what_cannot_verify_a_signature() -> None:
    doc = {
        "keys": [
            rsa_jwk(RSA_KEY, "rsa"),
            {**rsa_jwk(RSA_KEY, "enc"), "use": "enc"},
            {"kty": "oct", "kid": "hmac", "k": b64url(b"shared-secret")},
            {**rsa_jwk(RSA_KEY, "hs-named"), "alg": "HS256"},
            {**ec_jwk(EC_KEY, "ec")},
            {**rsa_jwk(RSA_KEY, "")},
            "not a key",
        ]
    }
    keys = jwks.keys_from_jwks(doc)
    assert set(keys) == {"rsa", "ec"}
    assert keys["rsa"].algorithms == jwks.RSA_ALGORITHMS
    assert keys["ec"].algorithms == {"ES256"}


async def _wait_for_fetch(source: jwks.KeySource, count: int = 1) -> None:
    assert isinstance(source, jwks.RemoteKeys)
    for _ in range(500):
        if source.fetches >= count:
            return
        await asyncio.sleep(0.01)
    pytest.fail("key fetch never completed")


@pytest.mark.parametrize("honest", [True, False], ids=["discovery", "discovery-wrong-issuer"])
async def test_oidc_discovery_against_a_local_issuer(
    nats_session: NatsServer, monkeypatch: pytest.MonkeyPatch, honest: bool
) -> None:
    """The production key source: the issuer's discovery document names the JWKS, which is
    fetched in the background after load; a document naming another issuer is not trusted."""
    hits: list[str] = []
    app = web.Application()
    server = TestServer(app)
    issuer = ""

    async def configuration(request: web.Request) -> web.Response:
        hits.append(request.path)
        named = issuer if honest else "https://evil.example.com"
        return web.json_response({"issuer": named, "jwks_uri": f"{issuer}/keys"})

    async def keys(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"keys": [rsa_jwk(RSA_KEY, "ci-1")]})

    app.router.add_get("/.well-known/openid-configuration", configuration)
    app.router.add_get("/keys", keys)
    await server.start_server()
    issuer = str(server.make_url("")).rstrip("/")
    provider = GenericOIDC()
    monkeypatch.setitem(PROVIDERS, "generic-oidc", provider)
    secret = {"issuers": issuer, "audience": AUDIENCE}
    ing = await start_ingress(
        nats_session.url, receiver_docs("oidc", "generic-oidc", TOKEN, extra_secret=secret)
    )
    try:
        await _wait_for_fetch(provider.source(issuer, None))
        resp = await ing.client.post(PATH, data=BODY, headers=auth(ci_token(iss=issuer)))
        if honest:
            assert resp.status == 202, await resp.text()
            assert hits == ["/.well-known/openid-configuration", "/keys"]
        else:
            assert resp.status == 400
            assert "unknown signing key" in (await resp.json())["reason"]
            assert "/keys" not in hits
    finally:
        await ing.close()
        await server.close()


def test_the_registered_provider_is_generic_oidc() -> None:
    assert isinstance(PROVIDERS["generic-oidc"], GenericOIDC)
