"""Upstream faults: retries with backoff and Retry-After, fallbacks to other deployments, cool-downs."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from gateway.config import Retries
from gateway.retry_policy import backoff_s, retry_after_s
from tests.conftest import UPSTREAM_KEY, GatewayFactory, flushed_usage
from tests.fakes.upstream import FakeUpstream, anthropic_error

BODY = {"model": "claude-fast", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
DEAD = "http://127.0.0.1:9"  # nothing listens on the discard port: connection refused at once


def fast_retries(**overrides: Any) -> dict[str, Any]:
    return {"attempts": 3, "backoff_s": 0.01, "max_backoff_s": 0.05, **overrides}


def provider(url: str, **retries: Any) -> dict[str, Any]:
    return {"type": "anthropic", "base_url": url, "api_key": UPSTREAM_KEY, "retries": fast_retries(**retries)}


async def post(server: TestServer, key: str, path: str = "/v1/messages", body: Any = None) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(str(server.make_url(path)), json=body or BODY, headers={"Authorization": f"Bearer {key}"}) as r,
    ):
        return r.status, await r.read()


@pytest.mark.parametrize("status", [429, 500, 502, 503, 529])
async def test_retryable_status_is_retried_then_served(
    make_gateway: GatewayFactory, upstream: FakeUpstream, key: str, pool: asyncpg.Pool, status: int
) -> None:
    server = await make_gateway(providers={"anthropic": provider(upstream.url)})
    upstream.enqueue(status=status, body=anthropic_error("api_error", "try again"))
    got, _ = await post(server, key)
    assert got == 200 and len(upstream.requests) == 2
    [row] = await flushed_usage(server, pool)
    assert row["status"] == 200  # one row for the request, however many tries it took


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413])
async def test_client_errors_are_not_retried(
    make_gateway: GatewayFactory, upstream: FakeUpstream, key: str, status: int
) -> None:
    server = await make_gateway(providers={"anthropic": provider(upstream.url)})
    upstream.enqueue(status=status, body=anthropic_error("invalid_request_error", "no"))
    got, _ = await post(server, key)
    # 401/403 refuse the gateway's own provider key: a 502 to the caller (tests/test_first_hour.py)
    assert got == (502 if status in (401, 403) else status) and len(upstream.requests) == 1


async def test_retry_after_is_honoured(make_gateway: GatewayFactory, upstream: FakeUpstream, key: str) -> None:
    server = await make_gateway(providers={"anthropic": provider(upstream.url)})
    upstream.enqueue(status=429, body=anthropic_error("rate_limit_error", "slow"), headers={"retry-after": "0.3"})
    started = time.monotonic()
    assert (await post(server, key))[0] == 200
    assert time.monotonic() - started >= 0.3


async def test_retry_after_beyond_the_budget_is_not_waited_for(
    make_gateway: GatewayFactory, upstream: FakeUpstream, key: str
) -> None:
    server = await make_gateway(providers={"anthropic": provider(upstream.url, budget_s=0.5)})
    upstream.enqueue(status=429, body=anthropic_error("rate_limit_error", "slow"), headers={"retry-after": "30"})
    started = time.monotonic()
    status, body = await post(server, key)
    assert status == 429 and b"slow" in body and time.monotonic() - started < 1


async def test_after_the_last_try_the_upstream_error_reaches_the_caller_in_its_dialect(
    make_gateway: GatewayFactory, upstream: FakeUpstream, key: str, pool: asyncpg.Pool
) -> None:
    server = await make_gateway(providers={"anthropic": provider(upstream.url)})
    for _ in range(6):
        upstream.enqueue(status=529, body=anthropic_error("overloaded_error", "Overloaded"))
    status, body = await post(server, key)
    assert status == 529 and b'"overloaded_error"' in body and len(upstream.requests) == 3
    chat = {"model": "claude-fast", "messages": [{"role": "user", "content": "hi"}]}
    status, body = await post(server, key, "/v1/chat/completions", chat)
    assert status == 503 and b'"message":"Overloaded"' in body
    assert [r["status"] for r in await flushed_usage(server, pool)] == [529, 503]


async def test_a_stream_is_retried_before_its_first_byte(
    make_gateway: GatewayFactory, upstream: FakeUpstream, key: str
) -> None:
    server = await make_gateway(providers={"anthropic": provider(upstream.url)})
    upstream.enqueue(status=529, body=anthropic_error("overloaded_error", "Overloaded"))
    status, body = await post(server, key, body={**BODY, "stream": True})
    assert status == 200 and body.count(b"event: content_block_delta") == 5 and b"event: message_stop" in body


async def test_a_stream_broken_after_its_first_byte_is_not_retried(
    make_gateway: GatewayFactory, upstream: FakeUpstream, key: str
) -> None:
    server = await make_gateway(providers={"anthropic": provider(upstream.url)})
    upstream.enqueue(reset_after_events=3)
    status, body = await post(server, key, body={**BODY, "stream": True})
    assert status == 200 and b"event: error" in body
    assert len(upstream.requests) == 1  # a retry would replay events the caller already has


async def test_fallback_serves_when_the_primary_is_down_and_the_primary_cools_down(
    make_gateway: GatewayFactory, upstream: FakeUpstream, key: str, pool: asyncpg.Pool
) -> None:
    server = await make_gateway(
        providers={
            "primary": provider(DEAD, attempts=2, cooldown_after=2, cooldown_s=60),
            "anthropic": provider(upstream.url),
        },
        models={
            "claude-fast": {
                "provider": "primary",
                "model": "claude-haiku-4-5",
                "fallbacks": [{"provider": "anthropic", "model": "claude-sonnet-4-5"}],
            }
        },
    )
    for _ in range(4):
        assert (await post(server, key))[0] == 200
    assert {r.json["model"] for r in upstream.requests} == {"claude-sonnet-4-5"}
    rows = await flushed_usage(server, pool)
    assert {(r["provider"], r["provider_model"]) for r in rows} == {("anthropic", "claude-sonnet-4-5")}
    # The primary failed twice: it rests, so later requests go straight to the fallback (fast).
    started = time.monotonic()
    assert (await post(server, key))[0] == 200
    assert time.monotonic() - started < 0.2


async def test_connection_errors_everywhere_are_a_502(
    make_gateway: GatewayFactory, key: str, pool: asyncpg.Pool
) -> None:
    server = await make_gateway(
        providers={"anthropic": provider(DEAD), "backup": provider(DEAD)},
        models={
            "claude-fast": {
                "provider": "anthropic",
                "model": "m",
                "fallbacks": [{"provider": "backup", "model": "m"}],
            }
        },
    )
    status, body = await post(server, key)
    assert status == 502 and b'"type":"error"' in body
    assert [r["status"] for r in await flushed_usage(server, pool)] == [502]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({"retry-after": "2"}, 2.0, id="seconds"),
        pytest.param({"Retry-After": "0.25"}, 0.25, id="fraction"),
        pytest.param({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0, id="date-in-the-past"),
        pytest.param({"retry-after": "soon"}, None, id="garbage"),
        pytest.param({}, None, id="absent"),
    ],
)
def test_retry_after_parsing(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_s(headers) == expected


def test_backoff_is_jittered_and_capped() -> None:
    retries = Retries(backoff_s=1.0, max_backoff_s=4.0)
    delays = [backoff_s(retries, attempt) for attempt in range(10) for _ in range(20)]
    assert all(0 <= d <= 4.0 for d in delays) and len(set(delays)) > 100
