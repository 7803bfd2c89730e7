"""The GitHub webhook format, which other forges copy and Flux reads with one library: the
``X-Hub-Signature`` HMAC headers (hence the name), a JSON or form-encoded body, and the push
payload.

``github`` is its origin; ``bitbucket`` is verified and decoded as Flux verifies it, with
GitHub's library (:func:`verify_hub_signature`, :func:`decode_hub_payload`); ``gitea`` and
``forgejo`` send a GitHub-shaped push (:func:`push_fields`, told their commit count). So it
lives here, and the providers import this module, never each other.

A push becomes repository URLs (clone, ssh, web), ref, before/after, created/deleted/forced
and the changed paths. GitHub puts at most 20 commits in a push payload, so a list of 20 (or a
forced, created or deleted ref) is marked incomplete and consumers never narrow by it.

A form-encoded body (``payload=<percent-encoded JSON>``) is read as ``parse_qs`` reads it,
but percent-decoded a window at a time (:func:`form_payload`): ``urllib``'s decoder keeps one
object per ``%`` it meets, 570 MiB of heap for a 3 MiB body of ``%`` signs.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, unquote_to_bytes

from receiver.errors import PayloadInvalid, SignatureInvalid, UnsupportedMediaType
from receiver.providers import common
from receiver.providers.base import Credentials, Request

MAX_PAYLOAD_COMMITS = 20
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
CONTENT_TYPES = (JSON, FORM)
MAX_FORM_FIELDS = 16
"""Fields a form body may have (GitHub sends one, ``payload``)."""
_FORM_WINDOW = 64 * 1024
"""Bytes percent-decoded at a time: bounds the decoder's pieces alive at once (~15 MiB)."""


def form_payload(body: bytes) -> str:
    """The one ``payload`` field of a form body, decoded exactly as
    ``parse_qs(body.decode(), strict_parsing=True, max_num_fields=16)`` decodes it (fields
    ``name=value`` split at ``&``, blank values left out, ``+`` for space, percent-decoded
    UTF-8 with invalid sequences replaced).

    The value is percent-decoded a window at a time, never cutting an escape: ``unquote``
    splits its whole input at ``%`` and keeps every piece (plus two list entries per piece),
    so a 3 MiB body cost up to 190 times its size in heap; a window costs at most that of
    64 KiB. The bytes are decoded once at the end, so a character whose escapes straddle two
    windows reads as it would whole.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PayloadInvalid("form body: invalid encoding") from e
    fields = text.split("&") if text else []
    if len(fields) > MAX_FORM_FIELDS:
        raise PayloadInvalid("form body: invalid encoding")
    payloads: list[str] = []
    for field in fields:
        name, sep, value = field.partition("=")
        if not sep:
            raise PayloadInvalid("form body: invalid encoding")
        if value and unquote(name.replace("+", " ")) == "payload":
            payloads.append(_percent_decoded(value.replace("+", " ")))
    if len(payloads) != 1:
        raise PayloadInvalid("form body: exactly one 'payload' field expected")
    return payloads[0]


def _percent_decoded(value: str) -> str:
    """``unquote(value)``, a window at a time (see :func:`form_payload`)."""
    if "%" not in value:
        return value
    data = value.encode("utf-8")
    pieces: list[bytes] = []
    start = 0
    while start < len(data):
        end = start + _FORM_WINDOW
        escape = data.rfind(b"%", end - 2, end)  # one starting in the window's last 2 bytes
        if escape > start:
            end = escape  # ... is left whole to the next window
        pieces.append(unquote_to_bytes(data[start:end]))
        start = end
    return b"".join(pieces).decode("utf-8", "replace")


def repository(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The envelope's repository block from a GitHub-shaped ``repository`` object."""
    clone, ssh, web, full_name = common.opt_strs(doc, "repository", REPOSITORY_KEYS)
    return common.repository(clone, ssh, web, full_name)


REPOSITORY_KEYS = ("clone_url", "ssh_url", "html_url", "full_name")


def push_fields(doc: dict[str, Any], total_commits: int | None = None) -> dict[str, Any]:
    """Envelope fields of a GitHub-shaped push.

    ``total_commits`` is the provider's count when it gives one: then completeness is known.
    """
    commits, forced, created, deleted = common.top_level(doc, PUSH_FLAGS)
    repo = repository(doc)
    ref, after, before = common.top_level(doc, PUSH_REVISIONS)
    if not ref:
        raise PayloadInvalid("ref: required")
    if commits is None:
        commits = []
    forced, created, deleted = forced is True, created is True, deleted is True
    if total_commits is not None:
        within = len(commits) >= total_commits
    else:
        within = len(commits) < MAX_PAYLOAD_COMMITS
    return {
        "repository": repo,
        "ref": ref,
        "revision": after,
        "previous_revision": before,
        "created": created,
        "deleted": deleted,
        "forced": forced,
        "changed_paths": common.commit_paths(commits),
        "paths_complete": within and not (forced or created or deleted),
    }


PUSH_FLAGS = (("commits", list), ("forced", bool), ("created", bool), ("deleted", bool))
PUSH_REVISIONS = (("ref", str), ("after", str), ("before", str))


def other_fields(doc: dict[str, Any], event: str) -> dict[str, Any]:
    """Best-effort fields for non-push events: the repository, and the tag of a release."""
    fields: dict[str, Any] = {"repository": repository(doc)}
    if event == "release":
        tag = common.opt_str(doc, "release.tag_name")
        if tag:
            fields["ref"] = f"refs/tags/{tag}"
    return fields


SIGNATURE_HEADER = "X-Hub-Signature-256"
LEGACY_SIGNATURE_HEADER = "X-Hub-Signature"


def verify_hub_signature(
    spec: Credentials, request: Request, expected: str = SIGNATURE_HEADER
) -> None:
    """``X-Hub-Signature-256: sha256=<hex>``, else the legacy ``X-Hub-Signature`` with sha1,
    sha256 or sha512 (what Flux's GitHub library reads, for its GitHub and Bitbucket types).
    With neither, the refusal names ``expected``, the header this provider's senders use
    (GitHub the modern one, Bitbucket only ever the legacy one)."""
    modern = request.headers.get(SIGNATURE_HEADER)
    if modern is not None:
        common.verify_prefixed_hmac(modern, spec.token, request.body, ("sha256",), SIGNATURE_HEADER)
        return
    legacy = request.headers.get(LEGACY_SIGNATURE_HEADER)
    if legacy is None:
        raise SignatureInvalid(f"missing {expected} header")
    common.verify_prefixed_hmac(
        legacy, spec.token, request.body, ("sha1", "sha256", "sha512"), LEGACY_SIGNATURE_HEADER
    )


def decode_hub_payload(request: Request) -> Any:
    """The payload of a body signed the GitHub way: the JSON body, or the ``payload`` field
    of a form. Flux's library reads exactly these two media types, and refuses a request
    without a Content-Type (it cannot parse an empty media type); so does this (415)."""
    if request.content_type == FORM:
        return common.load_json(form_payload(request.body), "payload")
    if request.content_type == JSON:
        return common.load_json(request.body)
    given = repr(request.content_type) if request.content_type else "no Content-Type"
    raise UnsupportedMediaType(f"{given} not supported; use {' or '.join(CONTENT_TYPES)}")
