"""Where the reconciler's Receivers come from: the Kubernetes API (list, then watch: a
Receiver created, changed or deleted later is seen without a restart; invalid ones are
skipped) and a YAML file (Secrets in it ignored, re-read on change, a bad edit keeps the
previous set)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import yaml
from kubernetes_asyncio import client as k8s_client

from reconciler.receivers import FileReceivers, KubeReceivers, ReceiverBook
from tests.reconciler.conftest import receiver_manifest, wait_for
from tests.support.ingress import receiver_docs
from tests.support.kubeapi import KubeAPI


async def test_kubernetes_receivers_are_listed_and_watched(
    kube: KubeAPI, kube_namespace: str, kube_client: k8s_client.ApiClient
) -> None:
    first = receiver_manifest(
        "first",
        kube_namespace,
        [{"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization", "name": "a"}],
    )
    kube.apply(first, namespace=kube_namespace)
    # Flux's schema refuses an entry without a name, so the invalid one lacks its secretRef:
    # stored on 1.20 (the rule requiring it is CEL, which 1.20 drops), refused by our parser.
    invalid = receiver_manifest("invalid", kube_namespace, [{"kind": "GitRepository", "name": "a"}])
    del invalid["spec"]["secretRef"]
    kube.apply(invalid, namespace=kube_namespace)
    book = ReceiverBook()
    source = KubeReceivers(
        kube_client, book, namespace=kube_namespace, label_selector=None, watch_timeout=30
    )
    task = asyncio.create_task(source.run())
    try:
        await wait_for(lambda: book.loaded.is_set(), "first list")
        assert [d.name for d in book.all()] == ["first"]
        later = receiver_manifest(
            "later", kube_namespace, [{"kind": "GitRepository", "name": "r"}],
            resource_filter="true",
        )  # fmt: skip
        kube.apply(later, namespace=kube_namespace)
        await wait_for(lambda: book.get(kube_namespace, "later") is not None, "watched create")
        definition = book.get(kube_namespace, "later")
        assert definition is not None and definition.resource_filter == "true"
        first["spec"]["resources"] = [
            {"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization", "name": "b"}
        ]
        kube.apply(first, namespace=kube_namespace)

        def updated() -> bool:
            d = book.get(kube_namespace, "first")
            return d is not None and d.resources[0]["name"] == "b"

        await wait_for(updated, "watched update")
        kube.request(
            "DELETE",
            f"/apis/notification.toolkit.fluxcd.io/v1/namespaces/{kube_namespace}/receivers/later",
        )
        await wait_for(lambda: book.get(kube_namespace, "later") is None, "watched delete")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_receivers_file_is_reread_on_change_and_a_bad_edit_is_ignored(
    tmp_path: Path,
) -> None:
    path = tmp_path / "receivers.yaml"
    path.write_text(yaml.safe_dump_all(receiver_docs("one", "github", namespace="ns")))
    book = ReceiverBook()
    source = FileReceivers(path, 0.05, book)
    await source.load()
    assert [d.name for d in book.all()] == ["one"]  # the Secret in the file is not a Receiver
    task = asyncio.create_task(source.run())
    try:
        docs = receiver_docs("one", "github", namespace="ns")
        docs += receiver_docs("two", "github", namespace="ns")
        path.write_text(yaml.safe_dump_all(docs))
        await wait_for(lambda: book.get("ns", "two") is not None, "reload")
        path.write_text("kind: [unclosed")
        await asyncio.sleep(0.3)  # several polls see the broken file
        assert sorted(d.name for d in book.all()) == ["one", "two"]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
