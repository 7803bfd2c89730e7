"""NATS decentralised auth made offline, without ``nsc``: an operator, an account with
JetStream and the system account, each as an NKey pair and a signed JWT, and a user
credentials file (user JWT + seed), for a real nats-server in operator mode."""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

nkeys: Any = importlib.import_module("nkeys")  # untyped package, used as Any


def keypair(prefix: int) -> Any:
    """A fresh NKey pair of the given kind (``nkeys.PREFIX_BYTE_*``)."""
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_for(issuer: Any, subject: str, name: str, nats: dict[str, Any]) -> str:
    """A JWT of ``nats`` claims about ``subject``, signed by ``issuer``'s NKey (ed25519)."""
    claims: dict[str, Any] = {
        "jti": "",
        "iat": int(time.time()),
        "iss": issuer.public_key.decode(),
        "name": name,
        "sub": subject,
        "nats": {**nats, "version": 2},
    }
    digest = hashlib.new("sha512_256", json.dumps(claims).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    payload = _b64(json.dumps(claims).encode())
    signature = issuer.sign(f"{header}.{payload}".encode())
    return f"{header}.{payload}.{_b64(signature)}"


UNLIMITED = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
    "mem_storage": -1,
    "disk_storage": -1,
    "streams": -1,
    "consumer": -1,
}


@dataclass
class Operator:
    """Operator, system account and one JetStream-enabled account, as server config."""

    folder: Path

    def __post_init__(self) -> None:
        self.operator = keypair(nkeys.PREFIX_BYTE_OPERATOR)
        self.system = keypair(nkeys.PREFIX_BYTE_ACCOUNT)
        self.account = keypair(nkeys.PREFIX_BYTE_ACCOUNT)
        op_pub = self.operator.public_key.decode()
        self.operator_jwt = jwt_for(
            self.operator,
            op_pub,
            "fluxrelay-test-operator",
            {"type": "operator", "system_account": self.system.public_key.decode()},
        )
        self.system_jwt = jwt_for(
            self.operator,
            self.system.public_key.decode(),
            "SYS",
            {"type": "account", "limits": {"conn": -1, "subs": -1, "data": -1, "payload": -1}},
        )
        self.account_jwt = jwt_for(
            self.operator,
            self.account.public_key.decode(),
            "fluxrelay",
            {"type": "account", "limits": UNLIMITED},
        )

    def server_config(self) -> str:
        op = self.folder / "operator.jwt"
        op.write_text(self.operator_jwt)
        return (
            f'operator: "{op}"\n'
            f'system_account: "{self.system.public_key.decode()}"\n'
            "resolver: MEMORY\n"
            "resolver_preload: {\n"
            f'  {self.system.public_key.decode()}: "{self.system_jwt}"\n'
            f'  {self.account.public_key.decode()}: "{self.account_jwt}"\n'
            "}\n"
        )

    def user_creds(self, name: str = "fluxrelay-receiver") -> Path:
        """A credentials file for a new user of the account, as ``nsc`` lays it out."""
        user = keypair(nkeys.PREFIX_BYTE_USER)
        token = jwt_for(
            self.account,
            user.public_key.decode(),
            name,
            {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1},
        )
        path = self.folder / f"{name}.creds"
        path.write_text(
            "-----BEGIN NATS USER JWT-----\n"
            f"{token}\n"
            "------END NATS USER JWT------\n\n"
            "-----BEGIN USER NKEY SEED-----\n"
            f"{user.seed.decode()}\n"
            "------END USER NKEY SEED------\n"
        )
        return path
