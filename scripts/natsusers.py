"""Make the NATS credentials deploy/ and the quick start expect, and say where they go.

deploy/nats/single/auth.conf defines three NKey users (receiver, reconciler, admin) whose
public keys the server reads from environment variables, and the NATS cluster authenticates
its routes with a password. This script makes all of it in one folder:

    DIR/receiver.nk    seed of the receiver   -> Secret fluxrelay-nats-receiver (key nkey)
    DIR/reconciler.nk  seed of the reconciler -> Secret fluxrelay-nats-reconciler (key nkey)
    DIR/admin.nk       seed of the admin user -> stays with the operator (nats --nkey ...)
    DIR/users.env      public keys + route password -> Secret fluxrelay-nats-users

and prints the ``kubectl create secret`` commands (add ``--dry-run=client -o yaml`` to seal
them with SOPS or Sealed Secrets instead). Files are written with mode 0600 and existing
ones are kept, so running it again changes nothing; delete the folder to rotate.

Why NKeys: the server only ever holds public keys, the seed never crosses the wire (the
client signs the server's nonce), and plain NKey users with permissions are configured
the same way on nats-server 2.9 and 2.10+. A bcrypt'd password in a variable would do
too, but the client then sends the password itself on every connect.

Usage: python scripts/natsusers.py DIR [--namespace fluxrelay]
"""

from __future__ import annotations

import argparse
import importlib
import os
import secrets
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

nkeys: Any = importlib.import_module("nkeys")  # untyped package, used as Any

USERS = ("receiver", "reconciler", "admin")
"""The users auth.conf defines, by the name of their seed file."""
PUBLIC_KEY_VARIABLES = {
    "receiver": "FLUXRELAY_RECEIVER_NKEY",
    "reconciler": "FLUXRELAY_RECONCILER_NKEY",
    "admin": "FLUXRELAY_ADMIN_NKEY",
}
"""Environment variable (and key of the Secret fluxrelay-nats-users) per user."""
ROUTE_PASSWORD_VARIABLE = "NATS_ROUTE_PASSWORD"  # noqa: S105 - a name, not a value
SEED_SECRETS = {"receiver": "fluxrelay-nats-receiver", "reconciler": "fluxrelay-nats-reconciler"}
"""Secrets the Deployments mount (deploy/components/nats-nkeys), by user."""
USERS_SECRET = "fluxrelay-nats-users"  # noqa: S105 - a name, not a value
ENV_FILE = "users.env"


@dataclass(frozen=True)
class NatsUsers:
    """The seeds on disk and what the server needs to know about them."""

    folder: Path
    public_keys: dict[str, str]
    """User -> public NKey (U...)."""
    route_password: str

    def seed(self, user: str) -> Path:
        """File holding ``user``'s seed (what ``--nats-nkey`` takes)."""
        return self.folder / f"{user}.nk"

    def server_env(self) -> dict[str, str]:
        """The variables nats.conf and auth.conf read (what the Secret fluxrelay-nats-users
        gives the NATS pods)."""
        env = {PUBLIC_KEY_VARIABLES[user]: key for user, key in self.public_keys.items()}
        env[ROUTE_PASSWORD_VARIABLE] = self.route_password
        return env


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` readable by its owner only, from the first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _read_env(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            values[name.strip()] = value.strip()
    return values


def route_password() -> str:
    """A new route password that every nats-server reads back as a string.

    nats.conf takes it as ``password: $NATS_ROUTE_PASSWORD`` and the server parses a
    variable's value as a config value: nats-server 2.9 reads ``911e8e66...`` as the number
    911e8 followed by junk and refuses to start (2.10+ falls back to a string). Hex led by a
    letter is a string on every version, so the password starts with one.
    """
    return "r" + secrets.token_hex(24)


def ensure_users(folder: Path) -> NatsUsers:
    """Load the credentials in ``folder``, making whatever is missing (seeds first, then
    ``users.env`` from them: the public keys are always derived from the seeds on disk)."""
    folder.mkdir(parents=True, exist_ok=True)
    public: dict[str, str] = {}
    for user in USERS:
        path = folder / f"{user}.nk"
        if not path.exists():
            seed: bytes = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
            _write_private(path, seed + b"\n")
        pair = nkeys.from_seed(path.read_bytes().strip())
        public[user] = pair.public_key.decode()
    env_path = folder / ENV_FILE
    previous = _read_env(env_path) if env_path.exists() else {}
    password = previous.get(ROUTE_PASSWORD_VARIABLE) or route_password()
    if password[:1].isdigit():
        print(
            f"warning: {ROUTE_PASSWORD_VARIABLE} in {env_path} starts with a digit; "
            "nats-server 2.9 may read it as a number and not start (2.10+ is fine). "
            "Delete the line to make a new one.",
            file=sys.stderr,
        )
    users = NatsUsers(folder, public, password)
    lines = "".join(f"{name}={value}\n" for name, value in users.server_env().items())
    if previous != users.server_env():
        env_path.unlink(missing_ok=True)
        _write_private(env_path, lines.encode())
    return users


def kubectl_commands(users: NatsUsers, namespace: str) -> list[str]:
    """The commands creating the three Secrets deploy/ expects from ``users``' files."""
    ns = shlex.quote(namespace)
    commands = [
        f"kubectl -n {ns} create secret generic {USERS_SECRET} "
        f"--from-env-file={shlex.quote(str(users.folder / ENV_FILE))}"
    ]
    for user, secret in SEED_SECRETS.items():
        commands.append(
            f"kubectl -n {ns} create secret generic {secret} "
            f"--from-file=nkey={shlex.quote(str(users.seed(user)))}"
        )
    return commands


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("folder", type=Path, help="where the seeds and users.env are kept")
    parser.add_argument("--namespace", default="fluxrelay", help="of the Secrets (fluxrelay)")
    args = parser.parse_args(argv)
    users = ensure_users(args.folder)
    print(f"# NATS users in {users.folder} (public keys):")
    for user, key in users.public_keys.items():
        print(f"#   {user:<10} {key}")
    print("# Create the Secrets deploy/ reads (or add --dry-run=client -o yaml and seal them):")
    for command in kubectl_commands(users, args.namespace):
        print(command)
    print(f"# Keep {users.seed('admin')} for the nats CLI (nats --nkey ...); not in the cluster.")
    print("# After changing keys: restart NATS (rollout restart statefulset/nats), then the pods.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
