"""CPU the reconciler spends per CDEvent it hands to an HTTP sink, from ``offer`` to the 2xx.

An emitted event costs the reconciler its encoding (CloudEvents HTTP binary mode, auth) and
the POST itself (aiohttp's request, the response read). The outbox used to hold compact JSON
and decode and re-encode it for every try (three or four JSON passes per POST); it now encodes
once, when queued. This measures what that is worth end to end: it builds ``--events``
CDEvents of the reconciler's shapes (``pipelinerun`` queued, started and finished with links,
a chain id and a ``traceparent``), offers them all to an :class:`HttpSink` whose peer is a
local aiohttp server in a *separate process* (its CPU is not counted), and waits until every
one is delivered. CPU is this process's (``time.process_time``: user + system, all threads)
divided by the number of events; building the events is the emitter's cost and happens
before the clock starts. ``--retry-every K`` makes the peer answer every K-th POST with a 503
(``Retry-After: 0``), so that tries outnumber events and per-try work shows.

Each figure is the median of ``--runs`` runs, with the spread (min-max); each run uses a new
sink, warmed with a few hundred events first. To compare with another revision, run the same
file from a checkout of it: ``git worktree add /tmp/sinks-base HEAD``, copy this file to
``/tmp/sinks-base/bench/``, then ``cd /tmp/sinks-base && /work/main/.venv/bin/python -m
bench.sinks``. Run: ``python -m bench.sinks [--events N] [--runs R] [--auth hmac]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import time
import uuid
from multiprocessing.connection import Connection
from typing import Any, Literal, get_args

from aiohttp import web
from prometheus_client import CollectorRegistry

from reconciler.outcome_metrics import OutcomeMetrics
from reconciler.settings import CDEventsSettings, HttpSinkSettings
from reconciler.sinks import HttpSink
from schemas.cdevents import (
    Event,
    path_link,
    pipelinerun_finished,
    pipelinerun_queued,
    pipelinerun_started,
)

SOURCE = "/fluxrelay/reconciler"
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
WARM_UP = 300
Auth = Literal["none", "bearer", "hmac"]


# --------------------------------------------------------------------------- the peer


def serve(port_out: Connection, retry_every: int) -> None:
    """The HTTP sink's peer (in a child process): reads each body, answers 202, or 503 for
    every ``retry_every``-th request."""
    seen = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal seen
        await request.read()
        seen += 1
        if retry_every and seen % retry_every == 0:
            return web.Response(status=503, headers={"Retry-After": "0"})
        return web.Response(status=202)

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/hook", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port_out.send(int(runner.addresses[0][1]))
        await asyncio.Event().wait()  # until terminated

    asyncio.run(main())


# --------------------------------------------------------------------------- the events


def chain(n: int) -> list[Event]:
    """The three events one reconciliation emits, as the reconciler builds them."""
    run_id = f"Kustomization/apps/podinfo@{n}"
    ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"{run_id}/{stage}")) for stage in range(3)]
    common: dict[str, Any] = {
        "run_id": run_id,
        "pipeline_name": "Kustomization/apps/podinfo",
        "source": SOURCE,
        "chain_id": str(uuid.uuid4()),
    }
    commit = "https://github.com/example/podinfo/commit/4f2a9c1"
    return [
        pipelinerun_queued("0.5.1", id=ids[0], links=[path_link(str(uuid.uuid4()))], **common),
        pipelinerun_started("0.5.1", uri=commit, id=ids[1], links=[path_link(ids[0])], **common),
        pipelinerun_finished(
            "0.5.1", outcome="success", id=ids[2], links=[path_link(ids[1])], **common
        ),
    ]


def events(count: int) -> list[Event]:
    out: list[Event] = []
    n = 0
    while len(out) < count:
        out.extend(chain(n))
        n += 1
    return out[:count]


# --------------------------------------------------------------------------- one run


async def delivered(metrics: OutcomeMetrics, name: str, count: float) -> None:
    """Until the sink counted ``count`` events sent: polling its metric keeps the bench to
    what every revision of the sink has (an event would need a hook in the sink)."""
    sent = metrics.sink_sent.labels(name)
    while sent._value.get() < count:  # noqa: ASYNC110 - see the docstring
        await asyncio.sleep(0.005)


async def one_run(url: str, batch: list[Event], auth: Auth) -> float:
    """CPU seconds from the first ``offer`` of ``batch`` until all of it was delivered."""
    metrics = OutcomeMetrics(CollectorRegistry())
    settings = CDEventsSettings(outbox_size=len(batch) + WARM_UP, retry_initial=0.001)
    secret = "" if auth == "none" else "bench-key"
    sink = HttpSink(
        HttpSinkSettings(url=url, name="bench", auth=auth, secret=secret), settings, metrics
    )
    await sink.start()
    try:
        for cdevent in events(WARM_UP):
            sink.offer(cdevent, {"traceparent": TRACE})
        await delivered(metrics, "bench", WARM_UP)
        started = time.process_time()
        for cdevent in batch:
            sink.offer(cdevent, {"traceparent": TRACE})
        await delivered(metrics, "bench", WARM_UP + len(batch))
        return time.process_time() - started
    finally:
        await sink.close(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=6000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--auth", choices=get_args(Auth), default="none")
    parser.add_argument("--retry-every", type=int, default=0, metavar="K")
    parser.add_argument("--json", action="store_true", help="one JSON line instead of text")
    args = parser.parse_args()

    context = multiprocessing.get_context("spawn")
    port_in, port_out = context.Pipe(duplex=False)
    peer = context.Process(target=serve, args=(port_out, args.retry_every), daemon=True)
    peer.start()
    try:
        url = f"http://127.0.0.1:{port_in.recv()}/hook"
        batch = events(args.events)
        per_event = sorted(
            asyncio.run(one_run(url, batch, args.auth)) * 1e6 / args.events
            for _ in range(args.runs)
        )
    finally:
        peer.terminate()
        peer.join()
    result = {
        "events": args.events,
        "runs": args.runs,
        "auth": args.auth,
        "retry_every": args.retry_every,
        "cpu_us_per_event": round(statistics.median(per_event), 1),
        "min": round(per_event[0], 1),
        "max": round(per_event[-1], 1),
        "each": [round(v, 1) for v in per_event],
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"HTTP sink, {args.events} events x {args.runs} runs, auth={args.auth}, "
            f"503 every {args.retry_every or 'never'}: CPU {result['cpu_us_per_event']} µs/event "
            f"(min {result['min']}, max {result['max']})"
        )


if __name__ == "__main__":
    main()
