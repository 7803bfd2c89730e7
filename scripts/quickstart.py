"""The quick start: fluxrelay running locally on real parts, until Ctrl-C.

Starts a ``nats-server`` (the tests' choice: ``$FLUXRELAY_NATS_SERVER``, else the newest
installed) with JetStream (store under ``--state-dir``) configured as deploy/
ships it (deploy/nats/single: NKey users, least-privilege permissions, no anonymous access;
the keys are made in ``<state-dir>/nats-users`` by scripts/natsusers.py and kept), a real etcd +
kube-apiserver with Flux's released CRDs (read in place from ../shared/flux-crds; the run stops
with a clear message if they are missing) and example sources (unless ``$KUBECONFIG`` points at a
cluster), the receiver with ``deploy/examples/quickstart/receivers.yaml`` and the reconciler.
On the local API server no Flux controller runs, so the tests' Flux stand-in answers
reconcile requests the way Flux would (``lastHandledReconcileAt``, ``Ready``). It prints the
hook URL and a ready-to-paste signed push, then every reconcile request it sees on the Flux
objects and every CDEvent emitted.

SIGINT or SIGTERM stops everything it started, whether it reaches the whole process group (a
terminal's Ctrl-C) or this process alone (``kill -INT <pid>``, a supervisor), at any point,
startup included, and whatever disposition it inherited (a background job of a
non-interactive shell starts with SIGINT ignored). The first signal starts the stop; later ones
are ignored so the stop runs to its end. Last, any process still below this one (one whose
start a signal cut short) is stopped too.

Lines meant for people and for the quick start's own test start with ``fluxrelay>``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The project's modules are imported in main(), after the stop signals' handlers are set: a
# signal that arrives while they load is then acted on, not lost to an inherited SIG_IGN.

EXAMPLES = ROOT / "deploy" / "examples" / "quickstart"
RECEIVERS = EXAMPLES / "receivers.yaml"
OBJECTS = EXAMPLES / "flux-objects.yaml"
NAMESPACE = "flux-system"
WATCHED = (
    ("source.toolkit.fluxcd.io", "v1", "gitrepositories", "GitRepository"),
    ("kustomize.toolkit.fluxcd.io", "v1", "kustomizations", "Kustomization"),
)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
LEFTOVER_GRACE_S = 10.0
"""Seconds a process left below the quick start has between SIGTERM and SIGKILL."""


def say(text: str) -> None:
    print(f"fluxrelay> {text}", flush=True)


class Interrupted(BaseException):
    """A stop signal arrived while the quick start was still starting: unwinds the startup
    through its ``finally`` blocks, which stop what was already running. A BaseException, as
    KeyboardInterrupt is, so no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Stopping:
    """What SIGINT and SIGTERM do, installed before anything is started.

    The handlers are Python-level ones set with ``signal.signal``, not the event loop's: the
    loop's are removed (SIGTERM back to its default, which kills without cleanup) when
    ``asyncio.run`` closes it, while the receiver, the reconciler and the servers are still
    being stopped. While starting, the first signal raises ``Interrupted``; once running, it
    calls the waker the running phase registered. Any later signal is ignored.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._waker: Callable[[], object] | None = None
        self._settled = False

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is not None:
            return
        self.signum = signum
        if self._waker is not None:
            self._waker()
        elif not self._settled:
            raise Interrupted(signum)

    def settle(self) -> None:
        """The stop is under way (a signal, or an error unwinding): from now on a signal
        only is noted, so it cannot cut the cleanup short."""
        self._settled = True

    @contextlib.contextmanager
    def waking(self, waker: Callable[[], object]) -> Iterator[None]:
        """While inside, a stop signal calls ``waker`` instead of raising."""
        self._waker = waker
        try:
            yield
        finally:
            self._waker = None


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (zombies too), parents before children, from the kernel's
    ``/proc/<pid>/task/<tid>/children`` lists (all threads: etcd and kube-apiserver are
    forked from a helper thread)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.append(child)
                    todo.append(child)
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def stop_leftovers() -> None:
    """SIGTERM, then SIGKILL after a grace period, whatever still runs below this process.

    The orderly stops come first; this is for a process whose start a signal cut short,
    after the fork but before the code that would stop it knew its PID."""
    left = [pid for pid in descendants(os.getpid()) if running(pid)]
    if not left:
        return
    say(f"stopping processes left behind: {' '.join(map(str, left))}")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + LEFTOVER_GRACE_S
        while time.monotonic() < deadline:
            for pid in left:  # reap the direct children; the others are not ours to reap
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            left = [pid for pid in left if running(pid)]
            if not left:
                return
            time.sleep(0.1)


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was ready")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url, timeout=1) as resp,  # noqa: S310 - loopback
        ):
            if resp.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout}s")


@contextlib.contextmanager
def process(cmd: list[str], log: Path, stopping: Stopping) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, cwd=ROOT)
    try:
        yield proc
    finally:
        stopping.settle()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def follow_objects(kubeconfig: Path, stop: asyncio.Event) -> None:
    """Print each new reconcile request on the example objects (polling keeps it simple)."""
    from kubernetes_asyncio import client, config

    api_client = await config.new_client_from_config(config_file=str(kubeconfig))
    seen: dict[str, str] = {}
    try:
        api = client.CustomObjectsApi(api_client)
        while not stop.is_set():
            for group, version, plural, kind in WATCHED:
                with contextlib.suppress(Exception):
                    listed: dict[str, Any] = await api.list_namespaced_custom_object(
                        group, version, NAMESPACE, plural
                    )
                    for obj in listed.get("items", []):
                        meta = obj.get("metadata", {})
                        annotations = meta.get("annotations") or {}
                        requested = annotations.get("reconcile.fluxcd.io/requestedAt")
                        key = f"{kind}/{NAMESPACE}/{meta.get('name')}"
                        if requested and seen.get(key) != requested:
                            if key in seen or requested:
                                say(
                                    f"PATCHED {key} requestedAt={requested} "
                                    f"delivery={annotations.get('fluxrelay.io/delivery')}"
                                )
                            seen[key] = requested
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    finally:
        await api_client.close()


async def follow_cdevents(nats_url: str, admin_seed: Path, stop: asyncio.Event) -> None:
    """Print every CDEvent emitted on NATS (a plain core subscription, as an operator would,
    with the admin user: the receiver's and reconciler's users may not subscribe there)."""
    import nats

    nc = await nats.connect(nats_url, nkeys_seed=str(admin_seed))
    try:

        async def show(msg: Any) -> None:
            headers = msg.headers or {}
            ce_id, ce_subject = headers.get("ce-id"), headers.get("ce-subject")
            say(f"CDEVENT {msg.subject} id={ce_id} subject={ce_subject}")

        await nc.subscribe("dev.cdevents.>", cb=show)
        await nc.subscribe("dev.cdeventsx.>", cb=show)
        await stop.wait()
    finally:
        await nc.close()


async def stand_in(kube: Any, stop: asyncio.Event) -> None:
    from tests.support.fluxstandin import FluxStandIn

    api_client = await kube.api_client()
    try:
        async with FluxStandIn(api_client, NAMESPACE, delay=1.0):
            await stop.wait()
    finally:
        await api_client.close()


async def follow(
    nats_url: str, admin_seed: Path, kubeconfig: Path, kube: Any, stopping: Stopping
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with stopping.waking(lambda: loop.call_soon_threadsafe(stop.set)):
        tasks = [
            asyncio.create_task(follow_objects(kubeconfig, stop)),
            asyncio.create_task(follow_cdevents(nats_url, admin_seed, stop)),
        ]
        if kube is not None:
            tasks.append(asyncio.create_task(stand_in(kube, stop)))
        say("READY (Ctrl-C stops everything)")
        await stop.wait()
    for task in tasks:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


def hook_lines(port: int) -> list[tuple[str, str]]:
    """(hook URL, token) for every example Receiver."""
    from receiver.config.hooks import hook_path
    from schemas.receivers import read_documents

    found = read_documents(RECEIVERS)
    out: list[tuple[str, str]] = []
    for _, definition in found.receivers:
        if definition.secret_name is None:  # generic-oidc in Flux's form: no token to print
            continue
        token = found.secrets[(definition.namespace, definition.secret_name)]["token"]
        path = hook_path(token, definition.name, definition.namespace)
        out.append((f"http://127.0.0.1:{port}{path}", token.decode()))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=ROOT / ".state")
    parser.add_argument("--port", type=int, default=9292, help="hook port")
    parser.add_argument("--metrics-port", type=int, default=9090, help="receiver metrics")
    parser.add_argument("--reconciler-metrics-port", type=int, default=9091)
    parser.add_argument("--nats-port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args()
    stopping = Stopping()
    stopping.install()
    try:
        run(args, stopping)
    except Interrupted as e:
        # Stopped before it was ready: the shell's status for a process a signal ended.
        return 128 + e.signum
    finally:
        stopping.settle()
        stop_leftovers()
        say("stopped")
    return 0


def run(args: argparse.Namespace, stopping: Stopping) -> None:
    """Start everything, follow it until a stop signal, stop it all again."""
    from scripts.natsusers import ensure_users
    from tests.support.natsd import NATS_SERVER, free_port, nats_version
    from tests.support.shippednats import ShippedNats, shipped_files

    state: Path = args.state_dir
    state.mkdir(parents=True, exist_ok=True)
    users = ensure_users(state / "nats-users")
    nats = ShippedNats(state / "nats", shipped_files(), users, port=args.nats_port or free_port())
    kube = None
    try:
        nats.start()
        version = ".".join(map(str, nats_version()))
        say(
            f"nats-server with JetStream at {nats.url} (v{version}, {NATS_SERVER}; "
            f"store {state / 'nats' / 'js'})"
        )
        say(
            f"NATS users and permissions as deploy/ ships them; as the admin user: "
            f"nats --server {nats.url} --nkey {users.seed('admin')} stream ls"
        )
        if os.environ.get("KUBECONFIG"):
            kubeconfig = Path(os.environ["KUBECONFIG"])
            say(f"using the cluster of $KUBECONFIG ({kubeconfig})")
        else:
            from tests.support.kubeapi import KubeAPI, load_crds

            crds = load_crds()  # before starting anything: a missing folder fails at once
            kube = KubeAPI()  # named before it starts, so the finally below stops it
            kube.start()
            kube.apply_manifests(crds)
            kube.create_namespace(NAMESPACE)
            kube.apply_manifests(list(yaml.safe_load_all(OBJECTS.read_text())), namespace=NAMESPACE)
            kubeconfig = kube.write_kubeconfig(state / "kubeconfig")
            say(
                f"kube-apiserver + etcd at {kube.url} (kubeconfig {kubeconfig}); Flux CRDs and "
                f"example sources applied"
            )
        common = ["--nats-url", nats.url, "--config", str(RECEIVERS), "--log-format", "json"]
        receiver_cmd = [
            sys.executable,
            "-m",
            "receiver",
            *common,
            "--nats-nkey",
            str(users.seed("receiver")),
            "--listen",
            f"127.0.0.1:{args.port}",
            "--metrics-listen",
            f"127.0.0.1:{args.metrics_port}",
        ]
        reconciler_cmd = [
            sys.executable,
            "-m",
            "reconciler",
            *common,
            "--nats-nkey",
            str(users.seed("reconciler")),
            "--cdevents-nats",
            "--kubeconfig",
            str(kubeconfig),
            "--metrics-listen",
            f"127.0.0.1:{args.reconciler_metrics_port}",
        ]
        with (
            process(receiver_cmd, state / "receiver.log", stopping) as rproc,
            process(reconciler_cmd, state / "reconciler.log", stopping) as cproc,
        ):
            wait_ready(f"http://127.0.0.1:{args.metrics_port}/readyz", rproc)
            wait_ready(f"http://127.0.0.1:{args.reconciler_metrics_port}/readyz", cproc)
            say(
                f"receiver on :{args.port} (metrics :{args.metrics_port}), reconciler metrics "
                f":{args.reconciler_metrics_port}; logs in {state}"
            )
            hooks = hook_lines(args.port)
            for url, _ in hooks:
                say(f"HOOK {url}")
            url, token = hooks[0]
            send = [
                str(Path(sys.executable).parent / "fluxrelay-receiver"),
                "send",
                "--url",
                url,
                "--provider",
                "github",
                "--token",
                token,
                "--repo-url",
                "https://github.com/example/fleet.git",
                "--ref",
                "refs/heads/main",
            ]
            say("send a signed GitHub push with:")
            say(f"SEND {shlex.join(send)}")
            asyncio.run(follow(nats.url, users.seed("admin"), kubeconfig, kube, stopping))
    finally:
        stopping.settle()
        if kube is not None:
            kube.stop()
        nats.stop()


if __name__ == "__main__":
    sys.exit(main())
