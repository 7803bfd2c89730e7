"""The provider registry: one module per webhook source, one mapping from ``spec.type``.

Adding a provider is adding a module and a line here; the ingress never branches on type.
Providers never import each other: what several share lives in helper modules they all
import (``base``: what a provider is; ``common``: checks and field access; ``artifacts``:
the registries' reference grammar; ``hub``: GitHub's format, which others copy;
``authenticating``: the path-only and optional-auth checks; ``jwks``: token keys).
"""

from __future__ import annotations

from receiver.providers.acr import ACR
from receiver.providers.azuredevops import AzureDevOps
from receiver.providers.base import Provider
from receiver.providers.bitbucket import Bitbucket
from receiver.providers.cdevents import CDEvents
from receiver.providers.distribution import Distribution
from receiver.providers.dockerhub import DockerHub
from receiver.providers.gcr import GCR
from receiver.providers.generic import Generic, GenericHmac
from receiver.providers.generic_oidc import GenericOIDC
from receiver.providers.gitea import FORGEJO, GITEA
from receiver.providers.github import GitHub
from receiver.providers.gitlab import GitLab
from receiver.providers.harbor import Harbor
from receiver.providers.nexus import Nexus
from receiver.providers.quay import Quay

PROVIDERS: dict[str, Provider] = {
    provider.name: provider
    for provider in (
        GitHub(),
        GitLab(),
        Bitbucket(),
        GITEA,
        FORGEJO,
        AzureDevOps(),
        Generic(),
        GenericHmac(),
        Harbor(),
        DockerHub(),
        Quay(),
        Nexus(),
        ACR(),
        GCR(),
        Distribution(),
        CDEvents(),
        GenericOIDC(),
    )
}

__all__ = ["PROVIDERS", "Provider"]
