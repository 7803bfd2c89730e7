"""The source table: Flux sources filed by repository, for automatic targeting to look up.

``SourceTable`` holds dictionaries from a normalised Git URL key
(:func:`reconciler.urls.normalise_git_url`) or an image key ``(registry, repository)`` to the
few sources filed under it, each with its ``spec.ref`` compiled once (:mod:`reconciler.refs`). A
lookup is a handful of dictionary reads (one per URL form in the event) plus a ref test on the
sources under that key, so its cost does not grow with the number of indexed sources.

What is filed, and why:

- **GitRepository** by ``spec.url``; matched by Git pushes (:class:`reconciler.refs.GitFollow`),
  narrowed by its ``fluxrelay.io/paths`` globs if it has them (:mod:`reconciler.narrowing`).
- **OCIRepository** by the image of ``spec.url``; matched by registry pushes of a tag.
- **ImageRepository** by ``spec.image``; matched by any pushed tag not in its exclusion list.
- **HelmChart** whose ``spec.sourceRef`` is an *OCI* HelmRepository, by the image
  ``<HelmRepository url>/<spec.chart>``, matched by chart-version tags within ``spec.version``.
  An OCI HelmRepository produces no artifact of its own (Flux docs), so its charts are the
  things to reconcile; the table joins the two kinds and refiles charts when either changes.
- **Not filed:** HelmRepository itself (HTTP index repositories have no push event; OCI ones
  have no artifact), HelmCharts from a GitRepository or Bucket (source-controller already
  reconciles those when their source's artifact changes, which the GitRepository trigger
  causes), Buckets (no repository URL and no push event; not listed at all), suspended
  sources (a requested reconcile would never be handled). Commit and digest pins *are*
  filed though no push moves them, so that :meth:`SourceTable.explain` can say a push
  reached a pinned source (``reconciler.decisions``).

Why apart from :mod:`reconciler.indexing`: the table is pure and synchronous (objects in,
matches out, no API server, no tasks), so it is tested as tables of cases and benchmarked on
its own (``bench/index``); the index is the informer plumbing that keeps it current.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.decisions import DELETED_REF, NO_SOURCE, OTHER_REF, PATH_EXCLUDED, PINNED, Decisions
from reconciler.kinds import KINDS, ObjectRef
from reconciler.narrowing import PATHS_ANNOTATION, compile_paths, narrowing_paths, paths_allow
from reconciler.refs import (
    GitFollow,
    ImageFollow,
    OciFollow,
    chart_follow,
    git_follow,
    image_follow,
    is_deleted,
    oci_follow,
)
from reconciler.urls import normalise_git_url, normalise_image, parse_image

ObjKey = tuple[str, str, str]
"""``(kind, namespace, name)``."""
ImageKey = tuple[str, str]
Follow = GitFollow | OciFollow | ImageFollow


@dataclass(frozen=True, slots=True)
class Entry:
    """One filed source: who to reconcile, under which keys, and what it follows."""

    ref: ObjectRef
    follow: Follow
    git_keys: tuple[str, ...] = ()
    image_keys: tuple[ImageKey, ...] = ()
    paths: re.Pattern[str] | None = None


@dataclass(slots=True)
class _Chart:
    """A HelmChart from a HelmRepository, kept until its repository is known to be OCI."""

    ref: ObjectRef
    repository: str
    chart: str
    follow: OciFollow


@dataclass(slots=True)
class SourceTable:
    """Sources by repository key; pure and synchronous (the API-facing part is SourceIndex)."""

    _entries: dict[ObjKey, Entry] = field(default_factory=dict)
    _by_git: dict[str, dict[ObjKey, Entry]] = field(default_factory=dict)
    _by_image: dict[ImageKey, dict[ObjKey, Entry]] = field(default_factory=dict)
    _seen: dict[ObjKey, None] = field(default_factory=dict)
    _oci_helm_repos: dict[tuple[str, str], ImageKey] = field(default_factory=dict)
    _charts: dict[ObjKey, _Chart] = field(default_factory=dict)
    _charts_by_repo: dict[tuple[str, str], dict[ObjKey, None]] = field(default_factory=dict)

    def __len__(self) -> int:
        """How many sources are filed (can be matched)."""
        return len(self._entries)

    def keys_of_kind(self, kind: str) -> list[ObjKey]:
        """Every object of ``kind`` the table holds, filed or not (for relisting)."""
        return [k for k in self._seen if k[0] == kind]

    def upsert(self, obj: Mapping[str, Any]) -> ObjKey | None:
        """Add or replace one object as the API server returned it; its key (None: ignored)."""
        key = _obj_key(obj)
        if key is None:
            return None
        kind, namespace, name = key
        self._seen[key] = None
        spec = obj.get("spec")
        spec = spec if isinstance(spec, Mapping) else {}
        if kind == "HelmRepository":
            self._upsert_helm_repository(namespace, name, spec)
        elif kind == "HelmChart":
            self._upsert_chart(key, obj, spec)
        else:
            self._file(key, _entry(obj, kind, spec))
        return key

    def remove(self, obj: Mapping[str, Any]) -> None:
        """Forget one object (its kind, namespace and name are enough)."""
        key = _obj_key(obj)
        if key is not None:
            self.remove_key(key)

    def remove_key(self, key: ObjKey) -> None:
        kind, namespace, name = key
        self._seen.pop(key, None)
        if kind == "HelmRepository":
            self._oci_helm_repos.pop((namespace, name), None)
            self._refile_charts(namespace, name)
            return
        chart = self._charts.pop(key, None)
        if chart is not None:
            self._charts_by_repo.get((namespace, chart.repository), {}).pop(key, None)
        self._unfile(key)

    def sync_kind(self, kind: str, objects: Iterable[Mapping[str, Any]]) -> None:
        """Make the table's ``kind`` objects exactly ``objects`` (after a full list)."""
        listed: set[ObjKey] = set()
        for obj in objects:
            key = self.upsert(obj)
            if key is not None:
                listed.add(key)
        self.prune_kind(kind, listed)

    def prune_kind(self, kind: str, keep: set[ObjKey]) -> None:
        """Forget every ``kind`` object not in ``keep`` (those a relist no longer shows)."""
        for stale in self.keys_of_kind(kind):
            if stale not in keep:
                self.remove_key(stale)

    def match(self, envelope: Mapping[str, Any]) -> list[ObjectRef]:
        """The sources an event moves, sorted; O(1) in the number of filed sources."""
        if is_deleted(envelope):
            return []
        found: set[ObjectRef] = set()
        ref = envelope.get("ref")
        repository = envelope.get("repository")
        if isinstance(ref, str) and ref and isinstance(repository, Mapping):
            paths = narrowing_paths(envelope)
            for git_key in _event_git_keys(repository):
                for entry in self._by_git.get(git_key, {}).values():
                    follow = entry.follow
                    if (
                        isinstance(follow, GitFollow)
                        and follow.follows(ref)
                        and paths_allow(entry.paths, paths)
                    ):
                        found.add(entry.ref)
        artifact = envelope.get("artifact")
        if isinstance(artifact, Mapping):
            tag = artifact.get("tag")
            tag = tag if isinstance(tag, str) and tag else None
            for image_key in _event_image_keys(artifact):
                for entry in self._by_image.get(image_key, {}).values():
                    if not isinstance(entry.follow, GitFollow) and entry.follow.follows(tag):
                        found.add(entry.ref)
        return sorted(found)

    def explain(self, envelope: Mapping[str, Any], into: Decisions) -> None:
        """Why no filed source moves on this event: called when :meth:`match` found none, so
        the hot path pays nothing for it. Each source filed under the event's repository or
        image says what it follows instead; no source there says which keys were looked up."""
        if is_deleted(envelope):
            into.add("automatic", DELETED_REF, "a deleted ref moves no source")
            return
        looked_up: list[str] = []
        ref = envelope.get("ref")
        repository = envelope.get("repository")
        if isinstance(ref, str) and ref and isinstance(repository, Mapping):
            paths = narrowing_paths(envelope)
            for git_key in sorted(_event_git_keys(repository)):
                looked_up.append(git_key)
                for entry in self._by_git.get(git_key, {}).values():
                    follow = entry.follow
                    if isinstance(follow, GitFollow) and not follow.follows(ref):
                        reason = PINNED if follow.kind == "pinned" else OTHER_REF
                        into.add(entry.ref.key, reason, f"follows {_describe(follow)}, not {ref}")
                    elif not paths_allow(entry.paths, paths):
                        into.add(
                            entry.ref.key,
                            PATH_EXCLUDED,
                            f"no changed path matches its {PATHS_ANNOTATION}",
                        )
        artifact = envelope.get("artifact")
        if isinstance(artifact, Mapping):
            tag = artifact.get("tag")
            for image_key in sorted(_event_image_keys(artifact), key=str):
                looked_up.append("/".join(str(part) for part in image_key))
                for entry in self._by_image.get(image_key, {}).values():
                    follow = entry.follow
                    reason = PINNED if getattr(follow, "kind", "") == "pinned" else OTHER_REF
                    into.add(entry.ref.key, reason, f"follows {_describe(follow)}, not tag {tag}")
        if not into.kept and not into.omitted:
            what = ", ".join(looked_up) if looked_up else "nothing (no repository or artifact)"
            into.add("automatic", NO_SOURCE, f"no source follows {what}")

    # ------------------------------------------------------------------------- filing

    def _file(self, key: ObjKey, entry: Entry | None) -> None:
        self._unfile(key)
        if entry is None:
            return
        self._entries[key] = entry
        for git_key in entry.git_keys:
            self._by_git.setdefault(git_key, {})[key] = entry
        for image_key in entry.image_keys:
            self._by_image.setdefault(image_key, {})[key] = entry

    def _unfile(self, key: ObjKey) -> None:
        old = self._entries.pop(key, None)
        if old is None:
            return
        for git_key in old.git_keys:
            _drop(self._by_git, git_key, key)
        for image_key in old.image_keys:
            _drop(self._by_image, image_key, key)

    def _upsert_helm_repository(self, namespace: str, name: str, spec: Mapping[str, Any]) -> None:
        url = spec.get("url")
        image: ImageKey | None = None
        oci = spec.get("type") == "oci" or (isinstance(url, str) and url.startswith("oci://"))
        if oci and isinstance(url, str) and not spec.get("suspend"):
            image = normalise_image(url)
        if image is None:
            self._oci_helm_repos.pop((namespace, name), None)
        else:
            self._oci_helm_repos[(namespace, name)] = image
        self._refile_charts(namespace, name)

    def _upsert_chart(self, key: ObjKey, obj: Mapping[str, Any], spec: Mapping[str, Any]) -> None:
        _, namespace, _ = key
        old = self._charts.pop(key, None)
        if old is not None:
            self._charts_by_repo.get((namespace, old.repository), {}).pop(key, None)
        source = spec.get("sourceRef")
        chart = spec.get("chart")
        if (
            not isinstance(source, Mapping)
            or source.get("kind") != "HelmRepository"
            or not isinstance(source.get("name"), str)
            or not isinstance(chart, str)
            or not chart.strip("/")
            or spec.get("suspend")
        ):
            self._unfile(key)
            return
        version = spec.get("version")
        record = _Chart(
            _object_ref(obj, key),
            source["name"],
            chart.strip("/").lower(),
            chart_follow(version if isinstance(version, str) else None),
        )
        self._charts[key] = record
        self._charts_by_repo.setdefault((namespace, record.repository), {})[key] = None
        self._file(key, self._chart_entry(namespace, record))

    def _chart_entry(self, namespace: str, chart: _Chart) -> Entry | None:
        repo_image = self._oci_helm_repos.get((namespace, chart.repository))
        if repo_image is None:
            return None
        registry, path = repo_image
        return Entry(chart.ref, chart.follow, image_keys=((registry, f"{path}/{chart.chart}"),))

    def _refile_charts(self, namespace: str, repository: str) -> None:
        for key in list(self._charts_by_repo.get((namespace, repository), {})):
            chart = self._charts.get(key)
            if chart is not None:
                self._file(key, self._chart_entry(namespace, chart))


def _entry(obj: Mapping[str, Any], kind: str, spec: Mapping[str, Any]) -> Entry | None:
    """The filed form of a GitRepository, OCIRepository or ImageRepository (None: not filed)."""
    if spec.get("suspend"):
        return None
    key = _obj_key(obj)
    assert key is not None
    ref = _object_ref(obj, key)
    if kind == "GitRepository":
        url = spec.get("url")
        git_key = normalise_git_url(url) if isinstance(url, str) else None
        if git_key is None:
            return None
        meta = obj.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        paths = compile_paths(annotations.get(PATHS_ANNOTATION))
        spec_ref = spec.get("ref")
        follow = git_follow(spec_ref if isinstance(spec_ref, Mapping) else None)
        # A commit pin is filed although no push moves it (``GitFollow.follows``): so that
        # ``explain`` can say a push reached a pinned source.
        return Entry(ref, follow, git_keys=(git_key,), paths=paths)
    if kind == "OCIRepository":
        url = spec.get("url")
        image = normalise_image(url) if isinstance(url, str) else None
        spec_ref = spec.get("ref")
        oci = oci_follow(spec_ref if isinstance(spec_ref, Mapping) else None)
        if image is None:
            return None
        return Entry(ref, oci, image_keys=(image,))  # a digest pin is filed, as a commit pin
    if kind == "ImageRepository":
        name = spec.get("image")
        image = normalise_image(name) if isinstance(name, str) else None
        if image is None:
            return None
        return Entry(ref, image_follow(spec.get("exclusionList")), image_keys=(image,))
    return None


def _obj_key(obj: Mapping[str, Any]) -> ObjKey | None:
    kind = obj.get("kind")
    meta = obj.get("metadata")
    if not isinstance(kind, str) or kind not in KINDS or not isinstance(meta, Mapping):
        return None
    namespace, name = meta.get("namespace"), meta.get("name")
    if not isinstance(namespace, str) or not isinstance(name, str):
        return None
    return (kind, namespace, name)


def _object_ref(obj: Mapping[str, Any], key: ObjKey) -> ObjectRef:
    api_version = obj.get("apiVersion")
    return ObjectRef.of(*key, api_version if isinstance(api_version, str) else None)


def _drop(index: dict[Any, dict[ObjKey, Entry]], bucket: Any, key: ObjKey) -> None:
    entries = index.get(bucket)
    if entries is not None:
        entries.pop(key, None)
        if not entries:
            del index[bucket]


def _describe(follow: Follow) -> str:
    """What a source follows, in words: ``branch main``, ``semver >=1.0``, ``commit abc``."""
    kind = getattr(follow, "kind", "tags")
    value = getattr(follow, "value", "")
    word = {"pinned": "commit/digest", "name": "ref"}.get(kind, kind)
    return f"{word} {value}".strip()


def _event_git_keys(repository: Mapping[str, Any]) -> set[str]:
    urls: list[Any] = list(repository.get("urls") or ())
    urls += [repository.get("http"), repository.get("ssh"), repository.get("web")]
    keys: set[str] = set()
    for url in urls:
        key = normalise_git_url(url) if isinstance(url, str) else None
        if key is not None:
            keys.add(key)
    return keys


def _event_image_keys(artifact: Mapping[str, Any]) -> set[ImageKey]:
    repository = artifact.get("repository")
    registry = artifact.get("registry")
    names: list[str] = []
    if isinstance(repository, str) and repository:
        if isinstance(registry, str) and registry:
            if repository.lower().startswith(registry.lower().rstrip("/") + "/"):
                names.append(repository)
            else:
                names.append(f"{registry.rstrip('/')}/{repository.lstrip('/')}")
        else:
            names.append(repository)
    url = artifact.get("url")
    if isinstance(url, str) and url:
        names.append(url)
    keys: set[ImageKey] = set()
    for name in names:
        parsed = parse_image(name)
        if parsed is not None:
            keys.add(parsed.key)
    return keys
