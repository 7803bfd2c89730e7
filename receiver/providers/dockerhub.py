"""Docker Hub repository webhooks.

Docker Hub signs nothing and sends no secret header: the hook path (sha256 of token, name and
namespace) is the only secret, so keep it out of logs and rotate the token if it leaks. The
payload names the repository (``repository.repo_name``, ``repo_url``) and the pushed tag
(``push_data.tag``); it has no event type (the event is empty) and no delivery id (the body
digest is the id). The registry is ``docker.io``. Flux only decodes the body (an object, or
``null``) and checks no Content-Type: a body without ``repository.repo_name`` is stored with no
artifact, so only the Receiver's own resources react to it.
"""

from __future__ import annotations

from receiver.providers import common
from receiver.providers.artifacts import artifact
from receiver.providers.authenticating import PathOnly
from receiver.providers.base import Credentials, Item, Parsed, Request

REGISTRY = "docker.io"


class DockerHub(PathOnly):
    """``dockerhub``: unauthenticated beyond the secret path."""

    name = "dockerhub"
    filters_events = False

    def parse(self, spec: Credentials, request: Request) -> Parsed:
        doc, payload = common.load_struct(request.body)
        name = common.opt_str(doc, "repository.repo_name")
        tag = common.opt_str(doc, "push_data.tag")
        url = common.opt_str(doc, "repository.repo_url")
        block = artifact(name, registry=REGISTRY, tag=tag, url=url) if name else None
        return Parsed("", (Item(common.body_digest(request.body), {"artifact": block}),), payload)
