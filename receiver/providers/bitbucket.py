"""Bitbucket webhooks, Server/Data Center and Cloud in one provider.

Both sign the raw body with HMAC-SHA256 in ``X-Hub-Signature: sha256=<hex>`` (read as Flux reads
it, with its GitHub library: ``X-Hub-Signature-256`` first, a JSON or form body with a
Content-Type) and name the event in ``X-Event-Key``; they differ in the delivery id header
(``X-Request-Id`` on Server, ``X-Request-UUID`` on Cloud) and in the payload, so the event key
decides how to read it:

- Server ``repo:refs_changed`` (and ``mirror:repo_synchronized``, same shape): ``changes[]``
  with ``ref.id``, ``fromHash``, ``toHash`` and ``type`` (ADD/UPDATE/DELETE); clone URLs from
  ``repository.links.clone[]`` (named ``http``/``ssh``) and the web URL from the self link.
- Cloud ``repo:push``: ``push.changes[]`` with ``new``/``old`` (``null`` when the ref was
  created/deleted) each ``{name, type, target.hash}`` and ``created``/``closed``/``forced``;
  the repository is ``full_name`` plus ``links.html.href``, from which the https and ssh
  clone URLs on bitbucket.org are derived.

One push may change several refs, and each ref is its own event for targeting (a source follows
one branch), so every change becomes its own item; with more than one, the delivery id gets a
``#<index>`` suffix so each is deduplicated on its own. Neither flavour lists changed files, so
``paths_complete`` is always false. Server's ``diagnostics:ping`` (the "Test connection" button)
is answered 200 and never stored. Other events keep the repository only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from receiver.errors import PayloadInvalid
from receiver.providers import common
from receiver.providers.base import Credentials, Item, Parsed, Request
from receiver.providers.hub import (
    LEGACY_SIGNATURE_HEADER,
    decode_hub_payload,
    verify_hub_signature,
)
from schemas.excerpts import excerpt

SERVER_PUSH_EVENTS = ("repo:refs_changed", "mirror:repo_synchronized")
CLOUD_PUSH_EVENT = "repo:push"
PING_EVENT = "diagnostics:ping"
CLOUD_HOST = "bitbucket.org"
ReadRepository = Callable[[dict[str, Any]], dict[str, Any] | None]
ReadChange = Callable[[Any, str, dict[str, Any] | None], dict[str, Any]]
REF_PREFIXES = {"branch": "refs/heads/", "named_branch": "refs/heads/", "tag": "refs/tags/"}
"""Cloud ref types (``named_branch`` is the Mercurial-era name still documented)."""


def server_repository(doc: dict[str, Any]) -> dict[str, Any] | None:
    """Clone links by name (``http``, ``ssh``), the first self link as the web URL."""
    http: str | None = None
    ssh: str | None = None
    for i, link in enumerate(common.opt_list(doc, "repository.links.clone")):
        where = f"repository.links.clone[{i}]"
        if not isinstance(link, dict):
            raise PayloadInvalid(f"{where}: object expected")
        name = common.opt_str(link, "name")
        href = common.opt_str(link, "href")
        if name == "http" and http is None:
            http = href
        elif name == "ssh" and ssh is None:
            ssh = href
    web: str | None = None
    selfs = common.opt_list(doc, "repository.links.self")
    if selfs:
        if not isinstance(selfs[0], dict):
            raise PayloadInvalid("repository.links.self[0]: object expected")
        web = common.opt_str(selfs[0], "href")
    project = common.opt_str(doc, "repository.project.key")
    slug = common.opt_str(doc, "repository.slug")
    full_name = f"{project}/{slug}" if project and slug else None
    return common.repository(http, ssh, web, full_name)


def cloud_repository(doc: dict[str, Any]) -> dict[str, Any] | None:
    full_name = common.opt_str(doc, "repository.full_name")
    web = common.opt_str(doc, "repository.links.html.href")
    http = f"https://{CLOUD_HOST}/{full_name}.git" if full_name else None
    ssh = f"git@{CLOUD_HOST}:{full_name}.git" if full_name else None
    return common.repository(http, ssh, web, full_name)


def server_change(change: Any, where: str, repo: dict[str, Any] | None) -> dict[str, Any]:
    if not isinstance(change, dict):
        raise PayloadInvalid(f"{where}: object expected")
    ref = common.opt_str(change, "ref.id") or common.opt_str(change, "refId")
    if not ref:
        raise PayloadInvalid(f"{where}.ref.id: required")
    kind = common.opt_str(change, "type")
    before = common.opt_str(change, "fromHash")
    after = common.opt_str(change, "toHash")
    return {
        "repository": repo,
        "ref": ref,
        "revision": after,
        "previous_revision": before,
        "created": kind == "ADD" or common.is_zero_id(before),
        "deleted": kind == "DELETE" or common.is_zero_id(after),
        "forced": False,
        "changed_paths": [],
        "paths_complete": False,
    }


def cloud_side(change: dict[str, Any], side: str, where: str) -> tuple[str, str | None] | None:
    """``(full ref, commit hash)`` of ``new`` or ``old``; None when that side is null."""
    value = change.get(side)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise PayloadInvalid(f"{where}.{side}: object or null expected")
    name = common.req_str(value, "name")
    kind = common.req_str(value, "type")
    prefix = REF_PREFIXES.get(kind)
    if prefix is None:
        raise PayloadInvalid(f"{where}.{side}.type: unsupported ref type {excerpt(kind)}")
    return prefix + name, common.opt_str(value, "target.hash")


def cloud_change(change: Any, where: str, repo: dict[str, Any] | None) -> dict[str, Any]:
    if not isinstance(change, dict):
        raise PayloadInvalid(f"{where}: object expected")
    new = cloud_side(change, "new", where)
    old = cloud_side(change, "old", where)
    if new is None and old is None:
        raise PayloadInvalid(f"{where}: new or old required")
    ref = new[0] if new is not None else old[0] if old is not None else None
    return {
        "repository": repo,
        "ref": ref,
        "revision": new[1] if new is not None else None,
        "previous_revision": old[1] if old is not None else None,
        "created": common.opt_bool(change, "created") or old is None,
        "deleted": common.opt_bool(change, "closed") or new is None,
        "forced": common.opt_bool(change, "forced"),
        "changed_paths": [],
        "paths_complete": False,
    }


PUSHES: dict[str, tuple[ReadRepository, ReadChange, str]] = {
    **dict.fromkeys(SERVER_PUSH_EVENTS, (server_repository, server_change, "changes")),
    CLOUD_PUSH_EVENT: (cloud_repository, cloud_change, "push.changes"),
}
"""How each flavour's push is read: its repository, one ref change, where the changes are."""


class Bitbucket:
    """``bitbucket``: Server/Data Center and Cloud, one item per changed ref."""

    name = "bitbucket"
    filters_events = True
    signature_header = "X-Hub-Signature"
    event_header = "X-Event-Key"
    delivery_headers = ("X-Request-Id", "X-Request-UUID")

    def validate(self, spec: Credentials) -> None:
        common.require_secret(spec, "token")

    def verify(self, spec: Credentials, request: Request) -> None:
        """Flux verifies Bitbucket with its GitHub library: ``X-Hub-Signature-256`` first,
        then ``X-Hub-Signature`` (what Bitbucket sends, ``sha256=``), sha1/sha512 too."""
        verify_hub_signature(spec, request, LEGACY_SIGNATURE_HEADER)

    def parse(self, spec: Credentials, request: Request) -> Parsed:
        # No X-Event-Key is no event type (Flux reads it only for spec.events).
        event = common.header_text(request, self.event_header)
        if event == PING_EVENT:
            return Parsed(event, (), None, ping=True, named=True)
        payload = decode_hub_payload(request)
        delivery = common.delivery_id(request, self.delivery_headers)
        if not isinstance(payload, dict):
            # Flux never reads the body: a verified one that is no object is stored as it
            # is, with no repository, so only the Receiver's own resources react.
            return Parsed(event, (Item(delivery, {"repository": None}),), payload, named=True)
        doc = payload
        raw = common.verbatim(request.body) if request.content_type == "application/json" else None
        push = PUSHES.get(event)
        if push is not None:
            read_repository, read_change, path = push
            repo = read_repository(doc)
            changes = [
                read_change(change, f"{path}[{i}]", repo)
                for i, change in enumerate(common.opt_items(doc, path))
            ]
            items = common.items_per_change(delivery, changes)
        else:
            if common.opt_str(doc, "repository.full_name"):
                repo = cloud_repository(doc)
            else:
                repo = server_repository(doc)
            items = (Item(delivery, {"repository": repo}),)
        return Parsed(event, items, doc, raw_payload=raw, named=True)
