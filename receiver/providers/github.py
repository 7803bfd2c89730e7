"""GitHub webhooks: HMAC-signed (X-Hub-Signature-256, legacy X-Hub-Signature), JSON or form.

A push becomes repository URLs (clone, ssh, web), ref, before/after, created/deleted/forced
and the changed paths. GitHub puts at most 20 commits in a push payload, so a list of 20 (or a
forced, created or deleted ref) is marked incomplete and consumers never narrow by it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from receiver.errors import PayloadInvalid, UnsupportedMediaType
from receiver.providers import common
from receiver.providers.base import Item, Parsed, Request
from receiver.receivers import ReceiverSpec

MAX_PAYLOAD_COMMITS = 20
CONTENT_TYPES = ("application/json", "application/x-www-form-urlencoded")


def repository(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The envelope's repository block from a GitHub-shaped ``repository`` object."""
    clone, ssh, web, full_name = common.opt_strs(doc, "repository", REPOSITORY_KEYS)
    return common.repository(clone, ssh, web, full_name)


REPOSITORY_KEYS = ("clone_url", "ssh_url", "html_url", "full_name")


def push_fields(doc: dict[str, Any], total_commits: int | None = None) -> dict[str, Any]:
    """Envelope fields of a GitHub-shaped push (shared by Gitea/Forgejo, which copy it).

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


class GitHub:
    """``github``: Flux-compatible, including form-encoded payloads and sha1/sha512 fallbacks."""

    name = "github"
    event_header = "X-GitHub-Event"
    delivery_header = "X-GitHub-Delivery"

    def validate(self, spec: ReceiverSpec) -> None:
        common.require_secret(spec, "token")

    def verify(self, spec: ReceiverSpec, request: Request) -> None:
        modern = request.headers.get("X-Hub-Signature-256")
        if modern is not None:
            common.verify_prefixed_hmac(
                modern, spec.token, request.body, ("sha256",), "X-Hub-Signature-256"
            )
            return
        common.verify_prefixed_hmac(
            request.headers.get("X-Hub-Signature"),
            spec.token,
            request.body,
            ("sha1", "sha256", "sha512"),
            "X-Hub-Signature",
        )

    def decode(self, request: Request) -> dict[str, Any]:
        """The payload object (JSON body, or the ``payload`` field of a form)."""
        if request.content_type == "application/x-www-form-urlencoded":
            try:
                form = parse_qs(
                    request.body.decode("utf-8"), strict_parsing=True, max_num_fields=16
                )
            except (UnicodeDecodeError, ValueError) as e:
                raise PayloadInvalid("form body: invalid encoding") from e
            values = form.get("payload")
            if not values or len(values) != 1:
                raise PayloadInvalid("form body: exactly one 'payload' field expected")
            return common.load_object(values[0], "payload")
        if request.content_type in ("application/json", ""):
            return common.load_object(request.body)
        raise UnsupportedMediaType(
            f"content type {request.content_type!r} not supported; use {' or '.join(CONTENT_TYPES)}"
        )

    def parse(self, spec: ReceiverSpec, request: Request) -> Parsed:
        event = common.header_text(request, self.event_header)
        if not event:
            raise PayloadInvalid(f"missing {self.event_header} header")
        doc = self.decode(request)
        delivery = common.header_text(request, self.delivery_header) or common.body_digest(
            request.body
        )
        if event == "ping":
            return Parsed(event, (), doc, ping=True)
        fields = push_fields(doc) if event == "push" else other_fields(doc, event)
        raw = request.body if request.content_type != CONTENT_TYPES[1] else None
        return Parsed(event, (Item(delivery, fields),), doc, raw_payload=common.verbatim(raw))
