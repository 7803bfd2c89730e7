"""How both processes authenticate to NATS: TLS (CA, client certificate), a user credentials
file (JWT + NKey seed), a bare NKey seed, or a token, turned into ``nats.connect`` arguments.

The receiver and the reconciler connect to the same servers with the same options and must
spell them the same way (flags, variables, errors), so both use this one. Files are
read when :meth:`NatsAuth.connect_options` is called (at start: a missing file fails then,
not at the first reconnect), and a token file again at every reconnect, so rotating it needs
no restart. Values are never
logged; the token is kept out of ``repr``.
"""

from __future__ import annotations

import importlib.util
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.receivers import ConfigError


@dataclass(frozen=True, slots=True)
class NatsAuthOption:
    """One command-line option of :class:`NatsAuth`, for both processes' option tables."""

    flag: str
    env: str
    key: str
    """Field of :class:`NatsAuth` it sets."""
    help: str
    metavar: str


NATS_AUTH_OPTIONS: tuple[NatsAuthOption, ...] = (
    NatsAuthOption(
        "--nats-tls-ca",
        "FLUXRELAY_NATS_TLS_CA",
        "tls_ca",
        "CA bundle to verify the NATS server's certificate (enables TLS)",
        "FILE",
    ),
    NatsAuthOption(
        "--nats-tls-cert",
        "FLUXRELAY_NATS_TLS_CERT",
        "tls_cert",
        "client certificate for NATS mutual TLS (with --nats-tls-key)",
        "FILE",
    ),
    NatsAuthOption(
        "--nats-tls-key",
        "FLUXRELAY_NATS_TLS_KEY",
        "tls_key",
        "private key of --nats-tls-cert",
        "FILE",
    ),
    NatsAuthOption(
        "--nats-creds",
        "FLUXRELAY_NATS_CREDS",
        "creds",
        "NATS user credentials file (JWT + NKey seed, as nsc writes it)",
        "FILE",
    ),
    NatsAuthOption(
        "--nats-nkey",
        "FLUXRELAY_NATS_NKEY",
        "nkey",
        "file holding a NATS user NKey seed (SU...)",
        "FILE",
    ),
    NatsAuthOption(
        "--nats-token-file",
        "FLUXRELAY_NATS_TOKEN_FILE",
        "token_file",
        "file holding the NATS authorization token (re-read on each connect)",
        "FILE",
    ),
    NatsAuthOption(
        "--nats-token",
        "FLUXRELAY_NATS_TOKEN",
        "token",
        "NATS authorization token; prefer the variable or --nats-token-file (a flag shows "
        "in the process list)",
        "TOKEN",
    ),
)


@dataclass(frozen=True, kw_only=True)
class NatsAuth:
    """TLS and credentials for a NATS connection; all absent means plain and anonymous."""

    tls_ca: Path | None = None
    """CA bundle verifying the server; TLS is used when this or a client certificate is set
    (or a ``tls://`` URL is given, then verified against the system's CAs)."""
    tls_cert: Path | None = None
    """Client certificate (PEM) for mutual TLS."""
    tls_key: Path | None = None
    """Private key (PEM) of ``tls_cert``."""
    creds: Path | None = None
    """User credentials file: a user JWT and its NKey seed (decentralised auth)."""
    nkey: Path | None = None
    """File holding a user NKey seed; the server knows the matching public key."""
    token_file: Path | None = None
    """File holding the authorization token (surrounding whitespace ignored)."""
    token: str | None = field(default=None, repr=False)
    """The authorization token itself."""

    @classmethod
    def from_strings(cls, values: dict[str, str]) -> NatsAuth:
        """Build from option keys to raw strings (what the CLIs collect); checks combinations."""
        kwargs: dict[str, Any] = {}
        for key, raw in values.items():
            if key == "token":
                kwargs[key] = raw
            else:
                kwargs[key] = Path(raw)
        auth = cls(**kwargs)
        auth.check()
        return auth

    @property
    def uses_tls(self) -> bool:
        return self.tls_ca is not None or self.tls_cert is not None

    def check(self) -> None:
        """Refuse combinations that cannot work, before any connection is tried."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--nats-tls-cert and --nats-tls-key go together")
        ways = [
            name
            for name, value in (
                ("--nats-creds", self.creds),
                ("--nats-nkey", self.nkey),
                ("--nats-token-file", self.token_file),
                ("--nats-token", self.token),
            )
            if value
        ]
        if len(ways) > 1:
            raise ConfigError(f"NATS credentials: choose one of {', '.join(ways)}")

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context verifying the server (and presenting our certificate), or None."""
        if not self.uses_tls:
            return None
        try:
            ctx = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH,
                cafile=str(self.tls_ca) if self.tls_ca is not None else None,
            )
            if self.tls_cert is not None and self.tls_key is not None:
                ctx.load_cert_chain(str(self.tls_cert), str(self.tls_key))
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"NATS TLS files: {e}") from e
        return ctx

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` (merge them with the caller's own)."""
        self.check()
        options: dict[str, Any] = {}
        ctx = self.ssl_context()
        if ctx is not None:
            options["tls"] = ctx
        for path in (self.creds, self.nkey):
            if path is not None and not path.is_file():
                raise ConfigError(f"NATS credentials file {path}: not found")
        # nats-py imports nkeys lazily, at connect time: fail at start instead.
        if (self.creds or self.nkey) and importlib.util.find_spec("nkeys") is None:
            raise ConfigError("NATS NKey/credentials auth needs the 'nkeys' package")
        if self.creds is not None:
            options["user_credentials"] = str(self.creds)
        if self.nkey is not None:
            options["nkeys_seed"] = str(self.nkey)
        if self.token_file is not None:
            options["token"] = TokenFile(self.token_file)
        elif self.token:
            options["token"] = self.token
        return options


class TokenFile:
    """A token read from its file on every (re)connect, so rotating the file needs no
    restart; a file that became unreadable or empty keeps the last good value."""

    def __init__(self, path: Path) -> None:
        self.path = path
        value = self._read()
        if value is None:
            raise ConfigError(f"--nats-token-file {path}: cannot read, or empty")
        self._last = value

    def _read(self) -> str | None:
        try:
            value = self.path.read_text("utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return value or None

    def __call__(self) -> str:
        value = self._read()
        if value is not None:
            self._last = value
        return self._last

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r})"
