"""The ``generic-oidc`` receiver (notification-controller 1.9): a generic webhook whose sender
proves itself with an OIDC ID token (a CI job's workload identity, a Kubernetes service
account token...).

Flux's form, which notification-controller defines and which is served as it serves it: no
``spec.secretRef`` (the hook path is ``/hook/`` + sha256("" + name + namespace)) and
``spec.oidcProviders[]``, each with an ``issuerURL`` the token's ``iss`` must equal exactly,
an ``audience`` (``notification-controller`` when unset) its ``aud`` must contain, optional
``variables`` (CEL over ``claims``, exposed in order as ``vars.<name>``) and ``validations``
(CEL booleans over ``claims`` and ``vars``). The request is refused (400) when any validation
is false, with every failing ``message`` in the reason, or when an expression fails to
evaluate. Expressions are compiled when the Receiver is loaded (a broken one stops it being
served, as notification-controller stalls it); keys come from each issuer's OIDC discovery
document (``<issuer>/.well-known/openid-configuration`` → ``jwks_uri``).

A fluxrelay extension, next to Flux's form (notification-controller refuses it): a
``secretRef`` and no ``oidcProviders``. The Secret's ``token`` then forms the hook path as for
other types, and its keys configure the issuers, without CEL checks (the secret path is the
second factor):

* ``issuers``: the accepted issuer URLs, separated by commas or newlines.
* ``audience``: the value the token's ``aud`` must contain.
* ``jwks-url`` (optional): where the keys are, instead of each issuer's discovery document.
  With one issuer the value is a URL; with several, one ``<issuer> <jwks-url>`` pair per line
  (issuers not listed use discovery).

Authenticity, in both forms: ``Authorization: Bearer <JWT>``; the unverified ``iss`` picks
the configured issuer (no other is ever contacted), then the token must be signed with an
asymmetric algorithm (RS*/PS*/ES*/EdDSA, matching the key's type; ``none`` and HMAC
algorithms are refused, which rules out algorithm confusion) by a key of that issuer, be
unexpired (``exp`` required, 30 s leeway) and carry the audience. Keys are cached per issuer
by :mod:`receiver.providers.jwks` and fetched in the background: ``verify`` never waits on
the network, and a token naming a key not yet loaded is refused (400) while that key is
fetched (rate-limited), so the sender's retry succeeds.

Payload: like ``generic``, the body is empty or any JSON value, kept as the payload; there is
no event type (``spec.events`` does not apply, as in Flux). The verified claims go to the
envelope's ``claims``, which the reconciler's CEL filters read as ``claims``. Delivery id:
``<jti>/<body digest>`` when the token has a ``jti`` (a token may be reused for several
deliveries within its lifetime, so the ``jti`` alone would merge them), else the body digest.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from celpy import celtypes

from receiver.errors import ConfigError, SignatureInvalid
from receiver.providers import common, jwks
from receiver.providers.base import Credentials, Item, Parsed, Request
from runtime import cel
from schemas.receivers import OIDCProvider

KeysFor = Callable[[str, str | None], jwks.KeySource]
"""``(issuer, jwks_url or None) -> KeySource``: how the provider gets an issuer's keys."""
_SEPARATORS = re.compile(r"[,\s]+")
REQUIRED_CLAIMS = ("exp", "iss", "aud")
"""What a token must carry to be verified (``iat`` is not required, as in Flux)."""


def remote_keys(issuer: str, jwks_url: str | None) -> jwks.KeySource:
    """The production key source: the configured JWKS URL, else OIDC discovery."""
    if jwks_url is not None:
        return jwks.RemoteKeys(jwks_url)
    return jwks.RemoteKeys(issuer=issuer)


@dataclass(frozen=True, slots=True)
class Issuer:
    """An issuer a Receiver accepts tokens from, and what its tokens must satisfy."""

    url: str
    audience: str
    jwks_url: str | None = None
    """Keys from here instead of OIDC discovery (the Secret form only)."""
    provider: OIDCProvider | None = None
    """Flux's ``oidcProviders[]`` entry, whose variables and validations apply."""


@dataclass(frozen=True, slots=True)
class ClaimsChecks:
    """An ``oidcProviders[]`` entry's variables and validations, compiled."""

    variables: tuple[tuple[str, cel.Program], ...]
    validations: tuple[tuple[cel.Program, str], ...]

    def run(self, claims: Mapping[str, Any]) -> None:
        """Evaluate the variables in order, then every validation; SignatureInvalid naming
        every failed validation's message, or the expression that could not be evaluated."""
        try:
            activation = {"claims": cel.to_cel(dict(claims)), "vars": celtypes.MapType()}
        except (ValueError, TypeError) as e:
            raise SignatureInvalid(f"token claims cannot be read by CEL: {e}") from e
        variables = activation["vars"]
        for name, program in self.variables:
            try:
                variables[celtypes.StringType(name)] = cel.evaluate(program, activation)
            except cel.CELError as e:
                raise SignatureInvalid(f"failed to evaluate variable {name!r}: {e}") from e
        failures: list[str] = []
        for program, message in self.validations:
            try:
                if not cel.evaluate_boolean(program, activation):
                    failures.append(message)
            except cel.CELError as e:
                raise SignatureInvalid(f"failed to evaluate validation: {e}") from e
        if failures:
            raise SignatureInvalid(f"token validation failed: {'; '.join(failures)}")


@functools.lru_cache(maxsize=512)
def checks_for(provider: OIDCProvider) -> ClaimsChecks:
    """Compile a provider's expressions once (shared by reloads); CELError naming the one
    that does not compile."""
    variables = []
    for i, v in enumerate(provider.variables):
        try:
            variables.append((v.name, cel.compile_program(v.expression)))
        except cel.CELError as e:
            raise cel.CELError(f"variables[{i}] (name={v.name!r}): {e}") from e
    validations = []
    for i, check in enumerate(provider.validations):
        try:
            validations.append((cel.compile_program(check.expression), check.message))
        except cel.CELError as e:
            raise cel.CELError(f"validations[{i}] (message={check.message!r}): {e}") from e
    return ClaimsChecks(tuple(variables), tuple(validations))


@functools.lru_cache(maxsize=512)
def _flux_issuers(providers: tuple[OIDCProvider, ...]) -> Mapping[str, Issuer]:
    return {p.issuer_url: Issuer(p.issuer_url, p.audience, None, p) for p in providers}


def _text(spec: Credentials, key: str, required: bool = True) -> str:
    value = (common.secret_text(spec, key) or "").strip()
    if required and not value:
        raise ConfigError(f"{common.secret_where(spec)}: key {key!r} required")
    return value


def _is_url(value: str) -> bool:
    return value.startswith(("https://", "http://")) and len(value) > len("https://")


def _secret_issuers(spec: Credentials) -> dict[str, Issuer]:
    """The extension's issuers, from the Secret's keys; ConfigError if they are bad."""
    where = common.secret_where(spec)
    names = [n for n in _SEPARATORS.split(_text(spec, "issuers")) if n]
    for name in names:
        if not _is_url(name):
            raise ConfigError(f"{where}: issuer {name!r} is not an http(s) URL")
    urls: dict[str, str | None] = dict.fromkeys(names)
    lines = [line.split() for line in _text(spec, "jwks-url", required=False).splitlines()]
    for words in filter(None, lines):
        if len(words) == 1 and len(urls) == 1:
            issuer, url = names[0], words[0]
        elif len(words) == 2:
            issuer, url = words
        else:
            raise ConfigError(
                f"{where}: jwks-url: one URL for a single issuer, else '<issuer> <url>' per line"
            )
        if issuer not in urls:
            raise ConfigError(f"{where}: jwks-url names {issuer!r}, which is not in issuers")
        if not _is_url(url):
            raise ConfigError(f"{where}: jwks-url {url!r} is not an http(s) URL")
        urls[issuer] = url
    audience = _text(spec, "audience")
    return {name: Issuer(name, audience, url) for name, url in urls.items()}


def issuers_of(spec: Credentials) -> Mapping[str, Issuer]:
    """The Receiver's issuers by URL: ``spec.oidcProviders`` (Flux's form), else the Secret."""
    providers = spec.oidc_providers
    if providers:
        return _flux_issuers(providers)
    return _secret_issuers(spec)


def unverified_issuer(token: bytes) -> str:
    """The ``iss`` a token claims, read only to choose whose keys verify its signature."""
    parts = token.split(b".")
    if len(parts) != 3:
        raise SignatureInvalid("failed to parse bearer token: token is not a JWT")
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + b"=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error, RecursionError) as e:
        raise SignatureInvalid("failed to parse bearer token: payload is not JSON") from e
    issuer = payload.get("iss") if isinstance(payload, dict) else None
    if not isinstance(issuer, str) or not issuer:
        raise SignatureInvalid("failed to parse bearer token: token is missing the 'iss' claim")
    return issuer


class GenericOIDC:
    """``generic-oidc``: an OIDC bearer token from a configured issuer, claims kept."""

    name = "generic-oidc"
    filters_events = True

    def __init__(self, keys_for: KeysFor = remote_keys) -> None:
        self._keys_for = keys_for
        self._sources: dict[tuple[str, str | None], jwks.KeySource] = {}
        self._lock = threading.Lock()

    def source(self, issuer: str, jwks_url: str | None) -> jwks.KeySource:
        """One cached key source per (issuer, JWKS URL), shared by Receivers and reloads."""
        with self._lock:
            source = self._sources.get((issuer, jwks_url))
            if source is None:
                source = self._sources[(issuer, jwks_url)] = self._keys_for(issuer, jwks_url)
        return source

    def validate(self, spec: Credentials) -> None:
        """Compile the CEL (Flux's form) or check the Secret's keys (the extension), then
        start loading every issuer's keys."""
        for i, provider in enumerate(spec.oidc_providers):
            try:
                checks_for(provider)
            except cel.CELError as e:
                raise ConfigError(
                    f"Receiver {spec.key} (generic-oidc): spec.oidcProviders[{i}] "
                    f"(issuerURL={provider.issuer_url!r}): {e}"
                ) from e
        if not spec.oidc_providers:
            common.require_secret(spec, "token")
        for issuer in issuers_of(spec).values():
            self.source(issuer.url, issuer.jwks_url).prime()

    def claims(self, spec: Credentials, request: Request) -> dict[str, Any]:
        """The verified claims of the request's token; SignatureInvalid otherwise."""
        try:
            token = jwks.bearer_token(request, "ID token")
        except SignatureInvalid as e:
            raise SignatureInvalid("the Authorization header is missing or malformed") from e
        claimed = unverified_issuer(token)
        issuer = issuers_of(spec).get(claimed)
        if issuer is None:
            shown = claimed if len(claimed) <= 200 else claimed[:200] + "..."
            raise SignatureInvalid(f"no oidcProvider configured for issuer {shown!r}")
        claims = jwks.verify_token(
            token,
            self.source(issuer.url, issuer.jwks_url),
            audience=issuer.audience,
            issuer=issuer.url,
            what="failed to verify OIDC token",
            require=REQUIRED_CLAIMS,
        )
        if issuer.provider is not None:
            checks_for(issuer.provider).run(claims)
        return claims

    def verify(self, spec: Credentials, request: Request) -> None:
        self.claims(spec, request)

    def parse(self, spec: Credentials, request: Request) -> Parsed:
        claims = self.claims(spec, request)
        payload = common.optional_json(request.body)
        digest = common.body_digest(request.body)
        jti = claims.get("jti")
        delivery = f"{jti}/{digest}" if isinstance(jti, str) and jti else digest
        return Parsed("", (Item(delivery, {"claims": dict(claims)}),), payload)
