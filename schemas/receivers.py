"""Flux ``Receiver`` and ``Secret`` manifests, parsed: the configuration contract both sides read.

The receiver serves hook paths from them (with the Secret's values); the reconciler reads
only ``spec.resources`` and ``spec.resourceFilter`` (it never needs a Secret). Both accept the
same inputs: a multi-document YAML of what a user would ``kubectl apply``, or the objects
read from the Kubernetes API. Errors name the document and the field.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RECEIVER_GROUP = "notification.toolkit.fluxcd.io"
RECEIVER_VERSIONS = ("v1", "v1beta3", "v1beta2")
"""API versions of Receiver read; v1 is current, the betas share its spec for what we use."""


class ConfigError(ValueError):
    """Configuration that cannot be served; raised at load time, never per request."""


@dataclass(frozen=True, slots=True)
class ReceiverDef:
    """A Receiver's spec as declared (its Secret not resolved)."""

    namespace: str
    name: str
    type: str
    secret_name: str
    events: frozenset[str] = frozenset()
    """Lower-cased allow-list from ``spec.events``; empty allows every event."""
    suspend: bool = False
    resources: tuple[Mapping[str, Any], ...] = ()
    resource_filter: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def allows(self, event: str) -> bool:
        """Flux semantics: case-insensitive exact match, empty list allows all."""
        return not self.events or event.lower() in self.events


@dataclass(frozen=True, slots=True)
class Documents:
    """Receivers and Secrets found in a set of manifests."""

    receivers: list[tuple[str, ReceiverDef]]
    """(where, definition) pairs, ``where`` naming the document for error messages."""
    secrets: dict[tuple[str, str], dict[str, bytes]]


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


def parse_receiver(doc: Mapping[str, Any], where: str) -> ReceiverDef:
    """Parse a Receiver manifest; raise :class:`ConfigError` naming ``where`` and the field."""
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
    suspend = spec.get("suspend", False)
    if not isinstance(suspend, bool):
        raise ConfigError(f"{where}: spec.suspend: must be a boolean")
    annotations = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    if not isinstance(annotations, Mapping) or not isinstance(labels, Mapping):
        raise ConfigError(f"{where}: metadata.annotations and labels must be maps")
    return ReceiverDef(
        namespace=namespace,
        name=name,
        type=kind,
        secret_name=secret_ref["name"],
        events=frozenset(e.lower() for e in events),
        suspend=suspend,
        resources=tuple(dict(r) for r in resources),
        resource_filter=resource_filter,
        annotations={str(k): str(v) for k, v in annotations.items()},
        labels={str(k): str(v) for k, v in labels.items()},
    )


def is_receiver(doc: Mapping[str, Any]) -> bool:
    api = str(doc.get("apiVersion", ""))
    group, _, version = api.partition("/")
    return (
        doc.get("kind") == "Receiver" and group == RECEIVER_GROUP and version in RECEIVER_VERSIONS
    )


def split_documents(docs: Iterable[Any], source: str) -> Documents:
    """Sort manifests into Receivers and Secrets; anything else is an error."""
    secrets: dict[tuple[str, str], dict[str, bytes]] = {}
    receivers: list[tuple[str, ReceiverDef]] = []
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
            receivers.append((where, parse_receiver(doc, where)))
        else:
            raise ConfigError(
                f"{where}: kind {doc.get('kind')!r} apiVersion {doc.get('apiVersion')!r}: "
                f"only v1 Secret and {RECEIVER_GROUP} Receiver manifests are read"
            )
    return Documents(receivers, secrets)


def read_documents(path: Path) -> Documents:
    """Read a multi-document YAML file of Receiver and Secret manifests."""
    try:
        text = path.read_text("utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from e
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    return split_documents(docs, str(path))
