"""Rate limits: a token bucket per Receiver and per source address, answered 429 with an
integer ``Retry-After`` (at least 1) before the body is read, counted in metrics; the source
map is bounded (least recently seen forgotten), and ``X-Forwarded-For`` only distinguishes
sources behind a trusted proxy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from receiver.cli import serve_parser, settings_from
from receiver.errors import ConfigError
from receiver.limiting import Limiter, retry_after
from receiver.settings import Rate, parse_networks
from tests.support.ingress import Ingress, hmac_hex, path_of, receiver_docs, start_ingress
from tests.support.natsd import NatsServer

BODY = b'{"ref": "refs/heads/main"}'


def signed(delivery: str, body: bytes = BODY) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": "sha256=" + hmac_hex("s3cr3t-s3cr3t-s3cr3t", body),
    }


async def post(ing: Ingress, name: str, n: int, **headers: str) -> Any:
    return await ing.client.post(path_of(name), data=BODY, headers={**signed(f"d{n}"), **headers})


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_tells_when_the_next_token_comes() -> None:
    clock = FakeClock()
    limiter = Limiter(Rate(0.5, 2), max_keys=10, clock=clock)
    assert limiter.take("a") == 0.0
    assert limiter.take("a") == 0.0
    assert limiter.take("a") == pytest.approx(2.0)
    clock.now += 1.0
    assert limiter.take("a") == pytest.approx(1.0)
    clock.now += 1.0
    assert limiter.take("a") == 0.0
    assert limiter.take("b") == 0.0, "keys have their own buckets"


def test_the_bucket_map_is_bounded_and_forgets_the_least_recently_seen() -> None:
    clock = FakeClock()
    limiter = Limiter(Rate(0.001, 1), max_keys=3, clock=clock)
    for key in ("a", "b", "c"):
        assert limiter.take(key) == 0.0
    assert limiter.take("a") > 0  # "a" is now the most recently seen
    assert limiter.take("d") == 0.0
    assert len(limiter) == 3
    assert limiter.take("a") > 0, "a was kept"
    assert limiter.take("b") == 0.0, "b was forgotten (least recently seen): a fresh bucket"
    for i in range(10_000):
        limiter.take(i)
    assert len(limiter) == 3


@pytest.mark.parametrize(
    ("wait", "header"),
    [
        pytest.param(0.0001, "1", id="never-0"),
        pytest.param(1.0, "1", id="exact"),
        pytest.param(1.2, "2", id="rounded-up"),
        pytest.param(99.5, "100", id="large"),
    ],
)
def test_retry_after_is_whole_seconds_at_least_one(wait: float, header: str) -> None:
    assert retry_after(wait) == header


@pytest.mark.parametrize(
    ("raw", "rate"),
    [
        pytest.param("10", Rate(10, 10), id="burst-defaults-to-rate"),
        pytest.param("0.5", Rate(0.5, 1), id="slow-rate-burst-1"),
        pytest.param("5/20", Rate(5, 20), id="rate-and-burst"),
    ],
)
def test_rate_flags(raw: str, rate: Rate) -> None:
    args = serve_parser().parse_args(["--rate-limit-receiver", raw, "--rate-limit-source", raw])
    settings = settings_from(args, {})
    assert settings.rate_limit_receiver == rate
    assert settings.rate_limit_source == rate


@pytest.mark.parametrize("raw", ["0", "-1", "x", "5/0", "nan", "inf"])
def test_invalid_rates_are_refused(raw: str) -> None:
    with pytest.raises(ConfigError):
        settings_from(serve_parser().parse_args(["--rate-limit-receiver", raw]), {})


@pytest.fixture
async def limited(nats_session: NatsServer) -> AsyncIterator[Ingress]:
    docs = receiver_docs("a", "github") + receiver_docs(
        "b", "github", token="other-s3cr3t-s3cr3t-s3cr3t"
    )
    ing = await start_ingress(nats_session.url, docs, rate_limit_receiver=Rate(0.01, 2))
    yield ing
    await ing.close()


async def test_a_receiver_over_its_limit_gets_429_with_retry_after(limited: Ingress) -> None:
    assert (await post(limited, "a", 1)).status == 202
    assert (await post(limited, "a", 2)).status == 202
    refused = await post(limited, "a", 3)
    assert refused.status == 429
    assert (await refused.json())["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1
    assert len(await limited.stored()) == 2
    other = await limited.client.post(
        path_of("b", "other-s3cr3t-s3cr3t-s3cr3t"),
        data=BODY,
        headers={
            **signed("b1"),
            "X-Hub-Signature-256": "sha256=" + hmac_hex("other-s3cr3t-s3cr3t-s3cr3t", BODY),
        },
    )
    assert other.status == 202, "another receiver has its own bucket"
    metrics = limited.state.metrics
    assert metrics.rate_limited.labels("receiver")._value.get() == 1
    assert metrics.deliveries.value("default/a", "github", "", "rate_limited") == 1


async def test_a_limited_request_is_answered_before_its_body_is_sent(limited: Ingress) -> None:
    for n in (1, 2):
        assert (await post(limited, "a", n)).status == 202
    server = limited.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(
            f"POST {path_of('a')} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 100000\r\n\r\n".encode()
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 20)
    finally:
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 429"), status_line


@pytest.fixture
async def by_source(nats_session: NatsServer) -> AsyncIterator[Ingress]:
    ing = await start_ingress(
        nats_session.url,
        receiver_docs("a", "github"),
        rate_limit_source=Rate(0.01, 1),
        trusted_proxies=parse_networks("127.0.0.1"),
    )
    yield ing
    await ing.close()


async def test_each_source_behind_a_trusted_proxy_has_its_own_bucket(by_source: Ingress) -> None:
    assert (await post(by_source, "a", 1, **{"X-Forwarded-For": "203.0.113.7"})).status == 202
    assert (await post(by_source, "a", 2, **{"X-Forwarded-For": "203.0.113.8"})).status == 202
    again = await post(by_source, "a", 3, **{"X-Forwarded-For": "203.0.113.7"})
    assert again.status == 429
    assert int(again.headers["Retry-After"]) >= 1
    assert by_source.state.metrics.rate_limited.labels("source")._value.get() == 1
    assert by_source.state.metrics.rate_limit_sources._value.get() == 2


async def test_the_source_limit_applies_before_the_path_is_looked_up(by_source: Ingress) -> None:
    xff = {"X-Forwarded-For": "198.51.100.1"}
    assert (await by_source.client.post("/hook/" + "0" * 64, headers=xff)).status == 404
    scanning = await by_source.client.post("/hook/" + "1" * 64, headers=xff)
    assert scanning.status == 429, "guessing hook paths is throttled too"


async def test_without_trusted_proxies_forwarded_addresses_are_ignored(
    nats_session: NatsServer,
) -> None:
    ing = await start_ingress(
        nats_session.url, receiver_docs("a", "github"), rate_limit_source=Rate(0.01, 1)
    )
    try:
        assert (await post(ing, "a", 1, **{"X-Forwarded-For": "203.0.113.7"})).status == 202
        spoofed = await post(ing, "a", 2, **{"X-Forwarded-For": "203.0.113.99"})
        assert spoofed.status == 429, "a client cannot get a fresh bucket by inventing an XFF"
    finally:
        await ing.close()
