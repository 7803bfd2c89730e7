"""The Flux kinds the reconciler can target, with Flux's default API version for each.

Flux's Receiver lets ``spec.resources[].apiVersion`` be omitted; the default per kind below
is what current Flux serves (kept in one table so targeting, patching, watching and RBAC
agree). ``ObjectRef`` is how every stage names one object.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Kind:
    """A Flux kind: its API group, default version and resource (plural) name."""

    kind: str
    group: str
    version: str
    plural: str
    is_source: bool = False
    """Sources (GitRepository, OCIRepository...) are what automatic targeting indexes."""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


KINDS: dict[str, Kind] = {
    k.kind: k
    for k in (
        Kind("GitRepository", "source.toolkit.fluxcd.io", "v1", "gitrepositories", True),
        Kind("OCIRepository", "source.toolkit.fluxcd.io", "v1", "ocirepositories", True),
        Kind("HelmRepository", "source.toolkit.fluxcd.io", "v1", "helmrepositories", True),
        Kind("HelmChart", "source.toolkit.fluxcd.io", "v1", "helmcharts", True),
        Kind("Bucket", "source.toolkit.fluxcd.io", "v1", "buckets", True),
        Kind("ExternalArtifact", "source.toolkit.fluxcd.io", "v1", "externalartifacts"),
        Kind("ArtifactGenerator", "source.extensions.fluxcd.io", "v1beta1", "artifactgenerators"),
        Kind("Kustomization", "kustomize.toolkit.fluxcd.io", "v1", "kustomizations"),
        Kind("HelmRelease", "helm.toolkit.fluxcd.io", "v2", "helmreleases"),
        Kind("ImageRepository", "image.toolkit.fluxcd.io", "v1beta2", "imagerepositories", True),
        Kind("ImagePolicy", "image.toolkit.fluxcd.io", "v1beta2", "imagepolicies"),
        Kind(
            "ImageUpdateAutomation", "image.toolkit.fluxcd.io", "v1beta2", "imageupdateautomations"
        ),
    )
}

SHARD_LABEL = "sharding.fluxcd.io/key"
REQUESTED_AT = "reconcile.fluxcd.io/requestedAt"
"""The annotation Flux compares with ``status.lastHandledReconcileAt``."""
DELIVERY_ANNOTATION = "fluxrelay.io/delivery"
"""Records which delivery (envelope id) caused the last requested reconcile."""


@dataclass(frozen=True, slots=True, order=True)
class ObjectRef:
    """One Flux object: enough to patch it and to report on it."""

    kind: str
    namespace: str
    name: str
    group: str
    version: str
    plural: str

    @classmethod
    def of(cls, kind: str, namespace: str, name: str, api_version: str | None = None) -> ObjectRef:
        """Resolve ``kind`` (+ optional ``group/version``) against :data:`KINDS`."""
        known = KINDS[kind]
        group, version = known.group, known.version
        if api_version:
            group, _, version = api_version.rpartition("/")
        return cls(kind, namespace, name, group, version, known.plural)

    @property
    def key(self) -> str:
        """``Kind/namespace/name``: the pipeline name in CDEvents and the coalescing key."""
        return f"{self.kind}/{self.namespace}/{self.name}"
