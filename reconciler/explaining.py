"""``fluxrelay-reconciler explain``: one delivery's story, read back from what was stored.

"I pushed and nothing happened" has its answer in three stores: the events stream (what was
received and stored, and when), the CDEvents stream (the chain of each delivery: ingest, the
targeting decisions of every shard, each reconcile request, what Flux made of it) and the
dead letters (what was given up on, and why). This module reads them for a delivery id or an
event id (or a Receiver's last N deliveries) and tells the story as a timeline, in text or
JSON. It reads, never writes: an ephemeral consumer per store, acknowledged by nobody.

Every shard's reconciler emits into the one CDEvents stream and a delivery's chain has one
``chainId`` whichever shard handled which object, so one read tells all shards' parts. What
cannot be known is said, not guessed: no CDEvents stream (the reconcilers run without
``--cdevents-nats``), a delivery aged out of the events stream (the chain may still be
there), a request whose outcome has not arrived (still followed, or never followed).

Reading is a scan from ``--since`` (the streams have no index by delivery id): a few
thousand messages a second, bounded by what the streams hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from reconciler.chaining import UNTARGETED_TYPE, chain_id
from reconciler.deadletters import ERROR_HEADER, REASON_HEADER, SEQ_HEADER
from runtime.natsauth import NatsAuth
from schemas import subjects

T = TypeVar("T")

FETCH = 256
MATCH_FIELDS = ("id", "delivery_id")


@dataclass(frozen=True)
class ExplainSettings:
    """Where the stores are and how to reach them (the services' NATS flags)."""

    nats_url: str = "nats://127.0.0.1:4222"
    nats_auth: NatsAuth = field(default_factory=NatsAuth)
    stream: str = subjects.EVENTS_STREAM
    subject_prefix: str = subjects.EVENTS_PREFIX
    dead_stream: str = subjects.DEAD_STREAM
    cdevents_stream: str = subjects.CDEVENTS_STREAM
    log_format: str = "text"
    """Unused (explain prints, never logs); the option framework's commands all have it."""
    log_level: str = "WARNING"


@dataclass
class Story:
    """One delivery as the stores tell it."""

    delivery: dict[str, Any]
    """Routing fields of the stored envelope: ids, receiver, provider, event, ref, revision."""
    stored: dict[str, Any] | None = None
    """Stream, sequence and time it was stored; None when the stream no longer holds it."""
    timeline: list[dict[str, Any]] = field(default_factory=list)
    """Time-ordered steps: received, stored, targeting per shard, requested, finished, dead."""
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per object: requestedAt, outcome, reason, message, MTTP seconds."""
    unknown: list[str] = field(default_factory=list)
    """What the stores could not say."""

    def as_data(self) -> dict[str, Any]:
        return {
            "delivery": self.delivery,
            "stored": self.stored,
            "timeline": self.timeline,
            "requests": self.requests,
            "unknown": self.unknown,
        }


# ---------------------------------------------------------------------------------- reading


async def scan(
    js: JetStreamContext,
    stream: str,
    keep: Callable[[Msg], T | None],
    *,
    subject: str | None = None,
    since: datetime | None = None,
    limit: int | None = None,
) -> list[T]:
    """What ``keep`` makes of each message of ``stream`` (from ``since``) that it keeps; with
    ``limit``, the last ``limit`` kept. An ephemeral consumer, never acknowledged."""
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.BY_START_TIME if since else DeliverPolicy.ALL,
        opt_start_time=since,
        filter_subject=subject,
        inactive_threshold=30.0,
        mem_storage=True,
    )
    sub = await js.pull_subscribe(subject or "", stream=stream, config=config)
    kept: deque[T] = deque(maxlen=limit)
    try:
        while True:
            try:
                msgs = await sub.fetch(FETCH, timeout=2.0)
            except TimeoutError:
                break
            for msg in msgs:
                value = keep(msg)
                if value is not None:
                    kept.append(value)
            if msgs[-1].metadata.num_pending == 0:
                break
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return list(kept)


def _json(data: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _routing(env: dict[str, Any]) -> dict[str, Any]:
    receiver = env.get("receiver") or {}
    out = {
        "id": env.get("id"),
        "delivery_id": env.get("delivery_id"),
        "receiver": f"{receiver.get('namespace')}/{receiver.get('name')}",
        "provider": env.get("provider"),
        "event": env.get("event"),
        "received_at": env.get("received_at"),
    }
    for key in ("ref", "revision"):
        if env.get(key):
            out[key] = env[key]
    artifact = env.get("artifact") or {}
    if artifact.get("tag") or artifact.get("digest"):
        out["artifact"] = {k: artifact.get(k) for k in ("repository", "tag", "digest")}
    if env.get("cdevent"):
        out["cdevent"] = env["cdevent"]
    return out


def _stored(msg: Msg, stream: str) -> dict[str, Any]:
    meta = msg.metadata
    return {"stream": stream, "seq": meta.sequence.stream, "time": meta.timestamp.isoformat()}


async def find(
    nc: Client,
    settings: ExplainSettings,
    ident: str | None = None,
    *,
    receiver: str | None = None,
    last: int = 5,
    since: timedelta = timedelta(hours=24),
) -> list[Story]:
    """The stories of the delivery or event ``ident``, or of ``receiver``'s last deliveries."""
    js = nc.jetstream(timeout=10.0)
    start = datetime.now(UTC) - since
    subject = None
    if receiver is not None:
        namespace, _, name = receiver.partition("/")
        subject = f"{settings.subject_prefix}.*.{subjects.token(namespace)}.{subjects.token(name)}"

    def delivery(msg: Msg) -> tuple[dict[str, Any], dict[str, Any]] | None:
        env = _json(msg.data)
        if env is None or (ident is not None and ident not in (env.get(f) for f in MATCH_FIELDS)):
            return None
        return _routing(env), _stored(msg, settings.stream)

    found = await scan(
        js,
        settings.stream,
        delivery,
        subject=subject,
        since=start,
        limit=None if ident else last,
    )
    stories = [Story(env, stored) for env, stored in found]
    if not stories and ident is not None:
        # Aged out of the events stream (or never stored here): an event id still names its
        # chain, which the CDEvents stream may hold for longer.
        story = Story({"id": ident})
        story.unknown.append(
            f"{settings.stream} holds no delivery {ident} since {start:%Y-%m-%d %H:%M}Z: "
            "aged out, another id, or never stored because the receiver refused it (its "
            "answer said why, e.g. 400 event_not_allowed for an event outside spec.events, "
            "and fluxrelay_receiver_deliveries_total counts it); what follows is from the "
            "other stores"
        )
        stories = [story]
    await _read_chains(js, settings, stories, start)
    await _read_dead_letters(js, settings, stories, start)
    for story in stories:
        _finish(story)
    return stories


async def _read_chains(
    js: JetStreamContext, settings: ExplainSettings, stories: list[Story], start: datetime
) -> None:
    chains: dict[str, Story] = {}
    for story in stories:
        if story.delivery.get("id"):
            followed = {"id": story.delivery["id"], "cdevent": story.delivery.get("cdevent")}
            chains[chain_id(followed)] = story  # type: ignore[arg-type]

    def event(msg: Msg) -> tuple[Story, dict[str, Any]] | None:
        doc = _json(msg.data)
        if doc is None:
            return None
        context = doc.get("context") or {}
        story = chains.get(str(context.get("chainId")))
        return None if story is None else (story, doc)

    try:
        events = await scan(js, settings.cdevents_stream, event, since=start)
    except NotFoundError:
        for story in stories:
            story.unknown.append(
                f"no CDEvents stream {settings.cdevents_stream}: targeting decisions and "
                "outcomes are recorded only when the reconcilers run with --cdevents-nats"
            )
        return
    for story, doc in events:
        _tell(story, doc)


def _tell(story: Story, doc: dict[str, Any]) -> None:
    context, subject = doc.get("context") or {}, doc.get("subject") or {}
    content, custom = subject.get("content") or {}, doc.get("customData") or {}
    kind = str(context.get("type", ""))
    when = str(context.get("timestamp", ""))
    if kind == UNTARGETED_TYPE:
        shard = content.get("shard") or "-"
        story.timeline.append(
            {
                "time": when,
                "step": "targeted nothing",
                "shard": shard,
                "reason": content.get("reason"),
                "decisions": content.get("decisions") or [],
                "omitted": content.get("omitted", 0),
            }
        )
    elif ".pipelinerun.queued." in kind:
        target = str(content.get("pipeline", {}).get("name") or content.get("pipelineName", ""))
        target = target or str(subject.get("id", "")).split("@")[0]
        request = story.requests.setdefault(target, {})
        request["requestedAt"] = custom.get("requestedAt")
        targeting = custom.get("targeting") or {}
        story.timeline.append(
            {
                "time": when,
                "step": "reconcile requested",
                "object": target,
                "requestedAt": custom.get("requestedAt"),
                "decisions": targeting.get("decisions") or [],
            }
        )
    elif ".pipelinerun.finished." in kind:
        target = str(subject.get("id", "")).split("@")[0]
        request = story.requests.setdefault(target, {})
        request.update(
            {
                "outcome": content.get("outcome"),
                "reason": custom.get("reason"),
                "errors": content.get("errors"),
                "revision": custom.get("revision"),
                "finishedAt": when,
            }
        )
        received = story.delivery.get("received_at")
        if content.get("outcome") == "success" and received and when:
            request["mttpSeconds"] = round(
                (_parse(when) - _parse(str(received))).total_seconds(), 3
            )
        story.timeline.append(
            {
                "time": when,
                "step": "finished",
                "object": target,
                "outcome": content.get("outcome"),
                "reason": custom.get("reason"),
                "errors": content.get("errors"),
            }
        )
    elif kind:  # the chain's first event: the same moment as "received"
        story.delivery["ingestEvent"] = kind


async def _read_dead_letters(
    js: JetStreamContext, settings: ExplainSettings, stories: list[Story], start: datetime
) -> None:
    by_id = {s.delivery["id"]: s for s in stories if s.delivery.get("id")}

    def dead(msg: Msg) -> tuple[Story, dict[str, Any]] | None:
        env = _json(msg.data) or {}
        story = by_id.get(str(env.get("id")))
        if story is None:
            return None
        headers = msg.headers or {}
        return story, {
            "time": msg.metadata.timestamp.isoformat(),
            "step": "dead-lettered",
            "reason": headers.get(REASON_HEADER),
            "error": headers.get(ERROR_HEADER),
            "seq": headers.get(SEQ_HEADER),
        }

    with contextlib.suppress(NotFoundError):
        for story, step in await scan(js, settings.dead_stream, dead, since=start):
            story.timeline.append(step)


def _parse(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _finish(story: Story) -> None:
    """Add the receive and store steps, order by time, and say what is still unknown."""
    first: list[dict[str, Any]] = []
    received = story.delivery.get("received_at")
    if received:
        first.append({"time": received, "step": "received"})
    if story.stored:
        first.append({"time": story.stored["time"], "step": "stored", "seq": story.stored["seq"]})
    story.timeline[:0] = first  # a stable sort keeps them ahead of steps of the same moment
    story.timeline.sort(key=lambda step: _parse(str(step["time"])) if step["time"] else _EPOCH)
    for target, request in story.requests.items():
        if "outcome" not in request:
            story.unknown.append(
                f"{target}: no outcome yet (still followed, up to --outcome-timeout, or not "
                "followed: ExternalArtifact, or outcome watching off)"
            )
    steps = {step["step"] for step in story.timeline}
    told = steps & {"reconcile requested", "targeted nothing", "dead-lettered"}
    if not told and not any("CDEvents stream" in u for u in story.unknown):
        story.unknown.append(
            "no targeting recorded yet: not consumed yet (see the consumer's pending "
            "count), or emitted by a reconciler without --cdevents-nats"
        )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# ---------------------------------------------------------------------------------- telling


def render(stories: Iterable[Story]) -> str:
    """The stories as text: a header per delivery, then its timeline."""
    out: list[str] = []
    for story in stories:
        d = story.delivery
        head = f"delivery {d.get('delivery_id', '?')} (event {d.get('id')})"
        if d.get("receiver"):
            head += f"  receiver {d['receiver']}  {d.get('provider')} {d.get('event')}"
        out.append(head)
        if d.get("ref") or d.get("revision"):
            out.append(f"  ref {d.get('ref', '-')}  revision {d.get('revision', '-')}")
        for step in story.timeline:
            out.extend(_step_lines(step))
        for target, request in sorted(story.requests.items()):
            if "outcome" in request:
                mttp = request.get("mttpSeconds")
                out.append(
                    f"  => {target}: {request['outcome']} ({request.get('reason')})"
                    + (f", MTTP {mttp:g}s" if mttp is not None else "")
                )
        out.extend(f"  ? {line}" for line in story.unknown)
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _step_lines(step: dict[str, Any]) -> list[str]:
    when = str(step.get("time", ""))[:23]
    name = step["step"]
    if name == "stored":
        return [f"  {when}  stored, sequence {step['seq']}"]
    if name == "reconcile requested":
        lines = [f"  {when}  reconcile requested: {step['object']} at {step['requestedAt']}"]
        return lines + _decision_lines(step.get("decisions") or [], skip_reconciled=True)
    if name == "targeted nothing":
        lines = [f"  {when}  shard {step['shard']} reconciled nothing: {step['reason']}"]
        lines += _decision_lines(step.get("decisions") or [], skip_reconciled=False)
        if step.get("omitted"):
            lines.append(f"      ... and {step['omitted']} more")
        return lines
    if name == "finished":
        errors = f": {step['errors']}" if step.get("errors") else ""
        return [f"  {when}  finished {step['object']}: {step['outcome']}{errors}"]
    if name == "dead-lettered":
        return [f"  {when}  dead-lettered ({step['reason']}): {step['error']}"]
    return [f"  {when}  {name}"]


def _decision_lines(decisions: list[dict[str, Any]], *, skip_reconciled: bool) -> list[str]:
    return [
        f"      {d['target']}: {d['reason']}" + (f" ({d['detail']})" if d.get("detail") else "")
        for d in decisions
        if not (skip_reconciled and d.get("reason") == "reconciled")
    ]


def render_json(stories: Iterable[Story]) -> str:
    return json.dumps([s.as_data() for s in stories], indent=2, sort_keys=True)


def settled(story: Story) -> bool:
    """Whether a story has its end: nothing targeted, dead-lettered, or every request
    followed to an outcome."""
    steps = {step["step"] for step in story.timeline}
    if steps & {"targeted nothing", "dead-lettered"}:
        return True
    return bool(story.requests) and all("outcome" in r for r in story.requests.values())


async def explain(
    settings: ExplainSettings,
    ident: str | None,
    *,
    receiver: str | None = None,
    last: int = 5,
    since: timedelta = timedelta(hours=24),
    wait: float = 0.0,
    connect: Callable[[], Any] | None = None,
) -> list[Story]:
    """Connect with the services' NATS settings and read the stories; with ``wait``, read
    again each second until every story is :func:`settled` or ``wait`` seconds passed."""
    from runtime import natsconn

    nc: Client = await (
        connect()
        if connect is not None
        else natsconn.connect(
            natsconn.servers(settings.nats_url),
            settings.nats_auth.connect_options(),
            retry=False,
        )
    )
    try:
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            stories = await asyncio.wait_for(
                find(nc, settings, ident, receiver=receiver, last=last, since=since), 120
            )
            if all(settled(s) for s in stories) or asyncio.get_running_loop().time() > deadline:
                return stories
            await asyncio.sleep(1.0)
    finally:
        await nc.close()
