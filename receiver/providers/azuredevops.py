"""Azure DevOps service hooks ("Web Hooks" consumer): HTTP Basic auth, event in the body.

Azure DevOps signs nothing; its web hook consumer can send Basic credentials, which are the
Secret's ``username`` and ``password`` keys (both required at load, both compared in constant
time, and both always compared so the answer time does not tell which one was wrong). The
event type is the body's ``eventType`` and the delivery id its ``id`` (the body digest when
absent).

A ``git.push`` carries ``resource.refUpdates[]``: each ref update is its own item (a source
follows one ref), with created/deleted from all-zero object ids; with more than one, the
delivery id gets a ``#<index>`` suffix so each is deduplicated on its own. The repository is
``resource.repository.{remoteUrl, sshUrl, webUrl}``. The payload lists commits but not their
files, so ``paths_complete`` is always false. Other events keep the repository only.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from receiver.errors import PayloadInvalid, SignatureInvalid
from receiver.providers import common
from receiver.providers.base import Credentials, Item, Parsed, Request

PUSH_EVENT = "git.push"


def credentials(header: str | None) -> tuple[bytes, bytes]:
    """``(user, password)`` from a Basic ``Authorization`` header; 400 when not one."""
    if not header:
        raise SignatureInvalid("missing Authorization header")
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise SignatureInvalid("Authorization: Basic credentials expected")
    try:
        decoded = base64.b64decode(common.wire_bytes(encoded.strip()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise SignatureInvalid("Authorization: invalid Basic credentials") from e
    user, sep, password = decoded.partition(b":")
    if not sep:
        raise SignatureInvalid("Authorization: invalid Basic credentials")
    return user, password


def repository(doc: dict[str, Any]) -> dict[str, Any] | None:
    return common.repository(
        common.opt_str(doc, "resource.repository.remoteUrl"),
        common.opt_str(doc, "resource.repository.sshUrl"),
        common.opt_str(doc, "resource.repository.webUrl"),
    )


def ref_update(update: Any, where: str, repo: dict[str, Any] | None) -> dict[str, Any]:
    if not isinstance(update, dict):
        raise PayloadInvalid(f"{where}: object expected")
    before = common.opt_str(update, "oldObjectId")
    after = common.opt_str(update, "newObjectId")
    return {
        "repository": repo,
        "ref": common.req_str(update, "name"),
        "revision": after,
        "previous_revision": before,
        "created": common.is_zero_id(before),
        "deleted": common.is_zero_id(after),
        "forced": False,
        "changed_paths": [],
        "paths_complete": False,
    }


class AzureDevOps:
    """``azuredevops``: Basic auth from the Secret, one item per ref update of a push."""

    name = "azuredevops"
    filters_events = True

    def validate(self, spec: Credentials) -> None:
        common.require_secret(spec, "token", "username", "password")

    def verify(self, spec: Credentials, request: Request) -> None:
        expected_user = spec.secret.get("username")
        expected_password = spec.secret.get("password")
        if not expected_user or not expected_password:
            raise SignatureInvalid("Receiver Secret lacks username/password")
        user, password = credentials(request.headers.get("Authorization"))
        user_ok = common.equal(user, expected_user)
        password_ok = common.equal(password, expected_password)
        if not (user_ok and password_ok):
            raise SignatureInvalid("Authorization: credentials do not match")

    def parse(self, spec: Credentials, request: Request) -> Parsed:
        doc = common.load_object(request.body)
        raw = common.verbatim(request.body)
        event = common.req_str(doc, "eventType")
        delivery = common.opt_str(doc, "id") or common.body_digest(request.body)
        repo = repository(doc)
        if event != PUSH_EVENT:
            return Parsed(event, (Item(delivery, {"repository": repo}),), doc, raw_payload=raw)
        updates = [
            ref_update(update, f"resource.refUpdates[{i}]", repo)
            for i, update in enumerate(common.opt_items(doc, "resource.refUpdates"))
        ]
        return Parsed(event, common.items_per_change(delivery, updates), doc, raw_payload=raw)
