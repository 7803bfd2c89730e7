"""The Flux kinds the reconciler can target, with the API version current Flux serves.

Each version below is the one served by the newest release of its controller (every Flux CRD
now serves exactly one version; a removed one answers 404), kept in one table so targeting,
patching, watching and RBAC agree. ``ObjectRef`` is how every stage names one object.

Flux's Receiver lets ``spec.resources[].apiVersion`` be omitted only for the kinds in
notification-controller's own default table (:data:`DEFAULT_API_VERSIONS`); for any other kind it
refuses the entry. fluxrelay resolves an entry exactly the same way (:func:`default_api_version`),
so a Receiver that works here works under notification-controller and the other way round.
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
    reports_handling: bool = True
    """Its controller writes ``status.lastHandledReconcileAt`` when it handles a request.

    Only then can a request be followed to an outcome; ExternalArtifact's status has no such
    field (no controller reconciles it on request), so following it could only time out.
    """

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
        Kind(
            "ExternalArtifact",
            "source.toolkit.fluxcd.io",
            "v1",
            "externalartifacts",
            reports_handling=False,
        ),
        Kind("ArtifactGenerator", "source.extensions.fluxcd.io", "v1beta1", "artifactgenerators"),
        Kind("Kustomization", "kustomize.toolkit.fluxcd.io", "v1", "kustomizations"),
        Kind("HelmRelease", "helm.toolkit.fluxcd.io", "v2", "helmreleases"),
        Kind("ImageRepository", "image.toolkit.fluxcd.io", "v1", "imagerepositories", True),
        Kind("ImagePolicy", "image.toolkit.fluxcd.io", "v1", "imagepolicies"),
        Kind("ImageUpdateAutomation", "image.toolkit.fluxcd.io", "v1", "imageupdateautomations"),
    )
}

DEFAULT_API_VERSIONS: dict[str, str] = {
    "Bucket": "source.toolkit.fluxcd.io/v1",
    "HelmChart": "source.toolkit.fluxcd.io/v1",
    "HelmRepository": "source.toolkit.fluxcd.io/v1",
    "GitRepository": "source.toolkit.fluxcd.io/v1",
    "OCIRepository": "source.toolkit.fluxcd.io/v1",
    "ImageRepository": "image.toolkit.fluxcd.io/v1",
    "ArtifactGenerator": "source.extensions.fluxcd.io/v1beta1",
}
"""The kinds a Receiver may name without ``apiVersion``, as notification-controller v1.9 has them.

Kustomization, HelmRelease, ImagePolicy, ImageUpdateAutomation and ExternalArtifact are not
here on purpose: notification-controller refuses such an entry, and so does fluxrelay.
"""


def default_api_version(kind: str) -> str | None:
    """The apiVersion Flux assumes for a Receiver entry without one (None: Flux refuses it)."""
    return DEFAULT_API_VERSIONS.get(kind)


SHARD_LABEL = "sharding.fluxcd.io/key"


def shard_selector(shard: str | None) -> str:
    """The label selector of a shard's objects, as Flux shards: with a key only objects
    labelled with it, without one only unlabelled objects (filtered by the API server)."""
    return f"{SHARD_LABEL}={shard}" if shard else f"!{SHARD_LABEL}"


REQUESTED_AT = "reconcile.fluxcd.io/requestedAt"
"""The annotation Flux compares with ``status.lastHandledReconcileAt``."""
DELIVERY_ANNOTATION = "fluxrelay.io/delivery"
"""Records which delivery (envelope id) caused the last requested reconcile."""
THROUGH_ANNOTATION = "fluxrelay.io/stored-through"
"""The newest stored message (stream sequence and the stream's creation time) fluxrelay's last
request for this object carried: every message of that stream stored up to it is covered by
that request (``reconciler.coalescing``)."""


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
