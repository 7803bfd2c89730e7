"""What the registry providers share: the envelope's ``artifact`` block and the reference
grammar they read registries, repositories, tags and digests from.

Distribution defines that grammar (the Docker reference), and every registry names its
images in it or in parts of it; so it is read once here, and the providers (``distribution``,
``harbor``, ``quay``, ``dockerhub``, ``acr``, ``nexus``, ``gcr``) import this module and
never each other.
"""

from __future__ import annotations

from typing import Any

from receiver.errors import PayloadInvalid

Reference = tuple[str | None, str | None, str | None, str | None]
"""``(registry, repository, tag, digest)``."""


def split_reference(ref: str | None) -> Reference:
    """``(registry, repository, tag, digest)`` of ``[host[:port]/]path[:tag][@digest]``;
    all None when there is no reference.

    The first path component is a registry host only if it contains ``.`` or ``:`` or is
    ``localhost`` (the Docker reference grammar); otherwise the registry is None.
    """
    if not ref:
        return None, None, None, None
    name, _, digest = ref.strip().partition("@")
    tag: str | None = None
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        name, tag = name[:colon], name[colon + 1 :]
    registry: str | None = None
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, name = first, rest
    return registry, name, tag or None, digest or None


def artifact(
    repository: str | None,
    *,
    registry: str | None = None,
    tag: str | None = None,
    digest: str | None = None,
    media_type: str | None = None,
    url: str | None = None,
    what: str = "repository",
) -> dict[str, Any]:
    """The envelope's ``artifact`` block; a missing or empty repository is a 400."""
    if not repository:
        raise PayloadInvalid(f"{what}: required")
    return {
        "registry": registry or None,
        "repository": repository,
        "tag": tag or None,
        "digest": digest or None,
        "media_type": media_type or None,
        "url": url or None,
    }
