"""pytest fixtures for the real Kubernetes API server (a plugin: ``tests.support.kube_fixtures``).

This module owns how tests get a cluster: one etcd + kube-apiserver per test session (``kube``,
with Flux's real CRDs from ../shared/flux-crds applied), a fresh namespace per test
(``kube_namespace``, emptied and removed afterwards), a ready ``kubernetes_asyncio`` client
(``kube_client``) and a fault proxy in front of the server (``kube_proxy``). The session fixture
is synchronous on purpose, so it works with whatever event loop a test runs in. Tests that use
``kube`` are marked ``kube`` automatically.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from kubernetes_asyncio import client as k8s_client

from tests.support.faultproxy import FaultProxy
from tests.support.kubeapi import KubeAPI


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that (directly or indirectly) uses the cluster with ``kube``."""
    for item in items:
        if "kube" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kube)


@pytest.fixture(scope="session")
def kube() -> Iterator[KubeAPI]:
    """A real kube-apiserver v1.20.2 + etcd for the whole session, Flux's real CRDs applied.

    Fails (never skips) when the server cannot be started or Flux's CRDs are missing.
    """
    api = KubeAPI()
    api.start()
    try:
        api.apply_crds()
        yield api
    finally:
        api.stop()


@pytest.fixture
def kube_namespace(kube: KubeAPI) -> Iterator[str]:
    """A fresh namespace for one test; its objects and the namespace are deleted afterwards."""
    kube.ensure_running()
    name = f"t-{uuid.uuid4().hex[:12]}"
    kube.create_namespace(name)
    try:
        yield name
    finally:
        kube.delete_namespace(name)


@pytest.fixture
async def kube_client(kube: KubeAPI) -> AsyncIterator[k8s_client.ApiClient]:
    """A ``kubernetes_asyncio`` ApiClient talking straight to the API server as cluster admin."""
    api = await kube.api_client()
    async with api:
        yield api


@pytest.fixture
async def kube_proxy(kube: KubeAPI) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of the API server, on the test's loop.

    Point a client at it with ``await kube.api_client(server=kube_proxy.url)`` or
    ``kube.write_kubeconfig(path, server=kube_proxy.url)``.
    """
    async with FaultProxy(kube.url, kube.ca_file) as proxy:
        yield proxy
