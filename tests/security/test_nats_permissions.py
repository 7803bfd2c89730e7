"""The NATS that deploy/ ships refuses what finding 5 showed an anonymous client could do,
and each fluxrelay process can do its job and nothing more.

The server here runs the configuration ``kubectl kustomize deploy/overlays/simple`` renders
(the ConfigMap ``nats-config``: nats.conf + auth.conf), changed only where a developer's
machine needs it (loopback ports, a private store, ``sync_interval`` on a 2.9 server; see
``tests/support/shippednats.py``). The credentials are made by ``scripts/natsusers.py``
(what an operator runs) and reach the server as the StatefulSet passes them: public keys in
environment variables. The receiver and the reconciler run as real processes whose NATS
credentials come from the environment variables the rendered Deployments set, with the
mounted Secret's path mapped to the seed file here; a Deployment that mounted the other
process's Secret, or none, would fail these tests.

What is proved:

* the receiver, with its user, creates its streams and stores deliveries (HTTP 202 after
  the PubAck) and an unparseable body as an ingress dead letter; the reconciler, with its
  user, creates its durable consumer, fetches, patches the Flux object, acks, dead-letters a
  delivery whose target does not exist, and emits CDEvents; neither hits a single
  permission violation on the way (the server logs every one);
* the attack of the finding: an anonymous client, or one with an NKey the server does not
  know, cannot connect at all, so it cannot publish a forged delivery, read, or purge;
* the receiver's user cannot read stored bodies (message get, direct get, a consumer of
  its own, the reconciler's reply inbox, a core subscription to events), cannot purge or
  delete streams or messages, cannot acknowledge or terminate messages, and cannot publish
  CDEvents or the reconciler's dead letters;
* the reconciler's user cannot publish a forged delivery (no PubAck, nothing stored), nor
  an ingress dead letter, cannot change, purge or delete streams, delete its consumer, or
  subscribe to event subjects or the receiver's replies.

Each refusal is asserted three ways: the server's permission violation reaches the client,
no reply (PubAck, API answer) comes back, and the admin user sees the streams unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError

from receiver.config.hooks import hook_path
from receiver.publishing import Publisher
from receiver.settings import StreamSettings
from runtime.natsauth import NatsAuth
from schemas import envelope as envelopes
from schemas import natsbinding, subjects
from scripts.natsusers import SEED_SECRETS, NatsUsers, ensure_users
from tests.deploy.rendering import JSON, by_kind, named, render
from tests.support.kubeapi import KubeAPI
from tests.support.natsd import free_port, wait_port
from tests.support.natsjwt import keypair, nkeys
from tests.support.secret_scan import register_secret
from tests.support.shippednats import ShippedNats

REPO_ROOT = Path(__file__).resolve().parents[2]
RECEIVER_TOKEN = "perm-fleet-token-3f9a1c"
MISSING_TOKEN = "perm-missing-token-8b20d4"
CDEVENTS_TOKEN = "perm-cdevents-token-5e71aa"
EVENTS = subjects.EVENTS_STREAM
DEAD = subjects.DEAD_STREAM
CDEVENTS = subjects.CDEVENTS_STREAM
DONE = subjects.DONE_BUCKET
DURABLE = "fluxrelay-reconciler"
WAIT = 30.0
QUIET = 0.3
"""Seconds a refused request is given to (not) get an answer after the violation came."""


# ----------------------------------------------------------------------------- the server


@dataclass
class Shipped:
    server: ShippedNats
    users: NatsUsers
    docs: list[JSON]
    folder: Path

    @property
    def url(self) -> str:
        return self.server.url

    def violations_of(self, user: str) -> list[str]:
        key = self.users.public_keys[user]
        return [line for line in self.server.violations() if key in line]


def nats_config_files(docs: list[JSON]) -> dict[str, str]:
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith("nats-")]
    files: dict[str, str] = cm["data"]
    return files


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shipped]:
    folder = tmp_path_factory.mktemp("nats-permissions")
    users = ensure_users(folder / "users")
    for user in users.public_keys:
        register_secret(users.seed(user).read_text().strip(), f"NATS seed of {user}")
    register_secret(users.route_password, "NATS route password")
    docs = render("overlays/simple")
    server = ShippedNats(folder / "nats", nats_config_files(docs), users).start()
    try:
        yield Shipped(server, users, docs, folder)
    finally:
        server.stop()


# ---------------------------------------------------------------------------- the clients


@dataclass
class Probe:
    """One connection as one user, collecting the permission errors the server sends it."""

    nc: Client
    errors: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def violation(self, kind: str, subject: str) -> None:
        """Wait until the server said ``kind`` ("publish"/"subscription") to ``subject`` is
        not allowed; fail if it never does."""
        wanted = f'permissions violation for {kind} to "{subject}"'.lower()
        async with asyncio.timeout(5):
            while not any(wanted in e.lower() for e in self.errors):
                self.changed.clear()
                await self.changed.wait()

    async def refused_request(
        self, subject: str, payload: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        """Publish with a reply subject of our own; the server refuses it and nothing ever
        answers (no PubAck, no JetStream API reply)."""
        inbox = self.nc.new_inbox()
        replies = await self.nc.subscribe(inbox)
        await self.nc.publish(subject, payload, reply=inbox, headers=headers)
        await self.violation("publish", subject)
        with pytest.raises(NatsTimeoutError):
            await replies.next_msg(timeout=QUIET)
        await replies.unsubscribe()

    async def refused_subscription(self, subject: str) -> None:
        await self.nc.subscribe(subject)
        await self.violation("subscription", subject)


@contextlib.asynccontextmanager
async def connected(shipped: Shipped, user: str) -> AsyncIterator[Probe]:
    """A client as ``user`` with that process's inbox prefix (as its code connects)."""
    prefix = {
        "receiver": subjects.RECEIVER_INBOX_PREFIX,
        "reconciler": subjects.RECONCILER_INBOX_PREFIX,
    }.get(user, "_INBOX")
    holder: list[Probe] = []

    async def on_error(e: Exception) -> None:
        if holder:
            holder[0].errors.append(str(e))
            holder[0].changed.set()

    nc = await nats.connect(
        shipped.url,
        nkeys_seed=str(shipped.users.seed(user)),
        inbox_prefix=prefix,
        error_cb=on_error,
        allow_reconnect=False,
    )
    probe = Probe(nc)
    holder.append(probe)
    try:
        yield probe
    finally:
        await nc.close()


async def stream_state(shipped: Shipped) -> dict[str, tuple[int, int, int]]:
    """(messages, first seq, last seq) of every stream, as the admin user sees them."""
    async with connected(shipped, "admin") as admin:
        js = admin.nc.jetstream(timeout=5)
        out: dict[str, tuple[int, int, int]] = {}
        for info in await js.streams_info():
            s = info.state
            out[info.config.name or ""] = (s.messages, s.first_seq, s.last_seq)
        return out


async def store_some(shipped: Shipped) -> None:
    """Streams exist and hold an event and an ingress dead letter, stored the way the
    receiver stores them (its Publisher, its user): something to steal and to purge."""
    publisher = Publisher(
        shipped.url, StreamSettings(), 5.0, NatsAuth(nkey=shipped.users.seed("receiver"))
    )
    await publisher.start()
    try:
        await until(lambda: publisher.ready, "the receiver's streams")
        doc = envelope_doc("flux-system", "fleet")
        stored = await publisher.publish(
            subjects.event_subject("github", "flux-system", "fleet"),
            json.dumps(doc).encode(),
            event_headers(doc),
        )
        assert stored.stream == EVENTS
        dead = await publisher.publish_dead(
            subjects.dead_subject("ingress", "probe"), b"unparseable", {"Nats-Msg-Id": doc["id"]}
        )
        assert dead.stream == DEAD
    finally:
        await publisher.close()


def envelope_doc(namespace: str, receiver: str) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "specversion": "1",
        "id": uuid.uuid4().hex,
        "receiver": {"namespace": namespace, "name": receiver},
        "provider": "github",
        "event": "push",
        "delivery_id": uuid.uuid4().hex,
        "received_at": "2025-01-01T00:00:00Z",
        "payload": {"ref": "refs/heads/main"},
    }
    envelopes.validate(doc)
    return doc


def event_headers(doc: dict[str, Any]) -> dict[str, str]:
    """Headers of a stored delivery (CloudEvents NATS binary mode + Nats-Msg-Id)."""
    headers = natsbinding.to_headers(
        {
            "specversion": "1.0",
            "id": doc["id"],
            "source": f"/fluxrelay/receivers/{doc['receiver']['namespace']}/x",
            "type": envelopes.CLOUDEVENT_TYPE,
            "time": doc["received_at"],
        }
    )
    headers["Nats-Msg-Id"] = doc["id"]
    return headers


# ------------------------------------------------------------------ the processes, for real


def credentials_env(docs: list[JSON], deployment: str, users: NatsUsers) -> dict[str, str]:
    """The NATS credential variables the rendered Deployment sets, with its Secret's mount
    path replaced by the seed file of the user that Secret belongs to."""
    pod = named(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    owner = {secret: user for user, secret in SEED_SECRETS.items()}
    mounted: dict[str, Path] = {}
    for volume in pod.get("volumes", []):
        secret = volume.get("secret", {}).get("secretName")
        if secret in owner:
            for mount in container.get("volumeMounts", []):
                if mount["name"] == volume["name"]:
                    (item,) = volume["secret"]["items"]
                    assert item["key"] == "nkey", volume
                    mounted[f"{mount['mountPath']}/{item['path']}"] = users.seed(owner[secret])
    env = {
        e["name"]: str(mounted[e["value"]])
        for e in container.get("env", [])
        if e["name"].startswith("FLUXRELAY_NATS_") and e.get("value") in mounted
    }
    assert env, f"{deployment} gets no NATS credentials from a mounted Secret"
    return env


def process_env(extra: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLUXRELAY_")}
    return {**base, "PYTHONPATH": str(REPO_ROOT), **extra}


@contextlib.contextmanager
def running(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=REPO_ROOT, env=env, stdout=out, stderr=out
        )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    async with asyncio.timeout(WAIT):
        while True:
            if proc.poll() is not None:
                text = await asyncio.to_thread(log.read_text)
                pytest.fail(f"exited with {proc.returncode}:\n{text[-3000:]}")
            with contextlib.suppress(OSError):
                status = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/readyz")
                if status == 200:
                    return
            await asyncio.sleep(0.2)


def http_get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as rsp:
            status: int = rsp.status
            return status
    except urllib.error.HTTPError as e:
        return e.code


def http_post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as rsp:
            status: int = rsp.status
            return status
    except urllib.error.HTTPError as e:
        return e.code


def receivers_file(path: Path, namespace: str) -> Path:
    """A github Receiver for an existing GitRepository, one for a missing one, and a
    CDEvents Receiver (for an unparseable body): what the flow below sends to."""

    def pair(name: str, kind: str, token: str, target: str | None) -> list[dict[str, Any]]:
        spec: dict[str, Any] = {"type": kind, "secretRef": {"name": f"{name}-token"}}
        spec["resources"] = [{"kind": "GitRepository", "name": target or name}]
        return [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": f"{name}-token", "namespace": namespace},
                "stringData": {"token": token},
            },
            {
                "apiVersion": "notification.toolkit.fluxcd.io/v1",
                "kind": "Receiver",
                "metadata": {"name": name, "namespace": namespace},
                "spec": spec,
            },
        ]

    docs = [
        *pair("fleet", "github", RECEIVER_TOKEN, "fleet"),
        *pair("gone", "github", MISSING_TOKEN, "missing"),
        *pair("events", "cdevents", CDEVENTS_TOKEN, "fleet"),
    ]
    path.write_text(yaml.safe_dump_all(docs))
    return path


def send_push(port: int, name: str, namespace: str, token: str) -> dict[str, Any]:
    """A signed GitHub push through ``fluxrelay-receiver send``, as the quick start does."""
    url = f"http://127.0.0.1:{port}{hook_path(token.encode(), name, namespace)}"
    out = subprocess.run(
        [sys.executable, "-m", "receiver", "send", "--url", url, "--token", token],
        cwd=REPO_ROOT,
        env=process_env({}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.stdout.startswith("202 "), out.stdout + out.stderr
    answer: dict[str, Any] = json.loads(out.stdout.removeprefix("202 "))
    return answer


async def until(
    predicate: Callable[[], bool | Awaitable[bool]], what: str, shipped: Shipped | None = None
) -> None:
    """Poll ``predicate`` until true; fail the test (not time it) if it never becomes true,
    naming the permission violations the server logged, the usual cause here."""
    try:
        async with asyncio.timeout(WAIT):
            while True:
                result = predicate()
                if not isinstance(result, bool):
                    result = await result
                if result:
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        refused = "\n".join(shipped.server.violations()) if shipped else ""
        pytest.fail(f"timed out waiting for {what}; violations logged:\n{refused or '(none)'}")


async def test_receiver_and_reconciler_do_their_jobs_with_their_own_users(
    shipped: Shipped, kube: KubeAPI, kube_namespace: str, tmp_path: Path
) -> None:
    before = len(shipped.server.violations())
    ns = kube_namespace
    kube.apply_manifests(
        [
            {
                "apiVersion": "source.toolkit.fluxcd.io/v1",
                "kind": "GitRepository",
                "metadata": {"name": "fleet"},
                "spec": {"interval": "10m", "url": "https://github.com/example/fleet.git"},
            }
        ],
        namespace=ns,
    )
    receivers = receivers_file(tmp_path / "receivers.yaml", ns)
    hook, metrics, rmetrics = free_port(), free_port(), free_port()
    receiver_env = credentials_env(shipped.docs, "fluxrelay-receiver", shipped.users)
    reconciler_env = credentials_env(shipped.docs, "fluxrelay-reconciler", shipped.users)
    assert receiver_env != reconciler_env
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
    common = ["--nats-url", shipped.url, "--config", str(receivers), "--log-format", "json"]
    receiver_args = ["-m", "receiver", *common, "--listen", f"127.0.0.1:{hook}"]
    receiver_args += ["--metrics-listen", f"127.0.0.1:{metrics}"]
    reconciler_args = ["-m", "reconciler", *common, "--kubeconfig", str(kubeconfig)]
    reconciler_args += ["--cdevents-nats", "--metrics-listen", f"127.0.0.1:{rmetrics}"]
    rlog, clog = tmp_path / "receiver.log", tmp_path / "reconciler.log"
    with (
        running(receiver_args, process_env(receiver_env), rlog) as rproc,
        running(reconciler_args, process_env(reconciler_env), clog) as cproc,
    ):
        await wait_ready(metrics, rproc, rlog)
        await wait_ready(rmetrics, cproc, clog)
        await asyncio.to_thread(wait_port, hook)

        accepted = await asyncio.to_thread(send_push, hook, "fleet", ns, RECEIVER_TOKEN)
        await asyncio.to_thread(send_push, hook, "gone", ns, MISSING_TOKEN)
        path = hook_path(CDEVENTS_TOKEN.encode(), "events", ns)
        status = await asyncio.to_thread(
            http_post,
            f"http://127.0.0.1:{hook}{path}",
            b'"not a CDEvent"',
            {"Content-Type": "application/json"},
        )
        assert status == 400  # refused, and kept as an ingress dead letter

        async def patched() -> bool:
            _, obj = kube.request(
                "GET",
                f"/apis/source.toolkit.fluxcd.io/v1/namespaces/{ns}/gitrepositories/fleet",
            )
            annotations = obj["metadata"].get("annotations") or {}
            return "reconcile.fluxcd.io/requestedAt" in annotations

        await until(patched, "the reconciler's patch of GitRepository fleet", shipped)

        async with connected(shipped, "admin") as admin:
            js = admin.nc.jetstream(timeout=5)

            async def settled() -> bool:
                info = await js.consumer_info(EVENTS, DURABLE)
                last = (await js.stream_info(EVENTS)).state.last_seq
                return bool(
                    info.num_pending == 0
                    and info.num_ack_pending == 0
                    and info.ack_floor.stream_seq == last
                )

            async def dead_letters() -> set[str]:
                info = await js.stream_info(DEAD, subjects_filter=">")
                return {s.split(".")[2] for s in (info.state.subjects or {})}

            async def both_dead_letters() -> bool:
                return {"ingress", "reconciler"} <= await dead_letters()

            async def cdevents_out() -> bool:
                try:
                    return (await js.stream_info(CDEVENTS)).state.messages > 0
                except NatsError:
                    return False

            await until(
                settled, "every delivery acknowledged (or terminated) by the reconciler", shipped
            )
            await until(
                both_dead_letters, "dead letters from the receiver and the reconciler", shipped
            )
            await until(cdevents_out, "CDEvents stored by the reconciler", shipped)
            stored = await js.get_msg(EVENTS, 1)
            assert stored.headers and stored.headers.get("Nats-Msg-Id")
            assert accepted["status"] == "accepted"

    # The reconciler's rarer paths, on its own connection: the stored copy it reads when the
    # server reports max deliveries, and the lag it polls.
    async with connected(shipped, "reconciler") as rec:
        js = rec.nc.jetstream(timeout=5)
        assert (await js.get_msg(EVENTS, 1)).data
        assert (await js.consumer_info(EVENTS, DURABLE)).name == DURABLE
        # The done memory of a nak'd message (reconciler.done): the bucket the reconciler
        # created at start, written before a nak and read for a redelivery.
        done = await js.key_value(DONE)
        await done.put("0123abcd", b'["GitRepository/ns/fleet"]')
        assert (await done.get("0123abcd")).value == b'["GitRepository/ns/fleet"]'
        await rec.nc.subscribe(f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{EVENTS}.{DURABLE}")
        await rec.nc.flush()
        assert not rec.errors
    assert shipped.server.violations()[before:] == [], "a legitimate request was refused"


# --------------------------------------------------------------------------------- attacks


async def refused_connection(url: str, **options: Any) -> None:
    async def quiet(e: Exception) -> None:
        return None

    with pytest.raises(NatsError, match="Authorization Violation"):
        nc = await nats.connect(
            url, allow_reconnect=False, max_reconnect_attempts=0, error_cb=quiet, **options
        )
        await nc.close()
    # nats-py leaves the socket of a refused connection open: collect it now, so its
    # ResourceWarning does not surface in a later test (warnings are errors).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


async def test_anonymous_and_unknown_clients_cannot_connect_so_cannot_forge(
    shipped: Shipped, tmp_path: Path
) -> None:
    """Finding 5 as reported: an anonymous client published a forged delivery and got a
    PubAck. Now it is refused at CONNECT, as is a client with an NKey the server does not
    know, a token or a user/password; nothing is stored."""
    await store_some(shipped)
    before = await stream_state(shipped)
    await refused_connection(shipped.url)
    stranger = keypair(nkeys.PREFIX_BYTE_USER)
    seed = tmp_path / "stranger.nk"
    seed.write_bytes(stranger.seed)
    await refused_connection(shipped.url, nkeys_seed=str(seed))
    await refused_connection(shipped.url, token="guessed-token-123")
    await refused_connection(shipped.url, user="fluxrelay-receiver", password="guessed-123")
    assert await stream_state(shipped) == before


def forged_delivery() -> tuple[str, bytes, dict[str, str]]:
    """A well-formed delivery for a Receiver that exists, as a forger would write it."""
    doc = envelope_doc("flux-system", "fleet")
    return (
        subjects.event_subject("github", "flux-system", "fleet"),
        json.dumps(doc).encode(),
        event_headers(doc),
    )


API = "$JS.API"
RECEIVER_REFUSED_REQUESTS = [
    pytest.param(f"{API}.STREAM.MSG.GET.{EVENTS}", b'{"seq":1}', id="read-stored-body"),
    pytest.param(f"{API}.DIRECT.GET.{EVENTS}", b'{"seq":1}', id="direct-get-stored-body"),
    pytest.param(
        f"{API}.CONSUMER.CREATE.{EVENTS}",
        json.dumps({"stream_name": EVENTS, "config": {"ack_policy": "none"}}).encode(),
        id="ephemeral-consumer",
    ),
    pytest.param(
        f"{API}.CONSUMER.DURABLE.CREATE.{EVENTS}.thief",
        json.dumps(
            {"stream_name": EVENTS, "config": {"durable_name": "thief", "ack_policy": "none"}}
        ).encode(),
        id="durable-consumer",
    ),
    pytest.param(
        f"{API}.CONSUMER.MSG.NEXT.{EVENTS}.{DURABLE}", b'{"batch":1}', id="pull-from-reconciler"
    ),
    pytest.param(f"{API}.STREAM.PURGE.{EVENTS}", b"", id="purge-events"),
    pytest.param(f"{API}.STREAM.PURGE.{DEAD}", b"", id="purge-dead-letters"),
    pytest.param(f"{API}.STREAM.DELETE.{EVENTS}", b"", id="delete-events"),
    pytest.param(f"{API}.STREAM.MSG.DELETE.{EVENTS}", b'{"seq":1}', id="delete-message"),
    pytest.param(f"{API}.CONSUMER.DELETE.{EVENTS}.{DURABLE}", b"", id="delete-consumer"),
    pytest.param(f"$JS.ACK.{EVENTS}.{DURABLE}.1.1.1.0.0", b"+TERM", id="terminate-message"),
    pytest.param("dev.cdevents.service.deployed.0.2.0", b"{}", id="forge-cdevent"),
    pytest.param("fluxrelay.dead.reconciler.forged", b"x", id="forge-reconciler-dead-letter"),
]
SNOOPED = [
    pytest.param(f"{subjects.EVENTS_PREFIX}.>", id="events"),
    pytest.param("_INBOX.>", id="every-inbox"),
    pytest.param(f"{subjects.RECONCILER_INBOX_PREFIX}.>", id="reconciler-deliveries"),
    pytest.param("$JS.EVENT.ADVISORY.>", id="advisories"),
]


@pytest.mark.parametrize(("subject", "payload"), RECEIVER_REFUSED_REQUESTS)
async def test_the_receiver_user_cannot_read_purge_or_settle(
    shipped: Shipped, subject: str, payload: bytes
) -> None:
    await store_some(shipped)
    before = await stream_state(shipped)
    async with connected(shipped, "receiver") as probe:
        await probe.refused_request(subject, payload)
    assert await stream_state(shipped) == before


@pytest.mark.parametrize("subject", SNOOPED)
async def test_the_receiver_user_cannot_subscribe_to_events_or_others_replies(
    shipped: Shipped, subject: str
) -> None:
    async with connected(shipped, "receiver") as probe:
        await probe.refused_subscription(subject)


async def test_a_refused_subscription_sees_no_delivery(shipped: Shipped) -> None:
    """Not just an error: a delivery stored while the refused subscription exists does not
    reach it."""
    async with connected(shipped, "receiver") as probe:
        seen: list[str] = []

        async def collect(msg: Any) -> None:
            seen.append(msg.subject)

        await probe.nc.subscribe(f"{subjects.EVENTS_PREFIX}.>", cb=collect)
        await probe.violation("subscription", f"{subjects.EVENTS_PREFIX}.>")
        await store_some(shipped)
        await asyncio.sleep(QUIET)
        assert seen == []


RECONCILER_REFUSED_REQUESTS = [
    pytest.param(f"{API}.STREAM.PURGE.{EVENTS}", b"", id="purge-events"),
    pytest.param(f"{API}.STREAM.PURGE.{DEAD}", b"", id="purge-dead-letters"),
    pytest.param(f"{API}.STREAM.PURGE.{CDEVENTS}", b"", id="purge-cdevents"),
    pytest.param(f"{API}.STREAM.DELETE.{EVENTS}", b"", id="delete-events"),
    pytest.param(f"{API}.STREAM.DELETE.{DEAD}", b"", id="delete-dead-letters"),
    pytest.param(f"{API}.STREAM.MSG.DELETE.{EVENTS}", b'{"seq":1}', id="delete-message"),
    pytest.param(
        f"{API}.STREAM.UPDATE.{EVENTS}",
        json.dumps({"name": EVENTS, "subjects": ["fluxrelay.events.>"], "max_msgs": 1}).encode(),
        id="shrink-retention",
    ),
    pytest.param(
        f"{API}.STREAM.CREATE.SHADOW",
        json.dumps({"name": "SHADOW", "subjects": ["shadow.>"]}).encode(),
        id="create-stream",
    ),
    pytest.param(f"{API}.CONSUMER.DELETE.{EVENTS}.{DURABLE}", b"", id="delete-consumer"),
    pytest.param("fluxrelay.dead.ingress.forged", b"x", id="forge-ingress-dead-letter"),
    pytest.param(f"{API}.STREAM.PURGE.KV_{DONE}", b"", id="purge-done-memory"),
    pytest.param(f"{API}.STREAM.DELETE.KV_{DONE}", b"", id="delete-done-memory"),
    pytest.param(
        f"{API}.STREAM.UPDATE.KV_{DONE}",
        json.dumps({"name": f"KV_{DONE}", "subjects": [f"$KV.{DONE}.>"], "max_bytes": 1}).encode(),
        id="shrink-done-memory",
    ),
]


async def test_the_reconciler_user_cannot_forge_a_delivery(shipped: Shipped) -> None:
    """The attack of the finding with the reconciler's credentials: a forged delivery for an
    existing Receiver gets no PubAck and is not stored."""
    await store_some(shipped)
    before = await stream_state(shipped)
    subject, body, headers = forged_delivery()
    async with connected(shipped, "reconciler") as probe:
        js = probe.nc.jetstream(timeout=1)
        with pytest.raises(NatsTimeoutError):
            await js.publish(subject, body, stream=EVENTS, headers=headers)
        await probe.violation("publish", subject)
        await probe.refused_request(subject, body, headers)
    assert await stream_state(shipped) == before
    assert any(subject in line for line in shipped.violations_of("reconciler"))


@pytest.mark.parametrize(("subject", "payload"), RECONCILER_REFUSED_REQUESTS)
async def test_the_reconciler_user_cannot_change_purge_or_delete(
    shipped: Shipped, subject: str, payload: bytes
) -> None:
    await store_some(shipped)
    before = await stream_state(shipped)
    async with connected(shipped, "reconciler") as probe:
        await probe.refused_request(subject, payload)
    assert await stream_state(shipped) == before


@pytest.mark.parametrize(
    "subject",
    [
        pytest.param(f"{subjects.EVENTS_PREFIX}.>", id="events"),
        pytest.param(f"{subjects.RECEIVER_INBOX_PREFIX}.>", id="receiver-replies"),
        pytest.param("_INBOX.>", id="every-inbox"),
    ],
)
async def test_the_reconciler_user_cannot_subscribe_to_events_or_others_replies(
    shipped: Shipped, subject: str
) -> None:
    async with connected(shipped, "reconciler") as probe:
        await probe.refused_subscription(subject)


async def test_the_admin_user_is_unrestricted_for_operators(shipped: Shipped) -> None:
    """What the operator keeps: the nats CLI's reads work with the admin seed."""
    await store_some(shipped)
    async with connected(shipped, "admin") as admin:
        js = admin.nc.jetstream(timeout=5)
        assert (await js.stream_info(EVENTS)).state.messages >= 1
        assert (await js.get_msg(EVENTS, 1)).data
        assert not admin.errors
