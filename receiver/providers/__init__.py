"""The provider registry: one module per webhook source, one mapping from ``spec.type``.

Adding a provider is adding a module and a line here; the ingress never branches on type.
"""

from __future__ import annotations

from receiver.providers.base import Provider
from receiver.providers.github import GitHub

PROVIDERS: dict[str, Provider] = {provider.name: provider for provider in (GitHub(),)}

__all__ = ["PROVIDERS", "Provider"]
