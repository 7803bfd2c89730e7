"""The ``distribution`` receiver against the real thing: Debian's ``docker-registry`` (CNCF
Distribution) configured to notify the receiver, an OCI image built by the test and pushed
with Debian's ``skopeo``, and the event JetStream stored checked field by field.

Nothing imitates the registry: the notification is whatever the registry sends. A missing or
broken ``docker-registry``/``skopeo`` fails the test with the reason (CI installs both with
apt: ``docker-registry skopeo``)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas import envelope
from tests.support.ingress import Ingress, Stored, path_of, receiver_docs, start_ingress
from tests.support.natsd import NatsServer, free_port, wait_port

TOKEN = "registry-notify-token"
REGISTRY_BIN = "/usr/bin/docker-registry"
SKOPEO_BIN = "/usr/bin/skopeo"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def binary(path: str, name: str) -> str:
    found = shutil.which(name) or path
    if not Path(found).is_file():
        pytest.fail(f"{name} not found at {path}: install the Debian package (apt install {name})")
    return found


def blob(layout: Path, data: bytes) -> tuple[str, int]:
    """Write ``data`` into the layout's blob store; return its digest and size."""
    hexdigest = hashlib.sha256(data).hexdigest()
    target = layout / "blobs" / "sha256" / hexdigest
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return f"sha256:{hexdigest}", len(data)


def oci_layout(layout: Path, tag: str) -> str:
    """A one-layer (gzipped tar) OCI image layout tagged ``tag``; returns the manifest digest."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        content = b"hello from fluxrelay\n"
        info = tarfile.TarInfo("hello.txt")
        info.size = len(content)
        info.mtime = 1700000000
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(content))
    tar_bytes = buffer.getvalue()
    # Compressed, so skopeo has no reason to rewrite the layer (and hence the manifest).
    layer_digest, layer_size = blob(layout, gzip.compress(tar_bytes, mtime=0))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {
            "type": "layers",
            "diff_ids": ["sha256:" + hashlib.sha256(tar_bytes).hexdigest()],
        },
    }
    config_digest, config_size = blob(layout, json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer_digest,
                "size": layer_size,
            }
        ],
    }
    manifest_digest, manifest_size = blob(layout, json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return manifest_digest


class Registry:
    """A ``docker-registry serve`` process with its config, store and log in ``root``."""

    def __init__(self, root: Path, notify_url: str, token: str) -> None:
        self.port = free_port()
        self.root = root
        self.log_path = root / "registry.log"
        self.config_path = root / "config.yml"
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text"},
            "storage": {"filesystem": {"rootdirectory": str(root / "store")}},
            "http": {"addr": f"127.0.0.1:{self.port}"},
            "notifications": {
                "endpoints": [
                    {
                        "name": "fluxrelay",
                        "url": notify_url,
                        "headers": {"Authorization": [f"Bearer {token}"]},
                        "timeout": "2s",
                        "threshold": 3,
                        "backoff": "500ms",
                    }
                ]
            },
        }
        self.config_path.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Registry:
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [binary(REGISTRY_BIN, "docker-registry"), "serve", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        try:
            wait_port(self.port, timeout=20)
        except RuntimeError:
            self.stop()
            pytest.fail(f"docker-registry did not start:\n{self.log_tail()}")
        return self

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
async def ingress(nats_session: NatsServer) -> AsyncIterator[Ingress]:
    ing = await start_ingress(nats_session.url, receiver_docs("registry", "distribution", TOKEN))
    yield ing
    await ing.close()


@pytest.fixture
def registry(ingress: Ingress, tmp_path: Path) -> Iterator[Registry]:
    url = str(ingress.client.make_url(path_of("registry", TOKEN)))
    reg = Registry(tmp_path, url, TOKEN).start()
    yield reg
    reg.stop()


async def skopeo_copy(layout: Path, tag: str, registry: Registry, digest_file: Path) -> None:
    """Push the layout; run as a subprocess so the event loop keeps serving the receiver."""
    proc = await asyncio.create_subprocess_exec(
        binary(SKOPEO_BIN, "skopeo"),
        "--insecure-policy",
        "copy",
        "--dest-tls-verify=false",
        "--digestfile",
        str(digest_file),
        f"oci:{layout}:{tag}",
        f"docker://127.0.0.1:{registry.port}/demo/app:{tag}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={"HOME": str(layout.parent), "PATH": "/usr/bin:/bin"},
    )
    output, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    if proc.returncode != 0:
        pytest.fail(
            f"skopeo copy failed ({proc.returncode}):\n{output.decode(errors='replace')}\n"
            f"registry log:\n{registry.log_tail()}"
        )


async def wait_for_push(ingress: Ingress, registry: Registry, tag: str) -> list[Stored]:
    """Poll JetStream (bounded) until the manifest push event for ``tag`` is stored."""
    for _ in range(300):
        stored = await ingress.stored()
        if any(
            s.envelope.get("event") == "push"
            and (s.envelope.get("artifact") or {}).get("tag") == tag
            for s in stored
        ):
            return stored
        await asyncio.sleep(0.1)
    pytest.fail(f"no push event for tag {tag} was stored; registry log:\n{registry.log_tail()}")


async def test_a_skopeo_push_to_a_real_registry_stores_its_manifest_event(
    ingress: Ingress, registry: Registry, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    manifest_digest = oci_layout(layout, "v1")
    digest_file = tmp_path / "pushed.digest"
    await skopeo_copy(layout, "v1", registry, digest_file)
    pushed = digest_file.read_text().strip()
    assert pushed == manifest_digest, "skopeo pushed the manifest the test built, unconverted"

    stored = await wait_for_push(ingress, registry, "v1")
    [manifest_event] = [s for s in stored if (s.envelope.get("artifact") or {}).get("tag") == "v1"]
    env = envelope.validate(manifest_event.envelope)
    assert env["provider"] == "distribution"
    assert env["event"] == "push"
    artifact = env["artifact"]
    assert artifact is not None
    assert artifact["repository"] == "demo/app"
    assert artifact["tag"] == "v1"
    assert artifact["digest"] == pushed
    assert artifact["media_type"] == OCI_MANIFEST
    assert artifact["registry"] == f"127.0.0.1:{registry.port}"
    assert artifact["url"] is not None and pushed in artifact["url"]
    # The delivery id is the registry's own event id, and the payload is what it sent.
    payload_events = env["payload"]["events"]
    assert env["delivery_id"] in [e["id"] for e in payload_events]
    assert manifest_event.headers["Nats-Msg-Id"] == env["id"]
    # Every stored message is a distinct registry event (blob pushes come as their own events).
    ids = [s.envelope["delivery_id"] for s in stored]
    assert len(ids) == len(set(ids))
    assert all(s.envelope["artifact"]["repository"] == "demo/app" for s in stored)


async def test_a_registry_with_the_wrong_token_is_refused_and_nothing_is_stored(
    ingress: Ingress, tmp_path: Path
) -> None:
    url = str(ingress.client.make_url(path_of("registry", TOKEN)))
    wrong = Registry(tmp_path, url, "not-the-token").start()
    try:
        layout = tmp_path / "layout"
        oci_layout(layout, "v2")
        await skopeo_copy(layout, "v2", wrong, tmp_path / "pushed.digest")
        for _ in range(300):
            if "400 Bad Request" in wrong.log_path.read_text(errors="replace"):
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail(f"the registry never reported a refused notification:\n{wrong.log_tail()}")
        assert await ingress.stored() == []
    finally:
        wrong.stop()
