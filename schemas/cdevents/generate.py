"""Generate the project's CDEvents JSON Schema files from the catalogue table.

``python -m schemas.cdevents.generate`` writes ``schemas/cdevents/v0_4_1/`` and ``v0_5_1/``
(one file per event type, ``links/*.json`` and ``custom.json``); ``--check`` writes nothing
and exits 1 when a committed file is missing, different or left over. The schema files are
generated rather than hand-written so the 90 event schemas cannot drift from each other or
from the table, and so a spec bump is a table edit.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from schemas.cdevents.catalog import (
    CUSTOM_SCHEMA_NAME,
    CUSTOM_SUBJECT_TYPE_PATTERN,
    CUSTOM_TYPE_PATTERN,
    EMBEDDED_LINK_KINDS,
    EMBEDDED_LINKS_ARRAY,
    LINK_SCHEMAS,
    LOOSE_SOURCE_SUBJECTS,
    OPTIONAL_SUBJECT_TYPE_0_5,
    RELEASES,
    SUBJECT_TYPE_NAMES,
    URIREF1,
    EventSpec,
    FieldKind,
    OpenEnum,
    Ref,
    SpecRelease,
    Str,
    StrList,
    schema_id_stem,
)

DRAFT = "https://json-schema.org/draft/2020-12/schema"
PACKAGE_DIR = Path(__file__).resolve().parent

JSON = dict[str, Any]


def field_schema(kind: FieldKind) -> JSON:
    """JSON Schema of one table field."""
    if isinstance(kind, Str):
        out: JSON = {"type": "string"}
        if kind.min_length is not None:
            out["minLength"] = kind.min_length
        if kind.format is not None:
            out["format"] = kind.format
        if kind.enum is not None:
            out["enum"] = list(kind.enum)
        if kind.example is not None:
            out["example"] = kind.example
        return out
    if isinstance(kind, OpenEnum):
        other: JSON = {"type": "string"}
        if kind.min_length is not None:
            other["minLength"] = kind.min_length
        return {"anyOf": [{"type": "string", "enum": list(kind.values)}, other]}
    if isinstance(kind, StrList):
        return {"type": "array", "items": {"type": "string"}}
    if isinstance(kind, Ref):
        source = {"type": "string"} if kind.loose else field_schema(URIREF1)
        return object_schema({"id": field_schema(Str(min_length=1)), "source": source}, ["id"])
    return object_schema(
        {name: field_schema(sub) for name, sub in kind.fields.items()},
        list(kind.required),
        kind.additional,
    )


def object_schema(
    properties: Mapping[str, JSON],
    required: list[str],
    additional: bool | None = False,
    *,
    keep_empty_required: bool = False,
    keep_empty_properties: bool = False,
) -> JSON:
    """An object schema in the key order used throughout the generated files."""
    out: JSON = {"type": "object"}
    if properties or keep_empty_properties:
        out["properties"] = dict(properties)
    if required or keep_empty_required:
        out["required"] = required
    if additional is not None:
        out["additionalProperties"] = additional
    return out


def _source(loose: bool) -> JSON:
    return {"type": "string", "minLength": 1} if loose else field_schema(URIREF1)


def context_schema(release: SpecRelease, type_schema: JSON, *, loose_source: bool) -> JSON:
    """``context`` of one release; ``type_schema`` pins the event type."""
    non_empty = {"type": "string", "minLength": 1}
    return object_schema(
        {
            release.version_field: non_empty,
            "id": non_empty,
            "source": _source(loose_source),
            "type": type_schema,
            "timestamp": {"type": "string", "format": "date-time"},
            "schemaUri": {"type": "string", "minLength": 1, "format": "uri"},
            "chainId": non_empty,
            "links": {"$ref": f"links/{EMBEDDED_LINKS_ARRAY}"},
        },
        [release.version_field, "id", "source", "type", "timestamp"],
    )


def envelope_schema(schema_id: str, context: JSON, subject: JSON) -> JSON:
    """The ``{context, subject, customData?, customDataContentType?}`` envelope."""
    return {
        "$schema": DRAFT,
        "$id": schema_id,
        **object_schema(
            {
                "context": context,
                "subject": subject,
                "customData": {
                    "oneOf": [
                        {"type": "object"},
                        {"type": "string", "contentEncoding": "base64"},
                    ]
                },
                "customDataContentType": {"type": "string"},
            },
            ["context", "subject"],
        ),
    }


def event_schema(release: SpecRelease, event: EventSpec) -> JSON:
    """Schema of one event type of one release."""
    loose = event.subject in LOOSE_SOURCE_SUBJECTS
    type_schema = {"type": "string", "enum": [event.type], "default": event.type}
    subject_props: dict[str, JSON] = {
        "id": {"type": "string", "minLength": 1},
        "source": {"type": "string"} if loose else field_schema(URIREF1),
    }
    required = ["id", "content"]
    if release.subject_type or event.key in OPTIONAL_SUBJECT_TYPE_0_5:
        name = SUBJECT_TYPE_NAMES.get(event.subject, event.subject)
        subject_props["type"] = {"type": "string", "minLength": 1, "enum": [name], "default": name}
        if release.subject_type:
            required = ["id", "type", "content"]
    subject_props["content"] = object_schema(
        {name: field_schema(kind) for name, kind in event.content.items()},
        list(event.required),
        keep_empty_required=event.explicit_empty_required,
        keep_empty_properties=True,
    )
    return envelope_schema(
        release.base_uri + schema_id_stem(release.version, event.subject, event.predicate),
        context_schema(release, type_schema, loose_source=loose),
        object_schema(subject_props, required),
    )


def custom_schema(release: SpecRelease) -> JSON:
    """Schema every ``dev.cdeventsx.*`` event must satisfy (content is free-form)."""
    subject_props: dict[str, JSON] = {
        "id": {"type": "string", "minLength": 1},
        "source": field_schema(URIREF1),
    }
    required = ["id", "content"]
    if release.subject_type:
        subject_props["type"] = {"type": "string", "pattern": CUSTOM_SUBJECT_TYPE_PATTERN}
        required = ["id", "type", "content"]
    subject_props["content"] = {"type": "object", "additionalProperties": True}
    return envelope_schema(
        release.base_uri + CUSTOM_SCHEMA_NAME,
        context_schema(
            release, {"type": "string", "pattern": CUSTOM_TYPE_PATTERN}, loose_source=False
        ),
        object_schema(subject_props, required),
    )


def link_schemas(release: SpecRelease) -> dict[str, JSON]:
    """``links/<name>`` schemas of one release, keyed by name."""
    out: dict[str, JSON] = {}
    for name, shape in LINK_SCHEMAS.items():
        out[name] = {"$schema": DRAFT, "$id": f"{release.base_uri}links/{name}"}
        out[name].update(field_schema(shape))
    out[EMBEDDED_LINKS_ARRAY] = {
        "$schema": DRAFT,
        "$id": f"{release.base_uri}links/{EMBEDDED_LINKS_ARRAY}",
        "type": "array",
        "items": {"anyOf": [{"type": "object", "$ref": kind} for kind in EMBEDDED_LINK_KINDS]},
    }
    return out


def render_all() -> dict[Path, str]:
    """Every generated file (path relative to this package) and its exact text."""
    files: dict[Path, JSON] = {}
    for release in RELEASES:
        base = Path(release.dirname)
        for event in release.events:
            files[base / event.filename] = event_schema(release, event)
        files[base / f"{CUSTOM_SCHEMA_NAME}.json"] = custom_schema(release)
        for name, schema in link_schemas(release).items():
            files[base / "links" / f"{name}.json"] = schema
    return {path: json.dumps(doc, indent=2) + "\n" for path, doc in sorted(files.items())}


def _existing(root: Path) -> set[Path]:
    found: set[Path] = set()
    for release in RELEASES:
        directory = root / release.dirname
        if directory.is_dir():
            found.update(p.relative_to(root) for p in directory.rglob("*.json"))
    return found


def stale_files(root: Path = PACKAGE_DIR) -> list[str]:
    """Relative paths whose committed text differs from the table (missing, changed, extra)."""
    rendered = render_all()
    stale = [
        str(path)
        for path, text in rendered.items()
        if not (root / path).is_file() or (root / path).read_text(encoding="utf-8") != text
    ]
    stale += [str(path) for path in sorted(_existing(root) - rendered.keys())]
    return stale


def write_all(root: Path = PACKAGE_DIR) -> int:
    """Write every generated file, delete left-over ones; return how many files changed."""
    changed = 0
    for path in sorted(_existing(root) - render_all().keys()):
        (root / path).unlink()
        changed += 1
    for path, text in render_all().items():
        target = root / path
        if target.is_file() and target.read_text(encoding="utf-8") == text:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        changed += 1
    return changed


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if generated files are stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for path in stale:
            sys.stderr.write(f"stale: schemas/cdevents/{path}\n")
        return 1 if stale else 0
    changed = write_all()
    sys.stdout.write(f"{changed} file(s) written\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
