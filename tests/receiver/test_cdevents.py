"""The cdevents receiver against a real nats-server: binary, structured and bare deliveries,
raw CloudEvents attribute checks, the events filter with and without version suffix, schema
errors answered with their JSON Pointer, unparseable bodies kept on the dead-letter stream
(and a 503 when that store fails), every official conformance sample accepted and mutated
copies refused, the CDEvent stored as it arrived."""

from __future__ import annotations

import copy
import io
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import pytest

from receiver.config.spec import specs_from_documents
from receiver.errors import DeadLetter, PayloadInvalid, SignatureInvalid
from receiver.providers import PROVIDERS
from receiver.providers.base import Request
from receiver.providers.cdevents import unversioned
from schemas import cdevents, envelope
from tests.schemas.cdevents_reference import conformance_files, fixture_files, load, spec_dir
from tests.support.ingress import Ingress, path_of, receiver_docs, start_ingress
from tests.support.natsd import NatsServer

FIXTURES = Path(__file__).resolve().parents[1] / "schemas" / "fixtures" / "cdevents"
MERGED_04 = load(FIXTURES / "v0_4_1" / "change_merged.json")
MERGED_05 = load(FIXTURES / "v0_5_1" / "change_merged.json")
FINISHED_05 = load(FIXTURES / "v0_5_1" / "pipelinerun_finished.json")
TOKEN = "s3cr3t-s3cr3t-s3cr3t"
PATH = path_of("cde")
MERGED_ONLY = path_of("cde-merged")
PINNED = path_of("cde-pinned")
VERSIONS = ("0.4.1", "0.5.1")


@pytest.fixture
async def ingress(nats_session: NatsServer) -> AsyncIterator[Ingress]:
    docs = (
        receiver_docs("cde", "cdevents", TOKEN)
        + receiver_docs("cde-merged", "cdevents", TOKEN, events=["dev.cdevents.change.merged"])
        + receiver_docs(
            "cde-pinned", "cdevents", TOKEN, events=["DEV.CDEVENTS.CHANGE.MERGED.0.2.0"]
        )
    )
    ing = await start_ingress(nats_session.url, docs)
    yield ing
    await ing.close()


def bare(event: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    return json.dumps(event).encode(), {"Content-Type": "application/json"}


def binary(event: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    message = cdevents.to_http_binary(event)
    return message.body, dict(message.headers)


def structured(event: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    message = cdevents.to_http_structured(event)
    return message.body, dict(message.headers)


async def post(
    ing: Ingress, body: bytes, headers: dict[str, str], path: str = PATH
) -> tuple[int, dict[str, Any]]:
    resp = await ing.client.post(path, data=body, headers=headers)
    return resp.status, await resp.json()


@pytest.mark.parametrize(
    ("encode", "mode"),
    [
        pytest.param(binary, "binary", id="binary"),
        pytest.param(structured, "structured", id="structured"),
        pytest.param(bare, "bare", id="bare"),
    ],
)
async def test_each_mode_is_stored_with_the_cdevent_as_it_arrived(
    ingress: Ingress, encode: Callable[[dict[str, Any]], tuple[bytes, dict[str, str]]], mode: str
) -> None:
    body, headers = encode(MERGED_05)
    if mode == "binary":
        assert headers["ce-id"] == MERGED_05["context"]["id"]
    status, answer = await post(ingress, body, headers)
    assert status == 202, answer
    [stored] = await ingress.stored()
    env = envelope.validate(stored.envelope)
    assert env["id"] == answer["id"]
    assert env["provider"] == "cdevents"
    assert env["event"] == "dev.cdevents.change.merged.0.3.0"
    assert env["delivery_id"] == MERGED_05["context"]["id"]
    assert env["cdevent"] == MERGED_05
    # payload is the body as parsed: the CloudEvent envelope in structured mode
    if mode == "structured":
        assert env["payload"]["data"] == MERGED_05
        assert env["payload"]["specversion"] == "1.0"
    else:
        assert env["payload"] == MERGED_05
    assert stored.subject.endswith(".cdevents.default.cde")


async def test_a_flux_style_0_4_1_event_passes_a_filter_without_version(
    ingress: Ingress,
) -> None:
    """Flux's own receiver parses 0.4.1 and its docs list types without version."""
    body, headers = binary(MERGED_04)
    status, answer = await post(ingress, body, headers, MERGED_ONLY)
    assert status == 202, answer
    [stored] = await ingress.stored()
    assert stored.envelope["event"] == "dev.cdevents.change.merged.0.2.0"
    assert stored.envelope["cdevent"] == MERGED_04
    assert stored.envelope["cdevent"]["context"]["version"] == "0.4.1"


@pytest.mark.parametrize(
    ("path", "event", "status"),
    [
        pytest.param(MERGED_ONLY, MERGED_05, 202, id="unversioned-filter-newer-version"),
        pytest.param(MERGED_ONLY, MERGED_04, 202, id="unversioned-filter-older-version"),
        pytest.param(MERGED_ONLY, FINISHED_05, 400, id="unversioned-filter-other-type"),
        pytest.param(PINNED, MERGED_04, 202, id="versioned-filter-upper-case-same-version"),
        pytest.param(PINNED, MERGED_05, 400, id="versioned-filter-other-version"),
    ],
)
async def test_events_filter_matches_with_or_without_version_suffix(
    ingress: Ingress, path: str, event: dict[str, Any], status: int
) -> None:
    got, answer = await post(ingress, *bare(event), path=path)
    assert got == status, answer
    if status == 400:
        assert answer["code"] == "event_not_allowed"
        assert await ingress.stored() == []


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param("dev.cdevents.change.merged.0.2.0", "dev.cdevents.change.merged", id="0.4"),
        pytest.param(
            "dev.cdeventsx.fluxrelay-tag.pushed.0.1.0",
            "dev.cdeventsx.fluxrelay-tag.pushed",
            id="custom",
        ),
        pytest.param(
            "dev.cdevents.build.queued.0.3.0-draft", "dev.cdevents.build.queued", id="pre-release"
        ),
        pytest.param("dev.cdevents.change.merged", None, id="no-version"),
        pytest.param("0.1.0", None, id="only-a-version"),
    ],
)
def test_version_suffix_is_split_off(given: str, expected: str | None) -> None:
    assert unversioned(given) == expected


@pytest.mark.parametrize("missing", ["ce-id", "ce-type", "ce-source"])
async def test_a_missing_raw_attribute_is_refused_not_invented(
    ingress: Ingress, missing: str
) -> None:
    body, headers = binary(MERGED_05)
    del headers[missing]
    status, answer = await post(ingress, body, headers)
    assert status == 400
    assert answer["code"] == "payload_invalid"
    assert missing.removeprefix("ce-") in answer["reason"]
    assert await ingress.stored() == []
    assert await ingress.dead() == []


@pytest.mark.parametrize(
    ("encode", "attribute"),
    [
        pytest.param(binary, "type", id="binary-type"),
        pytest.param(binary, "id", id="binary-id"),
        pytest.param(binary, "source", id="binary-source"),
        pytest.param(structured, "type", id="structured-type"),
    ],
)
async def test_attributes_contradicting_the_cdevent_are_refused(
    ingress: Ingress,
    encode: Callable[[dict[str, Any]], tuple[bytes, dict[str, str]]],
    attribute: str,
) -> None:
    body, headers = encode(MERGED_05)
    other = {"type": "dev.cdevents.change.abandoned.0.3.0", "id": "other", "source": "/other"}
    if encode is binary:
        headers[f"ce-{attribute}"] = other[attribute]
    else:
        doc = json.loads(body)
        doc[attribute] = other[attribute]
        body = json.dumps(doc).encode()
    status, answer = await post(ingress, body, headers)
    assert status == 400
    assert answer["code"] == "payload_invalid"
    assert f"ce-{attribute}" in answer["reason"]
    assert await ingress.stored() == []


@pytest.mark.parametrize(
    ("mutate", "pointer"),
    [
        pytest.param(
            lambda e: e["context"].pop("timestamp"), "/context/timestamp", id="missing-field"
        ),
        pytest.param(
            lambda e: e["subject"].__setitem__("content", "x"),
            "/subject/content",
            id="wrong-type",
        ),
        pytest.param(
            lambda e: e["context"].__setitem__("version", "0.4.1"),
            "/context/version",
            id="0.4-field-in-0.5",
        ),
        pytest.param(
            lambda e: e["context"].__setitem__("type", "dev.cdevents.change.merged.9.9.9"),
            "/context/type",
            id="unknown-type",
        ),
    ],
)
async def test_an_invalid_cdevent_is_refused_with_its_json_pointer(
    ingress: Ingress, mutate: Callable[[dict[str, Any]], object], pointer: str
) -> None:
    event = copy.deepcopy(MERGED_05)
    mutate(event)
    status, answer = await post(ingress, *bare(event))
    assert status == 400
    assert answer["code"] == "payload_invalid"
    assert answer["path"] == pointer
    assert pointer in answer["reason"]
    assert await ingress.stored() == []
    assert await ingress.dead() == []


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        pytest.param(b"Build #42 finished: SUCCESS", "text/plain", id="jenkins-plain-string"),
        pytest.param(b'{"context": ', "application/json", id="truncated-json"),
        pytest.param(b'["not", "an", "event"]', "application/json", id="json-array"),
        pytest.param(b'{"hello": "world"}', "application/json", id="object-without-context"),
        pytest.param(b"", "application/json", id="empty"),
    ],
)
async def test_unparseable_bodies_are_dead_lettered_then_refused(
    ingress: Ingress, body: bytes, content_type: str
) -> None:
    headers = {"Content-Type": content_type}
    status, answer = await post(ingress, body, headers)
    assert status == 400
    assert answer["status"] == "rejected"
    assert answer["code"] == "payload_unparseable"
    # a retry of the same bytes leaves one dead letter
    again, _ = await post(ingress, body, headers)
    assert again == 400
    [dead] = await ingress.dead()
    assert dead.subject.endswith(".dead.ingress.cdevents-unparseable")
    assert (dead.envelope["raw"] or b"") == body  # nats-py reads an empty payload as None
    assert dead.headers["Fluxrelay-Receiver"] == "default/cde"
    assert dead.headers["Fluxrelay-Provider"] == "cdevents"
    assert dead.headers["Fluxrelay-Reason"] == "cdevents-unparseable"
    assert dead.headers["Fluxrelay-Body-Size"] == str(len(body))
    assert dead.headers["Content-Type"] == content_type
    assert await ingress.stored() == []


async def test_dead_letter_store_down_answers_503(ingress: Ingress) -> None:
    """The dead-letter stream is deleted under the running receiver (the events stream stays):
    an unparseable body cannot be kept, so it is not acknowledged with a 400 either."""
    nc = await nats.connect(ingress.nats_url)
    try:
        await nc.jetstream().delete_stream(ingress.state.settings.stream.dead_name)
    finally:
        await nc.close()
    status, answer = await post(ingress, b"not json", {"Content-Type": "text/plain"})
    assert status == 503
    assert answer["code"] == "not_stored"
    # valid events still go through: only the dead-letter store is down
    status, answer = await post(ingress, *bare(MERGED_05))
    assert status == 202, answer


async def test_a_redelivery_is_stored_once(ingress: Ingress) -> None:
    first = await post(ingress, *binary(MERGED_05))
    second = await post(ingress, *structured(MERGED_05))
    assert first[0] == second[0] == 202
    assert second[1]["duplicate"] is True
    assert first[1]["id"] == second[1]["id"]
    assert len(await ingress.stored()) == 1


def samples(version: str) -> list[Path]:
    """Official conformance samples when ``../shared/cdevents-spec`` exists, and always the
    project's own fixtures."""
    return [*conformance_files(version), *fixture_files(version)]


def test_the_samples_are_there() -> None:
    """Guard against a silently empty parametrisation below."""
    for version in VERSIONS:
        assert fixture_files(version), version
        if spec_dir(version).is_dir():
            assert len(conformance_files(version)) > 40, version


async def test_every_sample_is_accepted_in_every_mode(ingress: Ingress) -> None:
    accepted: set[str] = set()
    for version in VERSIONS:
        for path in samples(version):
            event = load(path)
            for encode in (bare, binary, structured):
                status, answer = await post(ingress, *encode(event))
                assert status == 202, (path.name, encode.__name__, answer)
            accepted.add(answer["id"])
    stored = await ingress.stored()
    assert {s.envelope["id"] for s in stored} == accepted
    for s in stored:
        assert cdevents.validate(s.envelope["cdevent"]).version in VERSIONS


MUTATIONS: list[tuple[str, Callable[[dict[str, Any]], object], tuple[str, ...]]] = [
    ("drop-context-id", lambda e: e["context"].pop("id"), ("0.4.1", "0.5.1")),
    ("drop-subject", lambda e: e.pop("subject"), ("0.4.1", "0.5.1")),
    ("timestamp-as-number", lambda e: e["context"].__setitem__("timestamp", 1), ("0.4.1", "0.5.1")),
    ("id-as-number", lambda e: e["context"].__setitem__("id", 7), ("0.4.1", "0.5.1")),
    ("0.4-version-in-0.5", lambda e: e["context"].__setitem__("version", "0.4.1"), ("0.5.1",)),
    ("0.4-subject-type-in-0.5", lambda e: e["subject"].__setitem__("type", "x"), ("0.5.1",)),
    ("unknown-property", lambda e: e.__setitem__("extra", True), ("0.4.1", "0.5.1")),
]


@pytest.mark.parametrize(
    ("mutate", "versions"),
    [pytest.param(m, v, id=name) for name, m, v in MUTATIONS],
)
def test_every_mutated_sample_is_refused(
    mutate: Callable[[dict[str, Any]], object], versions: tuple[str, ...]
) -> None:
    provider = PROVIDERS["cdevents"]
    [spec] = specs_from_documents(receiver_docs("cde", "cdevents", TOKEN), "test")
    checked = 0
    for version in versions:
        for path in samples(version):
            event = load(path)
            if version == "0.5.1" and "type" in event["subject"]:
                continue  # ticket.closed (0.5.1) still allows subject.type
            mutate(event)
            body, headers = bare(event)
            with pytest.raises(PayloadInvalid) as refused:
                provider.parse(spec, Request.of(headers, body))
            assert not isinstance(refused.value, DeadLetter), path.name
            assert refused.value.details.get("path") is not None, path.name
            checked += 1
    assert checked >= len(versions) * 3


def test_auth_is_checked_before_the_body_is_looked_at() -> None:
    """With auth on, an unauthenticated unparseable body is a signature error, not a dead
    letter: verify runs first and needs nothing from the body."""
    provider = PROVIDERS["cdevents"]
    [spec] = specs_from_documents(
        receiver_docs("cde", "cdevents", TOKEN, extra_secret={"auth": "bearer"}), "test"
    )
    with pytest.raises(SignatureInvalid):
        provider.verify(spec, Request.of({"Content-Type": "text/plain"}, b"not json"))


async def test_a_dead_letter_larger_than_max_payload_is_kept_truncated(
    nats_session: NatsServer,
) -> None:
    """Refusing it with 503 would make the sender retry something that can never fit. The
    body limit is raised above the server's max_payload so such a body can arrive."""
    probe = await nats.connect(nats_session.url)
    limit = probe.max_payload
    await probe.close()
    ing = await start_ingress(
        nats_session.url, receiver_docs("cde", "cdevents", TOKEN), body_limit=limit + 65536
    )
    try:
        body = b"x" * (limit + 1000)
        resp = await ing.client.post(
            PATH, data=io.BytesIO(body), headers={"Content-Type": "text/plain"}
        )
        assert resp.status == 400, await resp.text()
        [dead] = await ing.dead()
        assert dead.headers["Fluxrelay-Truncated"] == str(len(body))
        assert dead.headers["Fluxrelay-Body-Size"] == str(len(body))
        assert body.startswith(dead.envelope["raw"])
        assert len(dead.envelope["raw"]) < limit
    finally:
        await ing.close()
