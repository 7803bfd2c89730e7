"""CDEvents validation: official samples and the project's fixtures pass, broken events fail
with a JSON Pointer to the culprit, and both schema engines agree with the official schemas."""

# ruff: noqa: E501 - the tables below read best one row per line

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from schemas.cdevents.validating import CDEventInvalid, detect_release, is_valid, validate
from tests.schemas.cdevents_reference import (
    VERSIONS,
    conformance_files,
    fixture_files,
    load,
    official_errors,
    project_errors_jsonschema,
    spec_dir,
)

Event = dict[str, Any]
Mutation = Callable[[Event], None]


def _conformance_params() -> list[Any]:
    params: list[Any] = []
    for version in VERSIONS:
        files = conformance_files(version)
        if not files:
            params.append(
                pytest.param(
                    None,
                    id=f"{version}-missing",
                    marks=pytest.mark.skip(reason=f"{spec_dir(version)} not present"),
                )
            )
        params += [
            pytest.param(path, id=f"{version}-{path.parent.name}-{path.stem}") for path in files
        ]
    return params


def _fixture_params() -> list[Any]:
    return [
        pytest.param(path, id=f"{path.parent.name}-{path.stem}")
        for version in VERSIONS
        for path in fixture_files(version)
    ]


def test_every_release_has_own_fixtures() -> None:
    for version in VERSIONS:
        names = {p.stem for p in fixture_files(version)}
        assert {"change_merged", "pipelinerun_finished", "custom_tag_pushed"} <= names


@pytest.mark.parametrize("path", _conformance_params())
def test_official_conformance_sample_is_accepted(path: Path) -> None:
    event = load(path)
    release = validate(event)
    assert release.version == path.parents[1].name.removeprefix("v")


@pytest.mark.parametrize("path", _fixture_params())
def test_own_fixture_is_accepted(path: Path) -> None:
    event = load(path)
    release = validate(event)
    assert release.dirname == path.parent.name
    assert project_errors_jsonschema(event) == []
    if spec_dir(release.version).is_dir():
        assert official_errors(event) == []


def _set(*keys: str | int, value: object) -> Mutation:
    def mutate(event: Event) -> None:
        node: Any = event
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return mutate


def _drop(*keys: str | int) -> Mutation:
    def mutate(event: Event) -> None:
        node: Any = event
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]

    return mutate


# (fixture stem, mutation, expected pointer, words the message must contain)
_CASES_0_5 = [
    pytest.param("change_merged", _drop("context", "id"), "/context/id", "missing", id="missing-context-id"),
    pytest.param("change_merged", _drop("subject", "content"), "/subject/content", "missing", id="missing-content"),
    pytest.param("change_merged", _drop("subject", "content", "repository", "id"), "/subject/content/repository/id", "missing", id="missing-nested-id"),
    pytest.param("change_merged", _set("subject", "content", "repository", value="acme/platform"), "/subject/content/repository", "object", id="wrong-type-object"),
    pytest.param("change_merged", _set("subject", "id", value=42), "/subject/id", "string", id="wrong-type-string"),
    pytest.param("change_merged", _set("subject", "id", value=""), "/subject/id", "", id="empty-string"),
    pytest.param("change_merged", _set("context", "version", value="0.4.1"), "/context/version", "not allowed", id="v04-context-version"),
    pytest.param("change_merged", _set("subject", "type", value="change"), "/subject/type", "not allowed", id="v04-subject-type"),
    pytest.param("change_merged", _set("context", "timestamp", value="2026-04-20 09:15"), "/context/timestamp", "date-time", id="bad-date-time"),
    pytest.param("change_merged", _set("context", "timestamp", value="2026-02-30T10:00:00Z"), "/context/timestamp", "date-time", id="impossible-date"),
    pytest.param("change_merged", _set("context", "source", value="https://exa mple.org/x"), "/context/source", "uri-reference", id="bad-uri-reference"),
    pytest.param("change_merged", _set("subject", "content", "repository", "source", value="ht tp://x"), "/subject/content/repository/source", "uri-reference", id="bad-nested-uri-reference"),
    pytest.param("change_merged", _set("context", "schemaUri", value="/relative/only"), "/context/schemaUri", "uri", id="schema-uri-not-absolute"),
    pytest.param("change_merged", _set("context", "chainId", value=""), "/context/chainId", "", id="empty-chain-id"),
    pytest.param("change_merged", _set("context", "version", value="0.5.1"), "/context/version", "not allowed", id="both-version-fields"),
    pytest.param("change_merged", _set("context", "extra", value=1), "/context/extra", "not allowed", id="additional-context-property"),
    pytest.param("change_merged", _set("subject", "content", "branch", value="main"), "/subject/content/branch", "not allowed", id="additional-content-property"),
    pytest.param("change_merged", _set("wrapper", value={}), "/wrapper", "not allowed", id="additional-top-level-property"),
    pytest.param("change_merged", _set("customData", value=7), "/customData", "", id="custom-data-number"),
    pytest.param("change_merged", _set("context", "type", value="dev.cdevents.widget.exploded.0.1.0"), "/context/type", "unknown event type", id="unknown-type"),
    pytest.param("change_merged", _set("context", "type", value="dev.cdevents.change.merged.0.2.0"), "/context/type", "dev.cdevents.change.merged.0.3.0", id="type-of-other-release"),
    pytest.param("change_merged", _set("context", "type", value=None), "/context/type", "string", id="type-not-string"),
    pytest.param("change_merged", _drop("context", "specversion"), "/context/specversion", "spec version", id="no-spec-version"),
    pytest.param("pipelinerun_finished", _set("subject", "content", "outcome", value="pass"), "/subject/content/outcome", "", id="outcome-not-in-enum"),
    pytest.param("pipelinerun_finished", _set("subject", "content", "url", value="https://x"), "/subject/content/url", "not allowed", id="v04-url-field"),
    pytest.param("pipelinerun_finished", _set("subject", "content", "uri", value="not a uri"), "/subject/content/uri", "uri", id="bad-uri"),
    pytest.param("pipelinerun_finished", _drop("context", "links", 0, "from"), "/context/links/0", "", id="path-link-without-from"),
    pytest.param("pipelinerun_finished", _set("context", "links", 1, "linkType", value="CAUSE"), "/context/links/1", "", id="unknown-link-type"),
    pytest.param("pipelinerun_finished", _set("context", "links", value={"linkType": "PATH"}), "/context/links", "array", id="links-not-array"),
    pytest.param("service_deployed", _drop("subject", "content", "artifactId"), "/subject/content/artifactId", "missing", id="missing-required-content"),
    pytest.param("custom_tag_pushed", _set("context", "type", value="dev.cdeventsx.fluxrelay.pushed.0.1.0"), "/context/type", "", id="custom-type-without-tool"),
    pytest.param("custom_tag_pushed", _set("context", "type", value="dev.cdeventsx.fluxrelay-tag.pushed.0.10.0"), "/context/type", "", id="custom-type-two-digit-version"),
    pytest.param("custom_tag_pushed", _set("subject", "type", value="fluxrelay-tag"), "/subject/type", "not allowed", id="custom-v04-subject-type"),
    pytest.param("custom_tag_pushed", _set("subject", "content", value=[]), "/subject/content", "object", id="custom-content-not-object"),
]  # fmt: skip

_CASES_0_4 = [
    pytest.param("change_merged", _drop("subject", "type"), "/subject/type", "missing", id="missing-subject-type"),
    pytest.param("change_merged", _set("subject", "type", value="branch"), "/subject/type", "", id="wrong-subject-type"),
    pytest.param("change_merged", _set("context", "specversion", value="0.5.1"), "/context/specversion", "not allowed", id="both-version-fields"),
    pytest.param("change_merged", _set("context", "type", value="dev.cdevents.change.merged.0.3.0"), "/context/type", "dev.cdevents.change.merged.0.2.0", id="type-of-other-release"),
    pytest.param("change_merged", _set("context", "timestamp", value="20260420T091502Z"), "/context/timestamp", "date-time", id="bad-date-time"),
    pytest.param("change_merged", _set("context", "source", value="\\\\server\\share"), "/context/source", "uri-reference", id="bad-uri-reference"),
    pytest.param("change_merged", _set("subject", "content", "extra", value=True), "/subject/content/extra", "not allowed", id="additional-property"),
    pytest.param("pipelinerun_finished", _set("subject", "content", "uri", value="https://x"), "/subject/content/uri", "not allowed", id="v05-uri-field"),
    pytest.param("pipelinerun_finished", _set("subject", "content", "outcome", value=3), "/subject/content/outcome", "string", id="outcome-not-string"),
    pytest.param("service_deployed", _drop("subject", "content", "environment"), "/subject/content/environment", "missing", id="missing-environment"),
    pytest.param("custom_tag_pushed", _set("subject", "type", value="tag"), "/subject/type", "", id="custom-subject-type-pattern"),
    pytest.param("custom_tag_pushed", _drop("subject", "type"), "/subject/type", "missing", id="custom-missing-subject-type"),
]  # fmt: skip


def _mutated(version: str, stem: str, mutate: Mutation) -> Event:
    [path] = [p for p in fixture_files(version) if p.stem == stem]
    event = copy.deepcopy(load(path))
    assert is_valid(event)
    mutate(event)
    return event


def _assert_rejected(event: Event, pointer: str, words: str) -> None:
    with pytest.raises(CDEventInvalid) as caught:
        validate(event)
    assert caught.value.path == pointer, str(caught.value)
    assert words in caught.value.message
    assert pointer in str(caught.value)
    assert not is_valid(event)


@pytest.mark.parametrize(("stem", "mutate", "pointer", "words"), _CASES_0_5)
def test_broken_v0_5_event_is_rejected_with_path(
    stem: str, mutate: Mutation, pointer: str, words: str
) -> None:
    _assert_rejected(_mutated("0.5.1", stem, mutate), pointer, words)


@pytest.mark.parametrize(("stem", "mutate", "pointer", "words"), _CASES_0_4)
def test_broken_v0_4_event_is_rejected_with_path(
    stem: str, mutate: Mutation, pointer: str, words: str
) -> None:
    _assert_rejected(_mutated("0.4.1", stem, mutate), pointer, words)


def _has_schema(event: Event) -> bool:
    """Whether a schema applies at all (not so when the version or type itself is wrong)."""
    context = event["context"]
    if "specversion" not in context and "version" not in context:
        return False
    event_type = context.get("type")
    return isinstance(event_type, str) and (
        event_type in detect_release(event).by_type or event_type.startswith("dev.cdeventsx.")
    )


@pytest.mark.parametrize(
    ("version", "stem", "mutate"),
    [
        pytest.param(version, p.values[0], p.values[1], id=p.id)
        for version, cases in (("0.5.1", _CASES_0_5), ("0.4.1", _CASES_0_4))
        for p in cases
        if _has_schema(_mutated(version, str(p.values[0]), p.values[1]))  # type: ignore[arg-type]
    ],
)
def test_engines_and_official_schema_agree_on_broken_events(
    version: str, stem: str, mutate: Mutation
) -> None:
    """fastjsonschema (runtime) rejects these; so do jsonschema on our files and the official
    schemas."""
    event = _mutated(version, stem, mutate)
    assert project_errors_jsonschema(event) != []
    if spec_dir(version).is_dir():
        assert official_errors(event) != []


@pytest.mark.parametrize("path", _conformance_params())
def test_jsonschema_engine_accepts_official_samples_with_project_schemas(path: Path) -> None:
    assert project_errors_jsonschema(load(path)) == []


@pytest.mark.parametrize(
    ("event", "pointer"),
    [
        pytest.param([], "", id="not-an-object"),
        pytest.param({"subject": {}}, "/context", id="no-context"),
        pytest.param({"context": "x", "subject": {}}, "/context", id="context-not-object"),
    ],
)
def test_non_events_are_rejected(event: Any, pointer: str) -> None:
    with pytest.raises(CDEventInvalid) as caught:
        validate(event)
    assert caught.value.path == pointer


def test_version_field_decides_the_release() -> None:
    assert detect_release({"context": {"specversion": "0.5.1"}}).version == "0.5.1"
    assert detect_release({"context": {"version": "0.4.1"}}).version == "0.4.1"
    # The official 0.4.1 custom sample says "0.5.0-draft": the field name decides, not the value.
    assert detect_release({"context": {"version": "0.5.0-draft"}}).version == "0.4.1"


def test_validation_does_not_modify_the_event() -> None:
    [path] = [p for p in fixture_files("0.5.1") if p.stem == "change_merged"]
    event = load(path)
    before = copy.deepcopy(event)
    validate(event)
    assert event == before
