"""PostgreSQL going away and coming back: keys from the cache, 503 for the unknown, no usage row lost or doubled.

The gateway reaches the real test database through a TCP proxy the test cuts and restores.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from gateway import db
from gateway.accounting.spill import SpillDir
from gateway.app import SERVICES
from tests.conftest import GatewayFactory
from tests.fakes.tcp_proxy import TcpProxy, through, upstream_of

BODY = {"model": "claude-fast", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def proxy(database_url: str) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(upstream_of(database_url))
    await proxy.start()
    yield proxy
    await proxy.close()


@pytest.fixture
def proxied_url(database_url: str, proxy: TcpProxy) -> str:
    return through(database_url, proxy.port)


async def post(server: TestServer, key: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(str(server.make_url("/v1/messages")), json=body or BODY, headers={"x-api-key": key}) as r,
    ):
        return r.status, await r.json()


async def wait_until(predicate: Any, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def test_outage_known_keys_work_unknown_get_503_and_usage_waits(
    make_gateway: GatewayFactory, proxy: TcpProxy, proxied_url: str, make_key: Any, pool: asyncpg.Pool
) -> None:
    server = await make_gateway(dsn=proxied_url, auth={"cache_ttl_s": 0.1})
    known, _ = await make_key("known")
    unknown, _ = await make_key("unknown")
    assert (await post(server, known))[0] == 200  # verified once, now in the cache

    await proxy.cut()
    await asyncio.sleep(0.15)  # the cached verdict expires: the gateway must try the database, and fail
    for _ in range(3):
        assert (await post(server, known))[0] == 200
    status, body = await post(server, unknown)
    assert status == 503 and body["error"]["type"] == "overloaded_error"
    assert "database is unreachable" in body["error"]["message"]
    async with aiohttp.ClientSession() as s, s.get(str(server.make_url("/health"))) as r:
        assert r.status == 503 and (await r.json())["status"] == "degraded"

    await proxy.restore()
    assert (await post(server, unknown))[0] == 200
    await wait_until(lambda: _count(pool, 5))
    await asyncio.sleep(0.2)
    assert await db.count_usage(pool) == 5  # 1 before, 3 during, 1 after: none lost, none doubled
    assert await pool.fetchval("SELECT sum(requests) FROM usage_counters WHERE scope = 'key'") == 5


async def _count(pool: asyncpg.Pool, n: int) -> bool:
    return await db.count_usage(pool) >= n


async def test_queue_past_its_bound_spills_to_disk_and_replays_once(
    make_gateway: GatewayFactory, proxy: TcpProxy, proxied_url: str, key: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    server = await make_gateway(dsn=proxied_url, usage_log={"max_queue_rows": 2, "flush_interval_ms": 20})
    assert (await post(server, key))[0] == 200
    await proxy.cut()
    for _ in range(6):
        assert (await post(server, key))[0] == 200
    spill = SpillDir(tmp_path / "spill")
    await wait_until(lambda: _spilled(spill, at_least=4))  # at most 2 of the 6 stay in memory

    await proxy.restore()
    await wait_until(lambda: _count(pool, 7))
    await asyncio.sleep(0.3)
    assert await db.count_usage(pool) == 7 and not spill.has_work()
    assert len({r["id"] for r in await db.usage_rows(pool)}) == 7


async def _spilled(spill: SpillDir, at_least: int) -> bool:
    return sum(len(spill.read(p)) for p in spill.pending_files()) >= at_least


async def test_a_spill_file_replayed_twice_writes_nothing_twice(
    make_gateway: GatewayFactory, key: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    server = await make_gateway()
    for _ in range(3):
        assert (await post(server, key))[0] == 200
    await server.app[SERVICES].ledger.flush()
    rows = [tuple(r[c] for c in db.USAGE_COLUMNS) for r in await db.usage_rows(pool)]
    SpillDir(tmp_path / "spill", pid=999_999).append(rows)  # as if a dead worker had spilled them too
    assert (await post(server, key))[0] == 200
    await server.app[SERVICES].ledger.flush()
    assert await db.count_usage(pool) == 4
    assert await pool.fetchval("SELECT requests FROM usage_counters WHERE scope = 'key'") == 4
    assert not SpillDir(tmp_path / "spill").has_work()


async def test_shutdown_while_the_database_is_away_spills_and_the_next_start_replays(
    make_gateway: GatewayFactory, proxy: TcpProxy, proxied_url: str, key: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    server = await make_gateway(dsn=proxied_url, usage_log={"flush_interval_ms": 60_000})
    for _ in range(3):
        assert (await post(server, key))[0] == 200
    await proxy.cut()
    await server.close()  # the final flush fails: the rows go to disk
    spill = SpillDir(tmp_path / "spill")
    assert sum(len(spill.read(p)) for p in spill.pending_files()) == 3
    await proxy.restore()

    again = await make_gateway(dsn=proxied_url)
    assert (await post(again, key))[0] == 200
    await again.app[SERVICES].ledger.flush()
    assert await db.count_usage(pool) == 4 and not spill.has_work()


async def test_budgets_keep_their_last_known_counters_during_an_outage(
    make_gateway: GatewayFactory, proxy: TcpProxy, proxied_url: str, make_user: Any, upstream: Any
) -> None:
    server = await make_gateway(dsn=proxied_url, budgets={"refresh_s": 0.05})
    upstream.usage(input_tokens=95, output_tokens=5)
    key, _ = await make_user(limit_tokens=250)
    for _ in range(3):
        assert (await post(server, key))[0] == 200
    await proxy.cut()
    await asyncio.sleep(0.2)  # refreshes fail meanwhile
    status, body = await post(server, key)
    assert status == 429 and body["tokensUsed"] == 300
