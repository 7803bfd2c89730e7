"""The generated CDEvents schema files: current with the catalogue, complete, and equal to the
official schemas in everything that affects validation."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from schemas.cdevents import catalog
from schemas.cdevents.generate import PACKAGE_DIR, main, render_all, stale_files, write_all
from tests.schemas.cdevents_reference import spec_dir


def test_committed_files_are_current() -> None:
    assert stale_files() == []
    assert main(["--check"]) == 0


def test_check_command_line_passes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "schemas.cdevents.generate", "--check"],
        cwd=PACKAGE_DIR.parents[1],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_check_detects_changed_missing_and_extra_files(tmp_path: Path) -> None:
    for release in catalog.RELEASES:
        shutil.copytree(PACKAGE_DIR / release.dirname, tmp_path / release.dirname)
    assert stale_files(tmp_path) == []
    changed = tmp_path / "v0_5_1" / "change_merged.json"
    changed.write_text(changed.read_text().replace('"minLength": 1', '"minLength": 0'))
    (tmp_path / "v0_4_1" / "links" / "linkend.json").unlink()
    (tmp_path / "v0_4_1" / "leftover.json").write_text("{}")
    assert sorted(stale_files(tmp_path)) == [
        "v0_4_1/leftover.json",
        "v0_4_1/links/linkend.json",
        "v0_5_1/change_merged.json",
    ]
    assert write_all(tmp_path) == 3
    assert stale_files(tmp_path) == []


@pytest.mark.parametrize("release", catalog.RELEASES, ids=lambda r: r.version)
def test_catalogue_lists_45_distinct_types(release: catalog.SpecRelease) -> None:
    types = [event.type for event in release.events]
    assert len(types) == len(set(types)) == 45
    for event in release.events:
        assert event.type.startswith(f"dev.cdevents.{event.subject}.{event.predicate}.")
        assert set(event.required) <= set(event.content)


def test_v05_event_versions_are_one_minor_step_ahead() -> None:
    for event in catalog.V0_5_1.events:
        old = catalog.V0_4_1.by_key[event.key]
        assert int(event.version.split(".")[1]) == int(old.version.split(".")[1]) + 1


def _normalised(node: Any) -> Any:
    """Drop what does not affect validation: prose and empty ``required`` lists."""
    if isinstance(node, dict):
        return {
            key: _normalised(value)
            for key, value in node.items()
            if key != "description" and not (key == "required" and value == [])
        }
    if isinstance(node, list):
        return [_normalised(item) for item in node]
    return node


def _official_pairs() -> list[Any]:
    params: list[Any] = []
    for release in catalog.RELEASES:
        base = spec_dir(release.version)
        if not base.is_dir():
            params.append(
                pytest.param(
                    None,
                    None,
                    id=f"{release.version}-missing",
                    marks=pytest.mark.skip(reason=f"{base} not present"),
                )
            )
            continue
        for event in release.events:
            official = base / "schemas" / f"{event.subject}{event.predicate}.json"
            params.append(
                pytest.param(
                    official,
                    Path(release.dirname) / event.filename,
                    id=f"{release.version}-{event.key}",
                )
            )
        for link in sorted((base / "schemas" / "links").glob("*.json")):
            params.append(
                pytest.param(
                    link,
                    Path(release.dirname) / "links" / link.name,
                    id=f"{release.version}-links-{link.stem}",
                )
            )
        params.append(
            pytest.param(
                base / "custom" / "schema.json",
                Path(release.dirname) / "custom.json",
                id=f"{release.version}-custom",
            )
        )
    return params


@pytest.mark.parametrize(("official", "ours"), _official_pairs())
def test_generated_schema_matches_official(official: Path, ours: Path) -> None:
    rendered = render_all()
    assert ours in rendered
    assert _normalised(json.loads(rendered[ours])) == _normalised(json.loads(official.read_text()))


def test_every_official_schema_file_has_a_counterpart() -> None:
    rendered = render_all()
    for release in catalog.RELEASES:
        base = spec_dir(release.version)
        if not base.is_dir():
            pytest.skip(f"{base} not present")
        official_links = {p.name for p in (base / "schemas" / "links").glob("*.json")}
        ours_links = {p.name for p in rendered if p.parts[:2] == (release.dirname, "links")}
        assert official_links == ours_links
        assert len(list((base / "schemas").glob("*.json"))) == len(release.events)
