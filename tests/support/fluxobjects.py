"""Flux objects as the controllers' own documentation shows them, valid under Flux's real CRDs.

Tests, benches and the quick start store Flux objects on a real API server that carries Flux's
released CRDs (../shared/flux-crds), so every object must pass Flux's schemas: required fields
(``interval``, ``url``, ``prune``, ``sourceRef``...), enums and patterns (a GitRepository URL is
``http(s)://`` or ``ssh://``, never the scp form ``git@host:org/repo``), and pruning (an unknown
field is dropped silently, so a test relying on one would pass for the wrong reason).

This module owns one realistic spec per kind, modelled on the examples in each controller's
``docs/spec`` (podinfo, as Flux's docs use it), so a test only states what it is about and
gets the rest right: ``flux_spec("Kustomization")`` or ``flux_manifest("GitRepository", "app",
spec={"ref": {"tag": "v1.0.0"}})`` (the given spec fields replace the example's).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

JSON = dict[str, Any]

API_VERSIONS: dict[str, str] = {
    "GitRepository": "source.toolkit.fluxcd.io/v1",
    "OCIRepository": "source.toolkit.fluxcd.io/v1",
    "HelmRepository": "source.toolkit.fluxcd.io/v1",
    "HelmChart": "source.toolkit.fluxcd.io/v1",
    "Bucket": "source.toolkit.fluxcd.io/v1",
    "ExternalArtifact": "source.toolkit.fluxcd.io/v1",
    "ArtifactGenerator": "source.extensions.fluxcd.io/v1beta1",
    "Kustomization": "kustomize.toolkit.fluxcd.io/v1",
    "HelmRelease": "helm.toolkit.fluxcd.io/v2",
    "ImageRepository": "image.toolkit.fluxcd.io/v1",
    "ImagePolicy": "image.toolkit.fluxcd.io/v1",
    "ImageUpdateAutomation": "image.toolkit.fluxcd.io/v1",
    "Receiver": "notification.toolkit.fluxcd.io/v1",
}
"""The one version each of Flux's current CRDs serves."""

_EXAMPLES: dict[str, JSON] = {
    "GitRepository": {
        "interval": "5m0s",
        "url": "https://github.com/stefanprodan/podinfo",
        "ref": {"branch": "master"},
    },
    "OCIRepository": {
        "interval": "5m0s",
        "url": "oci://ghcr.io/stefanprodan/manifests/podinfo",
        "ref": {"semver": ">=6.0.0"},
    },
    "HelmRepository": {"interval": "5m0s", "url": "https://stefanprodan.github.io/podinfo"},
    "HelmChart": {
        "interval": "5m0s",
        "chart": "podinfo",
        "reconcileStrategy": "ChartVersion",
        "sourceRef": {"kind": "HelmRepository", "name": "podinfo"},
        "version": "5.*",
    },
    "Bucket": {
        "interval": "5m0s",
        "endpoint": "minio.example.com",
        "insecure": True,
        "secretRef": {"name": "minio-bucket-secret"},
        "bucketName": "example",
    },
    "ExternalArtifact": {
        "sourceRef": {
            "apiVersion": "source.extensions.fluxcd.io/v1beta1",
            "kind": "ArtifactGenerator",
            "name": "podinfo",
        }
    },
    "ArtifactGenerator": {
        "sources": [{"alias": "podinfo", "kind": "GitRepository", "name": "podinfo"}],
        "artifacts": [
            {
                "name": "podinfo-kustomize",
                "copy": [{"from": "@podinfo/kustomize/**", "to": "@artifact/"}],
            }
        ],
    },
    "Kustomization": {
        "interval": "10m",
        "sourceRef": {"kind": "GitRepository", "name": "podinfo"},
        "path": "./kustomize",
        "prune": True,
        "timeout": "1m",
    },
    "HelmRelease": {
        "interval": "10m",
        "timeout": "5m",
        "chart": {
            "spec": {
                "chart": "podinfo",
                "version": "6.5.*",
                "sourceRef": {"kind": "HelmRepository", "name": "podinfo"},
                "interval": "5m",
            }
        },
        "values": {"replicaCount": 2},
    },
    "ImageRepository": {"image": "ghcr.io/stefanprodan/podinfo", "interval": "5m"},
    "ImagePolicy": {
        "imageRepositoryRef": {"name": "podinfo"},
        "policy": {"semver": {"range": "5.1.x"}},
    },
    "ImageUpdateAutomation": {
        "interval": "30m",
        "sourceRef": {"kind": "GitRepository", "name": "podinfo"},
        "git": {
            "checkout": {"ref": {"branch": "main"}},
            "commit": {
                "author": {"email": "fluxcdbot@users.noreply.github.com", "name": "fluxcdbot"},
                "messageTemplate": "Update images",
            },
            "push": {"branch": "main"},
        },
        "update": {"path": "./clusters/my-cluster", "strategy": "Setters"},
    },
    "Receiver": {
        "type": "github",
        "events": ["ping", "push"],
        "secretRef": {"name": "webhook-token"},
        "resources": [{"kind": "GitRepository", "name": "podinfo"}],
    },
}

HELM_RELEASE_WITH_CHART_REF: JSON = {
    "interval": "10m",
    "chartRef": {"kind": "OCIRepository", "name": "podinfo"},
    "values": {"replicaCount": 2},
}
"""A HelmRelease v2 installing the chart an OCIRepository fetched (helm-controller docs)."""


def flux_spec(kind: str, overrides: Mapping[str, Any] | None = None) -> JSON:
    """The documentation example's spec for ``kind``, with ``overrides`` replacing its fields."""
    spec = copy.deepcopy(_EXAMPLES[kind])
    for key, value in (overrides or {}).items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = copy.deepcopy(value)
    return spec


def flux_manifest(
    kind: str,
    name: str,
    *,
    spec: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    namespace: str | None = None,
) -> JSON:
    """A whole object of ``kind`` at the version Flux serves (namespace: the caller's default)."""
    metadata: JSON = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    if labels:
        metadata["labels"] = dict(labels)
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {
        "apiVersion": API_VERSIONS[kind],
        "kind": kind,
        "metadata": metadata,
        "spec": flux_spec(kind, spec),
    }
