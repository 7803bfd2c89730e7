"""``fluxrelay-receiver send``: sign and POST a delivery the way a provider would.

Users need this to test their own setup end to end (the signature, the path, the events
filter) without waiting for a real push; the quick start prints a ready-made command. It
signs with each provider's own scheme, from a given payload file or a built-in sample push.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Signer = Callable[[bytes, bytes, str], dict[str, str]]


def _hmac(key: bytes, body: bytes, algo: str = "sha256") -> str:
    return hmac.new(key, body, getattr(hashlib, algo)).hexdigest()


SIGNERS: dict[str, Signer] = {
    "github": lambda key, body, event: {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": "sha256=" + _hmac(key, body),
    },
    "gitea": lambda key, body, event: {
        "X-Gitea-Event": event,
        "X-Gitea-Delivery": str(uuid.uuid4()),
        "X-Gitea-Signature": _hmac(key, body),
    },
    "forgejo": lambda key, body, event: {
        "X-Forgejo-Event": event,
        "X-Forgejo-Delivery": str(uuid.uuid4()),
        "X-Forgejo-Signature": _hmac(key, body),
    },
    "gitlab": lambda key, body, event: {
        "X-Gitlab-Event": event if event != "push" else "Push Hook",
        "X-Gitlab-Event-UUID": str(uuid.uuid4()),
        "X-Gitlab-Token": key.decode(),
    },
    "bitbucket": lambda key, body, event: {
        "X-Event-Key": event if event != "push" else "repo:refs_changed",
        "X-Request-Id": str(uuid.uuid4()),
        "X-Hub-Signature": "sha256=" + _hmac(key, body),
    },
    "generic": lambda key, body, event: {},
    "generic-hmac": lambda key, body, event: {"X-Signature": "sha256=" + _hmac(key, body)},
    "harbor": lambda key, body, event: {"Authorization": key.decode()},
    "nexus": lambda key, body, event: {"X-Nexus-Webhook-Signature": _hmac(key, body, "sha1")},
    "distribution": lambda key, body, event: {"Authorization": "Bearer " + key.decode()},
    "cdevents": lambda key, body, event: {"Authorization": "Bearer " + key.decode()},
    # --token is "username:password" for Azure DevOps' basic authentication.
    "azuredevops": lambda key, body, event: {
        "Authorization": "Basic " + base64.b64encode(key).decode()
    },
}


def sample_push(repo_url: str, ref: str) -> dict[str, Any]:
    """A GitHub-shaped push (GitHub, Gitea and Forgejo share the shape)."""
    base = repo_url.removesuffix(".git")
    full_name = "/".join(base.rstrip("/").split("/")[-2:])
    after = hashlib.sha1(uuid.uuid4().bytes).hexdigest()  # noqa: S324 - a fake commit id
    return {
        "ref": ref,
        "before": "0" * 40,
        "after": after,
        "created": False,
        "deleted": False,
        "forced": False,
        "repository": {
            "full_name": full_name,
            "clone_url": base + ".git",
            "html_url": base,
            "ssh_url": f"git@{base.split('/')[2]}:{full_name}.git",
        },
        "commits": [{"id": after, "added": [], "modified": ["README.md"], "removed": []}],
    }


def build_request(args: argparse.Namespace) -> tuple[bytes, dict[str, str]]:
    if args.payload:
        body = Path(args.payload).read_bytes()
    else:
        body = json.dumps(sample_push(args.repo_url, args.ref)).encode()
    headers = {"Content-Type": args.content_type}
    headers.update(SIGNERS[args.provider](args.token.encode(), body, args.event))
    for header in args.header or []:
        name, _, value = header.partition(":")
        headers[name.strip()] = value.strip()
    return body, headers


def send_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fluxrelay-receiver send",
        description="Sign a delivery as PROVIDER would and POST it to a hook URL.",
    )
    parser.add_argument("--url", required=True, help="full hook URL (http://host:port/hook/...)")
    parser.add_argument("--provider", default="github", choices=sorted(SIGNERS))
    parser.add_argument("--token", required=True, help="the Receiver Secret's token")
    parser.add_argument("--event", default="push", help="provider event type (default push)")
    parser.add_argument("--payload", help="JSON file to send (default: a sample push)")
    parser.add_argument(
        "--repo-url",
        default="https://github.com/example/fleet.git",
        help="repository of the sample push",
    )
    parser.add_argument("--ref", default="refs/heads/main", help="ref of the sample push")
    parser.add_argument("--content-type", default="application/json")
    parser.add_argument(
        "--header", action="append", metavar="NAME:VALUE", help="extra header (repeatable)"
    )
    parser.add_argument(
        "--explain",
        type=float,
        nargs="?",
        const=60.0,
        metavar="SECONDS",
        help="then wait up to SECONDS (60) for the reconcilers and tell the delivery's story "
        "(fluxrelay-reconciler explain; NATS flags from the FLUXRELAY_NATS_* variables)",
    )
    parser.add_argument("--nats-url", help="NATS for --explain (default $FLUXRELAY_NATS_URL)")
    args = parser.parse_args(argv)
    body, headers = build_request(args)
    request = urllib.request.Request(args.url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310
            status, answer = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, answer = e.code, e.read()
    except urllib.error.URLError as e:
        print(f"fluxrelay-receiver send: {e.reason}", file=sys.stderr)
        return 1
    print(f"{status} {answer.decode(errors='replace')}", flush=True)
    if status >= 300:
        return 1
    if args.explain is not None:
        return _explain(answer, args.explain, args.nats_url)
    return 0


def _explain(answer: bytes, wait: float, nats_url: str | None) -> int:
    """Hand the stored delivery to ``fluxrelay-reconciler explain``. The two commands ship in
    one package but the receiver never imports the reconciler (import-linter contract), so
    this runs it as a process, with this one's environment (its NATS credentials)."""
    try:
        event_id = str(json.loads(answer)["id"])
    except (ValueError, KeyError, TypeError):
        print("fluxrelay-receiver send: the answer names no stored event", file=sys.stderr)
        return 1
    command = [sys.executable, "-m", "reconciler", "explain", event_id, "--wait", str(wait)]
    if nats_url:
        command += ["--nats-url", nats_url]
    return subprocess.run(command, check=False).returncode
