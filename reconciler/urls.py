"""One key per repository: normalising Git URLs and OCI image references for the source index.

A push event names its repository in several forms (https clone URL, ssh clone URL, web page)
and a Flux source names it in one more (``spec.url``, possibly scp-like, with credentials, a
port or ``.git``). Automatic targeting only works if every form of one repository maps to one
dictionary key, so this module owns that mapping and nothing else.

Decisions, with reasons:

- **The whole Git key is lower-cased.** GitHub, GitLab, Bitbucket and Azure DevOps treat owner,
  group and repository names case-insensitively, and a self-hosted server where ``Org/Repo``
  and ``org/repo`` are two repositories is rare. A false merge costs a spurious reconcile; a
  missed match costs a deployment, so the pragmatic choice is the safe one.
- **Every port is dropped, not only default ones.** The same self-hosted repository is served
  over ssh on one port (22, 2222, 7999...) and over https on another; keeping ports would stop
  the ssh and https forms meeting. No real server serves different repositories under the same
  host and path on different ports.
- **User info is dropped** (``git@``, ``user:token@``, Azure's ``org@``): it names who clones,
  not what is cloned. It never appears in a key, so it never reaches a log through one.
- **Azure DevOps** has four URL families for one repository (``dev.azure.com/org/proj/_git/repo``,
  ``ssh.dev.azure.com:v3/org/proj/repo``, ``org.visualstudio.com/[DefaultCollection/]proj/_git/
  repo``, ``vs-ssh.visualstudio.com:v3/org/proj/repo``); all map to ``dev.azure.com/org/proj/repo``.
  A ``_git`` URL without a project (project and repository share a name) gets the project back.
- **Bitbucket Server's** ``/scm/`` https prefix is *not* stripped by guessing from the path: its
  webhooks carry both clone URLs, and the index matches on any URL of an event.
- **Images** follow the Docker reference grammar: a first component with a dot, a colon or
  ``localhost`` is a registry; otherwise Docker Hub, whose aliases become ``docker.io`` and whose
  one-component names gain ``library/``. Registry ports other than 443 are kept (two registries
  on one host are different registries, unlike the ssh/https forms of one Git server).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

_GIT_SCHEMES = frozenset({"http", "https", "ssh", "git", "git+ssh", "ssh+git"})
_SCP_LIKE = re.compile(r"^(?:[^@/\s]+@)?(?P<host>[^:/\s]+):(?P<path>(?!//).*)$")
_AZURE_HOST = "dev.azure.com"
_AZURE_SSH_HOSTS = frozenset({"ssh.dev.azure.com", "vs-ssh.visualstudio.com"})
_AZURE_GIT_VARIANTS = frozenset({"_optimized", "_full"})
_VISUALSTUDIO_SUFFIX = ".visualstudio.com"

DOCKER_HUB = "docker.io"
_DOCKER_HUB_ALIASES = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
_DIGEST = re.compile(r"@[A-Za-z0-9_+.-]+:[A-Fa-f0-9=_-]+$")


def normalise_git_url(url: str) -> str | None:
    """The index key (``host/path``, lower case) of a Git repository URL, or None if it is none.

    >>> normalise_git_url("git@github.com:Org/Repo.git")
    'github.com/org/repo'
    >>> normalise_git_url("https://user:token@github.com:443/org/repo/")
    'github.com/org/repo'
    """
    text = url.strip()
    if not text:
        return None
    host: str
    path: str
    if "://" in text:
        try:
            parts = urlsplit(text)
            hostname = parts.hostname
        except ValueError:
            return None
        if parts.scheme.lower() not in _GIT_SCHEMES or not hostname:
            return None
        host, path = hostname, parts.path
    else:
        scp = _SCP_LIKE.match(text)
        if scp is None:
            return None
        host, path = scp["host"], scp["path"]
    host = host.lower().rstrip(".")
    segments = [s for s in path.lower().split("/") if s]
    if segments and segments[-1].endswith(".git"):
        segments[-1] = segments[-1][: -len(".git")]
    segments = [s for s in segments if s]
    host, segments = _azure(host, segments)
    if not host or not segments:
        return None
    return host + "/" + "/".join(segments)


def _azure(host: str, segments: list[str]) -> tuple[str, list[str]]:
    """Map the Azure DevOps URL families onto ``dev.azure.com/org/project/repo``."""
    if host in _AZURE_SSH_HOSTS:
        if segments[:1] == ["v3"] and len(segments) == 4:
            return _AZURE_HOST, segments[1:]
        return host, segments
    if host.endswith(_VISUALSTUDIO_SUFFIX):
        org = host[: -len(_VISUALSTUDIO_SUFFIX)]
        if segments[:1] == ["defaultcollection"]:
            segments = segments[1:]
        host, segments = _AZURE_HOST, [org, *segments]
    if host != _AZURE_HOST or "_git" not in segments:
        return host, segments
    at = segments.index("_git")
    repo = [s for s in segments[at + 1 :] if s not in _AZURE_GIT_VARIANTS]
    head = segments[:at]
    if len(head) == 1 and len(repo) == 1:  # project omitted: it has the repository's name
        head = [head[0], repo[0]]
    if len(head) != 2 or len(repo) != 1:
        return host, segments
    return host, [*head, *repo]


@dataclass(frozen=True, slots=True)
class ImageReference:
    """An OCI reference split into its parts; ``registry``/``repository`` are normalised."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.registry, self.repository)


def parse_image(reference: str) -> ImageReference | None:
    """Split ``[oci://][registry[:port]/]repository[:tag][@digest]``; None if it is no image."""
    text = reference.strip()
    if text[:6].lower() == "oci://":
        text = text[6:]
    elif "://" in text:
        return None
    text = text.strip("/")
    digest: str | None = None
    found = _DIGEST.search(text)
    if found:
        digest = found.group(0)[1:]
        text = text[: found.start()]
    tag: str | None = None
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        tag = text[colon + 1 :] or None
        text = text[:colon]
    components = [c for c in text.split("/") if c]
    if not components:
        return None
    first = components[0]
    if len(components) > 1 and ("." in first or ":" in first or first.lower() == "localhost"):
        registry = first.lower()
        path = components[1:]
    else:
        registry = DOCKER_HUB
        path = components
    if registry.endswith(":443"):
        registry = registry[: -len(":443")]
    if registry in _DOCKER_HUB_ALIASES:
        registry = DOCKER_HUB
        if len(path) == 1:
            path = ["library", *path]
    return ImageReference(registry, "/".join(path).lower(), tag, digest)


def normalise_image(reference: str) -> tuple[str, str] | None:
    """``(registry_host, repository)`` of an image reference, or None if it is none.

    >>> normalise_image("nginx")
    ('docker.io', 'library/nginx')
    >>> normalise_image("oci://GHCR.io/Org/App:v1")
    ('ghcr.io', 'org/app')
    """
    parsed = parse_image(reference)
    return parsed.key if parsed else None
