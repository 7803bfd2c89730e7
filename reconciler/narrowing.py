"""Narrowing by changed paths: which Git pushes a source annotated with path globs follows.

A source annotated ``fluxrelay.io/paths: "apps/**,clusters/prod/*"`` matches a Git push only if
a changed path matches one glob (``*`` and ``?`` stay within one directory, ``**`` crosses
directories, a glob naming a directory covers everything under it). It narrows only when the
event says ``paths_complete`` and lists at least one path; anything else (an incomplete list, a
created branch, a tag push) never narrows. The globs are parsed here rather than with
``pathspec``: gitignore semantics (unanchored patterns, negation) would surprise in an
allow-list, and the grammar needed is ten lines.

Why a module of its own: the globs and the paths are sender and user text, matched by regular
expressions whose cost has to stay bounded (:data:`MAX_NARROWING_PATH`,
:data:`MAX_NARROWING_BYTES`); that is a different concern from filing sources by repository
(:mod:`reconciler.sourcetable`), which only asks :func:`paths_allow`, and it is what the
worst-case-input tests exercise on their own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

PATHS_ANNOTATION = "fluxrelay.io/paths"
"""The annotation on a GitRepository that lists its path globs, comma-separated."""


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


def paths_allow(globs: re.Pattern[str] | None, changed: list[str] | None) -> bool:
    """Whether a push with ``changed`` paths moves a source narrowed by ``globs`` (either None:
    no narrowing, so yes)."""
    if globs is None or changed is None:
        return True
    return any(globs.fullmatch(p) for p in changed)
