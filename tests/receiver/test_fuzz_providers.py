"""Property-based fuzzing of every provider in the registry (new providers are picked up
automatically; none is skipped).

1. Pure level: random headers and bodies (raw bytes, random JSON, and realistic payloads with
   random parts replaced, removed or retyped), sent with valid credentials computed over the
   body (so parsing is reached), with random credentials, or with a body changed after
   signing. ``verify`` then ``parse`` may only raise :class:`receiver.errors.Rejected`
   subclasses; what ``parse`` returns must become schema-valid, encodable envelopes.
2. HTTP level, against the real app and nats-server with fewer examples: never a 500, and
   every answer is JSON carrying a ``status``.

Example counts are kept small so the file runs in well under a minute; set
``FLUXRELAY_FUZZ_EXAMPLES`` to run more (the HTTP level runs a fifth of that, at least 10).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from jwt.algorithms import RSAAlgorithm

from receiver import normalising
from receiver.config.spec import ReceiverSpec, specs_from_documents
from receiver.errors import Rejected
from receiver.providers import PROVIDERS, jwks
from receiver.providers.base import Provider, Request
from receiver.providers.gcr import GCR, StaticKeys
from receiver.providers.generic_oidc import GenericOIDC
from schemas import envelope
from tests.support.ingress import Ingress, hmac_hex, path_of, receiver_docs, start_ingress
from tests.support.natsd import NatsServer

EXAMPLES = int(os.environ.get("FLUXRELAY_FUZZ_EXAMPLES", "120"))
HTTP_EXAMPLES = max(10, EXAMPLES // 5)
NAMES = sorted(PROVIDERS)
RECEIVED_AT = normalising.timestamp(datetime(2026, 3, 2, 12, 0, tzinfo=UTC).timestamp())

TOKEN = "fuzz-t0ken-5a9c2e"
USER = "fuzz-user"
PASSWORD = "fuzz-pass"
EMAIL = "pubsub@fuzz.iam.gserviceaccount.com"
AUDIENCE = "https://relay.fuzz.example/hook"
ISSUER = "https://issuer.fuzz.example"
SECRET = {
    "username": USER,
    "password": PASSWORD,
    "email": EMAIL,
    "audience": AUDIENCE,
    "issuers": ISSUER,
}
"""Every Secret key a provider in the registry asks for; a new provider needing another key
fails ``validate`` here, which is the cue to add it."""

KID = "fuzz-key"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWKS = {
    "keys": [{**RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True), "kid": KID, "alg": "RS256"}]
}


def id_token(issuer: str) -> str:
    now = int(time.time())
    claims = {
        "aud": AUDIENCE,
        "email": EMAIL,
        "email_verified": True,
        "exp": now + 3600,
        "iat": now,
        "iss": issuer,
        "sub": "1",
        "jti": "fuzz-1",
    }
    return jwt.encode(claims, KEY, algorithm="RS256", headers={"kid": KID})


OFFLINE: dict[str, Callable[[], Provider]] = {
    "gcr": lambda: GCR(StaticKeys(JWKS)),
    "generic-oidc": lambda: GenericOIDC(lambda issuer, url: jwks.StaticKeys(JWKS)),
}
"""Providers whose registry instance would fetch keys from the Internet get an offline twin
of the same class (the code under test is the same)."""


def provider_for(name: str) -> Provider:
    factory = OFFLINE.get(name)
    return factory() if factory is not None else PROVIDERS[name]


AUTHORIZATIONS = {
    "azuredevops": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
    "gcr": "Bearer " + id_token("https://accounts.google.com"),
    "generic-oidc": "Bearer " + id_token(ISSUER),
    "distribution": f"Bearer {TOKEN}",
    "harbor": TOKEN,
}
"""The ``Authorization`` each provider expects; other providers get one of these at random."""


def credentials(name: str, body: bytes, authorization: str) -> dict[str, str]:
    """Every signature/token header a provider in the registry reads, valid for ``body``."""
    sha256 = hmac_hex(TOKEN, body)
    return {
        "X-Hub-Signature-256": "sha256=" + sha256,
        "X-Hub-Signature": "sha256=" + sha256,
        "X-Gitlab-Token": TOKEN,
        "X-Gitea-Signature": sha256,
        "X-Forgejo-Signature": sha256,
        "X-Signature": "sha256=" + sha256,
        "X-Nexus-Webhook-Signature": hmac_hex(TOKEN, body, "sha1"),
        "Authorization": AUTHORIZATIONS.get(name, authorization),
    }


EVENT_HEADERS = (
    "X-GitHub-Event",
    "X-Gitlab-Event",
    "X-Event-Key",
    "X-Gitea-Event",
    "X-Forgejo-Event",
    "ce-type",
)
DELIVERY_HEADERS = (
    "X-GitHub-Delivery",
    "X-Gitlab-Event-UUID",
    "Idempotency-Key",
    "X-Request-Id",
    "X-Request-UUID",
    "X-Gitea-Delivery",
    "X-Forgejo-Delivery",
    "ce-id",
)
KNOWN_EVENTS = (
    "push",
    "ping",
    "release",
    "package",
    "Push Hook",
    "Tag Push Hook",
    "System Hook",
    "repo:refs_changed",
    "repo:push",
    "mirror:repo_synchronized",
    "diagnostics:ping",
    "git.push",
    "PUSH_ARTIFACT",
    "dev.cdevents.change.merged.0.2.0",
)
CONTENT_TYPES = (
    "application/json",
    "application/json; charset=utf-8",
    "application/x-www-form-urlencoded",
    "application/vnd.docker.distribution.events.v1+json",
    "application/cloudevents+json",
    "text/plain",
    "",
)

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_EVENTS = {
    "github_push": "push",
    "gitlab_push": "Push Hook",
    "bitbucket_server_refs_changed": "repo:refs_changed",
    "bitbucket_cloud_push": "repo:push",
    "gitea_push": "push",
}
"""The event header each fixture is sent with (fixtures carrying their event in the body, or
added later without an entry here, get a random known event)."""
SEEDS: list[Any] = [json.loads(p.read_bytes()) for p in sorted(FIXTURES.glob("*.json"))]
SEED_EVENTS: list[str | None] = [
    FIXTURE_EVENTS.get(p.stem) for p in sorted(FIXTURES.glob("*.json"))
]
SEEDS += [
    {"type": "PUSH_ARTIFACT", "event_data": {"repository": {"repo_full_name": "a/b"}}},
    {"repository": {"repo_name": "a/b", "repo_url": "https://x"}, "push_data": {"tag": "1"}},
    {"docker_url": "quay.io/a/b", "updated_tags": ["1"]},
    {"action": "CREATED", "repositoryName": "r", "component": {"name": "c"}, "nodeId": "n"},
    {"id": "1", "action": "push", "target": {"repository": "a", "tag": "1"}},
    {"events": [{"id": "1", "action": "push", "target": {"repository": "a", "digest": "d"}}]},
    {
        "message": {
            "messageId": "1",
            "data": base64.b64encode(b'{"action":"INSERT","tag":"h/p/r/i:1"}').decode(),
        }
    },
    {"context": {"id": "1", "type": "dev.cdevents.change.merged.0.2.0"}, "subject": {}},
]
"""Realistic starting points: every fixture on disk plus a minimal shape per registry."""
SEED_EVENTS += [None] * (len(SEEDS) - len(SEED_EVENTS))

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["", "0" * 40, "refs/heads/main", "branch", "tag", "ADD", "DELETE"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def mutated_seed(draw: st.DrawFn, index: int | None = None) -> Any:
    """A realistic payload with a few values replaced by random JSON or removed."""
    if index is None:
        index = draw(st.integers(min_value=0, max_value=len(SEEDS) - 1))
    doc = json.loads(json.dumps(SEEDS[index]))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        parent: Any = None
        key: Any = None
        node = doc
        while isinstance(node, dict | list) and node and draw(st.booleans()):
            parent = node
            key = (
                draw(st.sampled_from(sorted(node)))
                if isinstance(node, dict)
                else draw(st.integers(min_value=0, max_value=len(node) - 1))
            )
            node = node[key]
        if parent is None:
            continue
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[key]
        else:
            parent[key] = draw(json_values)
    return doc


def encoded(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return strategy.map(lambda doc: json.dumps(doc).encode())


bodies = st.one_of(
    encoded(mutated_seed()),
    encoded(mutated_seed()),
    encoded(json_values),
    st.binary(max_size=120),
    st.sampled_from(
        [b"", b"  ", b"null", b"[]", b"{}", b'"\\ud800"', b'{"a":"\\udfff"}', b"[" * 100]
    ),
)


def header_text(printable: bool) -> st.SearchStrategy[str]:
    if printable:
        return st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
    # What aiohttp hands over for header bytes that are not UTF-8: lone surrogates.
    wire = st.binary(max_size=30).map(lambda b: b.decode("utf-8", "surrogateescape"))
    return st.text(max_size=40) | wire


@st.composite
def requests(draw: st.DrawFn, name: str, printable: bool = False) -> tuple[dict[str, str], bytes]:
    """Headers and body for ``name``: credentials valid, random, or valid for another body."""
    text = header_text(printable)
    event: str | None = None
    if draw(st.booleans()):
        index = draw(st.integers(min_value=0, max_value=len(SEEDS) - 1))
        body = json.dumps(draw(mutated_seed(index))).encode()
        event = SEED_EVENTS[index]
    else:
        body = draw(bodies)
    headers: dict[str, str] = {}
    mode = draw(st.sampled_from(["signed", "signed", "signed", "tampered", "random"]))
    if mode != "random":
        authorization = draw(st.sampled_from(sorted(AUTHORIZATIONS.values())))
        headers.update(credentials(name, body, authorization))
    if mode == "tampered":
        body = draw(bodies.filter(lambda b: b != body))
    if mode == "random" or draw(st.booleans()):
        names = sorted(credentials(name, b"", ""))
        for header in draw(st.lists(st.sampled_from(names), max_size=4)):
            headers[header] = draw(text)
    if event is None or not draw(st.integers(0, 4)):
        event = draw(st.sampled_from(KNOWN_EVENTS) | text)
    for header in EVENT_HEADERS:
        if draw(st.integers(0, 9)):
            headers[header] = event
    for header in DELIVERY_HEADERS:
        if draw(st.booleans()):
            headers[header] = draw(st.sampled_from(["f1e2d3c4-0000-4000-8000-000000000001"]) | text)
    content_type = draw(st.sampled_from(CONTENT_TYPES))
    if content_type:
        headers["Content-Type"] = content_type
    return headers, body


def specs() -> dict[str, ReceiverSpec]:
    docs: list[dict[str, Any]] = []
    for name in NAMES:
        docs += receiver_docs(f"fuzz-{name}", name, TOKEN, extra_secret=SECRET)
    return {spec.type: spec for spec in specs_from_documents(docs, "fuzz")}


SPECS = specs()


@pytest.mark.parametrize("name", NAMES)
def test_every_provider_is_fuzzed_with_a_valid_configuration(name: str) -> None:
    provider_for(name).validate(SPECS[name])


KNOWN_CORE_BUGS: dict[str, str] = {}
"""Failures found by this fuzzer in modules this file's author does not own, reported to
their owner; remove an entry once fixed (the test then passes, shown as XPASS meanwhile)."""


def known_bugs(names: list[str]) -> list[Any]:
    return [
        pytest.param(n, marks=pytest.mark.xfail(reason=KNOWN_CORE_BUGS[n], strict=False))
        if n in KNOWN_CORE_BUGS
        else n
        for n in names
    ]


@pytest.mark.parametrize("name", known_bugs(NAMES))
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(data=st.data())
def test_verify_and_parse_raise_only_rejections(name: str, data: st.DataObject) -> None:
    provider = provider_for(name)
    spec = SPECS[name]
    headers, body = data.draw(requests(name))
    request = Request.of(headers, body)
    try:
        provider.verify(spec, request)
        parsed = provider.parse(spec, request)
    except Rejected:
        return
    assert isinstance(parsed.event, str)
    for item in parsed.items:
        assert isinstance(item.delivery_id, str)
        assert item.delivery_id
    if parsed.ping or not parsed.items:
        return
    messages = normalising.messages(
        spec, parsed, RECEIVED_AT, normalising.traceparent(None), "fuzz.events"
    )
    assert len(messages) == len(parsed.items)
    assert len({m.id for m in messages}) == len(messages), "items of one delivery collide"
    for message in messages:
        envelope.validate(json.loads(message.payload))


class LoopThread:
    """The receiver app and its NATS connection on an event loop of their own, so hypothesis
    (synchronous) can drive real HTTP requests example by example."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def served(nats_session: NatsServer) -> Iterator[tuple[LoopThread, Ingress]]:
    docs: list[dict[str, Any]] = []
    for name in NAMES:
        docs += receiver_docs(f"fuzz-{name}", name, TOKEN, extra_secret=SECRET)
    runner = LoopThread()
    saved = {name: PROVIDERS[name] for name in OFFLINE}
    for name, factory in OFFLINE.items():
        PROVIDERS[name] = factory()
    try:
        ingress = runner.run(start_ingress(nats_session.url, docs))
        try:
            yield runner, ingress
        finally:
            runner.run(ingress.close())
    finally:
        PROVIDERS.update(saved)
        runner.stop()


async def post(ingress: Ingress, path: str, headers: dict[str, str], body: bytes) -> Any:
    resp = await ingress.client.post(path, data=body, headers=headers)
    raw = await resp.read()
    return resp.status, resp.content_type, raw


@pytest.mark.parametrize("name", NAMES)
@settings(
    max_examples=HTTP_EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(data=st.data())
def test_the_app_never_answers_500_and_always_answers_json(
    served: tuple[LoopThread, Ingress], name: str, data: st.DataObject
) -> None:
    runner, ingress = served
    headers, body = data.draw(requests(name, printable=True))
    path = path_of(f"fuzz-{name}", TOKEN)
    status, content_type, raw = runner.run(post(ingress, path, headers, body))
    assert status < 500 or status == 503, (status, raw[:300])
    assert content_type == "application/json", (status, raw[:300])
    answer = json.loads(raw)
    event(f"status {status}")
    assert isinstance(answer, dict)
    assert isinstance(answer.get("status"), str), answer
    if status == 503:
        assert answer.get("code") in ("not_stored", "suspended"), answer
