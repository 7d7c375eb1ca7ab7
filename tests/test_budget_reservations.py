"""Admission reserves what a request may cost: concurrent requests cannot all pass a limit none has yet moved.

The issue's attack: forty concurrent requests of ~1,000 input tokens and `max_tokens: 5` each against a
1,000-token limit were all admitted (41x over). Each test prints the overshoot it measured (`pytest -s`).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp.test_utils import TestServer

from gateway import db
from tests.conftest import GatewayFactory, flushed_usage
from tests.fakes.upstream import FakeUpstream
from tests.net import free_port, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
MakeUser = Callable[..., Awaitable[tuple[str, db.KeyRow]]]
LIMIT = 1_000
CONCURRENT = 40
# ~4,000 bytes of body: ~1,000 input tokens as the fake counts them (len(body) // 4), and as admission estimates.
BODY = {"model": "claude-fast", "max_tokens": 5, "messages": [{"role": "user", "content": "word " * 780}]}


async def _post(s: aiohttp.ClientSession, url: str, key: str) -> int:
    async with s.post(url, json=BODY, headers={"x-api-key": key}) as r:
        await r.read()
        return r.status


async def _burst(urls: list[str], key: str) -> list[int]:
    async with aiohttp.ClientSession() as s:
        return await asyncio.gather(*(_post(s, urls[i % len(urls)], key) for i in range(CONCURRENT)))


def _report(label: str, served: int, tokens: int) -> None:
    print(
        f"\n{label}: {served}/{CONCURRENT} served, {tokens} tokens against a limit of {LIMIT} ({tokens / LIMIT:.2f}x)"
    )


def _slow_replies(upstream: FakeUpstream) -> None:
    upstream.usage(output_tokens=5)
    for _ in range(CONCURRENT):
        upstream.enqueue(delay_s=0.3)  # all forty are in flight at once


async def test_forty_concurrent_requests_on_one_process_overshoot_by_at_most_one(
    gateway: TestServer, upstream: FakeUpstream, make_user: MakeUser, pool: asyncpg.Pool
) -> None:
    _slow_replies(upstream)
    key, _ = await make_user(limit_tokens=LIMIT)
    statuses = await _burst([str(gateway.make_url("/v1/messages"))], key)
    rows = await flushed_usage(gateway, pool)
    tokens = sum(r["input_tokens"] + r["output_tokens"] for r in rows)
    _report("one process", statuses.count(200), tokens)
    assert statuses.count(200) == 1 and statuses.count(429) == CONCURRENT - 1
    assert tokens < 2 * LIMIT  # the one admitted request is the whole overshoot


async def test_forty_concurrent_requests_on_two_gateways_overshoot_by_at_most_one_each(
    make_gateway: GatewayFactory, upstream: FakeUpstream, make_user: MakeUser, pool: asyncpg.Pool
) -> None:
    first, second = await make_gateway(), await make_gateway()
    _slow_replies(upstream)
    key, _ = await make_user(limit_tokens=LIMIT)
    statuses = await _burst([str(s.make_url("/v1/messages")) for s in (first, second)], key)
    await flushed_usage(first, pool)
    rows = await flushed_usage(second, pool)
    tokens = sum(r["input_tokens"] + r["output_tokens"] for r in rows)
    _report("two gateways, one interpreter", statuses.count(200), tokens)
    assert 1 <= statuses.count(200) <= 2  # neither sees the other's reservations, only its stored usage


async def test_forty_concurrent_requests_on_two_serve_processes(
    database_url: str, upstream: FakeUpstream, make_user: MakeUser, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    _slow_replies(upstream)
    key, _ = await make_user(limit_tokens=LIMIT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ANTHROPIC_", "DATABASE_URL"))}
    procs, urls = [], []
    for i in range(2):
        port = free_port()
        config = tmp_path / f"gateway-{i}.yaml"
        config.write_text(
            f"server: {{port: {port}}}\ndatabase: {{url: '{database_url}'}}\n"
            f"providers: {{anthropic: {{base_url: '{upstream.url}', api_key: k, retries: {{attempts: 1}}}}}}\n"
            "models: {claude-fast: {provider: anthropic, model: claude-haiku-4-5}}\n"
            f"usage_log: {{flush_interval_ms: 20, spill_dir: '{tmp_path}/spill-{i}'}}\n"
            "auth: {bcrypt_rounds: 4}\nlogging: {format: json, level: warning}\n"
        )
        cmd = [sys.executable, "-m", "gateway", "--config", str(config), "serve"]
        procs.append(await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, env=env))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        async with aiohttp.ClientSession() as s:
            for base in urls:
                await wait_healthy(s, base)
        statuses = await _burst([f"{u}/v1/messages" for u in urls], key)
    finally:
        for proc in procs:
            proc.terminate()
        codes = [await asyncio.wait_for(proc.wait(), 20) for proc in procs]
    assert codes == [0, 0]
    rows = await db.usage_rows(pool)
    tokens = sum(r["input_tokens"] + r["output_tokens"] for r in rows)
    _report("two `gateway serve` processes", statuses.count(200), tokens)
    assert 1 <= statuses.count(200) <= 2
    assert len(rows) == statuses.count(200)  # both flushed on SIGTERM


async def test_max_in_flight_per_user_refuses_the_extra_requests(
    make_gateway: GatewayFactory, upstream: FakeUpstream, make_user: MakeUser
) -> None:
    server = await make_gateway(budgets={"max_in_flight_per_user": 2})
    for _ in range(5):
        upstream.enqueue(delay_s=0.3)
    key, _ = await make_user()
    url = str(server.make_url("/v1/messages"))
    async with aiohttp.ClientSession() as s:

        async def one() -> tuple[int, Any]:
            body = {**BODY, "messages": [{"role": "user", "content": "hi"}]}
            async with s.post(url, json=body, headers={"x-api-key": key}) as r:
                return r.status, await r.json()

        answers = await asyncio.gather(*(one() for _ in range(5)))
        assert sorted(status for status, _ in answers) == [200, 200, 429, 429, 429]
        refused = next(body for status, body in answers if status == 429)
        assert "in progress" in refused["error"]["message"]
        assert (await one())[0] == 200  # the slots are free again once the requests ended


async def test_forty_concurrent_requests_against_a_key_usd_limit_overshoot_by_at_most_one(
    gateway: TestServer, upstream: FakeUpstream, make_user: MakeUser, pool: asyncpg.Pool
) -> None:
    """The key's USD budget reserves too, at the price of the model the alias routes to (haiku: 1 / 5 USD)."""
    _slow_replies(upstream)
    key, _ = await make_user(limit_usd=0.001)  # one request of ~1,000 input tokens costs ~0.001025 USD
    statuses = await _burst([str(gateway.make_url("/v1/messages"))], key)
    rows = await flushed_usage(gateway, pool)
    cost = sum(r["cost_usd"] for r in rows)
    print(f"\none process, USD limit 0.001: {statuses.count(200)}/{CONCURRENT} served, {cost} USD")
    assert statuses.count(200) == 1 and statuses.count(429) == CONCURRENT - 1


async def test_a_team_limit_holds_across_two_serve_processes_and_several_members(
    database_url: str, upstream: FakeUpstream, make_user: MakeUser, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """Four members of one team (each far from their own limit) spread forty requests over two processes: the
    team's reservation refuses them all but one per process, as a user's does."""
    _slow_replies(upstream)
    team = await db.create_team(pool, name="Platform", limit_tokens=LIMIT, limit_usd=None, actor=None)
    keys = []
    for i in range(4):
        key, row = await make_user(f"member{i}@example.com")
        assert row.user_id is not None
        await db.set_user_team(pool, row.user_id, team.id, actor=None)
        keys.append(key)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ANTHROPIC_", "DATABASE_URL"))}
    procs, urls = [], []
    for i in range(2):
        port = free_port()
        config = tmp_path / f"gateway-{i}.yaml"
        config.write_text(
            f"server: {{port: {port}}}\ndatabase: {{url: '{database_url}'}}\n"
            f"providers: {{anthropic: {{base_url: '{upstream.url}', api_key: k, retries: {{attempts: 1}}}}}}\n"
            "models: {claude-fast: {provider: anthropic, model: claude-haiku-4-5}}\n"
            f"usage_log: {{flush_interval_ms: 20, spill_dir: '{tmp_path}/spill-{i}'}}\n"
            "auth: {bcrypt_rounds: 4}\nlogging: {format: json, level: warning}\n"
        )
        cmd = [sys.executable, "-m", "gateway", "--config", str(config), "serve"]
        procs.append(await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, env=env))
        urls.append(f"http://127.0.0.1:{port}/v1/messages")
    try:
        async with aiohttp.ClientSession() as s:
            for base in urls:
                await wait_healthy(s, base.removesuffix("/v1/messages"))
            answers = await asyncio.gather(
                *(_post_for_body(s, urls[i % 2], keys[i % len(keys)]) for i in range(CONCURRENT))
            )
    finally:
        for proc in procs:
            proc.terminate()
        codes = [await asyncio.wait_for(proc.wait(), 20) for proc in procs]
    assert codes == [0, 0]
    statuses = [status for status, _ in answers]
    rows = await db.usage_rows(pool)
    tokens = sum(r["input_tokens"] + r["output_tokens"] for r in rows)
    _report("one team, four members, two `gateway serve` processes", statuses.count(200), tokens)
    assert 1 <= statuses.count(200) <= 2 and statuses.count(429) == CONCURRENT - statuses.count(200)
    assert all(body["scope"] == "team" for status, body in answers if status == 429)
    assert {r["team_id"] for r in rows} == {team.id} and len(rows) == statuses.count(200)


async def _post_for_body(s: aiohttp.ClientSession, url: str, key: str) -> tuple[int, Any]:
    async with s.post(url, json=BODY, headers={"x-api-key": key}) as r:
        return r.status, await r.json()
