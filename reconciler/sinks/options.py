"""``--cdevents-sink`` values: from one flag to the :class:`HttpSinkSettings` of one HTTP sink.

This runs once, at start-up, from the command line parser (``reconciler.cli``), next to the
settings it fills in and away from the send path: it reads the sink's secret, which a sink
then only uses, and its errors name neither the secret nor the URL's path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from reconciler.settings import HttpSinkSettings
from schemas.cdevents import release_of


def parse_sink_option(
    raw: str, index: int, environ: Mapping[str, str] | None = None
) -> HttpSinkSettings:
    """``URL[,spec=0.4.1][,auth=bearer|hmac][,secret-file=PATH|secret-env=VAR][,name=NAME]``.

    The secret is read here, once, from the file (trailing newline stripped) or variable.
    Raises ValueError with a message that never contains the secret.
    """
    env = os.environ if environ is None else environ
    url, *options = [part.strip() for part in raw.split(",")]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("sink URL must be http:// or https://")
    fields: dict[str, Any] = {"url": url, "name": f"http-{index}"}
    secret: str | None = None
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not value:
            raise ValueError(f"expected key=value, got {key!r}")
        if key == "spec":
            release_of(value)  # raises for an unknown version
            fields["spec_version"] = value
        elif key == "auth":
            if value not in ("none", "bearer", "hmac"):
                raise ValueError("auth must be none, bearer or hmac")
            fields["auth"] = value
        elif key == "secret-file":
            try:
                secret = Path(value).read_text(encoding="utf-8").strip()
            except OSError as e:
                raise ValueError(f"cannot read secret file {value}: {e.strerror}") from e
        elif key == "secret-env":
            if value not in env:
                raise ValueError(f"variable {value} is not set")
            secret = env[value]
        elif key == "name":
            fields["name"] = value
        else:
            raise ValueError(f"unknown sink option {key!r}")
    auth = fields.get("auth", "none")
    if auth != "none" and not secret:
        raise ValueError(f"auth={auth} needs secret-file=PATH or secret-env=VAR")
    if secret:
        fields["secret"] = secret
    return HttpSinkSettings(**fields)
