"""HTTPS for the hook listener: the certificate and key files, watched and swapped in live.

The listening socket keeps one :class:`ssl.SSLContext`; its SNI callback, which OpenSSL runs
for every ClientHello (with or without a server name), hands each new handshake the most
recently loaded context. A reload builds a complete new context from the files first and
only then publishes it, so a half-written pair (certificate renewed, key not yet) never
reaches a handshake: it is logged, counted, and the previous pair stays in use until the
files change again. Connections already established keep the session they negotiated.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from pathlib import Path

from receiver.errors import ConfigError

log = logging.getLogger(__name__)

Stamp = tuple[tuple[int, int, int] | None, ...]


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context holding the pair; ssl.SSLError/OSError when unusable."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


class ServerCertificates:
    """The listener's TLS context and the files it comes from."""

    def __init__(
        self, cert: Path, key: Path, on_reload: Callable[[str], None] = lambda result: None
    ) -> None:
        self.cert = cert
        self.key = key
        self._on_reload = on_reload
        self._stamp: Stamp = ()
        self._current: ssl.SSLContext | None = None
        self._listening: ssl.SSLContext | None = None

    @property
    def context(self) -> ssl.SSLContext:
        """The context to listen with (``load`` first)."""
        if self._listening is None:
            raise RuntimeError("ServerCertificates.load() was not called")
        return self._listening

    @property
    def current(self) -> ssl.SSLContext:
        """The context new handshakes get."""
        if self._current is None:
            raise RuntimeError("ServerCertificates.load() was not called")
        return self._current

    def _stamps(self) -> Stamp:
        out: list[tuple[int, int, int] | None] = []
        for path in (self.cert, self.key):
            try:
                st = path.stat()
            except OSError:
                out.append(None)
            else:
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    def load(self) -> None:
        """Read the pair at start; ConfigError when it cannot serve."""
        self._stamp = self._stamps()
        try:
            self._current = server_context(self.cert, self.key)
            listening = server_context(self.cert, self.key)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"--tls-cert {self.cert} / --tls-key {self.key}: {e}") from e
        listening.sni_callback = self._pick
        self._listening = listening

    def _pick(self, conn: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
        current = self._current
        if current is not None and current is not ctx:
            conn.context = current

    def check(self) -> bool:
        """Reload if either file changed since the last look; True when a new pair is in use."""
        stamp = self._stamps()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            fresh = server_context(self.cert, self.key)
        except (OSError, ssl.SSLError) as e:
            log.error("TLS files changed but cannot be used, keeping the previous pair: %s", e)
            self._on_reload("error")
            return False
        self._current = fresh
        log.info("reloaded the TLS certificate from %s", self.cert)
        self._on_reload("ok")
        return True

    async def run(self, interval: float) -> None:
        """Poll the files every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            self.check()
