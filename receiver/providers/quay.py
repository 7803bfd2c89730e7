"""Quay repository push notifications (quay.io and self-hosted Quay).

Quay signs nothing: the hook path is the only secret, so keep it out of logs and rotate the
token if it leaks. The payload gives ``docker_url`` (``host/namespace/name``), ``repository``
and ``updated_tags``; every updated tag becomes its own message (one message without a tag when
the list is empty). Flux only decodes the body (an object, or ``null``) and checks no
Content-Type: a body without ``docker_url`` is stored with no artifact. No event type (the event
is empty), no delivery id (the body digest, suffixed with the tag's index when there are
several).
"""

from __future__ import annotations

from receiver.errors import PayloadInvalid
from receiver.providers import common
from receiver.providers.artifacts import artifact, split_reference
from receiver.providers.authenticating import PathOnly
from receiver.providers.base import Credentials, Parsed, Request


class Quay(PathOnly):
    """``quay``: unauthenticated beyond the secret path; one message per updated tag."""

    name = "quay"
    filters_events = False

    def parse(self, spec: Credentials, request: Request) -> Parsed:
        doc, payload = common.load_struct(request.body)
        docker_url = common.opt_str(doc, "docker_url")
        registry, from_url, _, _ = split_reference(docker_url)
        repository = common.opt_str(doc, "repository") or from_url
        tags = common.opt_items(doc, "updated_tags")
        if not all(isinstance(t, str) and t for t in tags):
            raise PayloadInvalid("updated_tags: array of non-empty strings expected")
        per_tag: list[str | None] = list(dict.fromkeys(tags)) or [None]
        blocks = [
            {
                "artifact": artifact(
                    repository, registry=registry, tag=tag, url=docker_url, what="docker_url"
                )
                if repository
                else None
            }
            for tag in per_tag
        ]
        items = common.items_per_change(common.body_digest(request.body), blocks)
        return Parsed("", items, payload)
