"""Receivers as the ingress serves them, built from Flux ``Receiver`` + ``Secret`` manifests.

One format serves both sources: a YAML file of the manifests a user would ``kubectl apply``,
or the objects read from the Kubernetes API. Everything a request needs (provider, allowed
events, secret values, suspension) is resolved here once, at load time, so the request path
does no lookups and a broken Receiver fails loudly before it is served.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from receiver.errors import ConfigError
from receiver.hooks import hook_digest

RECEIVER_GROUP = "notification.toolkit.fluxcd.io"
RECEIVER_VERSIONS = ("v1", "v1beta3", "v1beta2")
"""API versions of Receiver read; v1 is current, the betas share its spec for what we use."""


@dataclass(frozen=True, slots=True)
class ReceiverSpec:
    """A Receiver ready to serve: identity, provider, filters and its resolved Secret."""

    namespace: str
    name: str
    type: str
    secret_name: str
    secret: Mapping[str, bytes] = field(repr=False)
    """Every key of the referenced Secret, as raw bytes (a trailing newline is kept)."""
    events: frozenset[str] = frozenset()
    """Lower-cased allow-list from ``spec.events``; empty allows every event."""
    suspend: bool = False
    resources: tuple[Mapping[str, Any], ...] = ()
    resource_filter: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def token(self) -> bytes:
        return self.secret.get("token", b"")

    @property
    def digest(self) -> str:
        return hook_digest(self.token, self.name, self.namespace)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def allows(self, event: str) -> bool:
        """Flux semantics: case-insensitive exact match, empty list allows all."""
        return not self.events or event.lower() in self.events


def secret_data(doc: Mapping[str, Any], where: str) -> dict[str, bytes]:
    """Decode a Secret's ``data`` (base64) and ``stringData`` (wins, as in Kubernetes)."""
    values: dict[str, bytes] = {}
    data = doc.get("data") or {}
    string_data = doc.get("stringData") or {}
    if not isinstance(data, Mapping) or not isinstance(string_data, Mapping):
        raise ConfigError(f"{where}: data and stringData must be maps")
    for key, value in data.items():
        if not isinstance(value, str):
            raise ConfigError(f"{where}: data.{key}: must be a base64 string")
        try:
            values[str(key)] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ConfigError(f"{where}: data.{key}: not valid base64") from e
    for key, value in string_data.items():
        if not isinstance(value, str):
            raise ConfigError(f"{where}: stringData.{key}: must be a string")
        values[str(key)] = value.encode()
    return values


def _meta(doc: Mapping[str, Any], where: str) -> tuple[str, str, Mapping[str, Any]]:
    meta = doc.get("metadata")
    if not isinstance(meta, Mapping):
        raise ConfigError(f"{where}: metadata: required")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: metadata.name: required")
    namespace = meta.get("namespace") or "default"
    if not isinstance(namespace, str):
        raise ConfigError(f"{where}: metadata.namespace: must be a string")
    return namespace, name, meta


def receiver_from_manifest(
    doc: Mapping[str, Any],
    secrets: Mapping[tuple[str, str], Mapping[str, bytes]],
    where: str,
) -> ReceiverSpec:
    """Build a :class:`ReceiverSpec`; raise :class:`ConfigError` naming ``where`` and the field."""
    namespace, name, meta = _meta(doc, where)
    where = f"{where} (Receiver {namespace}/{name})"
    spec = doc.get("spec")
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: spec: required")
    kind = spec.get("type")
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f"{where}: spec.type: required")
    events = spec.get("events") or []
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise ConfigError(f"{where}: spec.events: must be a list of strings")
    resources = spec.get("resources") or []
    if not isinstance(resources, list) or not all(isinstance(r, Mapping) for r in resources):
        raise ConfigError(f"{where}: spec.resources: must be a list of objects")
    for i, res in enumerate(resources):
        if not isinstance(res.get("kind"), str) or not isinstance(res.get("name"), str):
            raise ConfigError(f"{where}: spec.resources[{i}]: kind and name are required")
    resource_filter = spec.get("resourceFilter")
    if resource_filter is not None and not isinstance(resource_filter, str):
        raise ConfigError(f"{where}: spec.resourceFilter: must be a string")
    secret_ref = spec.get("secretRef")
    if not isinstance(secret_ref, Mapping) or not isinstance(secret_ref.get("name"), str):
        raise ConfigError(f"{where}: spec.secretRef.name: required")
    secret_name = secret_ref["name"]
    secret = secrets.get((namespace, secret_name))
    if secret is None:
        raise ConfigError(f"{where}: spec.secretRef: Secret {namespace}/{secret_name} not found")
    if not secret.get("token"):
        raise ConfigError(f"{where}: Secret {namespace}/{secret_name}: key 'token' required")
    suspend = spec.get("suspend", False)
    if not isinstance(suspend, bool):
        raise ConfigError(f"{where}: spec.suspend: must be a boolean")
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, Mapping):
        raise ConfigError(f"{where}: metadata.annotations: must be a map")
    return ReceiverSpec(
        namespace=namespace,
        name=name,
        type=kind,
        secret_name=secret_name,
        secret=dict(secret),
        events=frozenset(e.lower() for e in events),
        suspend=suspend,
        resources=tuple(dict(r) for r in resources),
        resource_filter=resource_filter,
        annotations={str(k): str(v) for k, v in annotations.items()},
    )


def is_receiver(doc: Mapping[str, Any]) -> bool:
    api = str(doc.get("apiVersion", ""))
    group, _, version = api.partition("/")
    return (
        doc.get("kind") == "Receiver" and group == RECEIVER_GROUP and version in RECEIVER_VERSIONS
    )


def specs_from_documents(docs: Iterable[Any], source: str) -> list[ReceiverSpec]:
    """Resolve Receivers against the Secrets among ``docs`` (order does not matter)."""
    secrets: dict[tuple[str, str], dict[str, bytes]] = {}
    receivers: list[tuple[str, Mapping[str, Any]]] = []
    for index, doc in enumerate(docs, start=1):
        where = f"{source}: document {index}"
        if doc is None:
            continue
        if not isinstance(doc, Mapping):
            raise ConfigError(f"{where}: not a manifest (expected a YAML map)")
        if doc.get("kind") == "Secret" and doc.get("apiVersion") == "v1":
            namespace, name, _ = _meta(doc, where)
            secrets[(namespace, name)] = secret_data(doc, f"{where} (Secret {namespace}/{name})")
        elif is_receiver(doc):
            receivers.append((where, doc))
        else:
            raise ConfigError(
                f"{where}: kind {doc.get('kind')!r} apiVersion {doc.get('apiVersion')!r}: "
                f"only v1 Secret and {RECEIVER_GROUP} Receiver manifests are read"
            )
    return [receiver_from_manifest(doc, secrets, where) for where, doc in receivers]


def load_file(path: Path) -> list[ReceiverSpec]:
    """Read a multi-document YAML file of Receiver and Secret manifests."""
    try:
        text = path.read_text("utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from e
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    return specs_from_documents(docs, str(path))
