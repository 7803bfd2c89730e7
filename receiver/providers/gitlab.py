"""GitLab webhooks: a shared token in ``X-Gitlab-Token``, the event in ``X-Gitlab-Event``.

GitLab signs nothing: the token is sent as-is and compared in constant time (Flux compares with
``!=``). The delivery id is ``X-Gitlab-Event-UUID``, then ``Idempotency-Key`` (GitLab 17.4+,
equal across retries of one event), then the body digest.

Push and tag push hooks (and system hooks whose ``event_name`` is ``push``/``tag_push``) become
repository URLs (``project.git_http_url``/``git_ssh_url``/``web_url``, falling back to the
legacy ``repository`` block), ref, before/after and the changed paths. ``before`` of all zeros
means the ref was created, ``after`` of all zeros that it was deleted. GitLab puts at most 20
commits in a payload but always says how many were pushed (``total_commits_count``), so
completeness of the path list is known rather than guessed. GitLab has no "forced" flag: a force
push that drops commits cannot be detected from the payload, which is why consumers should treat
narrowing by paths as an optimisation and not as a guarantee.

An empty body, or one that is JSON but no object, that carries a valid token is accepted and
stored as an event with no repository or ref and a null payload. Flux's gitlab receiver never
reads the body and reconciles the Receiver's ``spec.resources`` on any verified delivery;
storing the event keeps that explicit targeting working, while automatic (URL-indexed) targeting
finds nothing to match, so an empty body can never trigger more than the Receiver names
explicitly.
"""

from __future__ import annotations

from typing import Any

from receiver.errors import SignatureInvalid
from receiver.providers import common
from receiver.providers.base import Credentials, Item, Parsed, Request

MAX_PAYLOAD_COMMITS = 20
PUSH_EVENTS = ("Push Hook", "Tag Push Hook")
SYSTEM_PUSH_EVENTS = ("push", "tag_push")
"""``event_name`` values of system hooks that carry a push payload."""


def repository(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The project's URLs; pre-project payloads only have the ``repository`` block."""
    http = common.opt_str(doc, "project.git_http_url") or common.opt_str(
        doc, "repository.git_http_url"
    )
    ssh = common.opt_str(doc, "project.git_ssh_url") or common.opt_str(
        doc, "repository.git_ssh_url"
    )
    web = common.opt_str(doc, "project.web_url") or common.opt_str(doc, "repository.homepage")
    full_name = common.opt_str(doc, "project.path_with_namespace")
    return common.repository(http, ssh, web, full_name)


def push_fields(doc: dict[str, Any]) -> dict[str, Any]:
    """Envelope fields of a push or tag push payload."""
    commits = common.opt_list(doc, "commits")
    total = common.opt_int(doc, "total_commits_count")
    before = common.opt_str(doc, "before")
    after = common.opt_str(doc, "after")
    created = common.is_zero_id(before)
    deleted = common.is_zero_id(after)
    within = len(commits) >= total if total is not None else len(commits) < MAX_PAYLOAD_COMMITS
    return {
        "repository": repository(doc),
        "ref": common.req_str(doc, "ref"),
        "revision": after,
        "previous_revision": before,
        "created": created,
        "deleted": deleted,
        "forced": False,
        "changed_paths": common.commit_paths(commits),
        "paths_complete": within and not (created or deleted),
    }


def is_push(event: str, doc: dict[str, Any]) -> bool:
    if event in PUSH_EVENTS:
        return True
    return event == "System Hook" and common.opt_str(doc, "event_name") in SYSTEM_PUSH_EVENTS


class GitLab:
    """``gitlab``: Flux-compatible token check, push normalisation with known completeness."""

    name = "gitlab"
    filters_events = True
    token_header = "X-Gitlab-Token"  # noqa: S105 (a header name)
    event_header = "X-Gitlab-Event"
    delivery_headers = ("X-Gitlab-Event-UUID", "Idempotency-Key")

    def validate(self, spec: Credentials) -> None:
        common.require_secret(spec, "token")

    def verify(self, spec: Credentials, request: Request) -> None:
        given = request.headers.get(self.token_header)
        if given is None:
            raise SignatureInvalid(f"missing {self.token_header} header")
        if not common.equal(given, spec.token):
            raise SignatureInvalid(f"{self.token_header} does not match")

    def parse(self, spec: Credentials, request: Request) -> Parsed:
        # No X-Gitlab-Event is no event type (Flux reads it only for spec.events).
        event = common.header_text(request, self.event_header)
        delivery = common.delivery_id(request, self.delivery_headers)
        doc, payload = common.load_unread(request.body)
        if not doc:
            item = Item(delivery, {"repository": None, "ref": None})
            return Parsed(event, (item,), payload, named=True)
        if is_push(event, doc) and doc.get("ref") is not None:
            fields = push_fields(doc)
        else:
            fields = {"repository": repository(doc)}
        raw = common.verbatim(request.body)
        return Parsed(event, (Item(delivery, fields),), doc, raw_payload=raw, named=True)
