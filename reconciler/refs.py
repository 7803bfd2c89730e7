"""Whether a Flux source follows a pushed Git ref or a pushed OCI tag.

Each source's ``spec.ref`` is compiled once, when the index sees the object, into a small
frozen "follow" value with one question on it (``follows(pushed)``); the hot path of a lookup
is then string comparisons and, for semver ranges, one range test on an already parsed range.

Flux rules mirrored here (source-controller v1 API docs):

- GitRepository: ``commit`` > ``name`` > ``semver`` > ``tag`` > ``branch``; no ``spec.ref`` (or
  an empty one) means branch ``master``. A commit pin never moves, so it never triggers.
  ``semver`` is matched against tag pushes, a leading ``v`` stripped as Flux does. Flux picks
  the *highest* matching tag, so a push of a lower matching tag triggers a reconcile that
  changes nothing: a harmless extra reconcile, never a missed one.
- OCIRepository: ``digest`` > ``semver`` > ``tag``; default tag ``latest``; ``semverFilter``
  (a regular expression over tags) narrows a semver ref.
- ImageRepository: any new tag of its image, except tags its ``exclusionList`` rejects
  (Flux's default excludes cosign signatures, ``^.*\\.sig$``).
- HelmChart from an OCI HelmRepository: chart versions are tags (``+`` is written ``_`` in OCI
  tags); ``spec.version`` is a semver range, ``*`` when unset.

Semver ranges use ``node-semver`` (npm range grammar: ``>=1.0.0 <2.0.0``, ``~1.2``, ``^1.2.3``,
``1.x``, ``||``, hyphen ranges). Flux uses Masterminds/semver, whose grammar is the same except
that ``,`` also means AND; commas are rewritten to spaces. Pre-releases follow Masterminds: a
pre-release version satisfies a range only when the range itself names a pre-release.
Versions are parsed leniently like Masterminds ``NewVersion`` (``v1.2`` is ``1.2.0``).

Tags and refs come from webhook payloads, so their length is the sender's choice, while the
patterns run over them (``semverFilter``, ``exclusionList``) are the user's: ``.*-rc.*``
searched over a 32 KB tag took 0.3 s, and would take some 50 minutes over 3 MiB (every start
position re-scans the rest). Hence two bounds, both those of the grammars involved, checked
before any pattern runs: a tag longer than :data:`MAX_TAG_LENGTH` is no OCI tag and moves
nothing, and a version longer than :data:`MAX_VERSION_LENGTH` is no version (npm's
node-semver refuses those too).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import nodesemver  # type: ignore[import-untyped]

logger = logging.getLogger(__name__)

HEADS = "refs/heads/"
TAGS = "refs/tags/"
DEFAULT_GIT_BRANCH = "master"
DEFAULT_OCI_TAG = "latest"
DEFAULT_IMAGE_EXCLUSIONS = (r"^.*\.sig$",)
NULL_SHA = re.compile(r"^0+$")

_LENIENT_VERSION = re.compile(
    r"^v?(?P<major>0|[1-9]\d*)(?:\.(?P<minor>0|[1-9]\d*))?(?:\.(?P<patch>0|[1-9]\d*))?"
    r"(?P<rest>(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?)$"
)
_COMMA = re.compile(r"\s*,\s*")
MAX_TAG_LENGTH = 128
"""The longest OCI tag (distribution spec: ``[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}``): a registry
holds none longer, so a longer one in an event is not followed and no pattern sees it."""
MAX_VERSION_LENGTH = 256
"""The longest version parsed (node-semver's ``MAX_LENGTH``): semver parsing stays linear, but
a source is asked once per event, so a long one would cost as much per source following the
repository."""


def parse_version(text: str) -> Any | None:
    """A ``nodesemver.SemVer`` for a tag, lenient as Masterminds (``v1.2`` -> ``1.2.0``);
    None for anything longer than :data:`MAX_VERSION_LENGTH`."""
    text = text.strip()
    if len(text) > MAX_VERSION_LENGTH:
        return None
    found = _LENIENT_VERSION.match(text)
    if found is None:
        return None
    canonical = f"{found['major']}.{found['minor'] or 0}.{found['patch'] or 0}{found['rest'] or ''}"
    try:
        return nodesemver.make_semver(canonical, False)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class SemverRange:
    """A parsed semver constraint (Masterminds grammar mapped onto node-semver)."""

    text: str
    _range: Any
    _names_prerelease: bool

    @classmethod
    def parse(cls, text: str) -> SemverRange | None:
        """The range, or None (logged) when it does not parse: such a source never matches."""
        spec = _COMMA.sub(" ", text.strip()) or "*"
        try:
            parsed = nodesemver.make_range(spec, False)
        except (ValueError, TypeError):
            parsed = None
        if parsed is None:
            logger.warning("ignoring unparseable semver range %r", text)
            return None
        names_pre = any(
            comparator.semver is not nodesemver.ANY and len(comparator.semver.prerelease) > 0
            for group in parsed.set
            for comparator in group
        )
        return cls(text, parsed, names_pre)

    def contains(self, version: str) -> bool:
        """Whether the version (a tag, ``v`` allowed) satisfies the range."""
        parsed = parse_version(version)
        if parsed is None:
            return False
        if parsed.prerelease and not self._names_prerelease:
            return False
        return bool(self._range.test(parsed, include_prerelease=self._names_prerelease))


GitFollowKind = Literal["branch", "tag", "semver", "name", "pinned"]


@dataclass(frozen=True, slots=True)
class GitFollow:
    """What a GitRepository follows, after Flux's precedence is applied."""

    kind: GitFollowKind
    value: str = ""
    semver: SemverRange | None = None

    def follows(self, pushed_ref: str) -> bool:
        """Whether a push of the full ref ``pushed_ref`` (``refs/heads/main``...) moves it."""
        ref = pushed_ref.removesuffix("^{}")
        if self.kind == "pinned":
            return False
        if self.kind == "name":
            return ref == self.value
        if self.kind == "branch":
            return ref == HEADS + self.value
        if not ref.startswith(TAGS):
            return False
        tag = ref[len(TAGS) :]
        if self.kind == "tag":
            return tag == self.value
        return self.semver is not None and self.semver.contains(tag)


def git_follow(spec_ref: Mapping[str, Any] | None) -> GitFollow:
    """Compile a GitRepository ``spec.ref`` (Flux precedence, ``master`` by default)."""
    ref = spec_ref or {}
    if _text(ref, "commit"):
        return GitFollow("pinned", _text(ref, "commit"))
    if name := _text(ref, "name"):
        return GitFollow("name", name)
    if semver := _text(ref, "semver"):
        parsed = SemverRange.parse(semver)
        return GitFollow("semver", semver, parsed) if parsed else GitFollow("pinned", semver)
    if tag := _text(ref, "tag"):
        return GitFollow("tag", tag)
    return GitFollow("branch", _text(ref, "branch") or DEFAULT_GIT_BRANCH)


OciFollowKind = Literal["tag", "semver", "pinned"]


@dataclass(frozen=True, slots=True)
class OciFollow:
    """What an OCIRepository (or an OCI HelmChart) follows: a tag, a semver range, or a pin."""

    kind: OciFollowKind
    value: str = ""
    semver: SemverRange | None = None
    tag_filter: re.Pattern[str] | None = None
    underscore_is_plus: bool = False
    """Helm writes chart version ``1.0.0+build`` as OCI tag ``1.0.0_build``."""

    def follows(self, tag: str | None) -> bool:
        """Whether a push of ``tag`` to the followed repository moves this source."""
        if tag is None or self.kind == "pinned" or len(tag) > MAX_TAG_LENGTH:
            return False
        if self.kind == "tag":
            return tag == self.value
        if self.tag_filter is not None and self.tag_filter.search(tag) is None:
            return False
        version = tag.replace("_", "+") if self.underscore_is_plus else tag
        return self.semver is not None and self.semver.contains(version)


def oci_follow(spec_ref: Mapping[str, Any] | None) -> OciFollow:
    """Compile an OCIRepository ``spec.ref`` (digest > semver > tag; ``latest`` by default)."""
    ref = spec_ref or {}
    if digest := _text(ref, "digest"):
        return OciFollow("pinned", digest)
    if semver := _text(ref, "semver"):
        parsed = SemverRange.parse(semver)
        if parsed is None:
            return OciFollow("pinned", semver)
        return OciFollow("semver", semver, parsed, _compile(_text(ref, "semverFilter")))
    return OciFollow("tag", _text(ref, "tag") or DEFAULT_OCI_TAG)


def chart_follow(version: str | None) -> OciFollow:
    """Compile a HelmChart ``spec.version`` (a semver range, ``*`` when unset) for OCI tags."""
    text = (version or "").strip() or "*"
    parsed = SemverRange.parse(text)
    if parsed is None:
        return OciFollow("pinned", text)
    return OciFollow("semver", text, parsed, underscore_is_plus=True)


@dataclass(frozen=True, slots=True)
class ImageFollow:
    """What an ImageRepository follows: every tag of its image not excluded."""

    exclusions: tuple[re.Pattern[str], ...]

    def follows(self, tag: str | None) -> bool:
        if tag is None or len(tag) > MAX_TAG_LENGTH:
            return False
        return not any(p.search(tag) for p in self.exclusions)


def image_follow(exclusion_list: Any) -> ImageFollow:
    """Compile an ImageRepository ``spec.exclusionList`` (Flux's default when unset)."""
    patterns: tuple[str, ...] = DEFAULT_IMAGE_EXCLUSIONS
    if isinstance(exclusion_list, list):
        patterns = tuple(p for p in exclusion_list if isinstance(p, str))
    compiled = (_compile(p) for p in patterns)
    return ImageFollow(tuple(p for p in compiled if p is not None))


def is_deleted(envelope: Mapping[str, Any]) -> bool:
    """A ref deletion (flag or all-zero new revision): never a reason to reconcile."""
    if envelope.get("deleted") is True:
        return True
    revision = envelope.get("revision")
    return isinstance(revision, str) and NULL_SHA.match(revision) is not None


def _text(ref: Mapping[str, Any], key: str) -> str:
    value = ref.get(key)
    return value.strip() if isinstance(value, str) else ""


def _compile(pattern: str) -> re.Pattern[str] | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error:
        logger.warning("ignoring invalid regular expression %r", pattern)
        return None
