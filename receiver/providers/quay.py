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
from receiver.providers.base import Item, Parsed, Request
from receiver.providers.distribution import artifact, split_reference
from receiver.providers.harbor import indexed_ids
from receiver.receivers import ReceiverSpec


class Quay:
    """``quay``: unauthenticated beyond the secret path; one message per updated tag."""

    name = "quay"
    filters_events = False

    def validate(self, spec: ReceiverSpec) -> None:
        common.require_secret(spec, "token")

    def verify(self, spec: ReceiverSpec, request: Request) -> None:
        """Nothing to check: Quay offers no signature; the path is the secret."""

    def parse(self, spec: ReceiverSpec, request: Request) -> Parsed:
        doc, payload = common.load_struct(request.body)
        docker_url = common.opt_str(doc, "docker_url")
        registry, from_url, _, _ = (
            split_reference(docker_url) if docker_url else (None, None, None, None)
        )
        repository = common.opt_str(doc, "repository") or from_url
        tags = common.opt_items(doc, "updated_tags")
        if not all(isinstance(t, str) and t for t in tags):
            raise PayloadInvalid("updated_tags: array of non-empty strings expected")
        per_tag: list[str | None] = list(dict.fromkeys(tags)) or [None]
        ids = indexed_ids(common.body_digest(request.body), len(per_tag))
        items = tuple(
            Item(
                delivery,
                {
                    "artifact": artifact(
                        repository, registry=registry, tag=tag, url=docker_url, what="docker_url"
                    )
                    if repository
                    else None
                },
            )
            for delivery, tag in zip(ids, per_tag, strict=True)
        )
        return Parsed("", items, payload)
