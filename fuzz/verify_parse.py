"""Coverage-guided fuzzing (atheris, libFuzzer) of every provider's verify + parse path.

One input is ``<provider>\\n<flags>\\n<header lines>\\n\\n<body>``: the provider by name (an
unknown name picks one by hash, so every input runs some provider), flags ``s`` (add every
credential header a provider reads, valid for the body, so parsing is reached) and ``t``
(change the body after signing), then ``Name: value`` headers and the raw body. The only
exceptions allowed out of ``verify``/``parse``/envelope building are
:class:`receiver.errors.Rejected`; anything else is a crash libFuzzer reports and saves.

Seeds live in ``fuzz/corpus/<provider>/``. Run (from the repository root)::

    python fuzz/verify_parse.py -max_total_time=300 /tmp/new-corpus fuzz/corpus/*

libFuzzer writes what it finds to the first folder; copy inputs worth keeping into
``fuzz/corpus/<provider>/``. With ``FLUXRELAY_FUZZ_REACHED=FILE``, each provider whose parse
succeeded at least once is appended to FILE (the CI run checks every provider was reached).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib
import json
import os
import sys
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

atheris: Any = importlib.import_module("atheris")  # untyped; a dev dependency

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports(include=["receiver", "schemas"]):
    from receiver import normalising
    from receiver.config.spec import ReceiverSpec, specs_from_documents
    from receiver.errors import Rejected
    from receiver.providers import PROVIDERS, jwks
    from receiver.providers.base import Provider, Request
    from receiver.providers.gcr import GCR, StaticKeys
    from receiver.providers.generic_oidc import GenericOIDC
    from receiver.settings import ReceiverSettings

FUZZ_TOKEN = "fuzz-harness-t0ken"  # noqa: S105  (a throwaway test credential)
USER = "fuzz-user"
FUZZ_PASSWORD = "fuzz-pass"  # noqa: S105
EMAIL = "pubsub@fuzz.iam.gserviceaccount.com"
AUDIENCE = "https://relay.fuzz.example/hook"
ISSUER = "https://issuer.fuzz.example"
KID = "fuzz-key"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWKS = {
    "keys": [{**RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True), "kid": KID, "alg": "RS256"}]
}
RECEIVED_AT = normalising.timestamp(datetime(2026, 3, 2, 12, 0, tzinfo=UTC).timestamp())
"""As the ingress passes it: RFC 3339 text (a datetime made the stdlib fallback fail)."""


def id_token(issuer: str) -> str:
    now = int(time.time())
    claims = {
        "aud": AUDIENCE,
        "email": EMAIL,
        "email_verified": True,
        "exp": now + 24 * 3600,
        "iat": now,
        "iss": issuer,
        "sub": "1",
    }
    return jwt.encode(claims, KEY, algorithm="RS256", headers={"kid": KID})


PROVIDER_INSTANCES: dict[str, Provider] = {
    **PROVIDERS,
    "gcr": GCR(StaticKeys(JWKS)),
    "generic-oidc": GenericOIDC(lambda issuer, url: jwks.StaticKeys(JWKS)),
}
NAMES = sorted(PROVIDER_INSTANCES)
AUTHORIZATIONS = {
    "azuredevops": "Basic " + base64.b64encode(f"{USER}:{FUZZ_PASSWORD}".encode()).decode(),
    "gcr": "Bearer " + id_token("https://accounts.google.com"),
    "generic-oidc": "Bearer " + id_token(ISSUER),
    "distribution": f"Bearer {FUZZ_TOKEN}",
    "harbor": FUZZ_TOKEN,
}


def _specs() -> dict[str, ReceiverSpec]:
    secret = {
        "token": FUZZ_TOKEN,
        "username": USER,
        "password": FUZZ_PASSWORD,
        "email": EMAIL,
        "audience": AUDIENCE,
        "issuers": ISSUER,
    }
    docs: list[dict[str, Any]] = []
    for name in NAMES:
        docs += [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": f"fuzz-{name}", "namespace": "fuzz"},
                "stringData": secret,
            },
            {
                "apiVersion": "notification.toolkit.fluxcd.io/v1",
                "kind": "Receiver",
                "metadata": {"name": f"fuzz-{name}", "namespace": "fuzz"},
                "spec": {
                    "type": name,
                    "secretRef": {"name": f"fuzz-{name}"},
                    "resources": [{"kind": "GitRepository", "name": "app"}],
                },
            },
        ]
    return {spec.type: spec for spec in specs_from_documents(docs, "fuzz")}


SPECS = _specs()


def credentials(name: str, body: bytes) -> dict[str, str]:
    """Every signature/token header any provider reads, valid for ``body``."""
    key = FUZZ_TOKEN.encode()
    sha256 = hmac.new(key, body, hashlib.sha256).hexdigest()
    return {
        "X-Hub-Signature-256": "sha256=" + sha256,
        "X-Hub-Signature": "sha256=" + sha256,
        "X-Gitlab-Token": FUZZ_TOKEN,
        "X-Gitea-Signature": sha256,
        "X-Forgejo-Signature": sha256,
        "X-Signature": "sha256=" + sha256,
        "X-Nexus-Webhook-Signature": hmac.new(key, body, hashlib.sha1).hexdigest(),
        "Authorization": AUTHORIZATIONS.get(name, f"Bearer {FUZZ_TOKEN}"),
    }


def split_input(data: bytes) -> tuple[str, str, dict[str, str], bytes]:
    head, _, body = data.partition(b"\n\n")
    lines = head.split(b"\n")
    name = lines[0].decode("utf-8", "replace").strip()
    if name not in PROVIDER_INSTANCES:
        name = NAMES[zlib.crc32(lines[0]) % len(NAMES)]
    flags = lines[1].decode("latin-1") if len(lines) > 1 else ""
    headers: dict[str, str] = {}
    for line in lines[2:]:
        field, sep, value = line.partition(b":")
        if sep and field.strip():
            # aiohttp hands non-UTF-8 header bytes over as lone surrogates; do the same.
            headers[field.strip().decode("latin-1")] = value.strip().decode(
                "utf-8", "surrogateescape"
            )
    return name, flags, headers, body


REACHED: set[str] = set()
REACHED_FILE = os.environ.get("FLUXRELAY_FUZZ_REACHED")


def reached(name: str) -> None:
    if name in REACHED:
        return
    REACHED.add(name)
    if REACHED_FILE:
        with open(REACHED_FILE, "a", encoding="utf-8") as f:
            f.write(name + "\n")


def test_one_input(data: bytes) -> None:
    name, flags, headers, body = split_input(data)
    if "s" in flags:
        headers = {**credentials(name, body), **headers}
    if "t" in flags:
        body = body[:-1] + bytes([(body[-1:] or b"\0")[0] ^ 1])
    provider = PROVIDER_INSTANCES[name]
    spec = SPECS[name]
    request = Request.of(headers, body)
    try:
        provider.verify(spec, request)
        parsed = provider.parse(spec, request)
    except Rejected:
        return
    reached(name)
    if parsed.ping or not parsed.items:
        return
    try:
        messages = normalising.messages(
            spec,
            parsed,
            RECEIVED_AT,
            normalising.traceparent(headers.get("traceparent")),
            "fuzz",
            ReceiverSettings().max_delivery_bytes,
        )
    except Rejected:
        return
    for message in messages:
        json.loads(message.payload)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
