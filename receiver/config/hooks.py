"""Webhook paths computed exactly as Flux's notification-controller does.

``/hook/`` + lowercase hex sha256 of token + name + namespace, with no separators, so every
URL already configured at a Git provider keeps working when traffic moves to fluxrelay.
"""

from __future__ import annotations

import hashlib

HOOK_PREFIX = "/hook/"


def hook_digest(token: bytes, name: str, namespace: str) -> str:
    """Hex digest identifying a Receiver; the token's bytes are used as stored (newline kept)."""
    return hashlib.sha256(token + name.encode() + namespace.encode()).hexdigest()


def hook_path(token: bytes, name: str, namespace: str) -> str:
    """The URL path at which the Receiver is served."""
    return HOOK_PREFIX + hook_digest(token, name, namespace)
