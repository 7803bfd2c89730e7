"""CDEvents over CloudEvents: attribute mapping, HTTP binary/structured round trips through the
``cloudevents`` SDK, and decoding that never invents a missing id or time."""

# ruff: noqa: E501 - table rows read best on one line

from __future__ import annotations

import base64
import copy
import json
from datetime import datetime
from typing import Any

import pytest
from cloudevents.core.v1.event import CloudEvent

from schemas.cdevents.building import change_merged, pipelinerun_finished
from schemas.cdevents.cloudevent import (
    CloudEventDecodeError,
    attribute_mismatches,
    cloudevent_attributes,
    decode_http,
    from_cloudevent,
    to_cloudevent,
    to_http_binary,
    to_http_structured,
)
from schemas.cdevents.validating import validate
from tests.schemas.cdevents_reference import VERSIONS

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _event(version: str) -> dict[str, Any]:
    return change_merged(
        version,
        revision="9fceb02d",
        repository_id="acme/platform",
        source="https://relay.example/hooks/github",
        id="delivery-1",
        timestamp="2026-04-20T09:15:02.120Z",
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_attribute_mapping(version: str) -> None:
    event = _event(version)
    attributes = cloudevent_attributes(event, extensions={"traceparent": TRACEPARENT})
    assert attributes == {
        "specversion": "1.0",
        "id": "delivery-1",
        "source": "https://relay.example/hooks/github",
        "type": event["context"]["type"],
        "subject": "9fceb02d",
        "time": "2026-04-20T09:15:02.120Z",
        "datacontenttype": "application/json",
        "traceparent": TRACEPARENT,
    }


@pytest.mark.parametrize("name", ["TraceParent", "data", "id", "with-dash", "x" * 21])
def test_bad_extension_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="extension name"):
        cloudevent_attributes(_event("0.5.1"), extensions={name: "v"})


def test_sdk_event_is_built_without_touching_the_cdevent() -> None:
    event = _event("0.5.1")
    before = copy.deepcopy(event)
    cloud = to_cloudevent(event, extensions={"traceparent": TRACEPARENT})
    assert event == before
    assert cloud.get_id() == "delivery-1"
    assert cloud.get_subject() == "9fceb02d"
    assert cloud.get_extension("traceparent") == TRACEPARENT
    time = cloud.get_time()
    assert isinstance(time, datetime)
    assert time.utcoffset() is not None
    data = from_cloudevent(cloud)
    assert data == event
    data["context"]["id"] = "changed"
    assert event["context"]["id"] == "delivery-1"


def test_from_cloudevent_refuses_non_object_data() -> None:
    cloud = CloudEvent({"id": "1", "source": "/s", "type": "t"}, data="[1, 2]")
    with pytest.raises(CloudEventDecodeError, match="JSON object"):
        from_cloudevent(cloud)
    cloud = CloudEvent({"id": "1", "source": "/s", "type": "t"}, data=b"\xff")
    with pytest.raises(CloudEventDecodeError, match="not JSON"):
        from_cloudevent(cloud)


@pytest.mark.parametrize("version", VERSIONS)
def test_http_binary_round_trip(version: str) -> None:
    event = pipelinerun_finished(
        version,
        run_id="run 1",  # a space: must be percent-encoded in ce-subject
        pipeline_name="Kustomization/flux-system/apps",
        outcome="success",
        source="/fluxrelay/reconciler",
    )
    message = to_http_binary(event, extensions={"traceparent": TRACEPARENT})
    assert message.headers["ce-id"] == event["context"]["id"]
    assert message.headers["ce-subject"] == "run%201"
    assert message.headers["content-type"] == "application/json"
    assert json.loads(message.body) == event
    decoded = decode_http(message.headers, message.body)
    assert decoded.mode == "binary"
    assert decoded.cdevent == event
    assert decoded.attributes["subject"] == "run 1"
    assert decoded.attributes["traceparent"] == TRACEPARENT
    assert decoded.mismatches == ()
    validate(decoded.cdevent)


@pytest.mark.parametrize("version", VERSIONS)
def test_http_structured_round_trip(version: str) -> None:
    event = _event(version)
    message = to_http_structured(event)
    assert message.headers["content-type"] == "application/cloudevents+json"
    envelope = json.loads(message.body)
    assert envelope["data"] == event
    assert envelope["id"] == "delivery-1"
    decoded = decode_http(message.headers, message.body)
    assert decoded.mode == "structured"
    assert decoded.cdevent == event
    assert decoded.mismatches == ()


def test_header_names_are_case_insensitive() -> None:
    message = to_http_binary(_event("0.5.1"))
    shouting = {name.title(): value for name, value in message.headers.items()}
    assert "Ce-Id" in shouting
    decoded = decode_http(shouting, message.body)
    assert decoded.attributes["id"] == "delivery-1"


@pytest.mark.parametrize("missing", ["ce-id", "ce-source", "ce-type"])
def test_binary_mode_missing_required_attribute_is_refused(missing: str) -> None:
    message = to_http_binary(_event("0.5.1"))
    headers = {k: v for k, v in message.headers.items() if k != missing}
    with pytest.raises(CloudEventDecodeError, match=missing.removeprefix("ce-")):
        decode_http(headers, message.body)


def test_ce_headers_without_specversion_are_not_binary_mode() -> None:
    """``ce-specversion`` marks binary mode; ``Ce-Type`` alone (Flux's examples) next to a
    CDEvent body leaves it a bare CDEvent, read as notification-controller reads it."""
    message = to_http_binary(_event("0.5.1"))
    headers = {k: v for k, v in message.headers.items() if k != "ce-specversion"}
    decoded = decode_http(headers, message.body)
    assert decoded.mode == "bare"
    assert decoded.cdevent == _event("0.5.1")


def test_binary_mode_missing_time_is_not_invented() -> None:
    message = to_http_binary(_event("0.5.1"))
    headers = {k: v for k, v in message.headers.items() if k not in ("ce-time", "ce-subject")}
    decoded = decode_http(headers, message.body)
    assert "time" not in decoded.attributes
    assert "subject" not in decoded.attributes
    assert decoded.mismatches == ()


@pytest.mark.parametrize(
    ("change", "error"),
    [
        pytest.param({"ce-specversion": "0.3"}, "specversion", id="old-cloudevents"),
        pytest.param({"ce-time": "yesterday"}, "attributes", id="bad-time"),
        pytest.param({"content-type": "text/plain"}, "not JSON", id="not-json-content-type"),
    ],
)
def test_binary_mode_bad_attributes(change: dict[str, str], error: str) -> None:
    message = to_http_binary(_event("0.5.1"))
    with pytest.raises(CloudEventDecodeError, match=error):
        decode_http({**message.headers, **change}, message.body)


def test_mismatching_attributes_are_reported() -> None:
    message = to_http_binary(_event("0.5.1"))
    headers = {**message.headers, "ce-id": "other", "ce-time": "2026-04-20T11:15:02.120%2B02:00"}
    decoded = decode_http(headers, message.body)
    assert decoded.mismatches == ("id",)  # same instant, other spelling: not a mismatch
    headers["ce-time"] = "2026-04-20T09:15:03Z"
    assert decode_http(headers, message.body).mismatches == ("id", "time")
    assert attribute_mismatches({"subject": "x"}, _event("0.4.1")) == ["subject"]


def test_structured_content_type_wins_over_ce_headers() -> None:
    message = to_http_structured(_event("0.5.1"))
    decoded = decode_http({**message.headers, "ce-id": "stray"}, message.body)
    assert decoded.mode == "structured"
    assert decoded.attributes["id"] == "delivery-1"


def test_structured_mode_requires_id() -> None:
    message = to_http_structured(_event("0.5.1"))
    envelope = json.loads(message.body)
    del envelope["id"]
    with pytest.raises(CloudEventDecodeError, match="id"):
        decode_http(message.headers, json.dumps(envelope).encode())


def test_structured_mode_data_base64() -> None:
    event = _event("0.5.1")
    envelope = json.loads(to_http_structured(event).body)
    del envelope["data"]
    envelope["data_base64"] = base64.b64encode(json.dumps(event).encode()).decode()
    decoded = decode_http(
        {"Content-Type": "application/cloudevents+json; charset=utf-8"},
        json.dumps(envelope).encode(),
    )
    assert decoded.cdevent == event


@pytest.mark.parametrize(
    ("headers", "body", "error"),
    [
        pytest.param({"content-type": "application/cloudevents-batch+json"}, b"[]", "unsupported", id="batch"),
        pytest.param({"content-type": "application/cloudevents+json"}, b"{", "not JSON", id="broken-json"),
        pytest.param({"content-type": "application/cloudevents+json"}, b'{"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}', "no CDEvent", id="no-data"),
        pytest.param({"content-type": "application/json"}, b"Jenkins says hi", "not JSON", id="bare-not-json"),
        pytest.param({}, b"[1]", "not a JSON object", id="bare-array"),
    ],
)  # fmt: skip
def test_undecodable_messages(headers: dict[str, str], body: bytes, error: str) -> None:
    with pytest.raises(CloudEventDecodeError, match=error):
        decode_http(headers, body)


def test_bare_cdevent_body_is_accepted() -> None:
    event = _event("0.4.1")
    decoded = decode_http({"Content-Type": "application/json"}, json.dumps(event).encode())
    assert decoded.mode == "bare"
    assert decoded.attributes == {}
    assert decoded.cdevent == event
