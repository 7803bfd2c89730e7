"""fluxrelay's CDEvents layer: the event catalogue of spec v0.4.1 and v0.5.1, the generated JSON
Schemas, validation, builders and the CloudEvents mapping.

There is no usable CDEvents SDK for Python, so the wire contract for CDEvents lives here; the
receiver validates incoming events with it and the reconciler builds the events it emits.
"""

from schemas.cdevents.catalog import RELEASES, V0_4_1, V0_5_1, EventSpec, SpecRelease
from schemas.cdevents.validating import (
    CDEventInvalid,
    detect_release,
    is_valid,
    validate,
    warm_up,
)

__all__ = [
    "RELEASES",
    "V0_4_1",
    "V0_5_1",
    "CDEventInvalid",
    "EventSpec",
    "SpecRelease",
    "detect_release",
    "is_valid",
    "validate",
    "warm_up",
]
