"""Flux ``Receiver`` and ``Secret`` manifests, parsed: the configuration contract both sides read.

The receiver serves hook paths from them (with the Secret's values); the reconciler reads
only ``spec.resources`` and ``spec.resourceFilter`` (it never needs a Secret). Both accept the
same inputs: a multi-document YAML of what a user would ``kubectl apply``, or the objects
read from the Kubernetes API. Errors name the document and the field.

The cross-field rules of Flux's Receiver CRD are enforced here, because a file given to
``--config`` never went through an API server, and an API server older than Kubernetes 1.25
skips the CRD's CEL rules: a ``generic-oidc`` Receiver has ``spec.oidcProviders`` (at least
one, each with at least one validation, issuers unique and ``http(s)://``) and no
``spec.secretRef``; every other type has a ``spec.secretRef`` and no ``spec.oidcProviders``.
One fluxrelay extension is kept next to Flux's form: a ``generic-oidc`` Receiver with a
``secretRef`` and no ``oidcProviders`` (the issuers then come from Secret keys, see
``receiver.providers.generic_oidc``); notification-controller refuses that manifest.
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
RECEIVER_VERSION = "v1"
"""The version both services list and watch Receivers at (the one Flux serves now)."""
RECEIVER_PLURAL = "receivers"
RECEIVER_VERSIONS = ("v1", "v1beta3", "v1beta2")
"""API versions of Receiver read; v1 is current, the betas share its spec for what we use."""
GENERIC_OIDC = "generic-oidc"
DEFAULT_OIDC_AUDIENCE = "notification-controller"
"""The ``aud`` a ``generic-oidc`` token must carry when ``audience`` is not set (Flux's)."""


class ConfigError(ValueError):
    """Configuration that cannot be served; raised at load time, never per request."""


@dataclass(frozen=True, slots=True)
class OIDCVariable:
    """``oidcProviders[].variables[]``: CEL exposed to later expressions as ``vars.<name>``."""

    name: str
    expression: str


@dataclass(frozen=True, slots=True)
class OIDCValidation:
    """``oidcProviders[].validations[]``: a CEL boolean; ``message`` is reported when false."""

    expression: str
    message: str


@dataclass(frozen=True, slots=True)
class OIDCProvider:
    """``spec.oidcProviders[]`` of a ``generic-oidc`` Receiver (hashable: compiled once)."""

    issuer_url: str
    audience: str = DEFAULT_OIDC_AUDIENCE
    variables: tuple[OIDCVariable, ...] = ()
    validations: tuple[OIDCValidation, ...] = ()


@dataclass(frozen=True, slots=True)
class ReceiverDef:
    """A Receiver's spec as declared (its Secret not resolved)."""

    namespace: str
    name: str
    type: str
    secret_name: str | None
    """``spec.secretRef.name``; None for a ``generic-oidc`` Receiver in Flux's form."""
    events: frozenset[str] = frozenset()
    """Lower-cased allow-list from ``spec.events``; empty allows every event."""
    suspend: bool = False
    resources: tuple[Mapping[str, Any], ...] = ()
    resource_filter: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    oidc_providers: tuple[OIDCProvider, ...] = ()
    """``spec.oidcProviders``: set exactly when a ``generic-oidc`` Receiver has no Secret."""

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
    invalid: dict[str, str] = field(default_factory=dict)
    """Lenient reading only: Receivers (``namespace/name``) whose manifest cannot be served,
    with the reason naming the document and the field."""
    secret_errors: dict[tuple[str, str], str] = field(default_factory=dict)
    """Lenient reading only: Secrets whose data cannot be decoded, with the reason."""


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


def _text_field(item: Mapping[str, Any], key: str, where: str, required: bool = True) -> str:
    value = item.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{where}.{key}: required")
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{key}: must be a string")
    if required and not value:
        raise ConfigError(f"{where}.{key}: required")
    return value


def _items(value: Any, where: str) -> list[Mapping[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise ConfigError(f"{where}: must be a list of objects")
    return value


def parse_oidc_providers(value: Any, where: str) -> tuple[OIDCProvider, ...]:
    """``spec.oidcProviders`` with the checks notification-controller makes before serving
    (its CRD's schema, repeated in its controller for API servers that skip it): issuer
    required, ``http(s)://``, unique; at least one validation, each with an expression and a
    message; each variable with a name and an expression. CEL is compiled by the receiver."""
    providers: list[OIDCProvider] = []
    seen: set[str] = set()
    for i, item in enumerate(_items(value, f"{where}: spec.oidcProviders")):
        at = f"{where}: spec.oidcProviders[{i}]"
        issuer = _text_field(item, "issuerURL", at)
        if not issuer.startswith(("http://", "https://")):
            raise ConfigError(f"{at}.issuerURL: {issuer!r} must start with http:// or https://")
        if issuer in seen:
            raise ConfigError(f"{at}.issuerURL: duplicate issuerURL {issuer!r}")
        seen.add(issuer)
        audience = _text_field(item, "audience", at, required=False) or DEFAULT_OIDC_AUDIENCE
        variables = tuple(
            OIDCVariable(
                _text_field(v, "name", f"{at}.variables[{j}]"),
                _text_field(v, "expression", f"{at}.variables[{j}]"),
            )
            for j, v in enumerate(_items(item.get("variables"), f"{at}.variables"))
        )
        validations = tuple(
            OIDCValidation(
                _text_field(v, "expression", f"{at}.validations[{j}]"),
                _text_field(v, "message", f"{at}.validations[{j}]"),
            )
            for j, v in enumerate(_items(item.get("validations"), f"{at}.validations"))
        )
        if not validations:
            raise ConfigError(
                f"{at}.validations: at least one validation is required; without validations "
                "any caller able to obtain a token from this issuer can trigger the Receiver"
            )
        providers.append(OIDCProvider(issuer, audience, variables, validations))
    return tuple(providers)


def _secret_name(
    kind: str, secret_ref: Any, oidc: tuple[OIDCProvider, ...], where: str
) -> str | None:
    """``spec.secretRef.name``, or None where Flux's form has none (the CRD's rules)."""
    if kind == GENERIC_OIDC:
        if oidc and secret_ref is not None:
            raise ConfigError(f"{where}: spec.secretRef: cannot be set when type is generic-oidc")
        if not oidc and secret_ref is None:
            raise ConfigError(
                f"{where}: spec.oidcProviders: generic-oidc receivers must define at least "
                "one oidcProvider"
            )
        if oidc:
            return None
    elif oidc:
        raise ConfigError(f"{where}: spec.oidcProviders: can only be set when type is generic-oidc")
    if not isinstance(secret_ref, Mapping) or not isinstance(secret_ref.get("name"), str):
        raise ConfigError(f"{where}: spec.secretRef.name: required")
    name: str = secret_ref["name"]
    return name


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
    oidc = parse_oidc_providers(spec.get("oidcProviders"), where)
    secret_name = _secret_name(kind, spec.get("secretRef"), oidc, where)
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
        secret_name=secret_name,
        events=frozenset(e.lower() for e in events),
        suspend=suspend,
        resources=tuple(dict(r) for r in resources),
        resource_filter=resource_filter,
        annotations={str(k): str(v) for k, v in annotations.items()},
        labels={str(k): str(v) for k, v in labels.items()},
        oidc_providers=oidc,
    )


def is_receiver(doc: Mapping[str, Any]) -> bool:
    api = str(doc.get("apiVersion", ""))
    group, _, version = api.partition("/")
    return (
        doc.get("kind") == "Receiver" and group == RECEIVER_GROUP and version in RECEIVER_VERSIONS
    )


def split_documents(docs: Iterable[Any], source: str, *, lenient: bool = False) -> Documents:
    """Sort manifests into Receivers and Secrets; anything else is an error.

    ``lenient`` (the receiver's file source, which must keep serving the other Receivers, as
    a cluster does) records a named Receiver or Secret that cannot be read in
    :attr:`Documents.invalid` or :attr:`Documents.secret_errors` instead of failing. What
    cannot be named (no ``metadata.name``), what is no manifest, and other kinds still fail:
    such a file is not the Receiver list it is meant to be.
    """
    secrets: dict[tuple[str, str], dict[str, bytes]] = {}
    receivers: list[tuple[str, ReceiverDef]] = []
    invalid: dict[str, str] = {}
    secret_errors: dict[tuple[str, str], str] = {}
    for index, doc in enumerate(docs, start=1):
        where = f"{source}: document {index}"
        if doc is None:
            continue
        if not isinstance(doc, Mapping):
            raise ConfigError(f"{where}: not a manifest (expected a YAML map)")
        if doc.get("kind") == "Secret" and doc.get("apiVersion") == "v1":
            namespace, name, _ = _meta(doc, where)
            try:
                secrets[(namespace, name)] = secret_data(
                    doc, f"{where} (Secret {namespace}/{name})"
                )
            except ConfigError as e:
                if not lenient:
                    raise
                secret_errors[(namespace, name)] = str(e)
        elif is_receiver(doc):
            try:
                receivers.append((where, parse_receiver(doc, where)))
            except ConfigError as e:
                if not lenient:
                    raise
                namespace, name, _ = _meta(doc, where)
                invalid[f"{namespace}/{name}"] = str(e)
        else:
            raise ConfigError(
                f"{where}: kind {doc.get('kind')!r} apiVersion {doc.get('apiVersion')!r}: "
                f"only v1 Secret and {RECEIVER_GROUP} Receiver manifests are read"
            )
    return Documents(receivers, secrets, invalid, secret_errors)


def read_documents(path: Path, *, lenient: bool = False) -> Documents:
    """Read a multi-document YAML file of Receiver and Secret manifests (``lenient``: see
    :func:`split_documents`)."""
    try:
        text = path.read_text("utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from e
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    return split_documents(docs, str(path), lenient=lenient)
