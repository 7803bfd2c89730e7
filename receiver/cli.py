"""``fluxrelay-receiver``: serve, print a hook path, or send a signed test delivery.

Options are declared once in :data:`OPTIONS` (the framework, and the options both services
share, are :mod:`runtime.options`); each has a flag and a ``FLUXRELAY_*`` variable, and the
same table renders ``--help`` and ``docs/configuration.md``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from receiver.config.hooks import hook_path
from receiver.errors import ConfigError
from receiver.settings import Rate, ReceiverSettings, StreamSettings, parse_networks
from runtime.natsauth import NatsAuth
from runtime.options import (
    LABEL_SELECTOR,
    LOG_OPTIONS,
    METRICS_LISTEN,
    NATS_AUTH,
    NATS_AUTH_FLAGS,
    NATS_URL,
    TOP,
    Apply,
    Command,
    Option,
    Sections,
    boolean,
    dead_subject_prefix,
    host_port,
    into,
    kubeconfig,
    positive,
    stream_subject_prefix,
)

STREAM = "stream"
"""Section of :class:`receiver.settings.StreamSettings`."""


def _stream(key: str, parse: Callable[[str], Any] = str) -> Apply:
    return into(key, parse, STREAM)


OPTIONS: tuple[Option, ...] = (
    Option("--config", "FLUXRELAY_CONFIG", "YAML file of Flux Receiver + Secret manifests",
           into("config", Path), metavar="FILE"),
    Option("--kubernetes", "FLUXRELAY_KUBERNETES",
           "read Receivers and Secrets from the Kubernetes API", into("kubernetes", boolean),
           is_bool=True),
    kubeconfig("kubeconfig for --kubernetes (in-cluster service account when absent)"),
    Option("--namespace", "FLUXRELAY_NAMESPACE", "only Receivers in this namespace",
           into("namespace"), metavar="NS"),
    LABEL_SELECTOR,
    NATS_URL,
    Option("--listen", "FLUXRELAY_LISTEN", "hook listener (default 0.0.0.0:9292)",
           host_port("listen"), metavar="HOST:PORT"),
    METRICS_LISTEN,
    Option("--body-limit", "FLUXRELAY_BODY_LIMIT", "largest body in bytes (default 3 MiB)",
           into("body_limit", int), metavar="BYTES"),
    Option("--max-delivery-bytes", "FLUXRELAY_MAX_DELIVERY_BYTES",
           "bytes a delivery of several items may store in all (default 4 MiB)",
           into("max_delivery_bytes", positive(int)), metavar="BYTES"),
    Option("--publish-timeout", "FLUXRELAY_PUBLISH_TIMEOUT",
           "seconds to wait for the PubAck before 503 (default 5)",
           into("publish_timeout", float), metavar="SECONDS"),
    Option("--retry-after", "FLUXRELAY_RETRY_AFTER", "Retry-After seconds on 503 (default 5)",
           into("retry_after", int), metavar="SECONDS"),
    Option("--reload-interval", "FLUXRELAY_RELOAD_INTERVAL",
           "seconds between config file checks (default 2)",
           into("reload_interval", float), metavar="SECONDS"),
    Option("--tls-cert", "FLUXRELAY_TLS_CERT",
           "certificate chain (PEM) for HTTPS on the hook listener, reloaded on change",
           into("tls_cert", Path), metavar="FILE"),
    Option("--tls-key", "FLUXRELAY_TLS_KEY", "private key (PEM) of --tls-cert",
           into("tls_key", Path), metavar="FILE"),
    Option("--header-timeout", "FLUXRELAY_HEADER_TIMEOUT",
           "seconds to send a complete request head, and idle time between requests (default 15)",
           into("header_timeout", positive(float)), metavar="SECONDS"),
    Option("--read-timeout", "FLUXRELAY_READ_TIMEOUT",
           "seconds the body may take to arrive before 408 (default 30)",
           into("read_timeout", positive(float)), metavar="SECONDS"),
    Option("--rate-limit-receiver", "FLUXRELAY_RATE_LIMIT_RECEIVER",
           "requests per second per Receiver, optional bucket size (e.g. 10/50; default off)",
           into("rate_limit_receiver", Rate.parse), metavar="RATE[/BURST]"),
    Option("--rate-limit-source", "FLUXRELAY_RATE_LIMIT_SOURCE",
           "requests per second per source address, optional bucket size (default off)",
           into("rate_limit_source", Rate.parse), metavar="RATE[/BURST]"),
    Option("--rate-limit-sources-max", "FLUXRELAY_RATE_LIMIT_SOURCES_MAX",
           "source addresses tracked at most by --rate-limit-source (default 65536)",
           into("rate_limit_sources_max", int), metavar="N"),
    Option("--trusted-proxies", "FLUXRELAY_TRUSTED_PROXIES",
           "addresses/CIDRs whose X-Forwarded-For is believed (default none)",
           into("trusted_proxies", parse_networks), metavar="CIDRS"),
    *NATS_AUTH_FLAGS,
    *LOG_OPTIONS,
    Option("--stream", "FLUXRELAY_STREAM", "JetStream stream name (default FLUXRELAY_EVENTS)",
           _stream("name"), metavar="NAME"),
    stream_subject_prefix(STREAM),
    Option("--stream-storage", "FLUXRELAY_STREAM_STORAGE", "file or memory (default file)",
           _stream("storage"), metavar="KIND"),
    Option("--stream-replicas", "FLUXRELAY_STREAM_REPLICAS", "stream replicas (default 1)",
           _stream("replicas", int), metavar="N"),
    Option("--stream-max-age", "FLUXRELAY_STREAM_MAX_AGE",
           "seconds events are kept (default 604800)", _stream("max_age", float),
           metavar="SECONDS"),
    Option("--stream-duplicate-window", "FLUXRELAY_STREAM_DUPLICATE_WINDOW",
           "seconds a redelivery is deduplicated (default 3600)",
           _stream("duplicate_window", float), metavar="SECONDS"),
    Option("--stream-max-bytes", "FLUXRELAY_STREAM_MAX_BYTES",
           "stream byte cap, -1 unlimited (default -1)", _stream("max_bytes", int),
           metavar="BYTES"),
    dead_subject_prefix(STREAM),
    Option("--dead-stream", "FLUXRELAY_DEAD_STREAM",
           "dead-letter stream name (default FLUXRELAY_DEAD)", _stream("dead_name"),
           metavar="NAME"),
)  # fmt: skip


def build(sections: Sections) -> ReceiverSettings:
    """The settings tree, refusing combinations no single option can judge."""
    top, stream = sections[TOP], sections[STREAM]
    if stream.get("storage", "file") not in ("file", "memory"):
        raise ConfigError("--stream-storage: file or memory")
    if (top.get("tls_cert") is None) != (top.get("tls_key") is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if top.get("rate_limit_sources_max", 1) < 1:
        raise ConfigError("--rate-limit-sources-max: at least 1")
    if top.get("config") is not None and top.get("kubernetes"):
        # As the reconciler: one source of Receivers, never one silently ignored.
        raise ConfigError("--config and --kubernetes are exclusive")
    nats_auth = NatsAuth.from_strings(sections[NATS_AUTH])
    return ReceiverSettings(**top, stream=StreamSettings(**stream), nats_auth=nats_auth)


def hook_path_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fluxrelay-receiver hook-path",
        description="Print the /hook/<digest> path Flux (and fluxrelay) serve a Receiver at.",
    )
    parser.add_argument("--token", required=True, help="the Secret's token value")
    parser.add_argument("--name", required=True, help="Receiver name")
    parser.add_argument("--namespace", default="default", help="Receiver namespace")
    args = parser.parse_args(argv)
    print(hook_path(args.token.encode(), args.name, args.namespace))
    return 0


def _send_main(argv: list[str]) -> int:
    from receiver.send_command import send_main

    return send_main(argv)


def _serve(settings: ReceiverSettings) -> Coroutine[Any, Any, None]:
    from receiver.serving import serve

    return serve(settings)


COMMAND = Command(
    prog="fluxrelay-receiver",
    description="Verify Git, registry and CDEvents webhooks and store them on NATS "
    "JetStream. Subcommands: hook-path, send (see 'fluxrelay-receiver hook-path --help').",
    options=OPTIONS,
    sections=(STREAM,),
    build=build,
    serve=_serve,
    subcommands={"hook-path": hook_path_main, "send": _send_main},
)


# The names the entry points (pyproject.toml, __main__.py) and the tests use.
main = COMMAND.main
serve_parser = COMMAND.parser
settings_from = COMMAND.settings

if __name__ == "__main__":
    raise SystemExit(main())
