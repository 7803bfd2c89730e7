"""CDEvent builders: every output validates against the project's schemas and the official ones,
for both spec releases, and carries the release-specific shape."""

# ruff: noqa: E501 - table rows read best on one line

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import pytest

from schemas.cdevents import building, catalog
from schemas.cdevents.building import (
    Event,
    artifact_published,
    build_event,
    change_merged,
    end_link,
    environment_modified,
    oci_purl,
    path_link,
    pipelinerun_finished,
    pipelinerun_queued,
    pipelinerun_started,
    relation_link,
    service_deployed,
    trigger_link,
)
from schemas.cdevents.validating import CDEventInvalid, validate
from tests.schemas.cdevents_reference import (
    VERSIONS,
    official_errors,
    project_errors_jsonschema,
    spec_dir,
)

SOURCE = "/fluxrelay/reconciler"
RUN = "Kustomization/flux-system/apps"
PURL = oci_purl("podinfo", "sha256:0a1b", repository_url="ghcr.io/stefanprodan", tag="6.5.0")

Builder = Callable[[str], Event]

_TYPED: list[Any] = [
    pytest.param(
        lambda v: change_merged(
            v, revision="9fceb02d", repository_id="acme/platform",
            repository_source="https://github.com", source="https://relay.example/hooks/github",
        ),
        "change.merged", id="change.merged",
    ),
    pytest.param(
        lambda v: artifact_published(v, artifact_id=PURL, user="ci-bot", source=SOURCE),
        "artifact.published", id="artifact.published",
    ),
    pytest.param(
        lambda v: artifact_published(
            v, artifact_id=PURL, sbom_uri="https://sbom.example/podinfo.spdx", source=SOURCE
        ),
        "artifact.published", id="artifact.published-sbom",
    ),
    pytest.param(
        lambda v: pipelinerun_queued(v, run_id="run-1", pipeline_name=RUN, source=SOURCE),
        "pipelinerun.queued", id="pipelinerun.queued",
    ),
    pytest.param(
        lambda v: pipelinerun_started(
            v, run_id="run-1", pipeline_name=RUN, uri="https://flux.example/ks/apps", source=SOURCE
        ),
        "pipelinerun.started", id="pipelinerun.started",
    ),
    *(
        pytest.param(
            lambda v, o=outcome: pipelinerun_finished(
                v, run_id="run-1", pipeline_name=RUN, outcome=o,
                errors=None if o == "success" else "health check failed", source=SOURCE,
            ),
            "pipelinerun.finished", id=f"pipelinerun.finished-{outcome}",
        )
        for outcome in ("success", "failure", "error")
    ),
    pytest.param(
        lambda v: service_deployed(
            v, service_id="helmrelease/podinfo/podinfo", environment_id="prod-eu-1",
            environment_source="/clusters/prod-eu-1", artifact_id=PURL, source=SOURCE,
        ),
        "service.deployed", id="service.deployed",
    ),
    pytest.param(
        lambda v: environment_modified(
            v, environment_id="prod-eu-1", name="prod-eu-1",
            uri="https://k8s.example/clusters/prod-eu-1", source=SOURCE,
        ),
        "environment.modified", id="environment.modified",
    ),
]  # fmt: skip


def _assert_valid_everywhere(event: Event) -> None:
    validate(event)
    assert project_errors_jsonschema(event) == []
    release = catalog.RELEASES_BY_VERSION[
        event["context"].get("specversion") or event["context"]["version"]
    ]
    if spec_dir(release.version).is_dir():
        assert official_errors(event) == []


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("build", "key"), _TYPED)
def test_typed_builder_output_is_valid_and_release_shaped(
    build: Builder, key: str, version: str
) -> None:
    event = build(version)
    _assert_valid_everywhere(event)
    release = catalog.RELEASES_BY_VERSION[version]
    context, subject = event["context"], event["subject"]
    assert context["type"] == release.by_key[key].type
    if version == "0.4.1":
        assert context["version"] == "0.4.1"
        assert "specversion" not in context
        subject_name = key.partition(".")[0]
        assert subject["type"] == catalog.SUBJECT_TYPE_NAMES.get(subject_name, subject_name)
        assert "uri" not in subject["content"]
    else:
        assert context["specversion"] == "0.5.1"
        assert "version" not in context
        assert "type" not in subject
        assert "url" not in subject["content"]
    assert None not in subject["content"].values()


@pytest.mark.parametrize("version", VERSIONS)
def test_pipelinerun_uri_lands_in_the_release_field(version: str) -> None:
    event = pipelinerun_started(
        version, run_id="r", pipeline_name=RUN, uri="https://flux.example/r", source=SOURCE
    )
    field = "url" if version == "0.4.1" else "uri"
    assert event["subject"]["content"] == {"pipelineName": RUN, field: "https://flux.example/r"}


@pytest.mark.parametrize("version", VERSIONS)
def test_chain_and_links_are_carried_by_both_releases(version: str) -> None:
    queued = pipelinerun_queued(
        version, run_id="r", pipeline_name=RUN, source=SOURCE, chain_id="chain-1",
        links=[trigger_link("push-event-id")],
    )  # fmt: skip
    finished = pipelinerun_finished(
        version, run_id="r", pipeline_name=RUN, outcome="failure", errors="not Ready",
        source=SOURCE, chain_id="chain-1",
        links=[path_link(queued["context"]["id"]), trigger_link("push-event-id")],
    )  # fmt: skip
    assert finished["context"]["chainId"] == queued["context"]["chainId"] == "chain-1"
    assert finished["context"]["links"] == [
        {"linkType": "PATH", "from": {"contextId": queued["context"]["id"]}},
        {"linkType": "RELATION", "linkKind": "TRIGGER", "target": {"contextId": "push-event-id"}},
    ]
    _assert_valid_everywhere(queued)
    _assert_valid_everywhere(finished)


def test_link_helpers_shape_and_tags() -> None:
    assert end_link("a", tags={"k": "v"}) == {
        "linkType": "END", "from": {"contextId": "a"}, "tags": {"k": "v"},
    }  # fmt: skip
    assert relation_link("CAUSED_BY", "b") == {
        "linkType": "RELATION", "linkKind": "CAUSED_BY", "target": {"contextId": "b"},
    }  # fmt: skip
    event = change_merged(
        "0.5.1", revision="r", repository_id="acme/x", source=SOURCE,
        links=[end_link("a", tags={"k": "v"}), relation_link("CAUSED_BY", "b")],
    )  # fmt: skip
    _assert_valid_everywhere(event)


@pytest.mark.parametrize("version", VERSIONS)
def test_outcome_outside_the_0_5_enum(version: str) -> None:
    def build() -> Event:
        return pipelinerun_finished(
            version, run_id="r", pipeline_name=RUN, outcome=cast(Any, "passed"), source=SOURCE
        )

    if version == "0.4.1":  # 0.4 outcome is free text
        assert build()["subject"]["content"]["outcome"] == "passed"
    else:
        with pytest.raises(CDEventInvalid) as caught:
            build()
        assert caught.value.path == "/subject/content/outcome"


def test_invalid_content_is_refused_with_a_path() -> None:
    with pytest.raises(CDEventInvalid) as caught:
        pipelinerun_started("0.5.1", run_id="r", pipeline_name=RUN, uri="not a uri", source=SOURCE)
    assert caught.value.path == "/subject/content/uri"
    with pytest.raises(CDEventInvalid) as caught:
        change_merged("0.5.1", revision="", repository_id="acme/x", source=SOURCE)
    assert caught.value.path == "/subject/id"


def test_context_defaults_and_overrides() -> None:
    before = datetime.now(UTC)
    event = change_merged("0.5.1", revision="r", repository_id="acme/x", source=SOURCE)
    stamp = datetime.fromisoformat(event["context"]["timestamp"])
    assert event["context"]["timestamp"].endswith("Z")
    assert before - timedelta(seconds=1) <= stamp <= datetime.now(UTC) + timedelta(seconds=1)
    assert len(event["context"]["id"]) == 36
    other = change_merged("0.5.1", revision="r", repository_id="acme/x", source=SOURCE)
    assert other["context"]["id"] != event["context"]["id"]

    fixed = change_merged(
        "0.5.1", revision="r", repository_id="acme/x", source=SOURCE, id="delivery-42",
        timestamp=datetime(2026, 4, 20, 11, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2))),
        subject_source="https://github.com/acme/x",
    )  # fmt: skip
    assert fixed["context"]["id"] == "delivery-42"
    assert fixed["context"]["timestamp"] == "2026-04-20T09:00:00.123Z"
    assert fixed["subject"]["source"] == "https://github.com/acme/x"
    assert "customData" not in fixed


def test_naive_timestamp_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        change_merged(
            "0.5.1", revision="r", repository_id="a", source=SOURCE, timestamp=datetime(2026, 1, 1)
        )


def test_custom_data() -> None:
    as_json = change_merged(
        "0.4.1", revision="r", repository_id="a", source=SOURCE, custom_data={"ref": "refs/tags/v1"}
    )
    assert as_json["customData"] == {"ref": "refs/tags/v1"}
    assert as_json["customDataContentType"] == "application/json"
    as_b64 = change_merged(
        "0.5.1", revision="r", repository_id="a", source=SOURCE, custom_data="eyJhIjoxfQ==",
        custom_data_content_type="application/json",
    )  # fmt: skip
    assert as_b64["customData"] == "eyJhIjoxfQ=="
    assert as_b64["customDataContentType"] == "application/json"
    _assert_valid_everywhere(as_json)
    _assert_valid_everywhere(as_b64)


@pytest.mark.parametrize("version", VERSIONS)
def test_custom_event(version: str) -> None:
    event = build_event(
        version, "dev.cdeventsx.fluxrelay-tag.pushed.0.1.0", "v1.4.2",
        {"repository": "acme/platform", "nested": {"any": ["thing"]}}, source=SOURCE,
    )  # fmt: skip
    if version == "0.4.1":
        assert event["subject"]["type"] == "fluxrelay-tag"
    else:
        assert "type" not in event["subject"]
    _assert_valid_everywhere(event)
    with pytest.raises(CDEventInvalid) as caught:
        build_event(version, "dev.cdeventsx.fluxrelay.pushed.0.1.0", "x", {}, source=SOURCE)
    assert caught.value.path in ("/context/type", "/subject/type")


@pytest.mark.parametrize(
    ("version", "type_name", "message"),
    [
        pytest.param("0.5.1", "widget.exploded", "unknown CDEvents type", id="unknown-key"),
        pytest.param("0.5.1", "dev.cdevents.change.merged.0.2.0", "unknown CDEvents type", id="other-release-type"),
        pytest.param("0.3.0", "change.merged", "unsupported CDEvents spec version", id="old-spec"),
    ],
)  # fmt: skip
def test_unknown_types_and_versions(version: str, type_name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_event(version, type_name, "x", {}, source=SOURCE)


def test_full_type_string_and_release_object_are_accepted() -> None:
    event = build_event(
        catalog.V0_4_1, "dev.cdevents.change.merged.0.2.0", "r", {"repository": {"id": "a"}},
        source=SOURCE,
    )  # fmt: skip
    assert event["context"]["type"] == "dev.cdevents.change.merged.0.2.0"


def _sample(kind: catalog.FieldKind) -> Any:
    """A minimal valid value for one table field (required sub-fields only)."""
    if isinstance(kind, catalog.Str):
        if kind.enum:
            return kind.enum[0]
        return "https://example.org/x" if kind.format in ("uri", "uri-reference") else "x"
    if isinstance(kind, catalog.OpenEnum):
        return kind.values[0]
    if isinstance(kind, catalog.StrList):
        return ["x"]
    if isinstance(kind, catalog.Ref):
        return {"id": "x"}
    return {name: _sample(kind.fields[name]) for name in kind.required}


def _every_type() -> list[Any]:
    return [
        pytest.param(release, spec, id=f"{release.version}-{spec.key}")
        for release in catalog.RELEASES
        for spec in release.events
    ]


@pytest.mark.parametrize(("release", "spec"), _every_type())
def test_build_event_covers_every_catalogue_type(
    release: catalog.SpecRelease, spec: catalog.EventSpec
) -> None:
    minimal = {name: _sample(spec.content[name]) for name in spec.required}
    event = build_event(release.version, spec.key, "subject-1", minimal, source=SOURCE)
    assert event["context"]["type"] == spec.type
    _assert_valid_everywhere(event)
    full = {name: _sample(kind) for name, kind in spec.content.items()}
    _assert_valid_everywhere(build_event(release, spec.key, "subject-1", full, source=SOURCE))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(("podinfo", "sha256:0a1b"), {}, id="bare"),
        pytest.param(("PodInfo", "sha256:0a1b"), {"repository_url": "ghcr.io/stefanprodan", "tag": "6.5.0"}, id="qualifiers"),
        pytest.param(("podinfo", "sha256:0a1b"), {"repository_url": "localhost:5000/team"}, id="port"),
    ],
)  # fmt: skip
def test_oci_purl(args: tuple[str, str], expected: dict[str, str]) -> None:
    purl = oci_purl(*args, **expected)
    assert purl.startswith("pkg:oci/podinfo@sha256%3A0a1b")
    query = purl.partition("?")[2]
    assert query == "&".join(f"{k}={v}" for k, v in sorted(expected.items()))


def test_public_names_exist() -> None:
    for name in building.__all__:
        assert hasattr(building, name), name
