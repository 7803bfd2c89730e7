"""Source allow-lists (``fluxrelay.io/allowed-sources`` on a Receiver) and trusted proxies:
the proof a path-only provider (dockerhub, quay, acr) can add. A source outside the list is
403 and nothing is stored; ``X-Forwarded-For`` counts only from ``--trusted-proxies``, walked
from the right so a client cannot prepend an allowed address; bad annotations fail at load."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from receiver.addressing import ALLOWED_SOURCES_ANNOTATION, client_address
from receiver.config.spec import specs_from_documents
from receiver.errors import ConfigError
from receiver.settings import parse_networks
from tests.support.ingress import Ingress, path_of, receiver_docs, start_ingress
from tests.support.natsd import NatsServer

PUSH = json.dumps(
    {"repository": {"repo_name": "team/app", "repo_url": "https://hub"}, "push_data": {"tag": "1"}}
).encode()
JSON = {"Content-Type": "application/json"}


def annotated(name: str, kind: str, allowed: str) -> list[dict[str, Any]]:
    docs = receiver_docs(name, kind)
    docs[1]["metadata"]["annotations"] = {ALLOWED_SOURCES_ANNOTATION: allowed}
    return docs


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "client"),
    [
        pytest.param("192.0.2.5", ["10.0.0.1"], "", "192.0.2.5", id="untrusted-peer-xff-ignored"),
        pytest.param("127.0.0.1", [], "127.0.0.1", "127.0.0.1", id="trusted-peer-no-xff"),
        pytest.param("127.0.0.1", ["10.0.0.1"], "127.0.0.1", "10.0.0.1", id="one-hop"),
        pytest.param(
            "127.0.0.1",
            ["10.9.9.9, 198.51.100.4"],
            "127.0.0.1",
            "198.51.100.4",
            id="spoofed-left-entry-not-believed",
        ),
        pytest.param(
            "127.0.0.1",
            ["198.51.100.4, 172.16.0.2"],
            "127.0.0.1, 172.16.0.0/12",
            "198.51.100.4",
            id="two-trusted-hops",
        ),
        pytest.param(
            "127.0.0.1",
            ["198.51.100.4", "172.16.0.2"],
            "127.0.0.1,172.16.0.0/12",
            "198.51.100.4",
            id="several-headers",
        ),
        pytest.param(
            "127.0.0.1",
            ["garbage, 172.16.0.2"],
            "127.0.0.1,172.16.0.0/12",
            "172.16.0.2",
            id="unparseable-stops-at-the-hop-that-added-it",
        ),
        pytest.param("127.0.0.1", ["[2001:db8::1]:443"], "127.0.0.1", "2001:db8::1", id="v6"),
        pytest.param("::ffff:10.0.0.7", [], "", "10.0.0.7", id="v4-mapped-peer"),
        pytest.param(None, ["10.0.0.1"], "127.0.0.1", None, id="unknown-peer"),
    ],
)
def test_client_address(
    peer: str | None, forwarded: list[str], trusted: str, client: str | None
) -> None:
    found = client_address(peer, forwarded, parse_networks(trusted))
    assert (str(found) if found is not None else None) == client


@pytest.mark.parametrize(
    ("allowed", "message"),
    [
        pytest.param("10.0.0.0/8, not-an-ip", "not-an-ip", id="garbage"),
        pytest.param("", "empty", id="empty-would-read-as-allow-all"),
        pytest.param("10.0.0.0/33", "10.0.0.0/33", id="bad-prefix"),
    ],
)
def test_a_malformed_allow_list_fails_at_load(allowed: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        specs_from_documents(annotated("dh", "dockerhub", allowed), "test")
    assert ALLOWED_SOURCES_ANNOTATION in str(e.value)


@pytest.fixture
async def behind_proxy(nats_session: NatsServer) -> AsyncIterator[Ingress]:
    docs = annotated("dh", "dockerhub", "192.0.2.1, 10.0.0.0/8") + receiver_docs("open", "quay")
    ing = await start_ingress(nats_session.url, docs, trusted_proxies=parse_networks("127.0.0.1"))
    yield ing
    await ing.close()


@pytest.mark.parametrize(
    ("forwarded", "status"),
    [
        pytest.param("10.1.2.3", 202, id="allowed-cidr"),
        pytest.param("192.0.2.1", 202, id="allowed-address"),
        pytest.param("192.0.2.2", 403, id="neighbour-of-allowed-address"),
        pytest.param("10.1.2.3, 198.51.100.9", 403, id="allowed-address-prepended-by-client"),
        pytest.param(None, 403, id="the-proxy-itself"),
    ],
)
async def test_allow_list_behind_a_trusted_proxy(
    behind_proxy: Ingress, forwarded: str | None, status: int
) -> None:
    headers = dict(JSON)
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    resp = await behind_proxy.client.post(path_of("dh"), data=PUSH, headers=headers)
    assert resp.status == status, await resp.text()
    if status == 403:
        assert (await resp.json())["code"] == "source_not_allowed"
    assert len(await behind_proxy.stored()) == (1 if status == 202 else 0)


async def test_a_receiver_without_the_annotation_accepts_any_source(behind_proxy: Ingress) -> None:
    body = json.dumps({"docker_url": "quay.io/team/app", "updated_tags": ["1"]}).encode()
    resp = await behind_proxy.client.post(
        path_of("open"), data=body, headers={**JSON, "X-Forwarded-For": "203.0.113.50"}
    )
    assert resp.status == 202, await resp.text()


async def test_forwarded_addresses_from_an_untrusted_peer_are_ignored(
    nats_session: NatsServer,
) -> None:
    ing = await start_ingress(nats_session.url, annotated("dh", "dockerhub", "10.0.0.0/8"))
    try:
        resp = await ing.client.post(
            path_of("dh"), data=PUSH, headers={**JSON, "X-Forwarded-For": "10.1.2.3"}
        )
        assert resp.status == 403
        assert await ing.stored() == []
    finally:
        await ing.close()


async def test_the_direct_peer_is_checked_without_a_proxy(nats_session: NatsServer) -> None:
    ing = await start_ingress(nats_session.url, annotated("dh", "dockerhub", "127.0.0.0/8"))
    try:
        resp = await ing.client.post(path_of("dh"), data=PUSH, headers=JSON)
        assert resp.status == 202, await resp.text()
    finally:
        await ing.close()
