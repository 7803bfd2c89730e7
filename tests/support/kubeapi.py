"""A real Kubernetes API server (etcd + kube-apiserver v1.20.2) for tests.

This module owns the lifecycle of the two processes that make up the test cluster: it finds (and
caches) the kube-apiserver binary, picks free loopback ports, writes the token file and the
service-account signing key into a private temporary directory, starts etcd and then the API
server, and waits until ``/readyz`` answers. It also offers the small synchronous HTTPS client the
fixtures need before any event loop exists (applying manifests, namespaces, TokenRequest) and a
factory for a configured ``kubernetes_asyncio`` ``ApiClient``.

Why real processes and not a mock: the behaviour that matters (merge-patch content types,
``labelSelector`` filtering, the status subresource, RBAC, watch semantics and restarts) is only
trustworthy against the real server. See ../shared/design/TESTING.md.

No Flux controllers and no kube-controller-manager run here: namespaces are never finalised by a
namespace controller and ServiceAccount token secrets are never created, so :meth:`delete_namespace`
cleans up by itself and :meth:`create_service_account_token` uses the TokenRequest API.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gzip
import json
import logging
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from kubernetes_asyncio import client as k8s_client

from tests.support import natsd

logger = logging.getLogger(__name__)

KUBE_VERSION = "v1.20.2"
REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_BINARY = (
    REPO_ROOT.parent / "shared" / "kube-apiserver" / f"kube-apiserver-{KUBE_VERSION}-linux-amd64.gz"
)
CRD_DIR = REPO_ROOT.parent / "shared" / "flux-crds"
"""Flux's own released CRDs, read in place (never copied into the project; see its README)."""

ADMIN_USER = "fluxrelay-admin"
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 5.0
_START_ATTEMPTS = 3
_LOG_TAIL_LINES = 40

JSON = dict[str, Any]

# kubernetes-asyncio sends a dict PATCH body to custom objects as JSON Patch, which the real
# server rejects (400); its type stubs also lack ``_content_type``. Spread this into the call:
# ``api.patch_namespaced_custom_object(..., body, **MERGE_PATCH)`` (type-checks under strict).
MERGE_PATCH: dict[str, Any] = {"_content_type": "application/merge-patch+json"}


class KubeAPIError(RuntimeError):
    """The test cluster could not be started, or a request to it failed unexpectedly."""


class KubeRequestError(KubeAPIError):
    """The API server answered a synchronous request with an unexpected status."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} -> HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class KubeAPISettings:
    """Where the binaries come from and how long to wait for readiness."""

    apiserver_binary: Path | None = None
    etcd_binary: Path | None = None
    ready_timeout_s: float = READY_TIMEOUT_S
    verbosity: int = 0


def cache_dir() -> Path:
    """The directory holding the unpacked kube-apiserver (``$FLUXRELAY_CACHE`` overrides)."""
    configured = os.environ.get("FLUXRELAY_CACHE")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "fluxrelay"


def ensure_apiserver_binary(source: Path = SHARED_BINARY) -> Path:
    """Return an executable kube-apiserver, unpacking the shared gzip into the cache once.

    ``$FLUXRELAY_KUBE_APISERVER`` names an already unpacked binary and wins over everything.
    """
    override = os.environ.get("FLUXRELAY_KUBE_APISERVER")
    if override:
        return Path(override)
    target = cache_dir() / f"kube-apiserver-{KUBE_VERSION}"
    if target.is_file() and os.access(target, os.X_OK):
        return target
    if not source.is_file():
        raise KubeAPIError(
            f"kube-apiserver {KUBE_VERSION} not found at {source}; build it as described in "
            "../shared/design/TESTING.md and set FLUXRELAY_KUBE_APISERVER to its path"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    # Unpack to a private name and rename, so concurrent sessions never run a half-written file.
    fd, partial_name = tempfile.mkstemp(dir=target.parent, prefix=".kube-apiserver-")
    partial = Path(partial_name)
    try:
        with os.fdopen(fd, "wb") as out, gzip.open(source, "rb") as packed:
            shutil.copyfileobj(packed, out, length=1 << 20)
        partial.chmod(0o755)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    logger.info("unpacked kube-apiserver into %s", target)
    return target


def find_etcd() -> Path:
    """Return the etcd binary (``$FLUXRELAY_ETCD`` overrides, else Debian's /usr/bin/etcd)."""
    override = os.environ.get("FLUXRELAY_ETCD")
    if override:
        return Path(override)
    found = shutil.which("etcd") or "/usr/bin/etcd"
    path = Path(found)
    if not path.is_file():
        raise KubeAPIError("etcd not found: install Debian's etcd-server or set FLUXRELAY_ETCD")
    return path


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (callers retry if it is taken), never
    one this process handed out before (shared with the NATS harness)."""
    return natsd.free_port()


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no log>"
    return "\n".join(text.splitlines()[-lines:])


def _write_service_account_key(path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    path.chmod(0o600)


def _terminate(proc: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM, then SIGKILL after ``grace_s`` (at once when ``grace_s`` is 0)."""
    if proc.poll() is not None:
        return
    if grace_s > 0:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            pass
    proc.kill()
    proc.wait(timeout=STOP_GRACE_S)


_SPAWNER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="kube-spawn")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGKILL the child when its parent (the spawner thread) goes away.

    SIGKILL, not SIGTERM: kube-apiserver's graceful shutdown hangs once etcd is gone too.
    """
    with contextlib.suppress(Exception):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class KubeAPI:
    """One etcd and one kube-apiserver on loopback, owned by the calling test session.

    ``start()`` and ``stop()`` are synchronous (they work before any event loop exists).
    ``stop_apiserver()``/``start_apiserver()``/``restart_apiserver()`` bounce only the API server,
    on the same port and the same etcd, so stored objects survive.
    """

    def __init__(self, settings: KubeAPISettings | None = None) -> None:
        self.settings = settings or KubeAPISettings()
        self.token = secrets.token_hex(24)
        self._workdir: Path | None = None
        self._etcd: subprocess.Popen[bytes] | None = None
        self._apiserver: subprocess.Popen[bytes] | None = None
        self._etcd_port = 0
        self._port = 0
        self._ssl: ssl.SSLContext | None = None
        self._lock = threading.RLock()
        self._resources: dict[tuple[str, str], tuple[str, bool]] = {}

    # ----------------------------------------------------------------------------- properties

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise KubeAPIError("KubeAPI is not started")
        return self._workdir

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """The HTTPS URL of the API server, e.g. ``https://127.0.0.1:34567``."""
        return f"https://127.0.0.1:{self._port}"

    @property
    def ca_file(self) -> Path:
        """PEM bundle that verifies the API server's self-signed serving certificate."""
        return self.workdir / "certs" / "apiserver.crt"

    @property
    def apiserver_log(self) -> Path:
        return self.workdir / "kube-apiserver.log"

    @property
    def etcd_log(self) -> Path:
        return self.workdir / "etcd.log"

    @property
    def apiserver_running(self) -> bool:
        return self._apiserver is not None and self._apiserver.poll() is None

    @property
    def apiserver_pid(self) -> int | None:
        return self._apiserver.pid if self.apiserver_running and self._apiserver else None

    @property
    def etcd_pid(self) -> int | None:
        running = self._etcd is not None and self._etcd.poll() is None
        return self._etcd.pid if running and self._etcd else None

    # ----------------------------------------------------------------------------- lifecycle

    def start(self) -> KubeAPI:
        """Start etcd and kube-apiserver and wait until ``/readyz`` is OK (raises otherwise)."""
        with self._lock:
            if self._workdir is not None:
                raise KubeAPIError("KubeAPI already started")
            binary = self.settings.apiserver_binary or ensure_apiserver_binary()
            self._workdir = Path(tempfile.mkdtemp(prefix="fluxrelay-kube-"))
            try:
                (self.workdir / "certs").mkdir()
                _write_service_account_key(self.workdir / "sa.key")
                (self.workdir / "tokens.csv").write_text(
                    f'{self.token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n'
                )
                self._start_etcd()
                self._start_apiserver_on_free_port(binary)
            except BaseException:
                self.stop()
                raise
            logger.info("kube-apiserver ready at %s (workdir %s)", self.url, self._workdir)
            return self

    def stop(self) -> None:
        """Stop the API server (SIGTERM, SIGKILL after 5 s), then etcd, then remove the workdir."""
        with self._lock:
            if self._apiserver is not None:
                _terminate(self._apiserver)
                self._apiserver = None
            if self._etcd is not None:
                _terminate(self._etcd)
                self._etcd = None
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None
            self._ssl = None
            self._resources.clear()

    def stop_apiserver(self, *, graceful: bool = True) -> None:
        """Stop only the API server; etcd (and so all stored objects) stays.

        ``graceful``: SIGTERM, then SIGKILL after 5 s (an open watch keeps a graceful shutdown
        waiting until the SIGKILL). ``graceful=False``: SIGKILL at once, like a crash.
        """
        with self._lock:
            if self._apiserver is not None:
                _terminate(self._apiserver, STOP_GRACE_S if graceful else 0.0)
                self._apiserver = None

    def start_apiserver(self) -> None:
        """Start the API server again on the same port and etcd, and wait until it is ready."""
        with self._lock:
            if self.apiserver_running:
                return
            binary = self.settings.apiserver_binary or ensure_apiserver_binary()
            last: KubeAPIError | None = None
            for _ in range(_START_ATTEMPTS * 3):
                try:
                    self._launch_apiserver(binary, self._port)
                    return
                except _PortTaken as exc:  # the old socket may linger for a moment
                    last = exc
                    time.sleep(0.5)
            raise KubeAPIError(f"could not restart kube-apiserver on port {self._port}: {last}")

    def restart_apiserver(self, *, graceful: bool = True) -> None:
        """Stop and start the API server (same port, same etcd): watches see the connection end."""
        with self._lock:
            self.stop_apiserver(graceful=graceful)
            self.start_apiserver()

    def ensure_running(self) -> None:
        """Bring the API server back if a test stopped it and did not restart it."""
        with self._lock:
            if self._workdir is not None and not self.apiserver_running:
                logger.warning("kube-apiserver was not running; starting it again")
                self.start_apiserver()

    def __enter__(self) -> KubeAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _popen(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        with log.open("ab") as out:
            # Forked from one long-lived thread: PDEATHSIG fires when the *thread* that forked
            # exits, and callers' threads (asyncio.to_thread workers) come and go.
            spawned = _SPAWNER.submit(
                subprocess.Popen,
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                preexec_fn=_die_with_parent,
            )
            proc: subprocess.Popen[bytes] = spawned.result()
            return proc

    def _start_etcd(self) -> None:
        etcd = self.settings.etcd_binary or find_etcd()
        for attempt in range(_START_ATTEMPTS):
            client_port, peer_port = free_port(), free_port()
            data_dir = self.workdir / f"etcd-data-{attempt}"
            peer = f"http://127.0.0.1:{peer_port}"
            args = [
                str(etcd),
                "--name=fluxrelay-test",
                f"--data-dir={data_dir}",
                f"--listen-client-urls=http://127.0.0.1:{client_port}",
                f"--advertise-client-urls=http://127.0.0.1:{client_port}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=fluxrelay-test={peer}",
                "--initial-cluster-state=new",
                "--logger=zap",
                "--log-outputs=stderr",
            ]
            self._etcd = self._popen(args, self.etcd_log)
            if self._wait_etcd(client_port):
                self._etcd_port = client_port
                return
            _terminate(self._etcd)
            self._etcd = None
            logger.warning("etcd did not start (attempt %s); retrying on new ports", attempt + 1)
        raise KubeAPIError(f"etcd did not become healthy:\n{_log_tail(self.etcd_log)}")

    def _wait_etcd(self, port: int) -> bool:
        assert self._etcd is not None
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            if self._etcd.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as rsp:
                    if json.loads(rsp.read()).get("health") == "true":
                        return True
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        return False

    def _start_apiserver_on_free_port(self, binary: Path) -> None:
        last: KubeAPIError | None = None
        for _ in range(_START_ATTEMPTS):
            try:
                self._launch_apiserver(binary, free_port())
                return
            except _PortTaken as exc:
                last = exc
                logger.warning("kube-apiserver port was taken; retrying on another port")
        raise KubeAPIError(f"kube-apiserver could not bind a port: {last}")

    def _apiserver_args(self, binary: Path, port: int) -> list[str]:
        workdir = self.workdir
        return [
            str(binary),
            f"--etcd-servers=http://127.0.0.1:{self._etcd_port}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={workdir / 'certs'}",
            f"--token-auth-file={workdir / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={workdir / 'sa.key'}",
            f"--service-account-signing-key-file={workdir / 'sa.key'}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--profiling=false",
            f"--v={self.settings.verbosity}",
        ]

    def _launch_apiserver(self, binary: Path, port: int) -> None:
        self._port = port
        log = self.apiserver_log
        offset = log.stat().st_size if log.exists() else 0
        proc = self._popen(self._apiserver_args(binary, port), log)
        self._apiserver = proc
        deadline = time.monotonic() + self.settings.ready_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._apiserver = None
                fresh = log.read_bytes()[offset:].decode(errors="replace")
                if "address already in use" in fresh:
                    raise _PortTaken(f"port {port} in use")
                raise KubeAPIError(
                    f"kube-apiserver exited with {proc.returncode}:\n{_log_tail(log)}"
                )
            if self._ready():
                return
            time.sleep(0.2)
        _terminate(proc)
        self._apiserver = None
        raise KubeAPIError(
            f"kube-apiserver not ready within {self.settings.ready_timeout_s:.0f} s:\n"
            f"{_log_tail(log)}"
        )

    def _ready(self) -> bool:
        if not self.ca_file.exists():
            return False
        try:
            status, _ = self.request("GET", "/readyz", timeout=2.0, expect=None)
        except (OSError, ssl.SSLError):
            return False
        return status == 200

    # ------------------------------------------------------------------------- sync HTTPS client

    def ssl_context(self) -> ssl.SSLContext:
        """A client SSL context trusting the API server's CA."""
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.ca_file))
        return self._ssl

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        token: str | None = None,
        query: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        expect: Iterable[int] | None = (200, 201, 202),
    ) -> tuple[int, Any]:
        """Send one HTTPS request and return ``(status, decoded JSON or text)``.

        ``expect`` lists acceptable statuses; anything else raises :class:`KubeRequestError`.
        ``expect=None`` accepts every status.
        """
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {token or self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=timeout) as rsp:
                status, raw = rsp.status, rsp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        text = raw.decode(errors="replace")
        try:
            decoded: Any = json.loads(text) if text else None
        except ValueError:
            decoded = text
        if expect is not None and status not in set(expect):
            raise KubeRequestError(method, path, status, text)
        return status, decoded

    # --------------------------------------------------------------------------- manifests

    def resource_for(self, api_version: str, kind: str) -> tuple[str, bool]:
        """``(plural, namespaced)`` for a kind, from API discovery (cached)."""
        key = (api_version, kind)
        if key in self._resources:
            return self._resources[key]
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        deadline = time.monotonic() + 15.0
        while True:
            status, doc = self.request("GET", base, expect=None)
            if status == 200:
                for res in doc.get("resources", []):
                    if "/" not in res["name"]:
                        self._resources[(api_version, res["kind"])] = (
                            res["name"],
                            bool(res["namespaced"]),
                        )
                if key in self._resources:
                    return self._resources[key]
            if time.monotonic() > deadline:
                raise KubeAPIError(f"no resource for {api_version} {kind} in discovery")
            time.sleep(0.2)  # a freshly established CRD can lag in discovery

    def object_path(self, manifest: Mapping[str, Any], *, namespace: str | None = None) -> str:
        """The collection path for a manifest (``.../<plural>``), honouring its namespace."""
        api_version, kind = manifest["apiVersion"], manifest["kind"]
        plural, namespaced = self.resource_for(api_version, kind)
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        if namespaced:
            ns = manifest.get("metadata", {}).get("namespace") or namespace or "default"
            return f"{base}/namespaces/{ns}/{plural}"
        return f"{base}/{plural}"

    def apply(self, manifest: Mapping[str, Any], *, namespace: str | None = None) -> JSON:
        """Create the object, or replace it if it exists; CRDs are waited on until Established."""
        doc = json.loads(json.dumps(manifest))  # deep copy, JSON-clean
        if namespace and not doc.get("metadata", {}).get("namespace"):
            plural_ns = self.resource_for(doc["apiVersion"], doc["kind"])[1]
            if plural_ns:
                doc.setdefault("metadata", {})["namespace"] = namespace
        collection = self.object_path(doc, namespace=namespace)
        name = doc["metadata"]["name"]
        status, created = self.request("POST", collection, doc, expect=(201, 409))
        if status == 409:
            _, current = self.request("GET", f"{collection}/{name}")
            doc["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            _, created = self.request("PUT", f"{collection}/{name}", doc)
        if doc["kind"] == "CustomResourceDefinition":
            self.wait_crd_established(name)
        result: JSON = created
        return result

    def apply_manifests(
        self, manifests: Iterable[Mapping[str, Any]], *, namespace: str | None = None
    ) -> list[JSON]:
        """Apply several manifests in order (CRDs first if mixed, so their kinds resolve)."""
        docs = [m for m in manifests if m]
        docs.sort(key=lambda m: m.get("kind") != "CustomResourceDefinition")
        return [self.apply(m, namespace=namespace) for m in docs]

    def wait_crd_established(self, name: str, timeout_s: float = 30.0) -> None:
        path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            _, crd = self.request("GET", path)
            conditions = (crd.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                return
            time.sleep(0.1)
        raise KubeAPIError(f"CRD {name} not Established within {timeout_s} s")

    def apply_crds(self, crd_dir: Path = CRD_DIR) -> list[JSON]:
        """Apply the CRDs listed in ``<crd_dir>/kustomization.yaml``."""
        return self.apply_manifests(load_crds(crd_dir))

    # ------------------------------------------------------------------- namespaces and RBAC

    def create_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        if labels:
            body["metadata"]["labels"] = dict(labels)  # type: ignore[index]
        self.request("POST", "/api/v1/namespaces", body, expect=(201,))

    def delete_namespace(self, name: str) -> None:
        """Delete a namespace and everything namespaced in it.

        Without kube-controller-manager nothing empties a Terminating namespace, so the
        namespaced objects are deleted here (custom resources first, with their finalizers
        cleared), then the namespace's own ``kubernetes`` finalizer is removed.
        """
        self.ensure_running()
        for collection in self._namespaced_collections(name):
            self._purge_collection(collection)
        status, _ = self.request("DELETE", f"/api/v1/namespaces/{name}", expect=(200, 202, 404))
        if status == 404:
            return
        finalize = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name},
            "spec": {"finalizers": []},
        }
        self.request(
            "PUT", f"/api/v1/namespaces/{name}/finalize", finalize, expect=(200, 201, 404, 409)
        )

    def _namespaced_collections(self, namespace: str) -> list[str]:
        collections: list[str] = []
        _, crds = self.request("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
        for crd in crds.get("items", []):
            spec = crd["spec"]
            if spec["scope"] != "Namespaced":
                continue
            for version in spec["versions"]:
                if version.get("storage"):
                    collections.append(
                        f"/apis/{spec['group']}/{version['name']}/namespaces/{namespace}/"
                        f"{spec['names']['plural']}"
                    )
        for plural in ("configmaps", "secrets", "serviceaccounts"):
            collections.append(f"/api/v1/namespaces/{namespace}/{plural}")
        for plural in ("roles", "rolebindings"):
            collections.append(
                f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/{plural}"
            )
        return collections

    def _purge_collection(self, collection: str) -> None:
        status, listing = self.request("GET", collection, expect=(200, 404))
        if status == 404 or not listing:
            return
        for item in listing.get("items", []):
            meta = item.get("metadata", {})
            if meta.get("finalizers"):
                self.request(
                    "PATCH",
                    f"{collection}/{meta['name']}",
                    {"metadata": {"finalizers": None}},
                    content_type="application/merge-patch+json",
                    expect=(200, 404),
                )
        self.request("DELETE", collection, expect=(200, 404))

    def create_service_account_token(
        self,
        namespace: str,
        name: str,
        *,
        create_account: bool = True,
        expiration_seconds: int = 3600,
    ) -> str:
        """Mint a bound token for a ServiceAccount via the TokenRequest API.

        The ServiceAccount is created first unless ``create_account`` is false. Bind RBAC
        roles to ``system:serviceaccount:<namespace>:<name>`` to grant it anything.
        """
        if create_account:
            account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}
            self.request(
                "POST",
                f"/api/v1/namespaces/{namespace}/serviceaccounts",
                account,
                expect=(201, 409),
            )
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": expiration_seconds},
        }
        _, answer = self.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            request,
            expect=(200, 201),
        )
        token: str = answer["status"]["token"]
        return token

    # ------------------------------------------------------------------------ client configs

    def write_kubeconfig(
        self, path: Path, server: str | None = None, token: str | None = None
    ) -> Path:
        """Write a kubeconfig for this cluster (``server`` may point at a fault proxy)."""
        server = server or self.url
        cluster: JSON = {"server": server}
        if server.startswith("https://"):
            cluster["certificate-authority"] = str(self.ca_file)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fluxrelay-test", "cluster": cluster}],
            "users": [{"name": "fluxrelay-test", "user": {"token": token or self.token}}],
            "contexts": [
                {
                    "name": "fluxrelay-test",
                    "context": {"cluster": "fluxrelay-test", "user": "fluxrelay-test"},
                }
            ],
            "current-context": "fluxrelay-test",
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path

    def client_configuration(
        self, server: str | None = None, token: str | None = None
    ) -> k8s_client.Configuration:
        """A ``kubernetes_asyncio`` Configuration for this cluster (or a proxy in front)."""
        cfg = k8s_client.Configuration(
            host=server or self.url,
            api_key={"BearerToken": token or self.token},
            api_key_prefix={"BearerToken": "Bearer"},
        )
        cfg.ssl_ca_cert = str(self.ca_file)
        return cfg

    async def api_client(
        self, server: str | None = None, token: str | None = None
    ) -> k8s_client.ApiClient:
        """A configured ``ApiClient``; the caller closes it (``async with`` or ``close()``)."""
        return k8s_client.ApiClient(configuration=self.client_configuration(server, token))


class _PortTaken(KubeAPIError):
    """The chosen port was taken between picking it and binding it."""


class FluxCRDsMissing(KubeAPIError):
    """Flux's CRDs are not where the tests, benches and quick start read them."""


def load_crds(crd_dir: Path = CRD_DIR) -> list[JSON]:
    """All CRD documents listed in ``<crd_dir>/kustomization.yaml``, in listed order.

    These are Flux's real CRDs, not stand-ins, so what a test stores must pass Flux's own
    schemas. They are installed with plain POST/PUT (:meth:`KubeAPI.apply`): server-side apply
    refuses their ``x-kubernetes-validations`` on kube-apiserver 1.20, which drops that field.
    """
    listing = crd_dir / "kustomization.yaml"
    if not listing.is_file():
        raise FluxCRDsMissing(
            f"Flux's CRDs are missing: {listing} does not exist. Tests, benches and the quick "
            "start install Flux's released CRDs from ../shared/flux-crds next to the project "
            "(each controller's config/crd/bases at its newest release tag, listed in a "
            "kustomization.yaml); put them there, do not copy them into the project"
        )
    index = yaml.safe_load(listing.read_text())
    docs: list[JSON] = []
    for name in index["resources"]:
        docs.extend(d for d in yaml.safe_load_all((crd_dir / name).read_text()) if d)
    return docs
