"""Test helpers: the official CDEvents schemas/samples from ``shared/`` and a jsonschema
cross-check of the project's own schema files.

The official files are only read here, inside tests, as an external check; they are never
shipped. Everything that needs them skips when the directory is absent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any, cast

import jsonschema
import referencing
from referencing.jsonschema import DRAFT202012

from schemas.cdevents.catalog import RELEASES_BY_VERSION
from schemas.cdevents.validating import FORMATS, detect_release, load_schemas, schema_id

SPEC_ROOT = Path(
    os.environ.get(
        "FLUXRELAY_CDEVENTS_SPEC", Path(__file__).resolve().parents[3] / "shared" / "cdevents-spec"
    )
)
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "cdevents"
VERSIONS = ("0.4.1", "0.5.1")


def spec_dir(version: str) -> Path:
    """``shared/cdevents-spec/v<version>`` (may not exist)."""
    return SPEC_ROOT / f"v{version}"


def conformance_files(version: str) -> list[Path]:
    """Official samples: one per event type plus the custom-event sample."""
    base = spec_dir(version)
    files = sorted((base / "conformance").glob("*.json"))
    custom = base / "custom" / "conformance.json"
    return [*files, custom] if custom.is_file() else files


def fixture_files(version: str) -> list[Path]:
    """The project's own sample events."""
    return sorted((FIXTURES / ("v" + version.replace(".", "_"))).glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    """Parse one JSON file."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def format_checker() -> jsonschema.FormatChecker:
    """A FormatChecker that really checks the formats CDEvents uses."""
    checker = jsonschema.FormatChecker(formats=())
    for name, check in FORMATS.items():
        checker.checks(name)(cast(Any, check))
    return checker


def _registry(docs: Mapping[str, dict[str, Any]]) -> referencing.Registry[Any]:
    return referencing.Registry().with_resources(
        (uri, DRAFT202012.create_resource(doc)) for uri, doc in docs.items()
    )


@cache
def _official_docs(version: str) -> dict[str, dict[str, Any]]:
    base = spec_dir(version)
    docs = {}
    for path in [*(base / "schemas").rglob("*.json"), base / "custom" / "schema.json"]:
        doc = load(path)
        docs[doc["$id"]] = doc
    return docs


@cache
def _project_docs(version: str) -> dict[str, dict[str, Any]]:
    return load_schemas(RELEASES_BY_VERSION[version])


def _errors(docs: Mapping[str, dict[str, Any]], event: Mapping[str, Any]) -> list[str]:
    release = detect_release(event)
    sid = schema_id(release, str(event["context"].get("type")))
    if sid is None:
        return ["unknown type"]
    validator = jsonschema.Draft202012Validator(
        docs[sid], registry=_registry(docs), format_checker=format_checker()
    )
    return [error.json_path + ": " + error.message for error in validator.iter_errors(event)]


def official_errors(event: Mapping[str, Any]) -> list[str]:
    """Violations of the official schema of the event's release and type (jsonschema)."""
    return _errors(_official_docs(detect_release(event).version), event)


def project_errors_jsonschema(event: Mapping[str, Any]) -> list[str]:
    """Violations of the project's schema files, found by jsonschema instead of fastjsonschema."""
    return _errors(_project_docs(detect_release(event).version), event)
