"""Ref following: which pushed Git refs and OCI tags move a source, as Flux would resolve it.

Covers GitRepository ``spec.ref`` (branch, tag, semver, name, commit pins, the ``master``
default, Flux's precedence), semver ranges in npm and Masterminds spellings (commas, ``v``
prefixes, ``x`` ranges, pre-releases), OCIRepository refs (tag, semver with ``semverFilter``,
digest pins, the ``latest`` default), HelmChart versions from OCI tags, ImageRepository
exclusion lists, and ref deletion.
"""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.refs import (
    SemverRange,
    chart_follow,
    git_follow,
    image_follow,
    is_deleted,
    oci_follow,
    parse_version,
)


@pytest.mark.parametrize(
    ("spec_ref", "pushed", "expected"),
    [
        pytest.param({"branch": "main"}, "refs/heads/main", True, id="branch-push"),
        pytest.param({"branch": "main"}, "refs/heads/dev", False, id="other-branch"),
        pytest.param({"branch": "main"}, "refs/tags/main", False, id="tag-named-like-branch"),
        pytest.param({"branch": "main"}, "main", False, id="bare-ref-is-not-a-branch-push"),
        pytest.param(None, "refs/heads/master", True, id="no-ref-defaults-to-master"),
        pytest.param({}, "refs/heads/master", True, id="empty-ref-defaults-to-master"),
        pytest.param(None, "refs/heads/main", False, id="default-is-not-main"),
        pytest.param({"tag": "v1.2.3"}, "refs/tags/v1.2.3", True, id="tag-push"),
        pytest.param({"tag": "v1.2.3"}, "refs/tags/v1.2.3^{}", True, id="peeled-tag"),
        pytest.param({"tag": "v1.2.3"}, "refs/tags/v1.2.4", False, id="other-tag"),
        pytest.param({"tag": "v1.2.3"}, "refs/heads/v1.2.3", False, id="branch-named-like-tag"),
        pytest.param({"semver": ">=1.0.0 <2.0.0"}, "refs/tags/v1.2.3", True, id="semver-v-tag"),
        pytest.param({"semver": ">=1.0.0 <2.0.0"}, "refs/tags/1.2.3", True, id="semver-bare-tag"),
        pytest.param({"semver": ">=1.0.0 <2.0.0"}, "refs/tags/v2.0.0", False, id="semver-above"),
        pytest.param({"semver": ">=1.0.0"}, "refs/heads/1.2.3", False, id="semver-ignores-heads"),
        pytest.param({"semver": ">=1.0.0"}, "refs/tags/latest", False, id="semver-non-version"),
        pytest.param(
            {"name": "refs/heads/main"}, "refs/heads/main", True, id="name-full-branch-ref"
        ),
        pytest.param({"name": "refs/pull/1/head"}, "refs/pull/1/head", True, id="name-pull-ref"),
        pytest.param({"name": "refs/pull/1/head"}, "refs/pull/2/head", False, id="name-other"),
        pytest.param({"commit": "a" * 40}, "refs/heads/master", False, id="commit-pin-never"),
        pytest.param(
            {"branch": "main", "commit": "a" * 40}, "refs/heads/main", False, id="commit-wins"
        ),
        pytest.param(
            {"branch": "main", "name": "refs/heads/dev"},
            "refs/heads/main",
            False,
            id="name-beats-branch",
        ),
        pytest.param(
            {"tag": "v9.9.9", "semver": "^1.0.0"}, "refs/tags/v1.4.0", True, id="semver-beats-tag"
        ),
        pytest.param(
            {"tag": "v9.9.9", "semver": "^1.0.0"}, "refs/tags/v9.9.9", False, id="tag-overridden"
        ),
        pytest.param(
            {"branch": "main", "tag": "v1"}, "refs/heads/main", False, id="tag-beats-branch"
        ),
        pytest.param(
            {"name": "refs/tags/v1", "semver": "*"},
            "refs/tags/v2.0.0",
            False,
            id="name-beats-semver",
        ),
        pytest.param({"semver": "not a range!"}, "refs/tags/v1.0.0", False, id="bad-range-never"),
    ],
)
def test_git_sources_follow_flux_ref_rules(
    spec_ref: dict[str, Any] | None, pushed: str, expected: bool
) -> None:
    assert git_follow(spec_ref).follows(pushed) is expected


@pytest.mark.parametrize(
    ("constraint", "version", "expected"),
    [
        pytest.param(">=1.0.0 <2.0.0", "1.9.9", True, id="space-and"),
        pytest.param(">= 1.0.0, < 2.0.0", "1.9.9", True, id="masterminds-comma-and"),
        pytest.param(">= 1.0.0, < 2.0.0", "2.0.0", False, id="masterminds-comma-upper"),
        pytest.param("~1.2", "1.2.9", True, id="tilde-minor"),
        pytest.param("~1.2", "1.3.0", False, id="tilde-excludes-next-minor"),
        pytest.param("^1.2.3", "1.9.0", True, id="caret"),
        pytest.param("^1.2.3", "2.0.0", False, id="caret-excludes-major"),
        pytest.param("^0.2.3", "0.3.0", False, id="caret-zero-major"),
        pytest.param("1.x", "1.7.1", True, id="x-range"),
        pytest.param("1.x", "2.0.0", False, id="x-range-upper"),
        pytest.param("*", "3.1.4", True, id="star"),
        pytest.param("1.2.3 - 2.3.4", "2.0.0", True, id="hyphen"),
        pytest.param(">1.0 || <0.5", "0.4.0", True, id="or"),
        pytest.param("v1.x", "1.2.0", True, id="v-in-range"),
        pytest.param("=1.2.3", "v1.2.3", True, id="exact-with-v-version"),
        pytest.param(">=1.0.0", "v1.2", True, id="lenient-two-part-version"),
        pytest.param(">=1.0.0", "1.5.0-rc.1", False, id="prerelease-excluded-by-default"),
        pytest.param("*", "1.5.0-rc.1", False, id="star-excludes-prerelease"),
        pytest.param(">=1.0.0-0", "1.5.0-rc.1", True, id="prerelease-range-admits-others"),
        pytest.param(">=1.0.0-0", "1.5.0", True, id="prerelease-range-admits-releases"),
        pytest.param(">=1.0.0", "01.2.3", False, id="leading-zero-not-a-version"),
        pytest.param(">=1.0.0", "release-1", False, id="word-not-a-version"),
    ],
)
def test_semver_ranges_use_masterminds_meaning(
    constraint: str, version: str, expected: bool
) -> None:
    parsed = SemverRange.parse(constraint)
    assert parsed is not None
    assert parsed.contains(version) is expected


def test_unparseable_range_is_none() -> None:
    assert SemverRange.parse(">>>nope") is None


def test_lenient_versions_are_padded() -> None:
    assert str(parse_version("v1.2")) == "1.2.0"
    assert str(parse_version("3")) == "3.0.0"
    assert parse_version("1.2.3.4") is None


@pytest.mark.parametrize(
    ("spec_ref", "tag", "expected"),
    [
        pytest.param(None, "latest", True, id="default-latest"),
        pytest.param(None, "v1.0.0", False, id="default-not-other-tag"),
        pytest.param({"tag": "stable"}, "stable", True, id="tag"),
        pytest.param({"tag": "stable"}, "latest", False, id="tag-other"),
        pytest.param({"semver": "^1.0.0"}, "v1.4.2", True, id="semver"),
        pytest.param({"semver": "^1.0.0"}, "2.0.0", False, id="semver-out"),
        pytest.param(
            {"semver": ">=1.0.0-0", "semverFilter": ".*-rc.*"}, "1.2.0-rc.1", True, id="filter-in"
        ),
        pytest.param(
            {"semver": ">=1.0.0-0", "semverFilter": ".*-rc.*"}, "1.2.0", False, id="filter-out"
        ),
        pytest.param({"digest": "sha256:" + "a" * 64}, "latest", False, id="digest-pin-never"),
        pytest.param(
            {"tag": "latest", "digest": "sha256:" + "a" * 64}, "latest", False, id="digest-wins"
        ),
        pytest.param({"tag": "9.9.9", "semver": "1.x"}, "1.1.0", True, id="semver-beats-tag"),
        pytest.param(None, None, False, id="digest-only-push"),
    ],
)
def test_oci_sources_follow_flux_ref_rules(
    spec_ref: dict[str, Any] | None, tag: str | None, expected: bool
) -> None:
    assert oci_follow(spec_ref).follows(tag) is expected


@pytest.mark.parametrize(
    ("version", "tag", "expected"),
    [
        pytest.param(None, "6.1.0", True, id="unset-is-star"),
        pytest.param("6.x", "6.1.0", True, id="range"),
        pytest.param("6.x", "7.0.0", False, id="range-out"),
        pytest.param("1.0.0+build.1", "1.0.0_build.1", True, id="underscore-is-plus"),
        pytest.param("*", "not-a-version", False, id="not-a-version"),
    ],
)
def test_oci_helm_charts_follow_their_version(
    version: str | None, tag: str, expected: bool
) -> None:
    assert chart_follow(version).follows(tag) is expected


@pytest.mark.parametrize(
    ("exclusions", "tag", "expected"),
    [
        pytest.param(None, "v1.0.0", True, id="default-any-tag"),
        pytest.param(None, "sha256-abc.sig", False, id="default-excludes-signatures"),
        pytest.param(["^dev-"], "dev-123", False, id="custom-exclusion"),
        pytest.param(["^dev-"], "sha256-abc.sig", True, id="custom-list-replaces-default"),
        pytest.param(["(unclosed"], "v1", True, id="invalid-regex-ignored"),
        pytest.param(None, None, False, id="no-tag"),
    ],
)
def test_image_repositories_follow_unexcluded_tags(
    exclusions: list[str] | None, tag: str | None, expected: bool
) -> None:
    assert image_follow(exclusions).follows(tag) is expected


@pytest.mark.parametrize(
    ("envelope", "expected"),
    [
        pytest.param({"deleted": True}, True, id="deleted-flag"),
        pytest.param({"revision": "0" * 40}, True, id="null-sha"),
        pytest.param({"revision": "a" * 40, "deleted": False}, False, id="normal-push"),
        pytest.param({}, False, id="no-fields"),
    ],
)
def test_ref_deletions_are_recognised(envelope: dict[str, Any], expected: bool) -> None:
    assert is_deleted(envelope) is expected
