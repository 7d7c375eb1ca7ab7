"""GET /metrics: admin-only by default, and the figures on-call needs after real traffic."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import asyncpg
from aiohttp.test_utils import TestServer

from tests.conftest import GatewayFactory, flushed_usage
from tests.fakes.upstream import FakeUpstream, anthropic_error

BODY = {"model": "claude-fast", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


async def get_metrics(server: TestServer, key: str | None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as s, s.get(str(server.make_url("/metrics")), headers=headers) as r:
        return r.status, await r.text()


def value(text: str, sample: str) -> float:
    """The value of one sample line, e.g. 'gateway_requests_total{alias="claude-fast",...}'."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {sample!r} in:\n" + "\n".join(x for x in text.splitlines() if "gateway_" in x))


async def post(server: TestServer, key: str, body: Any = None, path: str = "/v1/messages") -> int:
    async with (
        aiohttp.ClientSession() as s,
        s.post(str(server.make_url(path)), json=body or BODY, headers={"x-api-key": key}) as r,
    ):
        await r.read()
        return r.status


async def test_metrics_need_an_admin_key(gateway: TestServer, make_key: Any) -> None:
    user, _ = await make_key("user")
    admin, _ = await make_key("ops", admin=True)
    assert (await get_metrics(gateway, None))[0] == 401
    assert (await get_metrics(gateway, user))[0] == 403
    status, text = await get_metrics(gateway, admin)
    assert status == 200 and "gateway_requests_total" in text


async def test_metrics_after_traffic(
    make_gateway: GatewayFactory, upstream: FakeUpstream, make_key: Any, make_user: Any, pool: asyncpg.Pool
) -> None:
    server = await make_gateway(
        providers={"anthropic": {"type": "anthropic", "base_url": upstream.url, "retries": {"backoff_s": 0.01}}}
    )
    admin, _ = await make_key("ops", admin=True)
    key, _ = await make_user(limit_tokens=1)
    upstream.usage(input_tokens=100, output_tokens=5, cache_read_input_tokens=50)
    assert await post(server, admin) == 200
    assert await post(server, admin, {**BODY, "stream": True}) == 200
    upstream.enqueue(status=529, body=anthropic_error("overloaded_error", "busy"))
    assert await post(server, admin) == 200  # retried
    assert await post(server, admin, {**BODY, "model": "nope"}) == 404
    assert await post(server, key) == 200
    assert await post(server, key) == 429  # over its token limit
    await flushed_usage(server, pool)

    _, text = await get_metrics(server, admin)
    labels = 'alias="claude-fast",route="messages",status="200"'
    assert value(text, f"gateway_requests_total{{{labels}}}") == 4
    assert value(text, 'gateway_requests_total{alias="-",route="messages",status="404"}') == 1
    assert value(text, 'gateway_requests_total{alias="-",route="messages",status="429"}') == 1
    assert value(text, 'gateway_request_seconds_count{route="messages"}') == 6
    assert value(text, 'gateway_time_to_first_byte_seconds_count{route="messages"}') == 4
    assert value(text, 'gateway_tokens_total{alias="claude-fast",kind="input"}') == 400
    assert value(text, 'gateway_tokens_total{alias="claude-fast",kind="cache_read"}') == 200
    assert value(text, 'gateway_cost_usd_total{alias="claude-fast"}') > 0
    assert value(text, 'gateway_upstream_errors_total{provider="anthropic",reason="529"}') == 1
    assert value(text, 'gateway_upstream_retries_total{provider="anthropic"}') == 1
    assert value(text, 'gateway_budget_rejections_total{limit="monthly_token_limit"}') == 1
    assert value(text, "gateway_usage_queue_rows") == 0
    assert value(text, "gateway_usage_flush_seconds_count") >= 1
    assert value(text, "gateway_db_pool_connections_idle") >= 1


async def test_metrics_on_a_private_port_need_no_key(make_gateway: GatewayFactory, key: str) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = await make_gateway(metrics={"port": port})
    assert await post(server, key) == 200
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        assert r.status == 200 and "gateway_requests_total" in await r.text()


async def test_every_response_and_log_line_carries_the_request_id(gateway: TestServer, key: str) -> None:
    async with aiohttp.ClientSession() as s:
        url = str(gateway.make_url("/v1/messages"))
        async with s.post(url, json=BODY, headers={"x-api-key": key, "x-request-id": "trace-123"}) as r:
            assert r.headers["x-request-id"] == "trace-123"
        async with s.post(url, json=BODY, headers={"x-api-key": key}) as r:
            assert re.fullmatch(r"[0-9a-f]{24}", r.headers["x-request-id"])
        async with s.post(url, data=b"{", headers={"x-api-key": key, "Content-Type": "application/json"}) as r:
            assert r.status == 400 and r.headers["x-request-id"]
