"""``fluxrelay-reconciler``: consume stored events and request targeted Flux reconciliations.

Options are declared once in :data:`OPTIONS`; each has a flag and a ``FLUXRELAY_*``
variable (flags win over variables, variables over defaults), and the same table renders
``--help``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.settings import (
    CDEventsSettings,
    ConsumerSettings,
    PatchSettings,
    ReconcilerSettings,
)
from runtime import logs
from runtime.natsauth import NATS_AUTH_OPTIONS, NatsAuth
from schemas.receivers import ConfigError

Apply = Callable[[dict[str, dict[str, Any]], str], None]
"""Stores a parsed value into the kwargs of one settings section (top, consumer, patch)."""


@dataclass(frozen=True)
class Option:
    flag: str
    env: str
    help: str
    apply: Apply
    is_bool: bool = False
    metavar: str | None = None
    repeat: bool = False
    """Flag may be given several times; the variable holds whitespace-separated values."""


def _set(key: str, conv: Callable[[str], Any] = str, section: str = "top") -> Apply:
    def apply(sections: dict[str, dict[str, Any]], raw: str) -> None:
        sections[section][key] = conv(raw)

    return apply


def _hostport(sections: dict[str, dict[str, Any]], raw: str) -> None:
    host, sep, port = raw.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"expected HOST:PORT, got {raw!r}")
    sections["top"]["metrics_host"] = host.strip("[]") or "0.0.0.0"
    sections["top"]["metrics_port"] = int(port)


def _bool(raw: str) -> bool:
    return raw.lower() in ("1", "true", "yes", "on")


def _seconds_list(raw: str) -> tuple[float, ...]:
    values = tuple(float(part) for part in raw.split(",") if part.strip())
    if not values or any(v < 0 for v in values):
        raise ValueError("expected comma-separated non-negative seconds")
    return values


def _sink(sections: dict[str, dict[str, Any]], raw: str) -> None:
    from reconciler.sinks import parse_sink_option

    sinks = sections["cdevents"].setdefault("sinks", ())
    try:
        sink = parse_sink_option(raw, len(sinks) + 1)
    except ValueError as e:  # the message names no secret and no URL path
        raise ConfigError(f"--cdevents-sink #{len(sinks) + 1}: {e}") from e
    sections["cdevents"]["sinks"] = (*sinks, sink)


def _spec_version(raw: str) -> str:
    if raw not in ("0.4.1", "0.5.1"):
        raise ValueError("0.4.1 or 0.5.1")
    return raw


def _non_negative(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _positive(conv: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        value = conv(raw)
        if value <= 0:
            raise ValueError("must be positive")
        return value

    return parse


OPTIONS: tuple[Option, ...] = (
    Option("--nats-url", "FLUXRELAY_NATS_URL",
           "NATS server URL(s), comma-separated (default nats://127.0.0.1:4222)",
           _set("nats_url"), metavar="URL"),
    *(
        Option(o.flag, o.env, o.help, _set(o.key, section="nats_auth"), metavar=o.metavar)
        for o in NATS_AUTH_OPTIONS
    ),
    Option("--kubeconfig", "FLUXRELAY_KUBECONFIG",
           "kubeconfig file (in-cluster service account when absent)",
           _set("kubeconfig", Path), metavar="FILE"),
    Option("--config", "FLUXRELAY_CONFIG",
           "YAML file of Flux Receiver manifests (re-read on change)",
           _set("config", Path), metavar="FILE"),
    Option("--kubernetes", "FLUXRELAY_KUBERNETES",
           "read Receivers from the Kubernetes API (never Secrets)",
           _set("kubernetes", _bool), is_bool=True),
    Option("--namespace", "FLUXRELAY_NAMESPACE",
           "only Receivers (and indexed sources) in this namespace",
           _set("namespace"), metavar="NS"),
    Option("--label-selector", "FLUXRELAY_LABEL_SELECTOR",
           "only Receivers matching this selector", _set("label_selector"), metavar="SEL"),
    Option("--shard", "FLUXRELAY_SHARD",
           "act only on objects labelled sharding.fluxcd.io/key=KEY (default: only unlabelled)",
           _set("shard"), metavar="KEY"),
    Option("--no-cross-namespace-refs", "FLUXRELAY_NO_CROSS_NAMESPACE_REFS",
           "refuse Receiver resources in another namespace than the Receiver's",
           _set("allow_cross_namespace", lambda raw: not _bool(raw)), is_bool=True),
    Option("--metrics-listen", "FLUXRELAY_METRICS_LISTEN",
           "metrics and probes listener (default 0.0.0.0:9090)", _hostport,
           metavar="HOST:PORT"),
    Option("--coalesce-window", "FLUXRELAY_COALESCE_WINDOW",
           "at most one patch per object per this many seconds; an idle object is patched at "
           "once, later events gather into the next patch (default 0.2)",
           _set("coalesce_window", float), metavar="SECONDS"),
    Option("--qps", "FLUXRELAY_QPS", "Kubernetes API requests per second (default 50)",
           _set("qps", _positive(float), "patch"), metavar="N"),
    Option("--burst", "FLUXRELAY_BURST", "Kubernetes API burst (default 100)",
           _set("burst", _positive(int), "patch"), metavar="N"),
    Option("--max-concurrency", "FLUXRELAY_MAX_CONCURRENCY",
           "Kubernetes API requests in flight at most (default 32; halves on 429)",
           _set("max_concurrency", _positive(int), "patch"), metavar="N"),
    Option("--min-concurrency", "FLUXRELAY_MIN_CONCURRENCY",
           "floor of the adaptive concurrency (default 1)",
           _set("min_concurrency", _positive(int), "patch"), metavar="N"),
    Option("--api-attempts", "FLUXRELAY_API_ATTEMPTS",
           "tries of one API request on 409/429/5xx before the message is retried (default 4)",
           _set("attempts", _positive(int), "patch"), metavar="N"),
    Option("--api-timeout", "FLUXRELAY_API_TIMEOUT",
           "seconds one API request may take (default 10)",
           _set("request_timeout", _positive(float), "patch"), metavar="SECONDS"),
    Option("--object-cache-ttl", "FLUXRELAY_OBJECT_CACHE_TTL",
           "seconds a looked-up target object is reused (default 10)",
           _set("object_cache_ttl", _positive(float), "patch"), metavar="SECONDS"),
    Option("--stream", "FLUXRELAY_STREAM", "events stream (default FLUXRELAY_EVENTS)",
           _set("stream", section="consumer"), metavar="NAME"),
    Option("--stream-subject-prefix", "FLUXRELAY_STREAM_SUBJECT_PREFIX",
           "subject prefix of stored deliveries (default fluxrelay.events)",
           _set("subject_prefix", section="consumer"), metavar="PREFIX"),
    Option("--dead-stream", "FLUXRELAY_DEAD_STREAM",
           "dead-letter stream (default FLUXRELAY_DEAD)",
           _set("dead_stream", section="consumer"), metavar="NAME"),
    Option("--dead-subject-prefix", "FLUXRELAY_DEAD_SUBJECT_PREFIX",
           "subject prefix of dead letters (default fluxrelay.dead)",
           _set("dead_subject_prefix", section="consumer"), metavar="PREFIX"),
    Option("--durable", "FLUXRELAY_DURABLE",
           "durable consumer name (default fluxrelay-reconciler[-<shard>])",
           _set("durable", section="consumer"), metavar="NAME"),
    Option("--ack-wait", "FLUXRELAY_ACK_WAIT",
           "seconds before an unacknowledged message is redelivered (default 30)",
           _set("ack_wait", _positive(float), "consumer"), metavar="SECONDS"),
    Option("--max-deliver", "FLUXRELAY_MAX_DELIVER",
           "deliveries before a message is dead-lettered (default 10)",
           _set("max_deliver", _positive(int), "consumer"), metavar="N"),
    Option("--backoff", "FLUXRELAY_BACKOFF",
           "nak delays by delivery, comma-separated seconds (default 1,2,5,10,30,60)",
           _set("backoff", _seconds_list, "consumer"), metavar="LIST"),
    Option("--fetch-batch", "FLUXRELAY_FETCH_BATCH", "messages per pull (default 128)",
           _set("fetch_batch", _positive(int), "consumer"), metavar="N"),
    Option("--max-in-flight", "FLUXRELAY_MAX_IN_FLIGHT",
           "messages worked on at once by this replica (default 4096)",
           _set("max_in_flight", _positive(int), "consumer"), metavar="N"),
    Option("--max-ack-pending", "FLUXRELAY_MAX_ACK_PENDING",
           "unacknowledged messages across all replicas of the durable (default 16384)",
           _set("max_ack_pending", _positive(int), "consumer"), metavar="N"),
    Option("--reload-interval", "FLUXRELAY_RELOAD_INTERVAL",
           "seconds between config file checks (default 2)",
           _set("reload_interval", _positive(float)), metavar="SECONDS"),
    Option("--watch-timeout", "FLUXRELAY_WATCH_TIMEOUT",
           "seconds one Receiver watch lasts before renewal (default 300)",
           _set("watch_timeout", _positive(int)), metavar="SECONDS"),
    Option("--drain-timeout", "FLUXRELAY_DRAIN_TIMEOUT",
           "seconds SIGTERM waits for messages in flight (default 20)",
           _set("drain_timeout", float), metavar="SECONDS"),
    Option("--log-format", "FLUXRELAY_LOG_FORMAT", "text or json (default text)",
           _set("log_format"), metavar="FORMAT"),
    Option("--log-level", "FLUXRELAY_LOG_LEVEL", "log level (default INFO)",
           _set("log_level"), metavar="LEVEL"),
    Option("--outcome-timeout", "FLUXRELAY_OUTCOME_TIMEOUT",
           "seconds a reconcile request is followed before its outcome is an error "
           "(default 600; 0 turns outcome watching off)",
           _set("outcome_timeout", _non_negative), metavar="SECONDS"),
    Option("--cdevents-nats", "FLUXRELAY_CDEVENTS_NATS",
           "publish emitted CDEvents to JetStream (subjects = event types)",
           _set("nats", _bool, "cdevents"), is_bool=True),
    Option("--cdevents-stream", "FLUXRELAY_CDEVENTS_STREAM",
           "stream for emitted CDEvents (default CDEVENTS; created if missing)",
           _set("stream", section="cdevents"), metavar="NAME"),
    Option("--cdevents-nats-spec", "FLUXRELAY_CDEVENTS_NATS_SPEC",
           "CDEvents spec version published to NATS: 0.5.1 (default) or 0.4.1",
           _set("nats_spec_version", _spec_version, "cdevents"), metavar="VERSION"),
    Option("--cdevents-sink", "FLUXRELAY_CDEVENTS_SINKS",
           "HTTP sink URL[,spec=0.4.1][,auth=bearer|hmac][,secret-file=PATH|secret-env=VAR]"
           "[,name=NAME]; repeatable", _sink, metavar="SPEC", repeat=True),
    Option("--cdevents-source", "FLUXRELAY_CDEVENTS_SOURCE",
           "context.source of emitted CDEvents (default /fluxrelay/reconciler)",
           _set("source", section="cdevents"), metavar="URI"),
    Option("--cdevents-outbox", "FLUXRELAY_CDEVENTS_OUTBOX",
           "events one sink holds while it cannot deliver (default 10000)",
           _set("outbox_size", _positive(int), "cdevents"), metavar="N"),
    Option("--cdevents-send-window", "FLUXRELAY_CDEVENTS_SEND_WINDOW",
           "events one sink sends at once, in any order within the window (default 32)",
           _set("send_window", _positive(int), "cdevents"), metavar="N"),
    Option("--cdevents-give-up-after", "FLUXRELAY_CDEVENTS_GIVE_UP_AFTER",
           "seconds an event is retried before it counts as failed (default 3600)",
           _set("give_up_after", _positive(float), "cdevents"), metavar="SECONDS"),
)  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fluxrelay-reconciler",
        description="Consume stored webhook events from NATS JetStream and request "
        "reconciliation of exactly the Flux objects they concern.",
        epilog="Every option can also be set by the environment variable shown.",
    )
    for opt in OPTIONS:
        text = f"{opt.help} [env {opt.env}]"
        if opt.is_bool:
            p.add_argument(opt.flag, action="store_const", const="true", default=None, help=text)
        elif opt.repeat:
            p.add_argument(opt.flag, metavar=opt.metavar, action="append", default=None, help=text)
        else:
            p.add_argument(opt.flag, metavar=opt.metavar, default=None, help=text)
    return p


def settings_from(args: argparse.Namespace, environ: dict[str, str]) -> ReconcilerSettings:
    """Flags win over variables, variables over defaults."""
    sections: dict[str, dict[str, Any]] = {
        "top": {},
        "consumer": {},
        "patch": {},
        "cdevents": {},
        "nats_auth": {},
    }
    for opt in OPTIONS:
        raw = getattr(args, opt.flag.lstrip("-").replace("-", "_"))
        if raw is None:
            raw = environ.get(opt.env)
            if opt.repeat and raw:
                raw = raw.split()
        if raw is None or raw == "":
            continue
        try:
            for value in raw if isinstance(raw, list) else [raw]:
                opt.apply(sections, value)
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(f"{opt.flag} / {opt.env}: invalid value {raw!r}") from e
    top = sections["top"]
    if top.get("log_format", "text") not in ("text", "json"):
        raise ConfigError("--log-format: text or json")
    if top.get("config") is not None and top.get("kubernetes"):
        raise ConfigError("--config and --kubernetes are exclusive")
    consumer = dataclasses.replace(ConsumerSettings(), **sections["consumer"])
    patch = dataclasses.replace(PatchSettings(), **sections["patch"])
    if patch.min_concurrency > patch.max_concurrency:
        raise ConfigError("--min-concurrency must not exceed --max-concurrency")
    cdevents = dataclasses.replace(CDEventsSettings(), **sections["cdevents"])
    nats_auth = NatsAuth.from_strings(sections["nats_auth"])
    return ReconcilerSettings(
        **top, consumer=consumer, patch=patch, cdevents=cdevents, nats_auth=nats_auth
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        settings = settings_from(args, dict(os.environ))
    except ConfigError as e:
        print(f"fluxrelay-reconciler: {e}", file=sys.stderr)
        return 2
    if settings.config is None and not settings.kubernetes:
        print("fluxrelay-reconciler: either --config FILE or --kubernetes is required",
              file=sys.stderr)  # fmt: skip
        return 2
    logs.setup(settings.log_format, settings.log_level)
    from reconciler.running import serve

    try:
        run(serve(settings))
    except ConfigError as e:
        # Lines still queued for the log writer come first, as they happened first.
        logs.shutdown()
        print(f"fluxrelay-reconciler: invalid configuration: {e}", file=sys.stderr)
        return 2
    finally:
        logs.shutdown()
    return 0


def run(coro: Any) -> None:
    """Run on uvloop when installed, else asyncio."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


if __name__ == "__main__":
    sys.exit(main())
