"""Monthly token and USD limits, enforced from month-to-date counters shared by every gateway process."""

from __future__ import annotations

import asyncio
import math
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import asyncpg
import openai
import pytest
from aiohttp.test_utils import TestServer

from gateway import db
from gateway.app import SERVICES
from tests.conftest import GatewayFactory, flushed_usage
from tests.fakes.upstream import FakeUpstream
from tests.net import free_port

ROOT = Path(__file__).resolve().parent.parent
MakeUser = Callable[..., Awaitable[tuple[str, db.KeyRow]]]
MESSAGES = {"model": "claude-fast", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
CHAT = {"model": "claude-fast", "messages": [{"role": "user", "content": "hi"}]}


async def call(server: TestServer, key: str, *, route: str = "/v1/messages", body: Any = None) -> tuple[int, Any]:
    payload = body if body is not None else (MESSAGES if route == "/v1/messages" else CHAT)
    async with (
        aiohttp.ClientSession() as s,
        s.post(str(server.make_url(route)), json=payload, headers={"Authorization": f"Bearer {key}"}) as r,
    ):
        return r.status, await r.json()


async def spend_until_refused(server: TestServer, key: str, *, limit: int = 50, route: str = "/v1/messages") -> int:
    """Send requests one by one until the gateway answers 429; returns how many were served."""
    for served in range(limit):
        status, _ = await call(server, key, route=route)
        if status == 429:
            return served
        assert status == 200
    raise AssertionError(f"no 429 after {limit} requests")


async def test_token_limit_refuses_in_both_dialects_with_the_original_fields(
    gateway: TestServer, upstream: FakeUpstream, make_user: MakeUser
) -> None:
    upstream.usage(input_tokens=40, output_tokens=5)  # 45 tokens a request (5 words)
    key, _ = await make_user(limit_tokens=100)
    assert await spend_until_refused(gateway, key) == 3  # 0, 45, 90 < 100; then 135 >= 100

    status, body = await call(gateway, key)
    assert status == 429
    assert body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Monthly token limit exceeded (135 / 100 tokens)"},
        "tokensUsed": 135,
        "tokenLimit": 100,
    }
    status, body = await call(gateway, key, route="/v1/chat/completions")
    assert status == 429
    assert body["error"]["type"] == "budget_exceeded" and body["error"]["code"] == "monthly_token_limit"
    assert body["error"]["message"] == "Monthly token limit exceeded (135 / 100 tokens)"
    assert (body["tokensUsed"], body["tokenLimit"]) == (135, 100)


async def test_usd_limit_per_key(gateway: TestServer, upstream: FakeUpstream, make_user: MakeUser) -> None:
    # claude-haiku-4-5: 1000 input tokens at $1/M + 5 output at $5/M = $0.001025 a request
    upstream.usage(input_tokens=1000, output_tokens=5)
    key, _ = await make_user(limit_usd=0.002)
    assert await spend_until_refused(gateway, key) == 2
    status, body = await call(gateway, key)
    assert status == 429
    assert body["error"]["message"] == "Monthly budget exceeded (0.00 / 0.00 USD)"
    assert body["costUsedUsd"] == pytest.approx(0.00205) and body["costLimitUsd"] == pytest.approx(0.002)


async def test_sdks_parse_the_429_as_their_rate_limit_error(
    gateway: TestServer, upstream: FakeUpstream, make_user: MakeUser
) -> None:
    upstream.usage(input_tokens=100, output_tokens=5)
    key, _ = await make_user(limit_tokens=10)
    await spend_until_refused(gateway, key)
    claude = anthropic.AsyncAnthropic(base_url=str(gateway.make_url("/")), api_key=key, max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as anthropic_err:
        await claude.messages.create(**MESSAGES)
    assert anthropic_err.value.body["tokensUsed"] == 105  # type: ignore[index]
    await claude.close()
    gpt = openai.AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key=key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as openai_err:
        await gpt.chat.completions.create(**CHAT)
    assert openai_err.value.code == "monthly_token_limit"
    await gpt.close()


async def test_enforce_false_serves_and_still_records(
    make_gateway: GatewayFactory, upstream: FakeUpstream, make_user: MakeUser, pool: asyncpg.Pool
) -> None:
    server = await make_gateway(budgets={"enforce": False})
    upstream.usage(input_tokens=100, output_tokens=5)
    key, row = await make_user(limit_tokens=10)
    for _ in range(3):
        assert (await call(server, key))[0] == 200
    rows = await flushed_usage(server, pool)
    assert len(rows) == 3 and {r["user_id"] for r in rows} == {row.user_id}


async def test_month_rollover_starts_a_fresh_budget(
    make_gateway: GatewayFactory, upstream: FakeUpstream, make_user: MakeUser, pool: asyncpg.Pool
) -> None:
    now = [datetime(2026, 1, 31, 23, 59, tzinfo=UTC)]
    server = await make_gateway(clock=lambda: now[0])
    upstream.usage(input_tokens=60, output_tokens=5)
    key, _row = await make_user(limit_tokens=100)
    assert await spend_until_refused(server, key) == 2
    now[0] = datetime(2026, 2, 1, 0, 1, tzinfo=UTC)
    assert (await call(server, key))[0] == 200
    await flushed_usage(server, pool)
    counters = await pool.fetch("SELECT month, tokens FROM usage_counters WHERE scope = 'user' ORDER BY month")
    assert [(str(c["month"]), c["tokens"]) for c in counters] == [("2026-01-01", 130), ("2026-02-01", 65)]
    await server.app[SERVICES].month_view.refresh()  # a refresh in February must not bring January back
    assert (await call(server, key))[0] == 200


async def test_cost_counts_cache_tokens_at_their_own_prices(
    gateway: TestServer, upstream: FakeUpstream, make_user: MakeUser, pool: asyncpg.Pool
) -> None:
    upstream.usage(input_tokens=10, output_tokens=5, cache_read_input_tokens=10_000, cache_creation_input_tokens=2_000)
    key, _row = await make_user()
    assert (await call(gateway, key))[0] == 200
    [usage] = await flushed_usage(gateway, pool)
    # haiku: 10*$1 + 5*$5 + 10000*$0.10 + 2000*$1.25 per million
    assert usage["cost_usd"] == Decimal("0.00353500")
    counter = await pool.fetchrow("SELECT tokens, cost_usd FROM usage_counters WHERE scope = 'key'")
    assert (counter["tokens"], counter["cost_usd"]) == (12_015, Decimal("0.00353500"))


async def test_unpriced_model_cost_is_unknown_not_zero(
    gateway: TestServer, upstream: FakeUpstream, make_user: MakeUser, pool: asyncpg.Pool
) -> None:
    key, _ = await make_user()
    assert (await call(gateway, key, body={**MESSAGES, "model": "claude-unpriced"}))[0] == 200
    [usage] = await flushed_usage(gateway, pool)
    assert usage["cost_usd"] is None
    assert await pool.fetchval("SELECT unpriced FROM usage_counters WHERE scope = 'key'") == 1


async def test_client_dropping_a_stream_is_billed_for_what_it_used(
    gateway: TestServer, upstream: FakeUpstream, make_user: MakeUser, pool: asyncpg.Pool
) -> None:
    upstream.usage(input_tokens=33)
    upstream.enqueue(chunk_delay_s=0.05)
    key, _ = await make_user()
    async with aiohttp.ClientSession() as s:
        r = await s.post(
            str(gateway.make_url("/v1/messages")), json={**MESSAGES, "stream": True}, headers={"x-api-key": key}
        )
        await r.content.readline()  # the first line of message_start: the stream is under way
        r.close()  # the client goes away
    for _ in range(50):
        rows = await flushed_usage(gateway, pool)
        if rows:
            break
        await asyncio.sleep(0.05)
    [usage] = rows
    assert usage["status"] == 499 and usage["input_tokens"] == 33 and usage["streamed"] is True


async def test_two_processes_share_one_budget(
    make_gateway: GatewayFactory, upstream: FakeUpstream, make_user: MakeUser, pool: asyncpg.Pool
) -> None:
    """Two gateways (separate caches, views and usage queues) on one database enforce one limit."""
    refresh_s, flush_s, pause_s = 0.1, 0.02, 0.05
    config = {"budgets": {"refresh_s": refresh_s}, "usage_log": {"flush_interval_ms": int(flush_s * 1000)}}
    first, second = await make_gateway(**config), await make_gateway(**config)
    upstream.usage(input_tokens=95, output_tokens=5)  # 100 tokens a request
    limit = 2_000  # 20 requests' worth
    key, _ = await make_user(limit_tokens=limit)

    async def client(server: TestServer, results: list[int]) -> None:
        for _ in range(60):
            status, _ = await call(server, key)
            results.append(status)
            if status == 429:
                return
            await asyncio.sleep(pause_s)

    results: list[int] = []
    clients = (first, second, first, second)
    await asyncio.gather(*(client(s, results) for s in clients))
    served = results.count(200)
    # The README's bound: the requests in flight when the limit is reached, plus what the other process
    # serves before this one sees it (its flush interval + this one's refresh interval), with 60 % slack
    # for a loaded machine. Its two clients send at most one request per pause each.
    in_flight = len(clients)
    other = math.ceil((flush_s + refresh_s) * 1.6 * 2 / pause_s)
    assert limit // 100 <= served <= limit // 100 + in_flight + other
    # Both processes now refuse, each seeing the other's usage.
    await asyncio.sleep(refresh_s * 3)
    assert (await call(first, key))[0] == 429 and (await call(second, key))[0] == 429
    await flushed_usage(first, pool)
    assert len(await flushed_usage(second, pool)) == served  # every served request left exactly one row


async def test_usage_rows_equal_requests_served_after_a_burst(
    gateway: TestServer, make_user: MakeUser, pool: asyncpg.Pool
) -> None:
    key, _ = await make_user()
    statuses = await asyncio.gather(*(call(gateway, key) for _ in range(60)))
    assert all(s == 200 for s, _ in statuses)
    assert len(await flushed_usage(gateway, pool)) == 60
    assert await pool.fetchval("SELECT requests FROM usage_counters WHERE scope = 'user'") == 60


async def test_two_gateway_serve_processes_share_one_budget(
    database_url: str, upstream: FakeUpstream, make_user: MakeUser, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """The same as above with two real `gateway serve` processes (separate interpreters) on one database."""
    upstream.usage(input_tokens=95, output_tokens=5)  # 100 tokens a request
    limit = 2_000
    key, _ = await make_user(limit_tokens=limit)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ANTHROPIC_", "DATABASE_URL"))}
    procs, bases = [], []
    for i in range(2):
        port = free_port()
        config = tmp_path / f"gateway-{i}.yaml"
        config.write_text(
            f"server: {{port: {port}}}\ndatabase: {{url: '{database_url}'}}\n"
            f"providers: {{anthropic: {{base_url: '{upstream.url}', api_key: k, retries: {{attempts: 1}}}}}}\n"
            "models: {claude-fast: {provider: anthropic, model: claude-haiku-4-5}}\n"
            "budgets: {refresh_s: 0.1}\nusage_log: {flush_interval_ms: 20, spill_dir: '%s/spill-%d'}\n"
            "logging: {format: json, level: warning}\n" % (tmp_path, i)
        )
        cmd = [sys.executable, "-m", "gateway", "--config", str(config), "serve"]
        procs.append(await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, env=env))
        bases.append(f"http://127.0.0.1:{port}")
    try:
        async with aiohttp.ClientSession() as s:
            for base in bases:
                for _ in range(100):
                    try:
                        async with s.get(f"{base}/health") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.1)

            async def client(base: str, results: list[int]) -> None:
                for _ in range(60):
                    async with s.post(f"{base}/v1/messages", json=MESSAGES, headers={"x-api-key": key}) as r:
                        await r.read()
                        results.append(r.status)
                    if r.status == 429:
                        return
                    await asyncio.sleep(0.05)

            results: list[int] = []
            await asyncio.gather(*(client(b, results) for b in (*bases, *bases)))
        served = results.count(200)
        other = math.ceil((0.02 + 0.1) * 1.6 * 2 / 0.05)  # as in the in-process test above
        assert limit // 100 <= served <= limit // 100 + 4 + other
    finally:
        for proc in procs:
            proc.terminate()
        codes = [await asyncio.wait_for(proc.wait(), 20) for proc in procs]
    assert codes == [0, 0]
    assert await db.count_usage(pool) == served  # both flushed everything on SIGTERM
