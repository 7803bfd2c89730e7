"""Azure Container Registry webhooks.

Azure signs nothing (it only adds the custom headers you configure): the hook path is the
only secret, so keep it out of logs and rotate the token if it leaks. The event is the body's
``action`` (``push``, ``delete``, ``chart_push``, ``quarantine``…; ``ping`` is answered 200
and never stored), the delivery id its ``id``; ``target.{repository,tag,digest,mediaType}``
and ``request.host`` make the artifact.
"""

from __future__ import annotations

from receiver.providers import common
from receiver.providers.base import Item, Parsed, Request
from receiver.providers.distribution import artifact, require_json
from receiver.receivers import ReceiverSpec


class ACR:
    """``acr``: unauthenticated beyond the secret path."""

    name = "acr"

    def validate(self, spec: ReceiverSpec) -> None:
        common.require_secret(spec, "token")

    def verify(self, spec: ReceiverSpec, request: Request) -> None:
        """Nothing to check: ACR offers no signature; the path is the secret."""

    def parse(self, spec: ReceiverSpec, request: Request) -> Parsed:
        require_json(request)
        doc = common.load_object(request.body)
        event = common.req_str(doc, "action")
        delivery = common.req_str(doc, "id")
        if event == "ping":
            return Parsed(event, (), doc, ping=True)
        block = artifact(
            common.opt_str(doc, "target.repository"),
            registry=common.opt_str(doc, "request.host"),
            tag=common.opt_str(doc, "target.tag"),
            digest=common.opt_str(doc, "target.digest"),
            media_type=common.opt_str(doc, "target.mediaType"),
            what="target.repository",
        )
        return Parsed(event, (Item(delivery, {"artifact": block}),), doc)
