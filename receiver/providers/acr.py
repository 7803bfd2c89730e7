"""Azure Container Registry webhooks.

Azure signs nothing (it only adds the custom headers you configure): the hook path is the
only secret, so keep it out of logs and rotate the token if it leaks. The event is the body's
``action`` (``push``, ``delete``, ``chart_push``, ``quarantine``…; ``ping`` is answered 200
and never stored), the delivery id its ``id``; ``target.{repository,tag,digest,mediaType}``
and ``request.host`` make the artifact. Flux only decodes the body (an object, or ``null``)
and checks no Content-Type; so does this: no ``id`` falls back to the body digest, no
``action`` is no event type, no ``target.repository`` is no artifact.
"""

from __future__ import annotations

from receiver.providers import common
from receiver.providers.artifacts import artifact
from receiver.providers.authenticating import PathOnly
from receiver.providers.base import Credentials, Item, Parsed, Request


class ACR(PathOnly):
    """``acr``: unauthenticated beyond the secret path."""

    name = "acr"
    filters_events = False

    def parse(self, spec: Credentials, request: Request) -> Parsed:
        doc, payload = common.load_struct(request.body)
        event = common.opt_str(doc, "action") or ""
        delivery = common.opt_str(doc, "id") or common.body_digest(request.body)
        if event == "ping":
            return Parsed(event, (), payload, ping=True)
        repository = common.opt_str(doc, "target.repository")
        block = (
            artifact(
                repository,
                registry=common.opt_str(doc, "request.host"),
                tag=common.opt_str(doc, "target.tag"),
                digest=common.opt_str(doc, "target.digest"),
                media_type=common.opt_str(doc, "target.mediaType"),
            )
            if repository
            else None
        )
        return Parsed(event, (Item(delivery, {"artifact": block}),), payload)
