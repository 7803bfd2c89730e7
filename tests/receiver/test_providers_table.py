"""Every provider against the same request shapes, as one table, against a real nats-server.

A row is a provider's sender, a request shape built from its ordinary delivery, and the answer
expected: status, then the refusal's ``code`` (for a 200, the answer's ``status``) and words
its ``reason`` must contain. The shapes:

- the ordinary delivery (202; what is stored is what the answer's ids name, schema-valid);
- credentials: another secret (another path where the path is the only secret), none, an
  empty header; for HMAC headers the format: hex case, the algorithm prefix (upper-case,
  missing, or added where none is sent), a digest of another algorithm, not hex at all;
- events: the event header missing, another event, the events allow-list (the listed event
  in another case, an event not listed, no event type at all), pings, nothing to store;
- content type: ``text/plain``, a form, none;
- bodies: empty, malformed JSON, not UTF-8, nested past the decoder's limit;
- size: a delivery of exactly the body cap (202) and one byte over it (413);
- a redelivery, stored once.

What only one provider has (its payload's fields, its own credential formats, Flux's cases
in ``test_flux_handler_cases.py``) stays in ``test_<provider>.py``. Rows a provider fails
are marked ``xfail(strict=True)`` with the reason, so a fix shows up as an unexpected pass.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from receiver.providers import PROVIDERS, jwks
from receiver.providers.gcr import GCR, StaticKeys
from receiver.providers.generic_oidc import GenericOIDC
from schemas import envelope
from tests.support.ingress import Ingress, hmac_hex, path_of, receiver_docs, start_ingress
from tests.support.natsd import NatsServer

FIXTURES = Path(__file__).parent / "fixtures"
CDEVENT = Path(__file__).parents[1] / "schemas" / "fixtures" / "cdevents" / "v0_5_1"
TOKEN = "s3cr3t-s3cr3t-s3cr3t"
WRONG = "not-the-s3cr3t"
JSON = "application/json"
LIMIT = 64 * 1024
"""The body cap of this module's receiver: small, so the size rows stay cheap."""

USER, PASSWORD = "flux-hook", "pa:ss wörd"
AUDIENCE = "https://relay.example/hook"
EMAIL = "pubsub-push@acme.iam.gserviceaccount.com"
GOOGLE, ISSUER = "https://accounts.google.com", "https://token.ci.example.com"
SECRET = {
    "username": USER,
    "password": PASSWORD,
    "email": EMAIL,
    "audience": AUDIENCE,
    "issuers": ISSUER,
}
"""Every Secret key a provider here asks for, in every Receiver's Secret."""

KID = "table-key"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWKS = {
    "keys": [
        {**RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True), "kid": KID, "alg": "RS256"},
    ]
}


def bearer_id_token(issuer: str, genuine: bool) -> str:
    """``Bearer`` and an ID token for ``issuer``, signed by the published key or another."""
    now = int(time.time())
    claims = {"iss": issuer, "aud": AUDIENCE, "sub": "ci", "iat": now, "exp": now + 600}
    claims |= {"email": EMAIL, "email_verified": True}
    key = KEY if genuine else OTHER_KEY
    return "Bearer " + jwt.encode(claims, key, algorithm="RS256", headers={"kid": KID})


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass(frozen=True)
class Hmac:
    """How a provider writes its HMAC header."""

    header: str
    algorithm: str
    prefixed: bool
    """``<algorithm>=<hex>`` (GitHub style) rather than the bare hex digest."""
    other: str
    """An algorithm whose digest this header must not accept."""

    def value(self, body: bytes, key: str = TOKEN, algorithm: str = "", upper: bool = False) -> str:
        digest = hmac_hex(key, body, algorithm or self.algorithm)
        digest = digest.upper() if upper else digest
        return f"{self.algorithm}={digest}" if self.prefixed else digest


@dataclass(frozen=True)
class Sent:
    path: str
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class Sender:
    """One provider's sender: its ordinary delivery, and how it proves itself."""

    provider: str
    body: bytes
    headers: Mapping[str, str]
    """Everything it sends but the proof."""
    credential: str | None = None
    """The header carrying the proof; None where the unguessable path is the only secret."""
    prove: Callable[[bytes, bool], str] | None = field(default=None, repr=False)
    """That header's value for a body, with the Receiver's secret (True) or another."""
    hmac: Hmac | None = None
    event_header: str | None = None
    label: str = ""
    """The id in row names, when two senders share a provider."""

    @property
    def name(self) -> str:
        return self.label or self.provider

    def sent(
        self,
        body: bytes | None = None,
        *,
        genuine: bool = True,
        path: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> Sent:
        """The ordinary delivery, with another body (proven anew), path or headers."""
        data = self.body if body is None else body
        sent = dict(self.headers)
        if self.credential is not None and self.prove is not None:
            sent[self.credential] = self.prove(data, genuine)
        return Sent(path or path_of(self.provider), data, {**sent, **(headers or {})})


def signing(hmac: Hmac) -> dict[str, Any]:
    """The Sender fields of a provider proving itself with ``hmac``."""
    return {
        "credential": hmac.header,
        "prove": lambda body, genuine: hmac.value(body, TOKEN if genuine else WRONG),
        "hmac": hmac,
    }


def in_header(value: Callable[[str], str], header: str = "Authorization") -> dict[str, Any]:
    """The Sender fields of a provider proving itself with the secret in a header."""
    return {
        "credential": header,
        "prove": lambda body, genuine: value(TOKEN if genuine else WRONG),
    }


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def edited(body: bytes, **changes: Any) -> bytes:
    doc = json.loads(body)
    doc.update(changes)
    return json.dumps(doc).encode()


GENERIC_BODY = b'{"image": "ghcr.io/acme/app:1.4.2", "cluster": "prod-eu"}'
GITEA_DELIVERY = "f1e2d3c4-b5a6-4978-8695-a4b3c2d1e0f9"


def gitea_brand(provider: str, prefix: str) -> Sender:
    return Sender(
        provider,
        fixture("gitea_push.json"),
        {
            "Content-Type": JSON,
            f"{prefix}-Event": "push",
            f"{prefix}-Delivery": GITEA_DELIVERY,
            # Both forges also send GitHub-style headers; they must not matter.
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": GITEA_DELIVERY,
        },
        **signing(Hmac(f"{prefix}-Signature", "sha256", prefixed=False, other="sha1")),
        event_header=f"{prefix}-Event",
    )


GITHUB = Sender(
    "github",
    fixture("github_push.json"),
    {
        "Content-Type": JSON,
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
    },
    **signing(Hmac("X-Hub-Signature-256", "sha256", prefixed=True, other="sha512")),
    event_header="X-GitHub-Event",
)
GITLAB = Sender(
    "gitlab",
    fixture("gitlab_push.json"),
    {
        "Content-Type": JSON,
        "X-Gitlab-Event": "Push Hook",
        "X-Gitlab-Event-UUID": "3f7c1e92-5a4b-4c8d-9e0f-1a2b3c4d5e6f",
    },
    **in_header(lambda token: token, "X-Gitlab-Token"),
    event_header="X-Gitlab-Event",
)
BITBUCKET = Sender(
    "bitbucket",
    fixture("bitbucket_server_refs_changed.json"),
    {
        "Content-Type": "application/json; charset=UTF-8",
        "X-Event-Key": "repo:refs_changed",
        "X-Request-Id": "c9a3e1d7-2b4f-4a6c-8e0d-1f3b5a7c9e2d",
    },
    **signing(Hmac("X-Hub-Signature", "sha256", prefixed=True, other="sha512")),
    event_header="X-Event-Key",
)
GITEA = gitea_brand("gitea", "X-Gitea")
FORGEJO = gitea_brand("forgejo", "X-Forgejo")
AZUREDEVOPS = Sender(
    "azuredevops",
    fixture("azuredevops_push.json"),
    {"Content-Type": "application/json; charset=utf-8"},
    **in_header(lambda token: basic(USER, PASSWORD if token == TOKEN else token)),
)
GENERIC = Sender("generic", GENERIC_BODY, {"Content-Type": JSON})
GENERIC_HMAC_SIGNING = signing(Hmac("X-Signature", "sha256", prefixed=True, other="sha512"))
GENERIC_HMAC = Sender("generic-hmac", GENERIC_BODY, {"Content-Type": JSON}, **GENERIC_HMAC_SIGNING)
GENERIC_HMAC_EMPTY = replace(GENERIC_HMAC, body=b"", label="generic-hmac-empty-body")
"""generic-hmac signs the empty body too (as Flux): its credential rows run for both."""
HARBOR = Sender(
    "harbor", fixture("harbor_push.json"), {"Content-Type": JSON}, **in_header(lambda t: t)
)
DOCKERHUB = Sender("dockerhub", fixture("dockerhub_push.json"), {"Content-Type": JSON})
QUAY = Sender("quay", fixture("quay_push.json"), {"Content-Type": JSON})
NEXUS = Sender(
    "nexus",
    fixture("nexus_component.json"),
    {"Content-Type": JSON},
    **signing(Hmac("X-Nexus-Webhook-Signature", "sha1", prefixed=False, other="sha256")),
)
ACR = Sender("acr", fixture("acr_push.json"), {"Content-Type": JSON})
GCR_SENDER = Sender(
    "gcr",
    fixture("gcr_push.json"),
    {"Content-Type": JSON},
    credential="Authorization",
    prove=lambda body, genuine: bearer_id_token(GOOGLE, genuine),
)
DISTRIBUTION = Sender(
    "distribution",
    fixture("distribution_push.json"),
    {"Content-Type": "application/vnd.docker.distribution.events.v1+json"},
    **in_header(lambda token: f"Bearer {token}"),
)
CDEVENTS = Sender("cdevents", (CDEVENT / "change_merged.json").read_bytes(), {"Content-Type": JSON})
GENERIC_OIDC = Sender(
    "generic-oidc",
    GENERIC_BODY,
    {"Content-Type": JSON},
    credential="Authorization",
    prove=lambda body, genuine: bearer_id_token(ISSUER, genuine),
)

SENDERS = [
    GITHUB,
    GITLAB,
    BITBUCKET,
    GITEA,
    FORGEJO,
    AZUREDEVOPS,
    GENERIC,
    GENERIC_HMAC,
    HARBOR,
    DOCKERHUB,
    QUAY,
    NEXUS,
    ACR,
    GCR_SENDER,
    DISTRIBUTION,
    CDEVENTS,
    GENERIC_OIDC,
]
"""One sender per registered provider (checked below)."""
EVERY_SENDER = [*SENDERS, GENERIC_HMAC_EMPTY]
PROVEN = [s for s in EVERY_SENDER if s.credential is not None]
PATH_ONLY = [s for s in SENDERS if s.credential is None]
HMAC_SIGNED = [s for s in PROVEN if s.hmac is not None]
PREFIXED = [s for s in HMAC_SIGNED if s.hmac is not None and s.hmac.prefixed]
BARE_HEX = [s for s in HMAC_SIGNED if s.hmac is not None and not s.hmac.prefixed]
NAMED = [GITHUB, GITLAB, BITBUCKET, GITEA, FORGEJO]
"""Providers naming the event in a header."""
NO_EVENT_TYPE = [GENERIC, GENERIC_HMAC, DOCKERHUB, QUAY, GENERIC_OIDC]

LISTED = {
    "github": ["PUSH"],
    "gitlab": ["PUSH HOOK"],
    "bitbucket": ["Repo:Refs_Changed"],
    "gitea": ["Push"],
    "forgejo": ["PUSH"],
    "azuredevops": ["GIT.PUSH"],
    "harbor": ["push_artifact"],
    "nexus": ["created"],
    "acr": ["PUSH"],
    "gcr": ["insert"],
    "distribution": ["PUSH"],
    **{s.provider: ["push"] for s in NO_EVENT_TYPE},
}
"""``spec.events`` of each ``<provider>-only`` Receiver: the ordinary delivery's event, in
another case. cdevents' filter (with and without version suffix) is in test_cdevents.py."""


@pytest.fixture
async def ingress(
    nats_session: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Ingress]:
    # Offline twins of the providers that would fetch keys from the Internet.
    monkeypatch.setitem(PROVIDERS, "gcr", GCR(StaticKeys(JWKS)))
    monkeypatch.setitem(
        PROVIDERS, "generic-oidc", GenericOIDC(lambda issuer, url: jwks.StaticKeys(JWKS))
    )
    docs = [d for s in SENDERS for d in receiver_docs(s.provider, s.provider, extra_secret=SECRET)]
    for provider, events in LISTED.items():
        docs += receiver_docs(f"{provider}-only", provider, extra_secret=SECRET, events=events)
    ing = await start_ingress(nats_session.url, docs, body_limit=LIMIT)
    yield ing
    await ing.close()


def without(sent: Sent, header: str) -> Sent:
    return replace(sent, headers={k: v for k, v in sent.headers.items() if k != header})


def hmac_of(s: Sender) -> Hmac:
    assert s.hmac is not None
    return s.hmac


def credential_of(s: Sender) -> str:
    assert s.credential is not None
    return s.credential


# The request shapes: each builds one request from a sender's ordinary delivery.


def valid(s: Sender) -> Sent:
    return s.sent()


def wrong_secret(s: Sender) -> Sent:
    if s.credential is None:
        return s.sent(path=path_of(s.provider, WRONG))
    return s.sent(genuine=False)


def no_credential(s: Sender) -> Sent:
    return without(s.sent(), credential_of(s))


def refusal_names_the_missing_header(s: Sender) -> Sent:
    """No credential again: its row checks the reason names the header to send."""
    return no_credential(s)


def empty_credential(s: Sender) -> Sent:
    return s.sent(headers={credential_of(s): ""})


def uppercase_hex(s: Sender) -> Sent:
    h = hmac_of(s)
    return s.sent(headers={h.header: h.value(s.body, upper=True)})


def not_hex(s: Sender) -> Sent:
    """As long as the real digest, so it is the hex check that refuses it."""
    h = hmac_of(s)
    digest = h.value(s.body)
    prefix, _, hexdigest = digest.rpartition("=")
    return s.sent(headers={h.header: f"{prefix}{'=' if prefix else ''}{'z' * len(hexdigest)}"})


def garbage_signature(s: Sender) -> Sent:
    """Short and not hex: refused whichever check comes first."""
    h = hmac_of(s)
    return s.sent(headers={h.header: f"{h.algorithm}=not-hex" if h.prefixed else "not-hex"})


def prefix_uppercase(s: Sender) -> Sent:
    h = hmac_of(s)
    return s.sent(
        headers={h.header: h.algorithm.upper() + "=" + hmac_hex(TOKEN, s.body, h.algorithm)}
    )


def prefix_missing(s: Sender) -> Sent:
    h = hmac_of(s)
    return s.sent(headers={h.header: hmac_hex(TOKEN, s.body, h.algorithm)})


def prefix_added(s: Sender) -> Sent:
    h = hmac_of(s)
    return s.sent(headers={h.header: f"{h.algorithm}={h.value(s.body)}"})


def other_algorithm(s: Sender) -> Sent:
    h = hmac_of(s)
    return s.sent(headers={h.header: h.value(s.body, algorithm=h.other)})


def no_event_header(s: Sender) -> Sent:
    assert s.event_header is not None
    return without(s.sent(), s.event_header)


OTHER_EVENT = {
    "github": "issues",
    "gitlab": "Merge Request Hook",
    "bitbucket": "repo:modified",
    "gitea": "release",
    "forgejo": "release",
}


def other_event(s: Sender) -> Sent:
    assert s.event_header is not None
    return s.sent(headers={s.event_header: OTHER_EVENT[s.provider]})


def listed_event_other_case(s: Sender) -> Sent:
    return s.sent(path=path_of(f"{s.provider}-only"))


def no_event_type_on_a_filtering_receiver(s: Sender) -> Sent:
    """spec.events applies only to deliveries that have an event type."""
    return listed_event_other_case(s)


def with_event(s: Sender, event: str) -> Sent:
    """A delivery of ``event``, where the provider reads it (header or body)."""
    if s.event_header is not None:
        return s.sent(headers={s.event_header: event})
    doc = json.loads(s.body)
    if s.provider == "azuredevops":
        doc |= {"eventType": event, "id": "b-1"}
    elif s.provider == "harbor":
        doc["type"] = event
    elif s.provider == "acr":
        doc |= {"action": event, "id": "d-1"}
    elif s.provider == "nexus":
        doc["action"] = event
    elif s.provider == "distribution":
        doc["events"][0]["action"] = event
    elif s.provider == "gcr":
        inner = {"action": event, "digest": "gcr.io/acme/app@sha256:" + "d" * 64}
        doc["message"] |= {"data": b64json(inner), "messageId": "m-2"}
    return s.sent(json.dumps(doc).encode())


def b64json(doc: Any) -> str:
    return base64.b64encode(json.dumps(doc).encode()).decode()


UNLISTED = {
    "github": "release",
    "gitlab": "Tag Push Hook",
    "bitbucket": "repo:modified",
    "gitea": "create",
    "forgejo": "create",
    "azuredevops": "build.complete",
    "harbor": "DELETE_ARTIFACT",
    "nexus": "DELETED",
    "acr": "delete",
    "gcr": "DELETE",
    "distribution": "pull",
}


def unlisted_event(s: Sender) -> Sent:
    return replace(with_event(s, UNLISTED[s.provider]), path=path_of(f"{s.provider}-only"))


PINGS = {
    "github": (b'{"zen": "Design for failure.", "hook_id": 1}', "ping"),
    "bitbucket": (b'{"test": true}', "diagnostics:ping"),
}


def ping(s: Sender) -> Sent:
    if s.provider == "acr":
        return s.sent(b'{"id": "p-1", "timestamp": "2024-01-10T12:00:00Z", "action": "ping"}')
    body, event = PINGS[s.provider]
    return with_event(replace(s, body=body), event)


def unsigned_ping(s: Sender) -> Sent:
    return without(ping(s), credential_of(s))


def nothing_to_store(s: Sender) -> Sent:
    if s.provider == "bitbucket":
        return s.sent(edited(s.body, changes=[]))
    doc = json.loads(s.body)
    doc["resource"]["refUpdates"] = []
    return s.sent(json.dumps(doc).encode())


def text_plain(s: Sender) -> Sent:
    return s.sent(headers={"Content-Type": "text/plain"})


def form_content_type(s: Sender) -> Sent:
    return s.sent(headers={"Content-Type": "application/x-www-form-urlencoded"})


def no_content_type(s: Sender) -> Sent:
    return without(s.sent(), "Content-Type")


def empty_body(s: Sender) -> Sent:
    return s.sent(b"")


def malformed_json(s: Sender) -> Sent:
    return s.sent(b"{not json")


def not_utf8(s: Sender) -> Sent:
    return s.sent(b"\xff\xfe{}")


def nested_too_deep(s: Sender) -> Sent:
    return s.sent(b"[" * 5000 + b"]" * 5000)


def at_the_body_cap(s: Sender) -> Sent:
    return s.sent(s.body + b" " * (LIMIT - len(s.body)))


def over_the_body_cap(s: Sender) -> Sent:
    return s.sent(s.body + b" " * (LIMIT + 1 - len(s.body)))


Shape = Callable[[Sender], Sent]
BAD_SIGNATURE = "signature_invalid"
BAD_PAYLOAD = "payload_invalid"
DEAD_LETTERED = "payload_unparseable"


def row(
    sender: Sender,
    shape: Shape,
    status: int,
    code: str | None = None,
    reasons: tuple[str, ...] = (),
    fails: str = "",
) -> Any:
    """One row (a ``pytest.param``): ``reasons`` are fragments the refusal's reason must
    contain; ``fails`` marks a finding, a provider not answering as it should."""
    marks = [pytest.mark.xfail(strict=True, reason=fails)] if fails else []
    name = f"{sender.name}-{shape.__name__.replace('_', '-')}"
    return pytest.param(sender, shape, status, code, reasons, id=name, marks=marks)


def each(
    shape: Shape,
    senders: list[Sender],
    status: int,
    code: str | None = None,
    unless: Mapping[str, tuple[Any, ...]] | None = None,
) -> list[Any]:
    """``shape`` for every sender, with the answers ``unless`` gives some instead."""
    other = unless or {}
    return [row(s, shape, *other.get(s.name, (status, code))) for s in senders]


FINDINGS: dict[tuple[str, str], str] = {}
"""Rows a provider fails today, each with what is wrong (marked xfail, strict)."""

READS_JSON_ONLY = {p: (415, "unsupported_media_type") for p in ("gitea", "forgejo")}
HUB_MEDIA_TYPES = {p: (415, "unsupported_media_type") for p in ("github", "bitbucket")}
"""GitHub's library (Flux's, for github and bitbucket) reads JSON or a form, nothing else."""
DISTRIBUTION_MEDIA_TYPES = {"distribution": (415, "unsupported_media_type")}
CDEVENTS_DEAD_LETTER = {"cdevents": (400, DEAD_LETTERED)}

ROWS = [
    *each(valid, EVERY_SENDER, 202),
    # Credentials.
    *each(
        wrong_secret,
        PROVEN,
        400,
        BAD_SIGNATURE,
        unless={
            "gcr": (400, BAD_SIGNATURE, ("Signature",)),
            "generic-oidc": (400, BAD_SIGNATURE, ("Signature verification failed",)),
        },
    ),
    *each(wrong_secret, PATH_ONLY, 404, "not_found"),
    *[row(s, no_credential, 400, BAD_SIGNATURE, ("missing",)) for s in PROVEN],
    *[
        row(s, refusal_names_the_missing_header, 400, BAD_SIGNATURE, (credential_of(s),), fails)
        for s in PROVEN
        for fails in [FINDINGS.get((s.name, "refusal_names_the_missing_header"), "")]
    ],
    *each(empty_credential, PROVEN, 400, BAD_SIGNATURE),
    *each(uppercase_hex, HMAC_SIGNED, 202, unless={"nexus": (400, BAD_SIGNATURE)}),
    *each(not_hex, HMAC_SIGNED, 400, BAD_SIGNATURE),
    *each(garbage_signature, HMAC_SIGNED, 400, BAD_SIGNATURE),
    *each(prefix_uppercase, PREFIXED, 400, BAD_SIGNATURE),
    *each(prefix_missing, PREFIXED, 400, BAD_SIGNATURE),
    *each(prefix_added, BARE_HEX, 400, BAD_SIGNATURE),
    *each(other_algorithm, HMAC_SIGNED, 400, BAD_SIGNATURE),
    # Events.
    # Flux reads the event header only for spec.events; gitea and forgejo require theirs.
    *each(no_event_header, NAMED, 202, unless={p: (400, BAD_PAYLOAD) for p in READS_JSON_ONLY}),
    *each(other_event, NAMED, 202),
    *each(listed_event_other_case, [s for s in SENDERS if s.provider in UNLISTED], 202),
    *each(no_event_type_on_a_filtering_receiver, NO_EVENT_TYPE, 202),
    *each(
        unlisted_event,
        [s for s in SENDERS if s.provider in UNLISTED],
        400,
        "event_not_allowed",
        unless={
            # Flux applies spec.events to none of the registries; distribution filters
            # event by event and answers an envelope with none left 200 "ignored".
            **{p: (202, None) for p in ("harbor", "nexus", "acr", "gcr")},
            "distribution": (200, "ignored"),
        },
    ),
    *each(ping, [GITHUB, BITBUCKET, ACR], 200, "ok"),
    *each(unsigned_ping, [GITHUB, BITBUCKET], 400, BAD_SIGNATURE),
    *each(nothing_to_store, [BITBUCKET, AZUREDEVOPS], 200, "ignored"),
    # Content type.
    *each(
        text_plain,
        SENDERS,
        202,
        unless=HUB_MEDIA_TYPES | READS_JSON_ONLY | DISTRIBUTION_MEDIA_TYPES,
    ),
    *each(
        form_content_type,
        SENDERS,
        202,
        unless={
            # A form, but not one with a ``payload`` field.
            **{p: (400, BAD_PAYLOAD) for p in ("github", "bitbucket")},
            **READS_JSON_ONLY,
            **DISTRIBUTION_MEDIA_TYPES,
        },
    ),
    *each(no_content_type, SENDERS, 202, unless=HUB_MEDIA_TYPES),
    # Bodies.
    *each(
        empty_body,
        SENDERS,
        400,
        BAD_PAYLOAD,
        unless={
            # Flux never reads these bodies (gitlab, harbor) or takes any JSON or nothing.
            **{p: (202, None) for p in ("gitlab", "harbor", "generic", "generic-hmac")},
            "generic-oidc": (202, None),
            **CDEVENTS_DEAD_LETTER,
        },
    ),
    *each(malformed_json, SENDERS, 400, BAD_PAYLOAD, unless=CDEVENTS_DEAD_LETTER),
    *each(not_utf8, SENDERS, 400, BAD_PAYLOAD, unless=CDEVENTS_DEAD_LETTER),
    *each(nested_too_deep, SENDERS, 400, BAD_PAYLOAD, unless=CDEVENTS_DEAD_LETTER),
    # Size.
    *each(at_the_body_cap, SENDERS, 202),
    *each(over_the_body_cap, SENDERS, 413, "body_too_large"),
]


async def post(ingress: Ingress, sent: Sent) -> tuple[int, dict[str, Any]]:
    resp = await ingress.client.post(
        sent.path, data=sent.body, headers=sent.headers, skip_auto_headers=["Content-Type"]
    )
    return resp.status, await resp.json()


def test_every_registered_provider_has_a_sender() -> None:
    """A new provider gets its rows by getting a sender here."""
    assert sorted(s.provider for s in SENDERS) == sorted(PROVIDERS)


@pytest.mark.parametrize(("sender", "shape", "status", "code", "reasons"), ROWS)
async def test_each_provider_answers_each_request_shape(
    ingress: Ingress,
    sender: Sender,
    shape: Shape,
    status: int,
    code: str | None,
    reasons: tuple[str, ...],
) -> None:
    got, answer = await post(ingress, shape(sender))
    assert got == status, answer
    stored = [envelope.validate(s.envelope) for s in await ingress.stored()]
    if status == 202:
        assert answer["status"] == "accepted"
        assert "duplicate" not in answer
        assert [e["id"] for e in stored] == answer.get("ids", [answer.get("id")])
        assert {e["provider"] for e in stored} == {sender.provider}
        return
    assert stored == []
    if status == 200:
        assert answer["status"] == code
    else:
        assert answer == {"status": "rejected", "code": code, "reason": answer["reason"]}
        assert answer["reason"]
        for fragment in reasons:  # as words: X-Hub-Signature is not in X-Hub-Signature-256
            assert re.search(rf"(?<![\w-]){re.escape(fragment)}(?![\w-])", answer["reason"])


@pytest.mark.parametrize("sender", [pytest.param(s, id=s.name) for s in SENDERS])
async def test_a_redelivery_is_stored_once(ingress: Ingress, sender: Sender) -> None:
    first_status, first = await post(ingress, sender.sent())
    again_status, again = await post(ingress, sender.sent())
    assert first_status == again_status == 202, (first, again)
    assert "duplicate" not in first
    assert again["duplicate"] is True
    ids = first.get("ids", [first.get("id")])
    assert again.get("ids", [again.get("id")]) == ids
    assert [s.envelope["id"] for s in await ingress.stored()] == ids
