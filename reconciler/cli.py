"""``fluxrelay-reconciler``: consume stored events and request targeted Flux reconciliations.

Options are declared once in :data:`OPTIONS` (the framework, and the options both services
share, are :mod:`runtime.options`); each has a flag and a ``FLUXRELAY_*`` variable (flags win
over variables, variables over defaults), and the same table renders ``--help`` and
``docs/configuration.md``.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from reconciler.settings import (
    CDEventsSettings,
    ConsumerSettings,
    PatchSettings,
    ReconcilerSettings,
)
from runtime import memory
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
    into,
    kubeconfig,
    non_negative,
    positive,
    seconds_list,
    stream_subject_prefix,
)
from schemas.receivers import ConfigError

CONSUMER, PATCH, CDEVENTS = "consumer", "patch", "cdevents"
"""Sections of :class:`ConsumerSettings`, :class:`PatchSettings`, :class:`CDEventsSettings`."""


def _patch(key: str, parse: Callable[[str], Any]) -> Apply:
    return into(key, parse, PATCH)


_LABEL_VALUE = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")


def _shard_key(raw: str) -> str | None:
    """A shard key is a label value (it goes into label selectors); empty is no shard, as an
    empty ``FLUXRELAY_SHARD`` in a manifest means."""
    if not raw:
        return None
    if not _LABEL_VALUE.fullmatch(raw):
        raise ValueError(f"not a Kubernetes label value: {raw!r}")
    return raw


def _consumer(key: str, parse: Callable[[str], Any] = str) -> Apply:
    return into(key, parse, CONSUMER)


def _cdevents(key: str, parse: Callable[[str], Any] = str) -> Apply:
    return into(key, parse, CDEVENTS)


def _sink(sections: Sections, raw: str) -> None:
    from reconciler.sinks import parse_sink_option

    sinks = sections[CDEVENTS].setdefault("sinks", ())
    try:
        sink = parse_sink_option(raw, len(sinks) + 1)
    except ValueError as e:  # the message names no secret and no URL path
        raise ConfigError(f"--cdevents-sink #{len(sinks) + 1}: {e}") from e
    sections[CDEVENTS]["sinks"] = (*sinks, sink)


def _size(raw: str) -> int:
    value = memory.parse_size(raw)
    if value <= 0:
        raise ValueError("must be positive")
    return value


def _size_or_zero(raw: str) -> int:
    return memory.parse_size(raw)


def _spec_version(raw: str) -> str:
    if raw not in ("0.4.1", "0.5.1"):
        raise ValueError("0.4.1 or 0.5.1")
    return raw


OPTIONS: tuple[Option, ...] = (
    NATS_URL,
    *NATS_AUTH_FLAGS,
    kubeconfig("kubeconfig file (in-cluster service account when absent)"),
    Option("--config", "FLUXRELAY_CONFIG",
           "YAML file of Flux Receiver manifests (re-read on change)",
           into("config", Path), metavar="FILE"),
    Option("--kubernetes", "FLUXRELAY_KUBERNETES",
           "read Receivers from the Kubernetes API (never Secrets)",
           into("kubernetes", boolean), is_bool=True),
    Option("--namespace", "FLUXRELAY_NAMESPACE",
           "only Receivers (and indexed sources) in this namespace",
           into("namespace"), metavar="NS"),
    LABEL_SELECTOR,
    Option("--shard", "FLUXRELAY_SHARD",
           "act only on objects labelled sharding.fluxcd.io/key=KEY, a label value (default, "
           "or empty: only unlabelled)",
           into("shard", _shard_key), metavar="KEY"),
    Option("--no-cross-namespace-refs", "FLUXRELAY_NO_CROSS_NAMESPACE_REFS",
           "refuse Receiver resources in another namespace than the Receiver's",
           into("allow_cross_namespace", lambda raw: not boolean(raw)), is_bool=True),
    METRICS_LISTEN,
    Option("--coalesce-window", "FLUXRELAY_COALESCE_WINDOW",
           "at most one patch per object per this many seconds; an idle object is patched at "
           "once, later events gather into the next patch (default 0.2)",
           into("coalesce_window", float), metavar="SECONDS"),
    Option("--qps", "FLUXRELAY_QPS", "Kubernetes API requests per second (default 50)",
           _patch("qps", positive(float)), metavar="N"),
    Option("--burst", "FLUXRELAY_BURST", "Kubernetes API burst (default 100)",
           _patch("burst", positive(int)), metavar="N"),
    Option("--max-concurrency", "FLUXRELAY_MAX_CONCURRENCY",
           "Kubernetes API requests in flight at most (default 32; halves on 429)",
           _patch("max_concurrency", positive(int)), metavar="N"),
    Option("--min-concurrency", "FLUXRELAY_MIN_CONCURRENCY",
           "floor of the adaptive concurrency (default 1)",
           _patch("min_concurrency", positive(int)), metavar="N"),
    Option("--api-attempts", "FLUXRELAY_API_ATTEMPTS",
           "tries of one API request on 409 (not a conditional patch's)/429/5xx before the "
           "message is retried (default 4)",
           _patch("attempts", positive(int)), metavar="N"),
    Option("--api-timeout", "FLUXRELAY_API_TIMEOUT",
           "seconds one API request may take (default 10)",
           _patch("request_timeout", positive(float)), metavar="SECONDS"),
    Option("--object-cache-ttl", "FLUXRELAY_OBJECT_CACHE_TTL",
           "seconds a target read from the API (not in the metadata cache) is reused (default 10)",
           _patch("object_cache_ttl", positive(float)), metavar="SECONDS"),
    Option("--stream", "FLUXRELAY_STREAM", "events stream (default FLUXRELAY_EVENTS)",
           _consumer("stream"), metavar="NAME"),
    stream_subject_prefix(CONSUMER),
    Option("--dead-stream", "FLUXRELAY_DEAD_STREAM",
           "dead-letter stream (default FLUXRELAY_DEAD)",
           _consumer("dead_stream"), metavar="NAME"),
    dead_subject_prefix(CONSUMER),
    Option("--done-bucket", "FLUXRELAY_DONE_BUCKET",
           "key-value bucket sharing what a nak'd message already patched, created when "
           "missing (default FLUXRELAY_DONE; empty: not shared)",
           _consumer("done_bucket"), metavar="NAME"),
    Option("--durable", "FLUXRELAY_DURABLE",
           "durable consumer name (default fluxrelay-reconciler[-<shard>])",
           _consumer("durable"), metavar="NAME"),
    Option("--ack-wait", "FLUXRELAY_ACK_WAIT",
           "seconds before an unacknowledged message is redelivered (default 30)",
           _consumer("ack_wait", positive(float)), metavar="SECONDS"),
    Option("--max-deliver", "FLUXRELAY_MAX_DELIVER",
           "deliveries before a message is dead-lettered (default 10)",
           _consumer("max_deliver", positive(int)), metavar="N"),
    Option("--backoff", "FLUXRELAY_BACKOFF",
           "nak delays by delivery, comma-separated seconds (default 1,2,5,10,30,60)",
           _consumer("backoff", seconds_list), metavar="LIST"),
    Option("--fetch-batch", "FLUXRELAY_FETCH_BATCH", "messages per pull (default 128)",
           _consumer("fetch_batch", positive(int)), metavar="N"),
    Option("--max-in-flight", "FLUXRELAY_MAX_IN_FLIGHT",
           "deliveries this replica holds at once; pulling pauses at it (default 4096)",
           _consumer("max_in_flight", positive(int)), metavar="N"),
    Option("--max-in-flight-bytes", "FLUXRELAY_MAX_IN_FLIGHT_BYTES",
           "bytes the deliveries held may take, e.g. 64Mi; pulling pauses at it (default 64Mi)",
           _consumer("max_in_flight_bytes", _size), metavar="SIZE"),
    Option("--max-objects-waiting", "FLUXRELAY_MAX_OBJECTS_WAITING",
           "Flux objects waiting for a patch before pulling pauses (default qps x ack-wait, "
           "what the API budget patches within one ack wait)",
           _consumer("max_objects_waiting", positive(int)), metavar="N"),
    Option("--memory-limit", "FLUXRELAY_MEMORY_LIMIT",
           "RSS whose high-water mark (0.8 of it) slows pulling to a trickle, e.g. 256Mi "
           "(default: the container's cgroup limit; 0: off)",
           into("memory_limit", _size_or_zero), metavar="SIZE"),
    Option("--max-ack-pending", "FLUXRELAY_MAX_ACK_PENDING",
           "unacknowledged messages across all replicas of the durable (default 16384)",
           _consumer("max_ack_pending", positive(int)), metavar="N"),
    Option("--reload-interval", "FLUXRELAY_RELOAD_INTERVAL",
           "seconds between config file checks (default 2)",
           into("reload_interval", positive(float)), metavar="SECONDS"),
    Option("--watch-timeout", "FLUXRELAY_WATCH_TIMEOUT",
           "seconds one Receiver watch lasts before renewal (default 300)",
           into("watch_timeout", positive(int)), metavar="SECONDS"),
    Option("--drain-timeout", "FLUXRELAY_DRAIN_TIMEOUT",
           "seconds SIGTERM waits for messages in flight (default 20)",
           into("drain_timeout", float), metavar="SECONDS"),
    *LOG_OPTIONS,
    Option("--outcome-timeout", "FLUXRELAY_OUTCOME_TIMEOUT",
           "seconds a reconcile request is followed before its outcome is an error "
           "(default 600; 0 turns outcome watching off)",
           into("outcome_timeout", non_negative), metavar="SECONDS"),
    Option("--max-followed", "FLUXRELAY_MAX_FOLLOWED",
           "deliveries followed to their outcome at once; past it the oldest request gives up "
           "with an error outcome (default 20000)",
           into("max_followed", positive(int)), metavar="N"),
    Option("--cdevents-nats", "FLUXRELAY_CDEVENTS_NATS",
           "publish emitted CDEvents to JetStream (subjects = event types)",
           _cdevents("nats", boolean), is_bool=True),
    Option("--cdevents-stream", "FLUXRELAY_CDEVENTS_STREAM",
           "stream for emitted CDEvents (default CDEVENTS; created if missing)",
           _cdevents("stream"), metavar="NAME"),
    Option("--cdevents-nats-spec", "FLUXRELAY_CDEVENTS_NATS_SPEC",
           "CDEvents spec version published to NATS: 0.5.1 (default) or 0.4.1",
           _cdevents("nats_spec_version", _spec_version), metavar="VERSION"),
    Option("--cdevents-sink", "FLUXRELAY_CDEVENTS_SINKS",
           "HTTP sink URL[,spec=0.4.1][,auth=bearer|hmac][,secret-file=PATH|secret-env=VAR]"
           "[,name=NAME]; repeatable", _sink, metavar="SPEC", repeat=True),
    Option("--cdevents-source", "FLUXRELAY_CDEVENTS_SOURCE",
           "context.source of emitted CDEvents (default /fluxrelay/reconciler)",
           _cdevents("source"), metavar="URI"),
    Option("--cdevents-outbox", "FLUXRELAY_CDEVENTS_OUTBOX",
           "events one sink holds while it cannot deliver (default 10000)",
           _cdevents("outbox_size", positive(int)), metavar="N"),
    Option("--cdevents-send-window", "FLUXRELAY_CDEVENTS_SEND_WINDOW",
           "events one sink sends at once, in any order within the window (default 32)",
           _cdevents("send_window", positive(int)), metavar="N"),
    Option("--cdevents-give-up-after", "FLUXRELAY_CDEVENTS_GIVE_UP_AFTER",
           "seconds an event is retried before it counts as failed (default 3600)",
           _cdevents("give_up_after", positive(float)), metavar="SECONDS"),
)  # fmt: skip


def build(sections: Sections) -> ReconcilerSettings:
    """The settings tree, refusing combinations no single option can judge."""
    top = sections[TOP]
    if top.get("config") is not None and top.get("kubernetes"):
        raise ConfigError("--config and --kubernetes are exclusive")
    consumer = ConsumerSettings(**sections[CONSUMER])
    patch = PatchSettings(**sections[PATCH])
    if patch.min_concurrency > patch.max_concurrency:
        raise ConfigError("--min-concurrency must not exceed --max-concurrency")
    cdevents = CDEventsSettings(**sections[CDEVENTS])
    nats_auth = NatsAuth.from_strings(sections[NATS_AUTH])
    return ReconcilerSettings(
        **top, consumer=consumer, patch=patch, cdevents=cdevents, nats_auth=nats_auth
    )


def require_receivers(settings: ReconcilerSettings) -> None:
    """Without Receivers the reconciler has nothing to target; the settings tree alone may
    have neither source (tests build it so)."""
    if settings.config is None and not settings.kubernetes:
        raise ConfigError("either --config FILE or --kubernetes is required")


def _serve(settings: ReconcilerSettings) -> Coroutine[Any, Any, None]:
    from reconciler.running import serve

    return serve(settings)


EXPLAIN_OPTIONS: tuple[Option, ...] = (
    NATS_URL,
    *NATS_AUTH_FLAGS,
    Option("--stream", "FLUXRELAY_STREAM", "events stream (default FLUXRELAY_EVENTS)",
           into("stream"), metavar="NAME"),
    stream_subject_prefix(TOP),
    Option("--dead-stream", "FLUXRELAY_DEAD_STREAM",
           "dead-letter stream (default FLUXRELAY_DEAD)", into("dead_stream"), metavar="NAME"),
    Option("--cdevents-stream", "FLUXRELAY_CDEVENTS_STREAM",
           "stream of emitted CDEvents (default CDEVENTS)", into("cdevents_stream"),
           metavar="NAME"),
)  # fmt: skip
"""The stores ``explain`` reads, reached with the services' own NATS flags and variables."""


def explain_main(argv: list[str]) -> int:
    """``fluxrelay-reconciler explain``: a delivery's story (``reconciler.explaining``)."""
    from datetime import timedelta

    from reconciler import explaining

    command: Command[explaining.ExplainSettings] = Command(
        prog="fluxrelay-reconciler explain",
        description="Tell what became of a delivery: received, stored, targeting decisions "
        "per shard, each reconcile request and what Flux made of it, dead letters.",
        options=EXPLAIN_OPTIONS,
        build=lambda sections: explaining.ExplainSettings(
            **sections[TOP], nats_auth=NatsAuth.from_strings(sections[NATS_AUTH])
        ),
        serve=_no_serving,
    )
    parser = command.parser()
    parser.add_argument("id", nargs="?", help="a delivery id or an event id")
    parser.add_argument("--receiver", metavar="NS/NAME", help="the last deliveries of this one")
    parser.add_argument("--last", type=int, default=5, metavar="N", help="with --receiver (5)")
    parser.add_argument(
        "--since", type=float, default=24.0, metavar="HOURS", help="how far back to read (24)"
    )
    parser.add_argument("--output", choices=("text", "json"), default="text")
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="read again until the story has its end (outcomes, or why nothing) (0)",
    )
    args = parser.parse_args(argv)
    if (args.id is None) == (args.receiver is None):
        parser.error("give a delivery or event id, or --receiver NS/NAME")
    try:
        settings = command.settings(args, os.environ)
    except ConfigError as e:
        print(f"fluxrelay-reconciler explain: {e}", file=sys.stderr)
        return 2
    stories = asyncio.run(
        explaining.explain(
            settings,
            args.id,
            receiver=args.receiver,
            last=args.last,
            since=timedelta(hours=args.since),
            wait=args.wait,
        )
    )
    text = explaining.render_json(stories) if args.output == "json" else explaining.render(stories)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0 if any(s.stored or s.timeline for s in stories) else 1


async def _no_serving(settings: Any) -> None:
    raise RuntimeError("explain does not serve")


COMMAND = Command(
    prog="fluxrelay-reconciler",
    description="Consume stored webhook events from NATS JetStream and request "
    "reconciliation of exactly the Flux objects they concern.",
    options=OPTIONS,
    sections=(CONSUMER, PATCH, CDEVENTS),
    build=build,
    serve=_serve,
    require=require_receivers,
    own_messages=True,
    subcommands={"explain": explain_main},
)


# The names the entry points (pyproject.toml, __main__.py) and the tests use.
main = COMMAND.main
parser = COMMAND.parser
settings_from = COMMAND.settings

if __name__ == "__main__":
    raise SystemExit(main())
