"""fluxrelay's CDEvents layer: the event catalogue of spec v0.4.1 and v0.5.1, the generated JSON
Schemas, validation, builders and the CloudEvents mapping.

There is no usable CDEvents SDK for Python, so the wire contract for CDEvents lives here; the
receiver validates incoming events with it and the reconciler builds the events it emits.
"""

from schemas.cdevents.building import (
    Event,
    EventOptions,
    Outcome,
    artifact_published,
    build_event,
    change_merged,
    end_link,
    environment_modified,
    format_timestamp,
    oci_purl,
    path_link,
    pipelinerun_finished,
    pipelinerun_queued,
    pipelinerun_started,
    relation_link,
    release_of,
    service_deployed,
    trigger_link,
)
from schemas.cdevents.catalog import (
    RELEASES,
    RELEASES_BY_VERSION,
    V0_4_1,
    V0_5_1,
    EventSpec,
    SpecRelease,
)
from schemas.cdevents.cloudevent import (
    CloudEventDecodeError,
    DecodedCDEvent,
    attribute_mismatches,
    cloudevent_attributes,
    decode_http,
    from_cloudevent,
    to_cloudevent,
    to_http_binary,
    to_http_structured,
)
from schemas.cdevents.validating import (
    CDEventInvalid,
    detect_release,
    is_valid,
    validate,
    warm_up,
)

__all__ = [
    "RELEASES",
    "RELEASES_BY_VERSION",
    "V0_4_1",
    "V0_5_1",
    "CDEventInvalid",
    "CloudEventDecodeError",
    "DecodedCDEvent",
    "Event",
    "EventOptions",
    "EventSpec",
    "Outcome",
    "SpecRelease",
    "artifact_published",
    "attribute_mismatches",
    "build_event",
    "change_merged",
    "cloudevent_attributes",
    "decode_http",
    "detect_release",
    "end_link",
    "environment_modified",
    "format_timestamp",
    "from_cloudevent",
    "is_valid",
    "oci_purl",
    "path_link",
    "pipelinerun_finished",
    "pipelinerun_queued",
    "pipelinerun_started",
    "relation_link",
    "release_of",
    "service_deployed",
    "to_cloudevent",
    "to_http_binary",
    "to_http_structured",
    "trigger_link",
    "validate",
    "warm_up",
]
