"""notification-controller v1.9.3's handler cases (``internal/server/receiver_handler_test.go``,
``Test_handlePayload``), ported as a table and run over HTTP against the real receiver app and
a real nats-server.

Flux is the specification: each row names the Flux case it comes from (its pytest id is the
case's name) and expects Flux's answer, translated: Flux's 200 is 202 here when the delivery
is stored, 200 when the README documents it as not stored (pings, ignored items). A row that
answers otherwise names its entry in README's "Differences from notification-controller"
table (``difference``). Cases that check which objects Flux annotated map to "stored": the
annotation is the reconciler's work, not tested here. The generic-oidc cases are ported in
``test_generic_oidc_flux.py``.

What is adapted, and why:

- Flux's Secrets hold the token ``token`` (5 bytes); fluxrelay serves no token shorter than
  16 bytes (a README difference), so every row uses :data:`TOKEN`, 20 bytes. Signatures,
  GitLab's and Harbor's headers are computed from it as Flux's test computes them from its own.
- Flux's objects have no namespace; here they live in ``default``.
- Flux marshals a nil payload as ``null``: those rows send the body ``null``.
- The Receivers are the ones Flux's case builds, made valid for Flux's real CRD where the
  case's object is not (a type and a ``secretRef`` are required): "not ready" and "suspended"
  get a ``generic`` type. Flux's "not ready" is a Receiver its controller could not make Ready,
  ported as one whose Secret lacks ``token`` (what keeps it from being Ready).
- Receivers are loaded as the ``--config`` file source loads them (:func:`build_lenient`),
  so a Receiver that cannot be served is reported, not a failed start.
- GCR tokens are real RS256 ID tokens checked against a static JWKS (Flux's case swaps the
  validator for one that accepts any bearer).

The rows after the Flux ones are fluxrelay's own and prove the CDEvents framing fix with a
CDEvent the specification's schema accepts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from receiver.config.hooks import hook_path
from receiver.config.sources import build_lenient
from receiver.providers import PROVIDERS
from receiver.providers.gcr import GCR, StaticKeys
from schemas.receivers import split_documents
from tests.receiver.test_gcr import AUDIENCE, EMAIL, KEY, KID, id_token, jwks
from tests.support.ingress import Ingress, receiver_docs, start_ingress
from tests.support.natsd import NatsServer

TOKEN = "tokentokentokentoken"
"""Flux's cases use ``token``; 20 bytes here, above fluxrelay's 16-byte minimum."""
GCR_SECRET = {"email": EMAIL, "audience": AUDIENCE}

# README "Differences from notification-controller" entries these rows rely on.
UNSERVED = "a Receiver that cannot be served (its Secret missing, or lacking a key its type needs)"
RESOURCES = "a delivery whose spec.resources cannot be reconciled"
CDEVENT_SCHEMA = "a CDEvent its specification's schema refuses"

RECEIVER_KIND = {"apiVersion": "notification.toolkit.fluxcd.io/v1", "kind": "Receiver"}
CDEVENT = {
    "context": {
        "gitRepository": "adamkenihan/notification-controller",
        "gitRevision": "5555",
        "version": "0.3.0",
        "id": "5555",
        "source": "github",
        "timestamp": "2023-12-07T14:51:29.908479495Z",
        "type": "dev.cdevents.change.merged.0.2.0",
    },
    "subject": {"type": "change", "id": "5555"},
}
"""Flux's CDEvent: members its SDK drops before validating (``gitRepository``), none it fills
in (``subject.content``)."""
VALID_CDEVENT = {
    "context": {k: v for k, v in CDEVENT["context"].items() if not k.startswith("git")},
    "subject": {**CDEVENT["subject"], "content": {}},
}
"""Flux's CDEvent as the v0.4.1 schema accepts it."""
CEL_TAG = {
    "action": "INSERT",
    "digest": "us-east1-docker.pkg.dev/my-project/my-repo/hello-world@sha256:6ec128e26cd5...",
    "tag": "us-east1-docker.pkg.dev/my-project/my-repo/hello-world:1.1",
}
GCR_DATA = {
    "action": "INSERT",
    "digest": "us-east1-docker.pkg.dev/my-project/my-repo/app1@sha256:6ec128e26cd5...",
    "tag": "us-east1-docker.pkg.dev/my-project/my-repo/app1:v1.2.3",
}
NEXUS = {
    "timestamp": "2016-11-10T23:57:49.664+0000",
    "nodeId": "52905B51-085CCABB-CEBBEAAD-16795588-FC927D93",
    "initiator": "admin/127.0.0.1",
    "repositoryName": "npm-proxy",
    "action": "CREATED",
    "asset": {
        "id": "31c950c8eeeab78336308177ae9c441c",
        "assetId": "bnBtLXByb3h5OjMxYzk1MGM4ZWVlYWI3ODMzNjMwODE3N2FlOWM0NDFj",
        "format": "npm",
        "name": "concrete",
    },
}
HARBOR_V1 = {
    "event_type": "pushImage",
    "events": [
        {
            "project": "prj",
            "repo_name": "repo1",
            "tag": "latest",
            "full_name": "prj/repo1",
            "trigger_time": 158322233213,
            "image_id": "9e2c9d5f44efbb6ee83aecd17a120c513047d289d142ec5738c9f02f9b24ad07",
            "project_type": "Private",
        }
    ],
}


def receiver_ref(name: str, **more: Any) -> dict[str, Any]:
    """A ``spec.resources`` entry naming a Receiver, as Flux's cases name them."""
    return {
        "apiVersion": "notification.toolkit.fluxcd.io/v1",
        "kind": "Receiver",
        "name": name,
        **more,
    }


@dataclass(frozen=True)
class Case:
    """One Flux case: the Receiver, the request, Flux's status and the expected one here."""

    flux: int
    """Flux's status."""
    expect: int
    kind: str = "generic"
    headers: dict[str, str] = field(default_factory=dict)
    payload: Any = None
    sign: tuple[str, str, str] | None = None
    """(header, prefix, hash) of an HMAC over the body, keyed with the token."""
    events: list[str] | None = None
    resources: list[dict[str, Any]] | None = None
    resource_filter: str | None = None
    suspend: bool = False
    secret: dict[str, str] | None = None
    """Secret keys besides ``token``."""
    secret_state: str = "present"
    """``present``, ``absent`` (no Secret document), or ``no-token`` (no ``token`` key)."""
    unserved: str | None = None
    """The reason the Receiver is reported unserved under, when it is."""
    no_receiver: bool = False
    body: bytes | None = None
    gcr_bearer: bool = False
    difference: str | None = None
    """README "Differences from notification-controller" entry, when ``expect`` is not Flux's."""


def cdevents(events: list[str] | None, ce_type: str, flux: int, expect: int, **more: Any) -> Case:
    return Case(
        flux,
        expect,
        kind="cdevents",
        events=events,
        headers={"Ce-Type": ce_type, **more.pop("headers", {})},
        payload=more.pop("payload", CDEVENT),
        **more,
    )


JSON = {"Content-Type": "application/json"}
JSON_UTF8 = {"Content-Type": "application/json; charset=utf-8"}
SHA256_HUB = ("X-Hub-Signature-256", "sha256=", "sha256")

FLUX_CASES = [
    pytest.param(Case(200, 202), id="Generic receiver"),
    pytest.param(
        Case(200, 202, kind="gitlab", headers={"X-Gitlab-Token": TOKEN}), id="gitlab receiver"
    ),
    pytest.param(
        cdevents(
            ["cd.change.merged.v1"], "cd.change.merged.v1", 200, 400, difference=CDEVENT_SCHEMA
        ),
        id="cdevents receiver",
    ),
    pytest.param(
        cdevents(["cd.environment.modified.v1"], "cd.change.merged.v1", 400, 400),
        id="cdevents receiver wrong event type",
    ),
    pytest.param(
        cdevents(None, "cd.change.merged.v1", 200, 400, difference=CDEVENT_SCHEMA),
        id="cdevents receiver no event type specified",
    ),
    pytest.param(
        Case(200, 202, kind="github", headers=JSON, payload={"action": "push"}, sign=SHA256_HUB),
        id="github receiver",
    ),
    pytest.param(
        Case(
            200, 202, kind="generic-hmac", headers=JSON, sign=("X-Signature", "sha256=", "sha256")
        ),
        id="generic hmac receiver",
    ),
    pytest.param(
        Case(
            200,
            202,
            kind="bitbucket",
            events=["push"],
            headers={**JSON, "X-Event-Key": "push"},
            sign=SHA256_HUB,
        ),
        id="bitbucket receiver",
    ),
    pytest.param(
        Case(
            200, 202, kind="quay", payload={"docker_url": "docker.io", "updated_tags": ["v0.0.1"]}
        ),
        id="quay receiver",
    ),
    pytest.param(
        Case(200, 202, kind="harbor", headers={"Authorization": TOKEN}), id="harbor receiver"
    ),
    pytest.param(
        Case(400, 404, secret_state="absent", unserved="secret_missing", difference=UNSERVED),
        id="missing secret",
    ),
    pytest.param(Case(404, 404, no_receiver=True), id="no receiver configured"),
    pytest.param(
        Case(503, 404, secret_state="no-token", unserved="invalid", difference=UNSERVED),
        id="not ready receiver is ignored",
    ),
    pytest.param(Case(503, 503, suspend=True), id="suspended receiver ignored"),
    pytest.param(
        Case(
            500,
            202,
            resources=[{"kind": "Receiver", "name": "*", "matchLabels": {"label": "match"}}],
            difference=RESOURCES,
        ),
        id="missing apiVersion in resource",
    ),
    pytest.param(
        Case(500, 202, resources=[receiver_ref("does-not-exists")], difference=RESOURCES),
        id="resource by name not found",
    ),
    pytest.param(
        Case(200, 202, resources=[receiver_ref("*", matchLabels={"label": "match"})]),
        id="annotating resources by label match",
    ),
    pytest.param(
        Case(200, 202, resources=[receiver_ref("dummy-resource")]),
        id="annotating resource by name",
    ),
    pytest.param(
        Case(500, 202, resources=[receiver_ref("*")], difference=RESOURCES),
        id="cannot annotate all resources if name is * and no labels were set",
    ),
    pytest.param(
        Case(
            500,
            202,
            resources=[receiver_ref("some-resource", namespace="another-namespace")],
            difference=RESOURCES,
        ),
        id="no cross-namespace refs",
    ),
    pytest.param(
        Case(413, 413, resources=[receiver_ref("some-resource")], body=b"{}" + b" " * (3 << 20)),
        id="large payload",
    ),
    pytest.param(
        Case(200, 202, resources=[receiver_ref("dummy-resource", matchLabels={"label": "match"})]),
        id="resource matchLabels is ignored if name is not *",
    ),
    pytest.param(
        Case(
            200,
            202,
            headers=JSON_UTF8,
            payload=CEL_TAG,
            resources=[receiver_ref("*", matchLabels={"label": "production"})],
            resource_filter="has(res.metadata.annotations) && req.tag.split('/').last().value()"
            ".split(\":\").first().value() == res.metadata.annotations['update-image']",
        ),
        id="resources filtered with CEL expressions",
    ),
    pytest.param(
        Case(
            200,
            202,
            headers=JSON_UTF8,
            payload=CEL_TAG,
            resources=[receiver_ref("test-resource")],
            resource_filter="has(res.metadata.annotations) && req.tag.split('/').last().value()"
            ".split(\":\").first().value() == res.metadata.annotations['update-image']",
        ),
        id="filtering out a single named resource with CEL",
    ),
    pytest.param(
        Case(
            200,
            202,
            kind="github",
            headers=JSON,
            payload={"action": "push"},
            sign=SHA256_HUB,
            resources=[receiver_ref("test-resource")],
            resource_filter="res.metadata.name == 'test-resource' && req.action == 'push'",
        ),
        id="CEL filtering a GitHub receiver",
    ),
    pytest.param(
        Case(
            200,
            202,
            kind="gitlab",
            headers={**JSON, "X-Gitlab-Token": TOKEN},
            payload={"action": "push"},
            resources=[receiver_ref("test-resource")],
            resource_filter="res.metadata.name == 'test-resource' && req.action == 'push'",
        ),
        id="CEL filtering a GitLab receiver - (does not read body)",
    ),
    pytest.param(
        cdevents(
            ["cd.change.merged.v1"],
            "cd.change.merged.v1",
            200,
            400,
            headers=JSON_UTF8,
            resources=[receiver_ref("test-resource")],
            resource_filter="res.metadata.name == 'test-resource' && "
            "req.context.gitRepository == 'adamkenihan/notification-controller'",
            difference=CDEVENT_SCHEMA,
        ),
        id="CEL filtering a cdevents receiver",
    ),
    pytest.param(
        Case(
            200,
            202,
            kind="bitbucket",
            headers={**JSON, "X-Event-Key": "push"},
            payload={"action": "push"},
            sign=SHA256_HUB,
            resources=[receiver_ref("test-resource")],
            resource_filter="res.metadata.name == 'test-resource' && req.action == 'push'",
        ),
        id="CEL filtering a Bitbucket receiver",
    ),
    pytest.param(
        Case(
            200,
            202,
            kind="quay",
            headers=JSON,
            payload={"docker_url": "docker.io", "updated_tags": ["v0.0.1"]},
            resources=[receiver_ref("test-resource")],
            resource_filter="res.metadata.name == 'test-resource' && req.docker_url == 'docker.io'",
        ),
        id="CEL filtering a quay receiver",
    ),
    pytest.param(
        Case(
            200,
            202,
            kind="harbor",
            headers={**JSON, "Authorization": TOKEN},
            payload=HARBOR_V1,
            resources=[receiver_ref("test-resource")],
            resource_filter="res.metadata.name == 'test-resource' && "
            "req.events[0].full_name == 'prj/repo1'",
        ),
        id="CEL filtering a Harbor receiver - (does not read body)",
    ),
    pytest.param(
        Case(
            200,
            202,
            kind="dockerhub",
            headers=JSON,
            payload={
                "push_data": {"tag": "test-org/test-repo:v1.0"},
                "repository": {"repo_url": "docker.io"},
            },
            resources=[receiver_ref("test-resource")],
            resource_filter="res.metadata.name == 'test-resource' && req.push_data.tag"
            ".split('/').last().value().split(':').first().value() == 'test-repo'",
        ),
        id="CEL filtering a Docker hub receiver",
    ),
    pytest.param(
        Case(
            200,
            202,
            kind="gcr",
            headers=JSON,
            gcr_bearer=True,
            payload={"message": {"data": GCR_DATA}},
            secret=GCR_SECRET,
            resources=[receiver_ref("test-resource")],
            resource_filter="res.metadata.name == 'test-resource' && req.tag.split('/')"
            ".last().value().split(\":\").first().value() == 'app1'",
        ),
        id="CEL filtering a GCR receiver",
    ),
    pytest.param(
        Case(
            400,
            404,
            kind="gcr",
            headers=JSON,
            gcr_bearer=True,
            payload={"message": {"data": GCR_DATA}},
            secret={"audience": AUDIENCE},
            resources=[receiver_ref("test-resource")],
            unserved="invalid",
            difference=UNSERVED,
        ),
        id="GCR receiver rejects secret missing 'email'",
    ),
    pytest.param(
        Case(
            400,
            404,
            kind="gcr",
            headers=JSON,
            gcr_bearer=True,
            payload={"message": {"data": GCR_DATA}},
            secret={"email": EMAIL},
            resources=[receiver_ref("test-resource")],
            unserved="invalid",
            difference=UNSERVED,
        ),
        id="GCR receiver rejects secret missing 'audience'",
    ),
    pytest.param(
        Case(
            200,
            202,
            kind="nexus",
            headers=JSON,
            payload=NEXUS,
            sign=("X-Nexus-Webhook-Signature", "", "sha1"),
            resources=[receiver_ref("test-resource")],
            resource_filter="res.metadata.name == 'test-resource' && "
            "req.repositoryName == 'npm-proxy'",
        ),
        id="CEL filtering a Nexus receiver",
    ),
    pytest.param(
        Case(
            200,
            202,
            kind="acr",
            headers=JSON,
            payload={"action": "push", "target": {"repository": "hello-world", "tag": "v1"}},
            resources=[receiver_ref("test-resource")],
            resource_filter="res.metadata.name == 'test-resource' && "
            "req.target.repository == 'hello-world'",
        ),
        id="CEL filtering an ACR receiver",
    ),
    pytest.param(
        Case(
            500,
            202,
            headers=JSON_UTF8,
            resources=[receiver_ref("*", matchLabels={"label": "production"})],
            resource_filter='res.name == "test-resource-1"',
            difference=RESOURCES,
        ),
        id="handling errors when parsing the CEL expression results",
    ),
]

OWN_CASES = [
    pytest.param(
        cdevents(["cd.change.merged.v1"], "cd.change.merged.v1", 200, 202, payload=VALID_CDEVENT),
        id="fluxrelay: Ce-Type alone, bare schema-valid CDEvent, allowed by Ce-Type",
    ),
    pytest.param(
        cdevents(
            ["cd.environment.modified.v1"], "cd.change.merged.v1", 400, 400, payload=VALID_CDEVENT
        ),
        id="fluxrelay: Ce-Type alone, bare schema-valid CDEvent, refused by Ce-Type",
    ),
    pytest.param(
        cdevents(
            None,
            "cd.change.merged.v1",
            200,
            202,
            payload=VALID_CDEVENT,
            headers={"Content-Type": "application/json", "ce-id": "5555"},
        ),
        id="fluxrelay: ce- headers without ce-specversion are not binary mode",
    ),
    pytest.param(
        Case(200, 202, kind="harbor", headers={"Authorization": TOKEN}, body=b""),
        id="fluxrelay: harbor, empty body, no Content-Type",
    ),
    pytest.param(
        Case(200, 202, kind="acr", payload={"action": "push"}),
        id="fluxrelay: acr without id or Content-Type (body digest is the id)",
    ),
    pytest.param(
        Case(200, 202, kind="dockerhub", payload=None),
        id="fluxrelay: dockerhub null body (Go decodes null into the empty struct)",
    ),
]


def manifests(case: Case, name: str) -> list[dict[str, Any]]:
    docs = receiver_docs(
        name, case.kind, TOKEN, events=case.events, extra_secret=case.secret, suspend=case.suspend
    )
    secret, receiver = docs
    spec = receiver["spec"]
    if case.resources is not None:
        spec["resources"] = case.resources
    if case.resource_filter is not None:
        spec["resourceFilter"] = case.resource_filter
    if case.secret_state == "absent":
        return [receiver]
    if case.secret_state == "no-token":
        del secret["data"]["token"]
    return [secret, receiver]


def request_body(case: Case) -> bytes:
    if case.body is not None:
        return case.body
    payload = case.payload
    if case.kind == "gcr":
        data = base64.b64encode(json.dumps(payload["message"]["data"]).encode()).decode()
        payload = {"message": {"data": data}}
    return json.dumps(payload).encode()


@pytest.fixture
async def ingress(
    nats_session: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Ingress]:
    monkeypatch.setitem(PROVIDERS, "gcr", GCR(StaticKeys(jwks((KID, KEY)))))
    ing = await start_ingress(nats_session.url, [])
    yield ing
    await ing.close()


async def run(ingress: Ingress, case: Case) -> tuple[int, Any]:
    name = "test-receiver"
    table, unserved = build_lenient(
        split_documents([] if case.no_receiver else manifests(case, name), "test", lenient=True)
    )
    ingress.state.table = table
    assert [u.reason for u in unserved] == ([case.unserved] if case.unserved else [])
    for u in unserved:
        assert TOKEN not in u.message
    body = request_body(case)
    headers = dict(case.headers)
    if case.sign is not None:
        header, prefix, algorithm = case.sign
        mac = hmac.new(TOKEN.encode(), body, getattr(hashlib, algorithm)).hexdigest()
        headers[header] = prefix + mac
    if case.gcr_bearer:
        headers["Authorization"] = f"Bearer {id_token()}"
    # aiohttp's client adds ``Content-Type: application/octet-stream`` to a bytes body
    # unless told not to: a row without the header must send none, as Go's test does.
    skip = () if "Content-Type" in headers else ("Content-Type",)
    resp = await ingress.client.post(
        hook_path(TOKEN.encode(), name, "default"),
        data=io.BytesIO(body),
        headers={**headers, "Content-Length": str(len(body))},
        skip_auto_headers=skip,
    )
    text = await resp.text()
    return resp.status, text


@pytest.mark.parametrize("case", FLUX_CASES + OWN_CASES)
async def test_flux_handler_case(ingress: Ingress, case: Case) -> None:
    if case.difference is None:
        assert case.expect == {200: 202}.get(case.flux, case.flux) or case.expect == case.flux
    else:
        assert case.expect != {200: 202}.get(case.flux, case.flux)
    status, text = await run(ingress, case)
    assert status == case.expect, text
    stored = await ingress.stored()
    assert len(stored) == (1 if status == 202 else 0), text
    if status == 202:
        assert json.loads(text)["status"] == "accepted"


def test_every_flux_case_is_ported() -> None:
    """The table holds Flux's 37 cases, each once: 25 agree, 12 are documented differences."""
    ids = [p.id for p in FLUX_CASES]
    assert len(ids) == len(set(ids)) == 37
    cases = [(p.id, p.values[0]) for p in FLUX_CASES]
    differences = [i for i, c in cases if isinstance(c, Case) and c.difference is not None]
    assert len(differences) == 12, differences
