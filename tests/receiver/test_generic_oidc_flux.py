"""``generic-oidc`` in Flux's form (``spec.oidcProviders``, no ``secretRef``), checked against
notification-controller's own tests, over HTTP against the real receiver app and a real
nats-server, with local OIDC issuers (discovery document and JWKS served on loopback by
aiohttp, tokens signed here with PyJWT): the production key source is used, so discovery,
the JWKS cache and signature, ``exp``, ``aud``, ``iss`` are exercised as deployed.

Ported (the pytest ids name the Flux test and case they come from):

* ``internal/server/receiver_oidc_test.go`` ``TestValidateGenericOIDC``: every case.
* ``internal/server/receiver_claims_test.go`` ``TestOIDCClaimsProcessor_Evaluate`` (through
  HTTP; "no validations always passes" cannot be served, since a provider without
  validations is refused at load as ``TestValidateOIDCProvidersSpec`` requires),
  ``TestValidateOIDCProvidersSpec`` and ``TestCompileOIDCProviders`` (load-time refusals).
* ``internal/controller/receiver_controller_test.go`` ``TestValidateOIDCSpec`` (the CRD's
  cross-field rules, at load).
* Flux's documented manifests (``docs/spec/v1/receivers.md``, "Generic OIDC example") load
  from ``--config`` (the real process) and from the Kubernetes API, with the hook path
  sha256("" + name + namespace).
* ``claims`` reach the reconciler's CEL filters (``resourceFilter`` and a resource's
  ``filter``, as ``TestValidateCELExpressionClaims`` evaluates them), and only the verified
  token's claims do.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from receiver.config.hooks import hook_path
from receiver.config.kubernetes import KubernetesSource, WatchTiming
from receiver.config.spec import load_file, specs_from_documents
from receiver.config.table import ReceiverTable
from receiver.errors import ConfigError
from receiver.providers import PROVIDERS, jwks
from receiver.providers.generic_oidc import GenericOIDC
from receiver.settings import ReceiverSettings
from reconciler.filtering import Filters, resource_view
from reconciler.receivers import load_file as reconciler_load_file
from schemas import envelope
from tests.support.ingress import Ingress, dump_yaml, start_ingress
from tests.support.kubeapi import KubeAPI
from tests.support.natsd import NatsServer, free_port

API_VERSION = "notification.toolkit.fluxcd.io/v1"
RESOURCES = [{"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository", "name": "app"}]
BASE_VALIDATIONS = [
    {"expression": "claims.repository == 'my-org/my-repo'", "message": "wrong repo"},
    {"expression": "claims.environment == 'production'", "message": "wrong environment"},
]
DOCS_EXAMPLE = """\
---
apiVersion: notification.toolkit.fluxcd.io/v1
kind: Receiver
metadata:
  name: generic-oidc-receiver
  namespace: default
spec:
  type: generic-oidc
  oidcProviders:
    # audience defaults to 'notification-controller'.
    - issuerURL: {issuer}
      validations:
        - expression: "claims.repository_owner == 'my-org'"
          message: "wrong org"
  resources:
    - apiVersion: source.toolkit.fluxcd.io/v1
      kind: GitRepository
      name: webapp
"""
"""Flux's first documented example, verbatim but for the issuer."""
DOCS_EXAMPLE_VARIABLES = """\
---
apiVersion: notification.toolkit.fluxcd.io/v1
kind: Receiver
metadata:
  name: generic-oidc-receiver
  namespace: default
spec:
  type: generic-oidc
  oidcProviders:
    - issuerURL: {issuer}
      audience: notification-controller
      variables:
        - name: owner
          expression: "claims.repository_owner"
        # allowedRepos references the owner variable defined above.
        - name: allowedRepos
          expression: "[vars.owner + '/repo-a', vars.owner + '/repo-b']"
      validations:
        - expression: "vars.owner == 'my-org'"
          message: "wrong org"
        - expression: "claims.repository in vars.allowedRepos"
          message: "repo not in allowlist"
        - expression: "claims.ref == 'refs/heads/main' && claims.environment == 'production'"
          message: "must be main branch + production environment"
  resources:
    - apiVersion: source.toolkit.fluxcd.io/v1
      kind: GitRepository
      name: webapp
"""
"""Flux's second documented example (variables), verbatim but for the issuer."""
GITHUB_ACTIONS = "https://token.actions.githubusercontent.com"


def flux_path(name: str, namespace: str = "default") -> str:
    """Flux's webhook path for a Receiver without a token: sha256("" + name + namespace)."""
    return "/hook/" + hashlib.sha256((name + namespace).encode()).hexdigest()


def receiver(
    name: str,
    providers: list[dict[str, Any]],
    namespace: str = "default",
    resource_filter: str | None = None,
    resources: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A Receiver manifest in Flux's ``generic-oidc`` form."""
    spec: dict[str, Any] = {
        "type": "generic-oidc",
        "oidcProviders": providers,
        "resources": resources or RESOURCES,
    }
    if resource_filter is not None:
        spec["resourceFilter"] = resource_filter
    return {
        "apiVersion": API_VERSION,
        "kind": "Receiver",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


# ------------------------------------------------------------------------------ issuers


@dataclass
class LocalIssuer:
    """An OIDC issuer on loopback: discovery document, JWKS, and an RSA key to sign with."""

    server: TestServer
    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    kid: str = "test-key"
    hits: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def sign(self, claims: dict[str, Any], kid: str | None = None) -> str:
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": kid or self.kid})

    def claims(self, aud: str = "flux", **more: Any) -> dict[str, Any]:
        now = int(time.time())
        return {"iss": self.url, "aud": aud, "sub": "s", "exp": now + 60, "iat": now, **more}


async def start_issuer() -> LocalIssuer:
    app = web.Application()
    issuer = LocalIssuer(TestServer(app))

    async def configuration(request: web.Request) -> web.Response:
        issuer.hits.append(request.path)
        return web.json_response(
            {
                "issuer": issuer.url,
                "jwks_uri": issuer.url + "/jwks",
                "id_token_signing_alg_values_supported": ["RS256"],
                "authorization_endpoint": issuer.url + "/auth",
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
            }
        )

    async def keys(request: web.Request) -> web.Response:
        issuer.hits.append(request.path)
        jwk = RSAAlgorithm.to_jwk(issuer.key.public_key(), as_dict=True)
        return web.json_response(
            {"keys": [{**jwk, "use": "sig", "alg": "RS256", "kid": "test-key"}]}
        )

    app.router.add_get("/.well-known/openid-configuration", configuration)
    app.router.add_get("/jwks", keys)
    await issuer.server.start_server()
    return issuer


@pytest.fixture
async def iss() -> AsyncIterator[LocalIssuer]:
    issuer = await start_issuer()
    yield issuer
    await issuer.server.close()


@pytest.fixture
async def other_iss() -> AsyncIterator[LocalIssuer]:
    issuer = await start_issuer()
    yield issuer
    await issuer.server.close()


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> GenericOIDC:
    """The production provider (discovery over HTTP), with a cache of its own."""
    fresh = GenericOIDC()
    monkeypatch.setitem(PROVIDERS, "generic-oidc", fresh)
    return fresh


async def keys_loaded(provider: GenericOIDC, *issuers: LocalIssuer) -> None:
    """Wait for the background fetch each issuer's key source started when loaded."""
    for issuer in issuers:
        source = provider.source(issuer.url, None)
        assert isinstance(source, jwks.RemoteKeys)
        for _ in range(500):
            if source.fetches:
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail(f"keys of {issuer.url} never fetched")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


# ------------------------------------------------------------------- TestValidateGenericOIDC


@dataclass
class Served:
    ingress: Ingress
    iss: LocalIssuer
    other: LocalIssuer

    async def post(self, name: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, Any]:
        resp = await self.ingress.client.post(flux_path(name), data=body, headers=headers)
        return resp.status, await resp.json()


@pytest.fixture
async def served(
    nats_session: NatsServer, provider: GenericOIDC, iss: LocalIssuer, other_iss: LocalIssuer
) -> AsyncIterator[Served]:
    """The receivers of TestValidateGenericOIDC, one per case, as Flux's test builds them."""
    base = {"issuerURL": iss.url, "audience": "flux", "validations": BASE_VALIDATIONS}
    docs = [
        receiver(name, [base])
        for name in ("ok", "noauth", "malformed", "unknown", "aud", "expired", "bad-claims")
    ]
    docs.append(
        receiver(
            "vars",
            [
                {
                    "issuerURL": iss.url,
                    "audience": "flux",
                    "variables": [{"name": "allowed", "expression": "['my-org/my-repo']"}],
                    "validations": [
                        {
                            "expression": "claims.repository in vars.allowed",
                            "message": "repo not allowed",
                        }
                    ],
                }
            ],
        )
    )
    ingress = await start_ingress(nats_session.url, docs)
    try:
        await keys_loaded(provider, iss)
        yield Served(ingress, iss, other_iss)
    finally:
        await ingress.close()


def valid_claims(iss: LocalIssuer) -> dict[str, Any]:
    return iss.claims(repository="my-org/my-repo", environment="production", sub="subject")


async def test_flux_TestValidateGenericOIDC_valid_token_passes_validations(served: Served) -> None:
    token = served.iss.sign(valid_claims(served.iss))
    status, answer = await served.post("ok", bearer(token))
    assert status == 202, answer
    [stored] = await served.ingress.stored()
    env = envelope.validate(stored.envelope)
    assert env["provider"] == "generic-oidc"
    assert env["receiver"] == {"namespace": "default", "name": "ok"}
    claims = env["claims"]
    assert claims is not None
    assert {k: claims[k] for k in ("sub", "repository", "environment")} == {
        "sub": "subject",
        "repository": "my-org/my-repo",
        "environment": "production",
    }
    assert served.iss.hits == ["/.well-known/openid-configuration", "/jwks"]


async def test_the_keys_are_not_fetched_per_request(served: Served) -> None:
    """Flux builds its verifier (discovery, JWKS) per request; fluxrelay keeps the keys."""
    for _ in range(3):
        status, answer = await served.post("ok", bearer(served.iss.sign(valid_claims(served.iss))))
        assert status == 202, answer
    assert served.iss.hits == ["/.well-known/openid-configuration", "/jwks"]


@pytest.mark.parametrize(
    ("name", "token", "reason"),
    [
        pytest.param(
            "noauth",
            None,
            "Authorization header is missing",
            id="flux-missing-authorization-header",
        ),
        pytest.param("malformed", "not-a-jwt", "parse bearer token", id="flux-malformed-bearer"),
        pytest.param("unknown", "other", "no oidcProvider configured", id="flux-unknown-issuer"),
        pytest.param("aud", "someone-else", "verify OIDC token", id="flux-wrong-audience"),
        pytest.param("expired", "expired", "verify OIDC token", id="flux-expired-token"),
        pytest.param(
            "bad-claims",
            "bad-claims",
            "token validation failed: wrong repo; wrong environment",
            id="flux-failed-validations-are-aggregated",
        ),
    ],
)
async def test_flux_TestValidateGenericOIDC_refusals(
    served: Served, name: str, token: str | None, reason: str
) -> None:
    iss, now = served.iss, int(time.time())
    tokens = {
        "not-a-jwt": "not-a-jwt",
        "other": served.other.sign(served.other.claims()),
        "someone-else": iss.sign(iss.claims(aud="someone-else")),
        "expired": iss.sign(iss.claims(exp=now - 60)),
        "bad-claims": iss.sign(iss.claims(repository="evil/repo", environment="staging")),
    }
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {tokens[token]}"
    status, answer = await served.post(name, headers)
    assert status == 400, answer
    assert reason in answer["reason"]
    assert await served.ingress.stored() == []
    assert "/.well-known/openid-configuration" not in served.other.hits  # never contacted


async def test_flux_TestValidateGenericOIDC_variables_resolve_before_validations(
    served: Served,
) -> None:
    status, answer = await served.post("vars", bearer(served.iss.sign(valid_claims(served.iss))))
    assert status == 202, answer


# ------------------------------------------------------------------------------ claims processor


@pytest.mark.parametrize(
    ("provider_spec", "claims", "reason"),
    [
        pytest.param(
            {"validations": [{"expression": "claims.repo == 'org/repo'", "message": "wrong repo"}]},
            {"repo": "org/repo"},
            None,
            id="flux-TestOIDCClaimsProcessor_Evaluate-passing-validation",
        ),
        pytest.param(
            {
                "validations": [
                    {"expression": "claims.repo == 'org/repo'", "message": "wrong repo"},
                    {"expression": "claims.env == 'prod'", "message": "wrong env"},
                ]
            },
            {"repo": "evil", "env": "dev"},
            "wrong repo; wrong env",
            id="flux-TestOIDCClaimsProcessor_Evaluate-all-failures-aggregated",
        ),
        pytest.param(
            {
                "variables": [{"name": "allowed", "expression": "['org/repo']"}],
                "validations": [
                    {"expression": "claims.repo in vars.allowed", "message": "repo denied"}
                ],
            },
            {"repo": "org/repo"},
            None,
            id="flux-TestOIDCClaimsProcessor_Evaluate-variables-flow-into-validations",
        ),
        pytest.param(
            {
                "variables": [
                    {"name": "owner", "expression": "claims.owner"},
                    {"name": "allowed", "expression": "[vars.owner + '/repo']"},
                ],
                "validations": [
                    {"expression": "claims.repo in vars.allowed", "message": "repo denied"}
                ],
            },
            {"owner": "org", "repo": "org/repo"},
            None,
            id="flux-TestOIDCClaimsProcessor_Evaluate-variables-can-reference-earlier-variables",
        ),
        pytest.param(
            {
                "variables": [{"name": "owner", "expression": "claims.owner"}],
                "validations": [{"expression": "vars.owner == 'org'", "message": "wrong org"}],
            },
            {"repo": "org/repo"},
            "failed to evaluate variable 'owner'",
            id="a-variable-that-fails-refuses-the-request",
        ),
        pytest.param(
            {"validations": [{"expression": "claims.missing == 'x'", "message": "never shown"}]},
            {},
            "failed to evaluate validation",
            id="a-validation-that-fails-to-evaluate-refuses-the-request",
        ),
        pytest.param(
            {"validations": [{"expression": "claims.repo", "message": "not a boolean"}]},
            {"repo": "org/repo"},
            "not a boolean",
            id="a-validation-must-return-a-boolean",
        ),
        pytest.param(
            {
                "validations": [
                    {"expression": "claims.repo.lowerAscii() == 'org/repo'", "message": "x"}
                ]
            },
            {"repo": "ORG/Repo"},
            None,
            id="the-string-extension-flux-enables",
        ),
    ],
)
async def test_claims_are_checked_as_flux_checks_them(
    nats_session: NatsServer,
    provider: GenericOIDC,
    iss: LocalIssuer,
    provider_spec: dict[str, Any],
    claims: dict[str, Any],
    reason: str | None,
) -> None:
    docs = [receiver("cp", [{"issuerURL": iss.url, "audience": "id", **provider_spec}])]
    ingress = await start_ingress(nats_session.url, docs)
    try:
        await keys_loaded(provider, iss)
        resp = await ingress.client.post(
            flux_path("cp"), headers=bearer(iss.sign(iss.claims(aud="id", **claims)))
        )
        answer = await resp.json()
        if reason is None:
            assert resp.status == 202, answer
        else:
            assert resp.status == 400, answer
            assert answer["code"] == "signature_invalid"
            assert reason in answer["reason"]
            assert "activation" not in answer["reason"]  # celpy's dump of every value
    finally:
        await ingress.close()


async def test_the_audience_defaults_to_notification_controller_and_providers_are_chosen_by_iss(
    nats_session: NatsServer, provider: GenericOIDC, iss: LocalIssuer, other_iss: LocalIssuer
) -> None:
    """fluxcd/notification-controller fc9268a "Make Receiver OIDC audience optional"; each
    token is checked by the provider its ``iss`` names, with that provider's validations."""
    docs = [
        receiver(
            "two",
            [
                {
                    "issuerURL": iss.url,
                    "validations": [{"expression": "claims.sub == 'a'", "message": "not a"}],
                },
                {
                    "issuerURL": other_iss.url,
                    "audience": "other",
                    "validations": [{"expression": "claims.sub == 'b'", "message": "not b"}],
                },
            ],
        )
    ]
    ingress = await start_ingress(nats_session.url, docs)
    try:
        await keys_loaded(provider, iss, other_iss)
        cases = [
            (iss.sign(iss.claims(aud="notification-controller", sub="a")), 202, ""),
            (iss.sign(iss.claims(aud="flux", sub="a")), 400, "verify OIDC token"),
            (iss.sign(iss.claims(aud="notification-controller", sub="b")), 400, "not a"),
            (other_iss.sign(other_iss.claims(aud="other", sub="b")), 202, ""),
            (other_iss.sign(other_iss.claims(aud="other", sub="a")), 400, "not b"),
            # signed by the other issuer's key but claiming this one's iss
            (other_iss.sign(iss.claims(aud="notification-controller", sub="a")), 400, "verify"),
        ]
        for token, status, reason in cases:
            resp = await ingress.client.post(flux_path("two"), headers=bearer(token))
            answer = await resp.json()
            assert resp.status == status, answer
            assert reason in answer.get("reason", "")
    finally:
        await ingress.close()


# ------------------------------------------------------------------------------ load-time checks

STUB = [{"expression": "claims.repository_owner == 'my-org'", "message": "wrong org"}]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param(
            {"type": "generic-oidc"},
            "generic-oidc receivers must define at least one oidcProvider",
            id="flux-TestValidateOIDCSpec-generic-oidc-without-oidcProviders",
        ),
        pytest.param(
            {
                "type": "generic",
                "secretRef": {"name": "webhook-token"},
                "oidcProviders": [{"issuerURL": "https://example.com", "validations": STUB}],
            },
            "oidcProviders: can only be set when type is generic-oidc",
            id="flux-TestValidateOIDCSpec-oidcProviders-on-non-generic-oidc",
        ),
        pytest.param(
            {
                "type": "generic-oidc",
                "secretRef": {"name": "webhook-token"},
                "oidcProviders": [{"issuerURL": "https://example.com", "validations": STUB}],
            },
            "secretRef: cannot be set when type is generic-oidc",
            id="flux-TestValidateOIDCSpec-secretRef-on-generic-oidc",
        ),
        pytest.param(
            {"type": "generic"},
            "spec.secretRef.name: required",
            id="flux-TestValidateOIDCSpec-secretRef-missing-on-non-generic-oidc",
        ),
        pytest.param(
            {"type": "generic-oidc", "oidcProviders": [{"audience": "aud", "validations": STUB}]},
            "issuerURL: required",
            id="flux-TestValidateOIDCProvidersSpec-issuerURL-is-required",
        ),
        pytest.param(
            {
                "type": "generic-oidc",
                "oidcProviders": [
                    {"issuerURL": "example.com", "audience": "aud", "validations": STUB}
                ],
            },
            "must start with http:// or https://",
            id="flux-TestValidateOIDCProvidersSpec-issuerURL-pattern",
        ),
        pytest.param(
            {
                "type": "generic-oidc",
                "oidcProviders": [
                    {"issuerURL": "https://a", "variables": [{"name": "x"}], "validations": STUB}
                ],
            },
            "variables[0].expression: required",
            id="flux-TestValidateOIDCProvidersSpec-variable-expression-is-required",
        ),
        pytest.param(
            {
                "type": "generic-oidc",
                "oidcProviders": [{"issuerURL": "https://a", "validations": [{"message": "msg"}]}],
            },
            "validations[0].expression: required",
            id="flux-TestValidateOIDCProvidersSpec-validation-expression-is-required",
        ),
        pytest.param(
            {
                "type": "generic-oidc",
                "oidcProviders": [
                    {
                        "issuerURL": "https://a",
                        "validations": [{"expression": "true", "message": ""}],
                    }
                ],
            },
            "validations[0].message: required",
            id="flux-ValidateOIDCProvidersSpec-validation-message-is-required",
        ),
        pytest.param(
            {
                "type": "generic-oidc",
                "oidcProviders": [
                    {"issuerURL": "https://a", "validations": STUB},
                    {"issuerURL": "https://a", "validations": STUB},
                ],
            },
            "duplicate issuerURL",
            id="flux-TestValidateOIDCProvidersSpec-duplicate-issuerURL",
        ),
        pytest.param(
            {
                "type": "generic-oidc",
                "oidcProviders": [{"issuerURL": "https://a", "audience": "aud"}],
            },
            "at least one validation is required",
            id="flux-TestValidateOIDCProvidersSpec-at-least-one-validation",
        ),
        pytest.param(
            {
                "type": "generic-oidc",
                "oidcProviders": [
                    {
                        "issuerURL": "https://a",
                        "validations": [{"expression": "not-valid-cel ===", "message": "x"}],
                    }
                ],
            },
            "validations[0] (message='x'): invalid CEL expression 'not-valid-cel ===': "
            "syntax error at character 17",
            id="flux-TestCompileOIDCProviders-invalid-expression",
        ),
        pytest.param(
            {
                "type": "generic-oidc",
                "oidcProviders": [
                    {
                        "issuerURL": "https://a",
                        "variables": [{"name": "v", "expression": "claims.("}],
                        "validations": STUB,
                    }
                ],
            },
            "variables[0] (name='v'): invalid CEL expression",
            id="flux-CompileOIDCProviders-invalid-variable",
        ),
    ],
)
def test_invalid_receivers_are_refused_at_load(
    provider: GenericOIDC, spec: dict[str, Any], message: str
) -> None:
    doc = {"apiVersion": API_VERSION, "kind": "Receiver", "metadata": {"name": "r"}, "spec": spec}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "webhook-token"}}
    with pytest.raises(ConfigError, match=re.escape(message)):
        ReceiverTable.build(specs_from_documents([secret, doc], "test"))


@pytest.mark.parametrize(
    "providers",
    [
        pytest.param(
            [{"issuerURL": "https://a", "audience": "aud", "validations": STUB}],
            id="flux-TestValidateOIDCProvidersSpec-valid",
        ),
        pytest.param(
            [{"issuerURL": "https://a", "validations": STUB}],
            id="flux-TestValidateOIDCProvidersSpec-audience-is-optional",
        ),
        pytest.param(
            [
                {
                    "issuerURL": "https://a",
                    "validations": [{"expression": "claims.x == 'y'", "message": "ok"}],
                }
            ],
            id="flux-TestCompileOIDCProviders-valid",
        ),
    ],
)
def test_valid_providers_load(provider: GenericOIDC, providers: list[dict[str, Any]]) -> None:
    [spec] = specs_from_documents([receiver("r", providers)], "test")
    ReceiverTable.build([spec])
    assert spec.definition.secret_name is None
    assert spec.digest == hashlib.sha256(b"rdefault").hexdigest()


def test_flux_hook_path_is_sha256_of_name_and_namespace() -> None:
    """receiver_controller.go ``token()`` returns "" for a Receiver without secretRef, and
    the path is then ``/hook/`` + sha256("" + name + namespace)."""
    [spec] = specs_from_documents(
        [receiver("generic-oidc-receiver", [{"issuerURL": GITHUB_ACTIONS, "validations": STUB}])],
        "test",
    )
    assert hook_path(b"", "generic-oidc-receiver", "default") == flux_path("generic-oidc-receiver")
    assert "/hook/" + spec.digest == flux_path("generic-oidc-receiver")


# ------------------------------------------------------------------------------ --config


def http(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(
        url, method=method, headers=headers or {}, data=b"" if method == "POST" else None
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def start_process(
    config: Path, nats: NatsServer, port: int, metrics: int, log: Path
) -> subprocess.Popen[bytes]:
    env = dict(os.environ, FLUXRELAY_LOG_FORMAT="json", FLUXRELAY_STREAM_STORAGE="memory")
    with log.open("w") as err:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "receiver",
                "--config",
                str(config),
                "--nats-url",
                nats.url,
                "--listen",
                f"127.0.0.1:{port}",
                "--metrics-listen",
                f"127.0.0.1:{metrics}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )


async def test_flux_documented_examples_are_served_from_config(
    tmp_path: Path, nats_session: NatsServer, iss: LocalIssuer
) -> None:
    """Both examples of Flux's receivers.md start the real process (with one, fluxrelay
    refused to start) and are served at Flux's path, checked as Flux checks."""
    config = tmp_path / "receivers.yaml"
    first = DOCS_EXAMPLE.format(issuer=iss.url)
    second = DOCS_EXAMPLE_VARIABLES.format(issuer=iss.url).replace(
        "name: generic-oidc-receiver", "name: generic-oidc-receiver-vars"
    )
    config.write_text(first + second)
    assert {spec.key for spec in load_file(config)} == {
        "default/generic-oidc-receiver",
        "default/generic-oidc-receiver-vars",
    }
    port, metrics = free_port(), free_port()
    proc = start_process(config, nats_session, port, metrics, tmp_path / "receiver.log")
    try:
        deadline = time.monotonic() + 30
        while (await asyncio.to_thread(http, f"http://127.0.0.1:{metrics}/readyz"))[0] != 200:
            assert proc.poll() is None, (tmp_path / "receiver.log").read_text()
            assert time.monotonic() < deadline, "not ready"
            await asyncio.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        good = {"repository_owner": "my-org", "repository": "my-org/repo-a"}
        more = {"ref": "refs/heads/main", "environment": "production"}
        nc = "notification-controller"
        cases = [
            ("generic-oidc-receiver", iss.sign(iss.claims(aud=nc, **good)), 202, ""),
            (
                "generic-oidc-receiver",
                iss.sign(iss.claims(aud=nc, repository_owner="x")),
                400,
                "wrong org",
            ),
            ("generic-oidc-receiver-vars", iss.sign(iss.claims(aud=nc, **good, **more)), 202, ""),
            (
                "generic-oidc-receiver-vars",
                iss.sign(
                    iss.claims(
                        aud=nc,
                        repository_owner="x",
                        repository="x/repo-c",
                        ref="refs/heads/dev",
                        environment="production",
                    )
                ),
                400,
                "wrong org; repo not in allowlist; must be main branch + production environment",
            ),
        ]
        for name, token, status, reason in cases:
            deadline = time.monotonic() + 10
            while True:  # the first request may precede the background key fetch
                got, text = await asyncio.to_thread(
                    http, url + flux_path(name), "POST", {"Authorization": f"Bearer {token}"}
                )
                if "unknown signing key" not in text or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert got == status, text
            assert reason in text
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ------------------------------------------------------------------------------ reconciler


async def test_verified_claims_reach_the_reconcilers_filters(
    tmp_path: Path, nats_session: NatsServer, provider: GenericOIDC, iss: LocalIssuer
) -> None:
    """The manifest both sides read; the envelope JetStream stored; the reconciler's filter
    evaluation of ``resourceFilter`` and a resource's ``filter`` over ``claims``. A body
    field named ``claims`` is payload (``req``), never claims."""
    docs = [
        receiver(
            "filtered",
            [{"issuerURL": iss.url, "validations": [{"expression": "true", "message": "x"}]}],
            resource_filter="claims.repository == 'my-org/' + res.metadata.name",
            resources=[
                {
                    "apiVersion": "source.toolkit.fluxcd.io/v1",
                    "kind": "GitRepository",
                    "name": "*",
                    "matchLabels": {"team": "a"},
                    "filter": "claims.environment == 'production' && req.ref == 'main'",
                }
            ],
        )
    ]
    config = tmp_path / "receivers.yaml"
    config.write_text(dump_yaml(docs))
    ingress = await start_ingress(nats_session.url, list(yaml.safe_load_all(config.read_text())))
    try:
        await keys_loaded(provider, iss)
        token = iss.sign(
            iss.claims(
                aud="notification-controller", repository="my-org/app", environment="production"
            )
        )
        body = json.dumps({"ref": "main", "claims": {"repository": "my-org/evil"}}).encode()
        resp = await ingress.client.post(flux_path("filtered"), data=body, headers=bearer(token))
        assert resp.status == 202, await resp.text()
        [stored] = await ingress.stored()
    finally:
        await ingress.close()
    env = stored.envelope
    assert env["claims"] == jwt.decode(token, options={"verify_signature": False})
    [definition] = reconciler_load_file(config)
    filters = Filters()

    def selected(name: str) -> bool:
        obj = {
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": {"name": name, "namespace": "default", "labels": {"team": "a"}},
        }
        expressions = [definition.resource_filter, definition.resources[0].get("filter")]
        return all(
            filters.matches(str(e), resource_view(obj), env["payload"], env.get("claims") or {})
            for e in expressions
            if e
        )

    assert selected("app")
    assert not selected("evil")


# ------------------------------------------------------------------------------ Kubernetes


@pytest.mark.kube
async def test_flux_documented_example_is_served_from_kubernetes_without_a_secret(
    kube: KubeAPI,
    kube_namespace: str,
    nats_session: NatsServer,
    provider: GenericOIDC,
    iss: LocalIssuer,
    tmp_path: Path,
) -> None:
    """Flux's documented Receiver, applied through the API server with Flux's CRD, is served
    by ``--kubernetes`` at sha256("" + name + namespace) with no Secret anywhere, and no
    ``secret_missing`` is reported for it."""
    ns = kube_namespace
    [doc] = yaml.safe_load_all(DOCS_EXAMPLE.format(issuer=iss.url))
    doc["metadata"]["namespace"] = ns
    await asyncio.to_thread(kube.apply_manifests, [doc])
    ingress = await start_ingress(nats_session.url, [])
    settings = ReceiverSettings(
        kubernetes=True, kubeconfig=kube.write_kubeconfig(tmp_path / "kubeconfig"), namespace=ns
    )
    source = KubernetesSource(settings, ingress.state.metrics, WatchTiming(debounce=0.05))
    try:
        ingress.state.table = await source.load()
        assert [spec.key for spec in ingress.state.table] == [f"{ns}/generic-oidc-receiver"]
        unserved = ingress.state.metrics.registry.get_sample_value(
            "fluxrelay_receiver_receivers_unserved", {"reason": "secret_missing"}
        )
        assert unserved == 0
        await keys_loaded(provider, iss)
        path = flux_path("generic-oidc-receiver", ns)
        nc = "notification-controller"
        good = iss.sign(iss.claims(aud=nc, repository_owner="my-org"))
        resp = await ingress.client.post(path, headers=bearer(good))
        assert resp.status == 202, await resp.text()
        bad = iss.sign(iss.claims(aud=nc, repository_owner="someone"))
        resp = await ingress.client.post(path, headers=bearer(bad))
        assert resp.status == 400
        assert (await resp.json())["reason"] == "token validation failed: wrong org"
    finally:
        await source.close()
        await ingress.close()
