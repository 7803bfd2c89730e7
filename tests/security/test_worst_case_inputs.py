"""What the worst body a sender may send costs: every parsing path, given the 3 MiB input
that is hardest for it, finishes in time linear in the body and in memory a fixed multiple
of it; and on the real receiver the event loop keeps answering while such a body is read.

A fuzzer looking for crashes does not find what costs time: the nesting check once used a
backtracking pattern that froze the event loop for 9.75 s on a 64 KiB unterminated string of
escaped quotes (quadratic: hours at 3 MiB), and valid JSON never showed it. So each path is
given the inputs an attacker would build (unterminated strings of escapes, nesting just
under and over the limit, millions of tiny arrays and one-member objects, long digit runs,
lone surrogate escapes, huge and duplicate keys, 3 MiB of ``%`` in a form, of ``a:`` in an
image reference, of URI characters where a URI is checked), with valid credentials so that
``parse`` is reached, each padded to the body limit.

Bounds, and why they separate linear from quadratic on this 2-core machine:

* **Time**: :data:`TIME_BUDGET` (2 s) of CPU per case at the body limit, measured with
  ``time.process_time`` so a loaded machine (which delays, but does not add, CPU time) does
  not flake it. The slowest case measured here takes 0.92 s (arrays nested just under the
  depth limit, decoded then schema-checked); a quadratic path on 3 MiB takes hours (the old
  pattern: 9.75 s at 64 KiB, 48**2 times that at 3 MiB). A CPU-time alarm stops a case at
  twice the budget, so a regression fails in seconds instead of hanging the run.
* **Memory**: the peak traced by ``tracemalloc`` during verify+parse stays under
  :data:`MEMORY_MULTIPLE` (64) times the body. Decoded JSON is bigger than its text: orjson
  reserves about 12 times the body up front, and CPython's smallest containers cost 56-184
  bytes for the 2-5 bytes of ``[],`` or ``{"":`` that make them; the worst shape measured
  (chains of one-member objects) peaks at 48.6 times. What does not fit is a path keeping
  an object per byte it meets: ``urllib``'s percent-decoding did (190 times), and so does
  the backtracking stack of a URI pattern (120-230 bytes per character).

The two are measured in two runs, the timed one without ``tracemalloc``, which slows
allocation-heavy cases tenfold (9 s for one 3 MiB body). So the traced run reads the same
worst case at an eighth of the body limit (:data:`MEMORY_SCALE`): memory linear in the body
has the same multiple at any size (measured at both sizes, every case's multiple agreed, or
was higher at the smaller size, where fixed costs weigh more), and a path whose memory grows
faster than its input grows its time too, which the full-size run bounds.

What the providers share (the JSON decoder, its nesting check) is tried at length through
``generic``; every provider is then given the worst case of its own path. Then the nesting
check alone, across its 64 KiB windows; the patterns that see a sender's text; the
reconciler's paths over a sender's payload; the rewrites that made paths linear, read
against what they replace; and deliveries through the real app and a real nats-server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import gc
import hashlib
import hmac
import io
import ipaddress
import itertools
import json
import random
import re
import signal
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, quote

import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer
from celpy import celtypes
from celpy.adapter import json_to_cel
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from receiver import addressing, normalising
from receiver.app import create_metrics_app
from receiver.config.spec import ReceiverSpec, specs_from_documents
from receiver.errors import (
    DeadLetter,
    DeliveryTooLarge,
    PayloadInvalid,
    Rejected,
)
from receiver.providers import PROVIDERS, common, hub, jwks
from receiver.providers.base import Provider, Request
from receiver.providers.cdevents import unversioned
from receiver.providers.gcr import GCR, StaticKeys
from receiver.providers.generic_oidc import GenericOIDC
from receiver.settings import ReceiverSettings, parse_networks
from reconciler import refs, urls
from reconciler.filtering import Filters, to_cel
from reconciler.narrowing import compile_paths, narrowing_paths, paths_allow
from schemas import envelope, natsbinding
from schemas.cdevents import validating
from schemas.cdevents.cloudevent import _JSON_MEDIA
from schemas.excerpts import MAX_QUOTED, clipped, excerpt
from tests.support.ingress import Ingress, path_of, receiver_docs, start_ingress
from tests.support.natsd import NatsServer

LIMIT = ReceiverSettings().body_limit
"""The default body limit (3 MiB): the largest body a sender can make any path read."""
TIME_BUDGET = 2.0
"""CPU seconds one case may take (see the module docstring)."""
MEMORY_MULTIPLE = 64
"""Peak traced heap allowed per byte of body (see the module docstring)."""
MEMORY_SCALE = 8
"""The traced run reads the same worst case at an eighth of the body limit (see the module
docstring)."""
TRACED_DEADLINE = 20.0
"""CPU seconds the traced run of a case may take (``tracemalloc`` slows it tenfold)."""
MAX_REASON = 1024
"""Characters a refusal's reason may have: it is answered and logged, so a sender's value
quoted in it must be clipped."""
PROBE_BOUND = 3.0
"""Seconds the probe may wait for an answer while a worst-case body is read: three times the
slowest path's CPU time (a loaded machine stretches wall time), hours less than a quadratic
one's."""

TOKEN = "worst-case-t0ken-0123456789"
USER, PASSWORD = "relay", "relay-password"
ISSUER = "https://issuer.worst-case.example"
AUDIENCE = "https://relay.worst-case.example/hook"
EMAIL = "pubsub@worst-case.iam.gserviceaccount.com"
SECRET = {
    "username": USER,
    "password": PASSWORD,
    "email": EMAIL,
    "audience": AUDIENCE,
    "issuers": ISSUER,
}
KID = "worst-case-key"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWKS = {
    "keys": [{**RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True), "kid": KID, "alg": "RS256"}]
}
OFFLINE: dict[str, Provider] = {
    "gcr": GCR(StaticKeys(JWKS)),
    "generic-oidc": GenericOIDC(lambda issuer, url: jwks.StaticKeys(JWKS)),
}
"""Providers whose registry instance would fetch keys from the Internet get an offline twin
of the same class."""
SPECS: dict[str, ReceiverSpec] = {
    spec.type: spec
    for spec in specs_from_documents(
        [
            doc
            for name in sorted(PROVIDERS)
            for doc in receiver_docs(f"worst-{name}", name, TOKEN, extra_secret=SECRET)
        ],
        "worst-case",
    )
}
FIXTURES = Path(__file__).resolve().parents[1] / "schemas" / "fixtures" / "cdevents"
MERGED: dict[str, Any] = json.loads((FIXTURES / "v0_5_1" / "change_merged.json").read_text())


def provider(name: str) -> Provider:
    return OFFLINE.get(name) or PROVIDERS[name]


def id_token(issuer: str) -> str:
    now = int(time.time())
    claims = {
        "aud": AUDIENCE,
        "email": EMAIL,
        "email_verified": True,
        "exp": now + 3600,
        "iat": now,
        "iss": issuer,
        "jti": "worst-case",
    }
    return jwt.encode(claims, KEY, algorithm="RS256", headers={"kid": KID})


def mac(body: bytes, algorithm: str = "sha256") -> str:
    return hmac.new(TOKEN.encode(), body, getattr(hashlib, algorithm)).hexdigest()


JSON = {"Content-Type": "application/json"}


def credentials(name: str, body: bytes, event: str | None) -> dict[str, str]:
    """Headers that pass ``name``'s verification for ``body``, and name ``event`` where the
    provider reads it from a header: every case reaches ``parse``."""
    if name == "github":
        return {
            **JSON,
            "X-GitHub-Event": event or "push",
            "X-GitHub-Delivery": "worst-1",
            "X-Hub-Signature-256": "sha256=" + mac(body),
        }
    if name == "gitlab":
        return {**JSON, "X-Gitlab-Token": TOKEN, "X-Gitlab-Event": event or "Push Hook"}
    if name == "bitbucket":
        return {
            **JSON,
            "X-Hub-Signature": "sha256=" + mac(body),
            "X-Event-Key": event or "repo:refs_changed",
            "X-Request-Id": "worst-1",
        }
    if name in ("gitea", "forgejo"):
        brand = name.capitalize()
        return {
            **JSON,
            f"X-{brand}-Signature": mac(body),
            f"X-{brand}-Event": event or "push",
            f"X-{brand}-Delivery": "worst-1",
        }
    if name == "azuredevops":
        basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        return {**JSON, "Authorization": f"Basic {basic}"}
    if name == "generic-hmac":
        return {**JSON, "X-Signature": "sha256=" + mac(body)}
    if name == "harbor":
        return {**JSON, "Authorization": TOKEN}
    if name == "nexus":
        return {**JSON, "X-Nexus-Webhook-Signature": mac(body, "sha1")}
    if name == "gcr":
        return {**JSON, "Authorization": "Bearer " + id_token("https://accounts.google.com")}
    if name == "generic-oidc":
        return {**JSON, "Authorization": "Bearer " + id_token(ISSUER)}
    if name == "distribution":
        return {**JSON, "Authorization": f"Bearer {TOKEN}"}
    return dict(JSON)  # generic, cdevents, dockerhub, quay, acr: the path is the proof


# ----------------------------------------------------------------------------- bodies

Body = Callable[[int], bytes]
"""A worst case of a given size: built when its test runs (3 MiB each), at the body limit
for the timed run and at a fraction of it for the traced one."""


def filled(template: bytes, unit: bytes, last: bytes, size: int) -> bytes:
    """``template`` with its ``@@`` replaced by as many ``unit`` as fit in ``size`` bytes,
    followed by ``last`` (which closes a comma-separated run of units)."""
    prefix, marker, suffix = template.partition(b"@@")
    assert marker, "template without @@"
    count = (size - len(prefix) - len(last) - len(suffix)) // len(unit)
    return prefix + unit * count + last + suffix


def fill(template: bytes, unit: bytes, last: bytes = b"") -> Body:
    """``template`` with ``unit`` repeated at its ``@@``."""
    return lambda size: filled(template, unit, last, size)


def run(template: bytes, unit: bytes) -> Body:
    """``template`` with a JSON array of ``unit`` repeated at its ``@@``."""
    return fill(template.replace(b"@@", b"[@@]"), unit + b",", unit)


def text(template: bytes, unit: bytes, head: bytes = b"", tail: bytes = b"") -> Body:
    """``template`` with a JSON string at its ``@@``: ``head``, ``unit`` repeated, ``tail``."""
    return fill(template.replace(b"@@", b'"' + head + b"@@" + tail + b'"'), unit)


def numbered(template: bytes, unit: bytes) -> Body:
    """``template`` with distinct ``unit % i`` (fixed width) joined by commas at its ``@@``."""

    def build(size: int) -> bytes:
        width = len(unit % 0) + 1
        count = (size - len(template)) // width
        return template.replace(b"@@", b",".join(unit % i for i in range(count)))

    return build


def then_garbage(body: Body) -> Body:
    """``body`` with its last byte made a syntax error: both JSON decoders read it all."""
    return lambda size: body(size)[:-1] + b"x"


def nested(depth: int) -> bytes:
    """Arrays nested ``depth`` deep: a unit of the just-under-the-limit shape."""
    return b"[" * depth + b"]" * depth


def chain(depth: int) -> bytes:
    """One-member objects nested ``depth`` deep: the most heap per byte of JSON."""
    return b'{"":' * depth + b"0" + b"}" * depth


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def cdevent_with(path: tuple[str, ...], slot: bytes, doc: dict[str, Any] = MERGED) -> bytes:
    """The change.merged fixture with the member at ``path`` replaced by ``slot`` (raw JSON,
    which may carry a ``@@`` to fill)."""
    copy = json.loads(json.dumps(doc))
    node = copy
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = "@@slot@@"
    return dumps(copy).replace(b'"@@slot@@"', slot)


CE = {
    "specversion": "1.0",
    "id": MERGED["context"]["id"],
    "source": MERGED["context"]["source"],
    "type": MERGED["context"]["type"],
}
STRUCTURED = {"Content-Type": "application/cloudevents+json"}
BINARY = {
    **JSON,
    "ce-specversion": "1.0",
    "ce-id": MERGED["context"]["id"],
    "ce-source": MERGED["context"]["source"],
    "ce-type": MERGED["context"]["type"],
    "ce-time": MERGED["context"]["timestamp"],
}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
LINK = b'{"linkType":"RELATION","linkKind":"TRIGGER","target":{"contextId":"c"}}'
PUSH = b'{"ref":"refs/heads/main","after":"a","before":"b","commits":[@@]}'
"""A GitHub-shaped push whose commits are the worst case."""
CUSTOM_DATA = cdevent_with(("customData",), b'{"x":[@@]}')
"""A CDEvent whose ``customData`` holds the worst case."""


def data_string(unit: bytes) -> Body:
    """A structured CloudEvent whose ``data`` is the CDEvent as a JSON string, its
    ``customData`` a run of ``unit``."""

    def build(size: int) -> bytes:
        inner = filled(CUSTOM_DATA, unit + b",", unit, size - 400).decode()
        return dumps({**CE, "data": inner})

    return build


def data_base64(unit: bytes) -> Body:
    """A structured CloudEvent whose ``data_base64`` is the CDEvent, its ``customData`` a
    run of ``unit``: the decoded JSON is three quarters of the body."""

    def build(size: int) -> bytes:
        inner = filled(CUSTOM_DATA, unit + b",", unit, size * 3 // 4 - 300)
        return dumps({**CE, "data_base64": base64.b64encode(inner).decode()})

    return build


def pubsub(inner: Body) -> Body:
    """A Pub/Sub push whose base64 ``message.data`` is ``inner``, filling the body."""

    def build(size: int) -> bytes:
        data = base64.b64encode(inner(size * 3 // 4 - 100)).decode()
        return dumps({"message": {"messageId": "m-1", "data": data}})

    return build


def events_of_long_urls(size: int) -> bytes:
    """As many registry events as one delivery may carry, their URLs sharing the body."""
    event = b'{"id":"%d","action":"push","target":{"repository":"a","url":"%s"}}'
    url = (size - 20) // common.MAX_ITEMS - len(event) - 4
    events = b",".join(event % (i, b"u" * url) for i in range(common.MAX_ITEMS))
    return b'{"events":[' + events + b"]}"


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Attack:
    """One worst case: a provider, its body, what the provider must answer (None:
    accepted), and extra headers (a content type, the event of header-named providers)."""

    provider: str
    body: Body
    expect: type[Rejected] | None = None
    event: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def attack(
    case_id: str,
    name: str,
    body: Body,
    expect: type[Rejected] | None = None,
    *,
    event: str | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    return pytest.param(Attack(name, body, expect, event, headers or {}), id=case_id)


ATTACKS = [
    # The decoder and nesting check every provider shares, through generic (any JSON value).
    attack(
        "generic-unterminated-string-of-escaped-quotes",
        "generic",
        fill(b"[" * 65 + b'"@@', b'\\"'),
        PayloadInvalid,
    ),
    attack(
        "generic-quotes-and-brackets-alternating",
        "generic",
        fill(b"[" * 65 + b"@@", b'"['),
        PayloadInvalid,
    ),
    attack("generic-3-mib-of-open-brackets", "generic", fill(b"@@", b"["), PayloadInvalid),
    attack("generic-arrays-nested-just-under-the-limit", "generic", run(b"@@", nested(63))),
    attack(
        "generic-nested-arrays-then-garbage-both-decoders-read",
        "generic",
        then_garbage(run(b"@@", nested(63))),
        PayloadInvalid,
    ),
    attack("generic-one-member-object-chains", "generic", run(b"@@", chain(62))),
    attack("generic-19-digit-numbers", "generic", run(b"@@", b"1" * 19)),
    attack("generic-3-mib-integer", "generic", fill(b"@@", b"7"), PayloadInvalid),
    attack("generic-3-mib-of-fraction-digits", "generic", fill(b"0.@@", b"3")),
    attack("generic-lone-surrogate-escapes", "generic", run(b"@@", b'"\\ud800"'), PayloadInvalid),
    attack("generic-paired-surrogate-escapes", "generic", text(b"@@", b"\\ud83d\\ude80")),
    attack("generic-short-non-latin-strings", "generic", run(b"@@", '"\u0101"'.encode())),
    attack("generic-3-mib-key", "generic", fill(b'{"@@":0}', b"k")),
    attack("generic-duplicate-keys", "generic", fill(b"{@@}", b'"a":0,', b'"a":0')),
    attack("generic-distinct-keys", "generic", numbered(b"{@@}", b'"%07d":0')),
    attack("generic-3-mib-of-white-space", "generic", fill(b"@@", b" \t\r\n")),
    attack(
        "generic-utf-16-body",
        "generic",
        lambda size: filled(b'"@@"', b"a", b"", size // 2).decode().encode("utf-16-le"),
    ),
    attack("generic-invalid-utf-8", "generic", fill(b'"@@"', b"\xff"), PayloadInvalid),
    attack("generic-hmac-signed-3-mib-string", "generic-hmac", text(b"@@", b"s")),
    attack("generic-oidc-token-then-small-objects", "generic-oidc", run(b"@@", b'{"":0}')),
    # Git providers: their own walks (commits, changes, links) and encodings.
    attack("github-commits-of-one-path-each", "github", fill(PUSH, b'{"added":["a"]},', b"{}")),
    attack(
        "github-commit-of-distinct-paths",
        "github",
        numbered(PUSH.replace(b"@@", b'{"added":[@@]}'), b'"p/%07d"'),
    ),
    attack(
        "github-form-of-percent-signs",
        "github",
        fill(b"payload=@@", b"%"),
        PayloadInvalid,
        headers=FORM,
    ),
    attack(
        "github-form-of-percent-encoded-arrays",
        "github",
        fill(
            b"payload=" + quote(b'{"ref":"refs/heads/main","x":[', safe="").encode() + b"@@",
            b"%5B%5D%2C",
            b"%5B%5D%5D%7D",
        ),
        headers=FORM,
    ),
    attack("gitea-commits-of-one-path-each", "gitea", fill(PUSH, b'{"added":["a"]},', b"{}")),
    attack("forgejo-3-mib-ref", "forgejo", text(b'{"ref":@@}', b"r", b"refs/heads/")),
    attack(
        "gitlab-commits-of-one-path-each",
        "gitlab",
        fill(
            b'{"ref":"refs/heads/main","total_commits_count":1,"commits":[@@]}',
            b'{"modified":["a"]},',
            b"{}",
        ),
    ),
    attack("gitlab-3-mib-of-white-space", "gitlab", fill(b"@@", b" ")),
    attack(
        "bitbucket-clone-links-by-the-hundred-thousand",
        "bitbucket",
        run(b'{"repository":{"links":{"clone":@@}},"changes":[{"refId":"r"}]}', b'{"name":"x"}'),
    ),
    attack(
        "bitbucket-changes-by-the-hundred-thousand",
        "bitbucket",
        run(b'{"changes":@@}', b'{"refId":"r"}'),
        DeliveryTooLarge,
    ),
    attack(
        "bitbucket-3-mib-ref-type-is-quoted-clipped",
        "bitbucket",
        text(b'{"push":{"changes":[{"new":{"name":"m","type":@@}}]}}', b"t"),
        PayloadInvalid,
        event="repo:push",
    ),
    attack(
        "azuredevops-ref-updates-by-the-hundred-thousand",
        "azuredevops",
        run(b'{"eventType":"git.push","resource":{"refUpdates":@@}}', b'{"name":"r"}'),
        DeliveryTooLarge,
    ),
    attack("azuredevops-3-mib-event-type", "azuredevops", text(b'{"eventType":@@}', b"e")),
    # Registries: references split, items counted, fields copied.
    attack(
        "harbor-resource-url-of-colons",
        "harbor",
        text(b'{"event_data":{"resources":[{"resource_url":@@}]}}', b"a:"),
    ),
    attack(
        "harbor-resources-by-the-hundred-thousand",
        "harbor",
        run(b'{"event_data":{"resources":@@}}', b'{"resource_url":"h/a:1"}'),
        DeliveryTooLarge,
    ),
    attack("harbor-3-mib-of-tabs", "harbor", fill(b"@@", b"\t")),
    attack("quay-docker-url-of-colons", "quay", text(b'{"docker_url":@@}', b"a:")),
    attack(
        "quay-tags-by-the-hundred-thousand",
        "quay",
        run(b'{"docker_url":"quay.io/a/b","updated_tags":@@}', b'"t"'),
        DeliveryTooLarge,
    ),
    attack(
        "dockerhub-3-mib-repository", "dockerhub", text(b'{"repository":{"repo_name":@@}}', b"r")
    ),
    attack(
        "nexus-3-mib-component",
        "nexus",
        text(b'{"action":"CREATED","component":{"name":@@}}', b"c"),
    ),
    attack(
        "acr-3-mib-action", "acr", text(b'{"id":"1","action":@@,"target":{"repository":"a"}}', b"a")
    ),
    attack(
        "gcr-base64-message-of-small-objects",
        "gcr",
        pubsub(run(b'{"action":"INSERT","tag":"h/p/r/i:1","x":@@}', b'{"":0}')),
    ),
    attack(
        "gcr-base64-message-nested-over-the-limit",
        "gcr",
        pubsub(fill(b'{"action":"INSERT","x":@@', b"[")),
        PayloadInvalid,
    ),
    attack(
        "gcr-tag-reference-of-colons", "gcr", pubsub(text(b'{"action":"INSERT","tag":@@}', b"a:"))
    ),
    attack("distribution-most-events-of-longest-urls", "distribution", events_of_long_urls),
    attack(
        "distribution-events-by-the-million",
        "distribution",
        run(b'{"events":@@}', b"{}"),
        DeliveryTooLarge,
    ),
    # CDEvents: schema validation, URI formats, CloudEvents framings.
    attack(
        "cdevents-links-by-the-ten-thousand",
        "cdevents",
        run(cdevent_with(("context", "links"), b"@@"), LINK),
    ),
    attack(
        "cdevents-links-the-last-one-invalid",
        "cdevents",
        fill(cdevent_with(("context", "links"), b"[@@]"), LINK + b",", b"{}"),
        PayloadInvalid,
    ),
    attack(
        "cdevents-custom-data-nested-just-under-the-limit",
        "cdevents",
        fill(CUSTOM_DATA, nested(61) + b",", b"0"),
    ),
    attack(
        "cdevents-source-authority-of-host-characters",
        "cdevents",
        text(cdevent_with(("context", "source"), b"@@"), b"a", b"a://", b" "),
        PayloadInvalid,
    ),
    attack(
        "cdevents-source-of-slashes",
        "cdevents",
        text(cdevent_with(("context", "source"), b"@@"), b"/", b"", b" "),
        PayloadInvalid,
    ),
    attack(
        "cdevents-schema-uri-of-letters",
        "cdevents",
        text(cdevent_with(("context", "schemaUri"), b"@@"), b"a", b"a:", b" "),
        PayloadInvalid,
    ),
    attack(
        "cdevents-3-mib-unknown-type-is-quoted-clipped",
        "cdevents",
        text(cdevent_with(("context", "type"), b"@@"), b"t"),
        PayloadInvalid,
    ),
    attack(
        "cdevents-3-mib-member-name-is-quoted-clipped",
        "cdevents",
        fill(cdevent_with(("context", "chainId"), b'"c","@@":0'), b"k"),
        PayloadInvalid,
    ),
    attack(
        "cdevents-3-mib-custom-type",
        "cdevents",
        text(
            cdevent_with(
                ("context", "type"), b"@@", {**MERGED, "subject": {"id": "s", "content": {}}}
            ),
            b"a",
            b"dev.cdeventsx.",
            b"-b.c.1.2.3",
        ),
    ),
    attack(
        "cdevents-structured-data-string-of-tiny-arrays",
        "cdevents",
        data_string(b"[]"),
        headers=STRUCTURED,
    ),
    attack(
        "cdevents-structured-data-string-nested-over-the-limit",
        "cdevents",
        data_string(nested(5000)),
        PayloadInvalid,
        headers=STRUCTURED,
    ),
    attack(
        "cdevents-structured-data-base64-of-tiny-arrays",
        "cdevents",
        data_base64(b"[]"),
        headers=STRUCTURED,
    ),
    attack(
        "cdevents-structured-3-mib-specversion-is-quoted-clipped",
        "cdevents",
        fill(dumps({**CE, "specversion": "@@", "data": MERGED}), b"v"),
        PayloadInvalid,
        headers=STRUCTURED,
    ),
    attack(
        "cdevents-binary-custom-data-of-tiny-arrays",
        "cdevents",
        fill(CUSTOM_DATA, b"[],", b"[]"),
        headers=BINARY,
    ),
    attack(
        "cdevents-bare-body-nested-over-the-limit-is-a-dead-letter",
        "cdevents",
        fill(b"@@", b"["),
        DeadLetter,
    ),
]


class Overran(BaseException):
    """A case spent its CPU deadline (a BaseException: no ``except Exception`` in the code
    under test may swallow it)."""


@contextlib.contextmanager
def cpu_deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`Overran` once this process has spent ``seconds`` more of CPU time
    (``ITIMER_PROF`` counts CPU time as ``process_time`` does); the regex engine checks for
    signals as it backtracks, so a runaway pattern is stopped too."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise Overran(f"still running after {seconds:g} s of CPU time")

    previous = signal.signal(signal.SIGPROF, expire)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def cpu_seconds(work: Callable[[], object], deadline: float = 2 * TIME_BUDGET) -> float:
    """CPU seconds ``work`` took (earlier garbage collected first, so it is not counted),
    failing the test past ``deadline``."""
    gc.collect()
    with cpu_deadline(deadline):
        started = time.process_time()
        work()
        return time.process_time() - started


def traced_peak(work: Callable[[], object]) -> int:
    """The most heap ``work`` held at once, as ``tracemalloc`` traces it."""
    gc.collect()
    tracemalloc.start()
    try:
        with cpu_deadline(TRACED_DEADLINE):
            work()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


def outcome(name: str, request: Request) -> Rejected | None:
    """Verify then parse, as the ingress does; the refusal, or None when accepted."""
    try:
        provider(name).verify(SPECS[name], request)
        provider(name).parse(SPECS[name], request)
    except Rejected as refused:
        return refused
    return None


def request_for(case: Attack, size: int) -> tuple[int, Request]:
    body = case.body(size)
    assert size * 0.9 < len(body) <= size, "a worst case fills its size"
    headers = {**credentials(case.provider, body, case.event), **case.headers}
    return len(body), Request.of(headers, body)


OVER_THE_CONTAINER_BOUND = frozenset(
    {
        "azuredevops-ref-updates-by-the-hundred-thousand",
        "bitbucket-changes-by-the-hundred-thousand",
        "bitbucket-clone-links-by-the-hundred-thousand",
        "cdevents-binary-custom-data-of-tiny-arrays",
        "cdevents-custom-data-nested-just-under-the-limit",
        "cdevents-structured-data-base64-of-tiny-arrays",
        "cdevents-structured-data-string-of-tiny-arrays",
        "distribution-events-by-the-million",
        "gcr-base64-message-of-small-objects",
        "generic-arrays-nested-just-under-the-limit",
        "generic-oidc-token-then-small-objects",
        "generic-one-member-object-chains",
        "gitea-commits-of-one-path-each",
        "github-commits-of-one-path-each",
        "github-form-of-percent-encoded-arrays",
        "gitlab-commits-of-one-path-each",
        "harbor-resources-by-the-hundred-thousand",
    }
)
"""Cases whose 3 MiB body holds more than ``common.MAX_JSON_CONTAINERS`` arrays and objects:
refused before parsing at full size (they were the ones costing the decoders 40-48 times the
body), parsed at the smaller size the memory check uses, which stays under the bound."""
DEAD_LETTERED_FOR_THEIR_CONTAINERS = frozenset(
    {
        "cdevents-custom-data-nested-just-under-the-limit",
        "cdevents-binary-custom-data-of-tiny-arrays",
    }
)
"""(A CDEvents body the decoder refuses is kept on the dead-letter stream, as any other.)"""


@pytest.mark.parametrize("case", ATTACKS)
def test_a_worst_case_body_is_read_in_linear_time_and_bounded_memory(
    case: Attack, request: pytest.FixtureRequest
) -> None:
    if request.node.callspec.id in OVER_THE_CONTAINER_BOUND:
        dead = request.node.callspec.id in DEAD_LETTERED_FOR_THEIR_CONTAINERS
        case = dataclasses.replace(case, expect=DeadLetter if dead else PayloadInvalid)
    _, req = request_for(case, LIMIT)
    answers: list[Rejected | None] = []
    seconds = cpu_seconds(lambda: answers.append(outcome(case.provider, req)))
    [answer] = answers
    if case.expect is None:
        assert answer is None, f"refused: {answer!r}"
    else:
        assert type(answer) is case.expect, f"expected {case.expect.__name__}, got {answer!r}"
        assert answer is not None
        assert len(answer.reason) <= MAX_REASON, "a refusal quotes the sender's value whole"
    assert seconds < TIME_BUDGET, f"{seconds:.2f} s of CPU for {LIMIT} bytes"
    del req

    size, req = request_for(case, LIMIT // MEMORY_SCALE)
    peak = traced_peak(lambda: outcome(case.provider, req))
    assert peak < MEMORY_MULTIPLE * size, f"peak heap {peak / size:.1f} times the body"


def test_every_provider_has_a_worst_case() -> None:
    """A new provider gets its own line in the table, or this fails."""
    tried = {
        case.provider for param in ATTACKS for case in param.values if isinstance(case, Attack)
    }
    assert tried == set(PROVIDERS)


# ----------------------------------------------------------------------------- nesting check

WINDOW = common._WINDOW


def reference_depth(text: bytes) -> int:
    """Deepest nesting of brackets outside strings, by walking ``text`` byte by byte (the
    obviously right way, too slow for the hot path)."""
    depth = deepest = 0
    inside = escaped = False
    for byte in text:
        if inside:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                inside = False
        elif byte == 0x22:
            inside = True
        elif byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth -= 1
    return deepest


def across(content: str, at: int = WINDOW) -> bytes:
    """A valid JSON document 64 deep with one string, ``content``, whose escaped text starts
    at byte ``at`` of the document (by default, the first byte of the second window)."""
    head = b"[" * 63 + b'["'
    filler = b"x" * (at - len(head))
    return head + filler + json.dumps(content)[1:-1].encode() + b'"]' + b"]" * 63


def straddling(content: str, offset: int) -> bytes:
    """:func:`across` with the boundary ``offset`` bytes into ``content``'s escaped text."""
    return across(content, WINDOW - offset)


NESTING = [
    pytest.param(b"[" * 65 + b'"' + b'\\"' * 32_000, id="the-original-attack-64-kib"),
    pytest.param(fill(b"[" * 65 + b'"@@', b'\\"')(LIMIT), id="the-original-attack-3-mib"),
    pytest.param(across("[[[[{{{{"), id="brackets-in-a-string-from-the-boundary"),
    pytest.param(straddling("]]]]}}}}[[[[", 6), id="brackets-in-a-string-across-the-boundary"),
    *(
        pytest.param(straddling('a"[[[[', offset), id=f"escaped-quote-{offset}-before-the-boundary")
        for offset in (0, 1, 2, 3)
    ),
    *(
        pytest.param(
            straddling("a\\", offset), id=f"escaped-backslash-{offset}-before-the-boundary"
        )
        for offset in (0, 1, 2, 3)
    ),
    *(
        pytest.param(
            straddling("\\\\\\" + '"' + "[[", offset),
            id=f"backslash-run-{offset}-before-the-boundary",
        )
        for offset in (1, 2, 3, 4, 5)
    ),
    *(
        pytest.param(
            b"[" * 62 + b'["' + b"x" * (WINDOW + shift - 64) + b'",[]' + b"]" * 63,
            id=f"a-string-closing-{shift:+d}-from-the-boundary-then-a-bracket",
        )
        for shift in (-2, -1, 0, 1)
    ),
    pytest.param(
        b"[" + b'"",' * (WINDOW // 3 * 2) + b"[" * 63 + b"]" * 64,
        id="empty-strings-across-two-windows-then-depth",
    ),
    pytest.param(
        json.dumps({"[[[[": {"]]]]": ["\\u005c", "\u005c\u005c[", '"{"'] * 5000}}).encode(),
        id="brackets-and-escapes-in-keys-and-values",
    ),
]


@pytest.mark.parametrize("body", NESTING)
def test_the_nesting_check_counts_only_brackets_outside_strings(body: bytes) -> None:
    depth = reference_depth(body) if len(body) < 4 * WINDOW else None
    answers: list[bool] = []
    assert cpu_seconds(lambda: answers.append(common._shape_problem(body) is None)) < TIME_BUDGET
    if depth is None:  # the 3 MiB attack: 65 brackets open before its (unterminated) string
        assert answers == [False]
        return
    assert answers == [depth <= common.MAX_JSON_DEPTH]
    assert common._shape_problem(body, depth) is None
    assert common._shape_problem(body, depth - 1) is not None


def test_more_arrays_and_objects_than_the_bound_are_refused_before_parsing() -> None:
    flat = b"[" + b"[]," * common.MAX_JSON_CONTAINERS + b"[]]"
    assert (
        common._shape_problem(flat) == f"more than {common.MAX_JSON_CONTAINERS} arrays and objects"
    )
    in_strings = json.dumps(["[]{}" * common.MAX_JSON_CONTAINERS]).encode()
    assert common._shape_problem(in_strings) is None, "brackets inside strings do not count"
    with pytest.raises(PayloadInvalid, match="arrays and objects"):
        common.load_json(flat)


def test_the_nesting_check_agrees_with_a_byte_walk_on_random_documents() -> None:
    """Strings of brackets, quotes and backslashes, cut anywhere by the window boundary."""
    rng = random.Random(20260401)
    pieces = ["[", "]", "{", "}", '"', "\\", "\\\\", '\\"', "a", "\u0101", "\\u0022", " "]
    for _ in range(60):
        words = ["".join(rng.choices(pieces, k=rng.randint(0, 12))) for _ in range(200)]
        doc: Any = words
        for _ in range(rng.randint(0, 70)):
            doc = [doc] if rng.random() < 0.7 else {"k[": doc}
        text = json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode()
        pad = b" " * rng.randint(0, WINDOW)
        body = pad + text
        depth = reference_depth(body)
        for limit in (depth - 1, depth, 64):
            assert (common._shape_problem(body, limit) is None) == (depth <= limit), (depth, limit)


# ----------------------------------------------------------------------------- patterns

PATTERNS = [
    pytest.param(
        lambda: normalising.traceparent("00-" + "a" * LIMIT), id="traceparent-of-hex-digits"
    ),
    pytest.param(
        lambda: common._SURROGATE_ESCAPE.search(b"\\u" * (LIMIT // 2)),
        id="surrogate-escape-search-over-backslash-u",
    ),
    pytest.param(
        lambda: _JSON_MEDIA.match("application/" + "a" * LIMIT), id="cloudevents-media-type"
    ),
    pytest.param(
        lambda: natsbinding.encode_value("a" * LIMIT + " "), id="nats-header-value-encoding"
    ),
    pytest.param(lambda: unversioned(".1.1.1-" * (LIMIT // 7) + "!"), id="cdevents-version-suffix"),
    pytest.param(
        lambda: validating.FORMATS["uri-reference"]("a://" + "a:" * (LIMIT // 2) + " "),
        id="uri-reference-of-colons",
    ),
    pytest.param(lambda: validating.FORMATS["uri"]("a:" + "/" * LIMIT + " "), id="uri-of-slashes"),
    pytest.param(
        lambda: validating.FORMATS["date-time"]("2026-01-01T00:00:00." + "1" * LIMIT + "Z "),
        id="date-time-of-fraction-digits",
    ),
    pytest.param(
        lambda: Request.of({"Content-Type": "a/b;" * 2000}, b""), id="content-type-parameters"
    ),
    pytest.param(
        lambda: addressing.client_address(
            "10.0.0.1",
            ["1.2.3.4," * 1000] * 128,
            parse_networks("0.0.0.0/0"),
        ),
        id="x-forwarded-for-of-128-full-headers",
    ),
]


@pytest.mark.parametrize("work", PATTERNS)
def test_a_pattern_over_a_senders_text_is_linear(work: Callable[[], object]) -> None:
    assert cpu_seconds(work) < TIME_BUDGET


def test_an_address_too_long_to_be_one_is_neither_parsed_nor_cached() -> None:
    cached = addressing._parse_address.cache_info().currsize
    assert addressing.parse_address("1" * 8000) is None
    assert addressing._parse_address.cache_info().currsize == cached
    assert addressing.parse_address(" 10.1.2.3:8080 ") == ipaddress.ip_address("10.1.2.3")
    assert addressing.parse_address("[::ffff:10.1.2.3]") == ipaddress.ip_address("10.1.2.3")


# ----------------------------------------------------------------------------- reconciler


def zeros() -> Any:
    return json.loads(b"[" + b"0," * (LIMIT // 2 - 1) + b"0]")


def filter_for_twenty_candidates(payload: Any) -> None:
    """What targeting does for one delivery to a wildcard selecting 20 objects, with both a
    ``resourceFilter`` and a per-resource ``filter``."""
    filters = Filters()
    for index in range(20):
        res = {"apiVersion": "v1", "kind": "GitRepository", "metadata": {"name": f"r{index}"}}
        assert filters.matches("size(req) > 0", res, payload, {})
        assert filters.matches("res.metadata.name != ''", res, payload, {})


def index_narrows(globs: str, paths: list[str]) -> bool:
    """Whether the index lets a source annotated with ``globs`` through for a branch push
    changing ``paths`` (the way ``SourceIndex.match`` decides it)."""
    envelope = {"paths_complete": True, "ref": "refs/heads/main", "changed_paths": paths}
    return paths_allow(compile_paths(globs), narrowing_paths(envelope))


RECONCILER = [
    pytest.param(
        lambda: filter_for_twenty_candidates(zeros()), id="cel-filters-over-a-million-numbers"
    ),
    pytest.param(
        lambda: filter_for_twenty_candidates(json.loads(run(b"@@", b"{}")(LIMIT))),
        id="cel-filters-over-a-million-objects",
    ),
    pytest.param(
        lambda: envelope.validate(
            {
                "specversion": "1",
                "id": "x",
                "receiver": {"namespace": "n", "name": "r"},
                "provider": "github",
                "event": "push",
                "delivery_id": "d",
                "received_at": "2026-01-01T00:00:00.000000Z",
                "payload": json.loads(run(b"@@", b"[]")(LIMIT)),
                "changed_paths": ["a"] * (LIMIT // 4),
                "repository": {"urls": ["u"] * (LIMIT // 4)},
            }
        ),
        id="envelope-validation-of-a-worst-case-envelope",
    ),
    pytest.param(
        lambda: refs.oci_follow({"semver": ">=1.0.0", "semverFilter": ".*-rc.*"}).follows(
            "a" * LIMIT
        ),
        id="user-tag-filter-over-a-3-mib-tag",
    ),
    pytest.param(
        lambda: refs.image_follow([".*-dev.*", "^.*\\.sig$"]).follows("a" * LIMIT),
        id="user-exclusions-over-a-3-mib-tag",
    ),
    pytest.param(
        lambda: refs.git_follow({"semver": ">=1.0.0"}).follows(
            "refs/tags/1.2.3-" + "1." * (LIMIT // 2)
        ),
        id="semver-over-a-3-mib-git-tag",
    ),
    pytest.param(lambda: refs.is_deleted({"revision": "0" * LIMIT + "x"}), id="zero-revision"),
    pytest.param(lambda: urls.normalise_git_url("a@" * (LIMIT // 2)), id="scp-like-url-of-ats"),
    pytest.param(
        lambda: urls.normalise_git_url("https://dev.azure.com/" + "_git/" * (LIMIT // 5)),
        id="azure-url-of-git-segments",
    ),
    pytest.param(lambda: urls.parse_image("@a:0" * (LIMIT // 4)), id="image-of-digest-starts"),
    pytest.param(
        lambda: urls.parse_image("x@a:" + "f" * LIMIT + "g"), id="image-digest-failing-at-the-end"
    ),
    pytest.param(
        lambda: index_narrows("**/a/**/b.yaml", ["a/" * (LIMIT // 2)]),
        id="path-narrowing-glob-over-a-3-mib-path",
    ),
    pytest.param(
        lambda: index_narrows("**/a/**/b.yaml", ["a/" * 2000] * 1000),
        id="path-narrowing-glob-over-a-thousand-4-kib-paths",
    ),
]


@pytest.mark.parametrize("work", RECONCILER)
def test_a_reconciler_path_over_a_senders_payload_is_linear(work: Callable[[], object]) -> None:
    assert cpu_seconds(work) < TIME_BUDGET


# ----------------------------------------------------------------------------- rewrites

OLD_VERSION_SUFFIX = re.compile(r"\.\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?$", re.ASCII)


def old_unversioned(event_type: str) -> str | None:
    match = OLD_VERSION_SUFFIX.search(event_type)
    return None if match is None or match.start() == 0 else event_type[: match.start()]


def test_the_linear_version_suffix_reads_as_the_pattern_it_replaces() -> None:
    """Every string of up to 6 characters from the ones that matter, after a type name."""
    for size in range(7):
        for chars in itertools.product(".1-a\n!", repeat=size):
            event_type = "dev.cdevents.x" + "".join(chars)
            assert unversioned(event_type) == old_unversioned(event_type), event_type


def old_form_payload(body: bytes) -> str:
    """What the github provider did before: ``parse_qs`` and its checks."""
    try:
        form = parse_qs(body.decode("utf-8"), strict_parsing=True, max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        return "<invalid>"
    values = form.get("payload")
    return values[0] if values and len(values) == 1 else "<not one>"


def new_form_payload(body: bytes) -> str:
    try:
        return hub.form_payload(body)
    except PayloadInvalid as refused:
        return "<invalid>" if "invalid" in refused.reason else "<not one>"


@pytest.mark.parametrize("window", [3, 4, 5, 64 * 1024])
def test_the_windowed_form_decoding_reads_as_parse_qs(
    window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random forms of escapes (valid, invalid, cut), ``+``, non-ASCII text and separators;
    tiny windows put every escape across a boundary."""
    monkeypatch.setattr(hub, "_FORM_WINDOW", window)
    rng = random.Random(window)
    pieces = ["%", "4", "1", "%C3", "%A9", "%e2%82", "+", "a", "\u00e9", "&", "=", "%ZZ", "\u20ac"]
    for _ in range(3000):
        text = "".join(rng.choices(pieces, k=rng.randint(0, 14)))
        body = (("payload=" if rng.random() < 0.85 else "") + text).encode()
        assert new_form_payload(body) == old_form_payload(body), body


CEL_DOCUMENTS: list[Any] = [
    None,
    True,
    False,
    0,
    -(2**63),
    2**63 - 1,
    1.5,
    float("inf"),
    "",
    "\u0101\U0001f600",
    [],
    {},
    [1, "a", None, True, 2.5, {"k": [{}]}],
    {"a": {"b": [1, 2, {"c": None}]}, "": 0},
    (1, "tuple"),
    MERGED,
]


def cel_shape(value: Any) -> Any:
    """Types and values all the way down (CEL values compare equal across types)."""
    if isinstance(value, dict):
        return (type(value), sorted((cel_shape(k), cel_shape(v)) for k, v in value.items()))
    if isinstance(value, list):
        return (type(value), [cel_shape(item) for item in value])
    return (type(value), repr(value))


@pytest.mark.parametrize("doc", CEL_DOCUMENTS)
def test_the_fast_cel_conversion_builds_what_celpy_builds(doc: Any) -> None:
    assert cel_shape(to_cel(doc)) == cel_shape(json_to_cel(doc))


@pytest.mark.parametrize("number", [2**63, -(2**63) - 1])
def test_the_fast_cel_conversion_refuses_what_celpy_refuses(number: int) -> None:
    with pytest.raises(ValueError, match="overflow"):
        json_to_cel([number])
    with pytest.raises(ValueError, match="overflow"):
        to_cel([number])


def test_a_payload_is_converted_once_for_every_candidate_of_a_delivery() -> None:
    filters = Filters()
    payload = {"ref": "refs/heads/main"}
    first = filters._cel_payload(payload)
    assert filters._cel_payload(payload) is first
    assert isinstance(first, celtypes.MapType)
    assert filters._cel_payload(dict(payload)) is not first


# ----------------------------------------------------------------------------- end to end

GENERIC = path_of("worst-plain", TOKEN)
CDEVENTS = path_of("worst-cde", TOKEN)


@pytest.fixture
async def ingress(nats_session: NatsServer) -> AsyncIterator[Ingress]:
    docs = receiver_docs("worst-plain", "generic", TOKEN) + receiver_docs(
        "worst-cde", "cdevents", TOKEN
    )
    ing = await start_ingress(nats_session.url, docs)
    yield ing
    await ing.close()


@pytest.fixture
async def probes(ingress: Ingress) -> AsyncIterator[TestClient[Any, Any]]:
    """The probe and metrics application, on the event loop of the ingress (as the receiver
    serves them: two sites, one loop)."""
    client: TestClient[Any, Any] = TestClient(TestServer(create_metrics_app(ingress.state)))
    await client.start_server()
    yield client
    await client.close()


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        pytest.param(
            GENERIC,
            then_garbage(run(b"@@", nested(63))),
            JSON,
            id="generic-nested-arrays-then-garbage",
        ),
        pytest.param(
            CDEVENTS,
            fill(cdevent_with(("context", "links"), b"[@@]"), LINK + b",", b"{}"),
            JSON,
            id="cdevents-links-the-last-one-invalid",
        ),
    ],
)
async def test_probes_are_answered_while_a_worst_case_body_is_read(
    ingress: Ingress,
    probes: TestClient[Any, Any],
    path: str,
    body: Body,
    headers: dict[str, str],
) -> None:
    """The probe shares the event loop with the hook (the receiver serves both sites on one
    loop) and is asked every 10 ms, so the longest gap between its answers, from the last
    before the attack to the first after it, is the longest the body held the loop."""
    data = body(LIMIT)
    assert LIMIT * 0.7 < len(data) <= LIMIT
    answers: list[float] = []
    done, tick = asyncio.Event(), asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            resp = await probes.get("/healthz")
            assert resp.status == 200
            await resp.read()
            answers.append(time.perf_counter())
            tick.set()
            await asyncio.sleep(0.01)

    async def answered_after(moment: float) -> None:
        while not answers or answers[-1] <= moment:
            tick.clear()
            await tick.wait()

    prober = asyncio.create_task(probe())
    try:
        await asyncio.wait_for(answered_after(time.perf_counter()), PROBE_BOUND)
        sent = time.perf_counter()
        resp = await ingress.client.post(path, data=io.BytesIO(data), headers=headers)
        answer = await resp.json()
        answered = time.perf_counter()
        await asyncio.wait_for(answered_after(answered), PROBE_BOUND)
    finally:
        done.set()
        await asyncio.wait_for(prober, PROBE_BOUND)
    assert resp.status == 400, answer
    assert answer["status"] == "rejected"
    assert answer["code"] == "payload_invalid"
    assert answer["reason"]
    first = max(i for i, at in enumerate(answers) if at <= sent)
    last = min(i for i, at in enumerate(answers) if at >= answered)
    window = answers[first : last + 1]
    slowest = max(later - earlier for earlier, later in itertools.pairwise(window))
    assert slowest < PROBE_BOUND, f"the event loop answered no probe for {slowest:.2f} s"
    assert not await ingress.stored()


ACR_TOKEN = "worst-acr-t0ken-0123456789"


async def test_a_delivery_id_as_long_as_the_body_is_refused_and_the_store_stays_up(
    nats_session: NatsServer,
) -> None:
    """ACR needs no credential beyond the hook path, and its delivery id is the body's."""
    ing = await start_ingress(nats_session.url, receiver_docs("worst-acr", "acr", ACR_TOKEN))
    try:
        path = path_of("worst-acr", ACR_TOKEN)
        data = text(b'{"id":@@,"action":"push","target":{"repository":"a"}}', b" ")(LIMIT)
        resp = await ing.client.post(path, data=io.BytesIO(data), headers=JSON)
        # Stored under the digest of the id (or refused): either way never a message the
        # server drops the connection for.
        assert resp.status in (202, 400, 413), await resp.text()
        if resp.status == 202:
            [stored] = await ing.stored()
            assert stored.envelope["delivery_id"].startswith("sha256:")
            assert len(stored.headers["ce-subject"]) < 100
        ok = b'{"id":"worst-1","action":"push","target":{"repository":"a"}}'
        resp = await ing.client.post(path, data=ok, headers=JSON)
        assert resp.status == 202, await resp.text()
    finally:
        await ing.close()


def test_a_long_value_is_quoted_by_its_start_and_its_length() -> None:
    assert excerpt("push") == "'push'"
    assert excerpt("t" * LIMIT) == f"{'t' * MAX_QUOTED!r}... ({LIMIT} characters)"
    assert clipped("/context/" + "k" * LIMIT).startswith("/context/kkk")
    assert len(clipped("k" * LIMIT)) < 2 * MAX_QUOTED
