"""The provider registry: one module per webhook source, one mapping from ``spec.type``.

Adding a provider is adding a module and a line here; the ingress never branches on type.
"""

from __future__ import annotations

from receiver.providers.azuredevops import AzureDevOps
from receiver.providers.base import Provider
from receiver.providers.bitbucket import Bitbucket
from receiver.providers.generic import Generic, GenericHmac
from receiver.providers.gitea import FORGEJO, GITEA
from receiver.providers.github import GitHub
from receiver.providers.gitlab import GitLab

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
    )
}

__all__ = ["PROVIDERS", "Provider"]
