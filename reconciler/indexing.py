"""The source index behind automatic targeting: Flux sources by repository, kept by list+watch.

``SourceTable`` is the pure part: dictionaries from a normalised Git URL key
(:func:`reconciler.urls.normalise_git_url`) or an image key ``(registry, repository)`` to the few
sources filed under it, each with its ``spec.ref`` compiled once (:mod:`reconciler.refs`). A
lookup is a handful of dictionary reads (one per URL form in the event) plus a ref test on the
sources under that key, so its cost does not grow with the number of indexed sources.

``SourceIndex`` feeds a ``SourceTable`` from the API server: one informer per kind
(:mod:`runtime.informer`: a paged list, then a watch resumed from the last resourceVersion,
relisted after 410 Gone, reconnected with capped, jittered backoff). A kind whose CRD is not
served (404, e.g. Flux installed without image automation) counts as listed-empty and is
retried slowly.

What is filed, and why:

- **GitRepository** by ``spec.url``; matched by Git pushes (:class:`reconciler.refs.GitFollow`).
- **OCIRepository** by the image of ``spec.url``; matched by registry pushes of a tag.
- **ImageRepository** by ``spec.image``; matched by any pushed tag not in its exclusion list.
- **HelmChart** whose ``spec.sourceRef`` is an *OCI* HelmRepository, by the image
  ``<HelmRepository url>/<spec.chart>``, matched by chart-version tags within ``spec.version``.
  An OCI HelmRepository produces no artifact of its own (Flux docs), so its charts are the
  things to reconcile; the index joins the two kinds and refiles charts when either changes.
- **Not filed:** HelmRepository itself (HTTP index repositories have no push event; OCI ones
  have no artifact), HelmCharts from a GitRepository or Bucket (source-controller already
  reconciles those when their source's artifact changes, which the GitRepository trigger
  causes), Buckets (no repository URL and no push event; not listed at all), suspended
  sources (a requested reconcile would never be handled).

Path narrowing: a source annotated ``fluxrelay.io/paths: "apps/**,clusters/prod/*"`` matches a
Git push only if a changed path matches one glob (``*`` and ``?`` stay within one directory,
``**`` crosses directories, a glob naming a directory covers everything under it). It narrows
only when the event says ``paths_complete`` and lists at least one path; anything else (an
incomplete list, a created branch, a tag push) never narrows. The globs are parsed here rather
than with ``pathspec``: gitignore semantics (unanchored patterns, negation) would surprise in an
allow-list, and the grammar needed is ten lines.

Sharding as Flux: with ``shard=KEY`` only objects labelled ``sharding.fluxcd.io/key=KEY`` are
listed; without, only objects without that label (label selectors, filtered by the server).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio import client as k8s_client

from reconciler.kinds import KINDS, SHARD_LABEL, ObjectRef
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
from runtime.informer import Informer, InformerSettings, custom_objects

logger = logging.getLogger(__name__)

PATHS_ANNOTATION = "fluxrelay.io/paths"
INDEXED_KINDS = ("GitRepository", "OCIRepository", "ImageRepository", "HelmRepository", "HelmChart")
"""Listed and watched, in this order. Bucket is deliberately absent (see the module docstring)."""

ObjKey = tuple[str, str, str]
"""``(kind, namespace, name)``."""
ImageKey = tuple[str, str]
Follow = GitFollow | OciFollow | ImageFollow


# ----------------------------------------------------------------------------------- paths


def glob_to_regex(glob: str) -> str:
    """The regular expression (unanchored text) for one path glob: ``*``, ``?``, ``**``, ``[]``."""
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        if c == "*":
            if glob.startswith("**", i):
                i += 2
                if glob.startswith("/", i):
                    out.append("(?:.*/)?")
                    i += 1
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and (end := glob.find("]", i + 2)) != -1:
            body = glob[i + 1 : end]
            negate = body[:1] in ("!", "^")
            body = body[1:] if negate else body
            out.append("[" + ("^/" if negate else "") + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def compile_paths(annotation: str | None) -> re.Pattern[str] | None:
    """One regex for a comma-separated glob list (``None``: the source is not narrowed)."""
    if not annotation:
        return None
    globs = [g.strip().removeprefix("./").strip("/") for g in annotation.split(",")]
    parts = [glob_to_regex(g) for g in globs if g]
    if not parts:
        return None
    # A glob that names a directory covers every path below it.
    return re.compile("(?:" + "|".join(parts) + ")(?:/.*)?")


MAX_NARROWING_PATH = 4096
"""Longest changed path narrowed by (Linux's PATH_MAX): a glob with several ``**`` is a
regex whose match time grows with the square of the path's length, and the paths are the
sender's text (one 3 MiB path would take hours)."""
MAX_NARROWING_BYTES = 64 * 1024
"""Changed paths, in all, that an event may narrow by; past it the event narrows nothing
(reconciling a source too many is safe, a filter that runs for minutes is not)."""


def narrowing_paths(envelope: Mapping[str, Any]) -> list[str] | None:
    """The changed paths to narrow by, or None when the event must not narrow at all.

    A tag push never narrows, whatever the provider says about its paths: the tag is a new
    artifact for every source following it, even if the commit touched none of its paths.
    Nor does an event whose paths are longer than a real path or more than
    :data:`MAX_NARROWING_BYTES` in all (what the globs cost grows faster than the paths).
    """
    if envelope.get("paths_complete") is not True:
        return None
    ref = envelope.get("ref")
    if isinstance(ref, str) and ref.startswith("refs/tags/"):
        return None
    paths = envelope.get("changed_paths")
    if not isinstance(paths, list) or not paths:
        return None
    kept = [p.removeprefix("./").lstrip("/") for p in paths if isinstance(p, str)]
    if sum(map(len, kept)) > MAX_NARROWING_BYTES or max(map(len, kept), default=0) > (
        MAX_NARROWING_PATH
    ):
        return None
    return kept


# ----------------------------------------------------------------------------------- table


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
                        and _paths_allow(entry.paths, paths)
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
        if follow.kind == "pinned":
            return None
        return Entry(ref, follow, git_keys=(git_key,), paths=paths)
    if kind == "OCIRepository":
        url = spec.get("url")
        image = normalise_image(url) if isinstance(url, str) else None
        spec_ref = spec.get("ref")
        oci = oci_follow(spec_ref if isinstance(spec_ref, Mapping) else None)
        if image is None or oci.kind == "pinned":
            return None
        return Entry(ref, oci, image_keys=(image,))
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


def _paths_allow(globs: re.Pattern[str] | None, changed: list[str] | None) -> bool:
    if globs is None or changed is None:
        return True
    return any(globs.fullmatch(p) for p in changed)


# ----------------------------------------------------------------------------------- index


@dataclass(frozen=True, kw_only=True)
class IndexSettings(InformerSettings):
    """How the index talks to the API server: an informer's settings, paged, and with kinds
    whose CRD is not installed looked for again every minute."""

    page_size: int | None = 500
    not_served_retry_s: float | None = 60.0


class SourceIndex:
    """A SourceTable kept current from the API server (list, then watch, per indexed kind)."""

    def __init__(
        self,
        api: k8s_client.ApiClient,
        *,
        namespace: str | None = None,
        shard: str | None = None,
        settings: IndexSettings | None = None,
    ) -> None:
        self._api = api
        self._namespace = namespace
        self._selector = f"{SHARD_LABEL}={shard}" if shard else f"!{SHARD_LABEL}"
        self._settings = settings or IndexSettings()
        self.table = SourceTable()
        self._listed: set[str] = set()
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def ready(self) -> bool:
        """True once every indexed kind has been listed (or found not served) once."""
        return self._ready.is_set()

    def match(self, envelope: Mapping[str, Any]) -> list[ObjectRef]:
        """The sources an event moves (see :meth:`SourceTable.match`)."""
        return self.table.match(envelope)

    async def start(self) -> None:
        """Start listing and watching; return once every kind is listed (wrap in a timeout).

        Returns early, not ready, if :meth:`stop` is called meanwhile.
        """
        if self._tasks:
            return
        tasks = [
            asyncio.create_task(self._run(kind), name=f"source-index-{kind}")
            for kind in INDEXED_KINDS
        ]
        self._tasks = tasks
        # Return when ready, or when stop() ends the watches first (then ``ready`` stays False).
        waiter = asyncio.ensure_future(self._ready.wait())
        try:
            await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter

    async def stop(self) -> None:
        """Cancel the watches and wait for them to end."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------------- per kind

    async def _run(self, kind: str) -> None:
        known = KINDS[kind]
        call = custom_objects(
            self._api,
            known.group,
            known.version,
            known.plural,
            namespace=self._namespace,
            label_selector=self._selector,
        )
        informer = Informer(
            kind,
            call,
            on_list=lambda: _KindListing(self, kind),
            on_event=self._apply,
            settings=self._settings,
            logger=logger,
        )
        await informer.run()

    def _mark_listed(self, kind: str) -> None:
        self._listed.add(kind)
        if len(self._listed) == len(INDEXED_KINDS) and not self._ready.is_set():
            logger.info("source index ready: %d sources filed", len(self.table))
            self._ready.set()

    def _apply(self, event: str, obj: Mapping[str, Any]) -> None:
        if event == "DELETED":
            self.table.remove(obj)
        else:
            self.table.upsert(obj)


@dataclass(slots=True)
class _KindListing:
    """One list of one kind, filed page by page as it arrives (only the keys are kept, so a
    large list never holds more than one page of objects); what it no longer shows is pruned
    at the end."""

    index: SourceIndex
    kind: str
    listed: set[ObjKey] = field(default_factory=set)

    def add(self, items: list[dict[str, Any]]) -> None:
        known = KINDS[self.kind]
        for item in items:
            # Items of a list may lack kind/apiVersion; watch events always carry them.
            item.setdefault("kind", self.kind)
            item.setdefault("apiVersion", known.api_version)
            key = self.index.table.upsert(item)
            if key is not None:
                self.listed.add(key)

    def done(self) -> None:
        self.index.table.prune_kind(self.kind, self.listed)
        self.index._mark_listed(self.kind)
