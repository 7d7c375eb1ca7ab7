"""Prices that match the invoice, untrusted counts clamped, and no usage row lost to a bad row or a crash."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml
from aiohttp.test_utils import TestServer

from gateway import db
from gateway.accounting.spill import SpillDir
from gateway.app import SERVICES
from gateway.config import load_config
from tests.conftest import GatewayFactory, flushed_usage
from tests.fakes.tcp_proxy import TcpProxy, through, upstream_of
from tests.fakes.upstream import FakeUpstream
from tests.net import free_port, wait_healthy

MAX_COUNT = 10_000_000  # gateway.pipeline.MAX_COUNT: no request consumes more tokens of one kind
ROOT = Path(__file__).resolve().parent.parent
MakeUser = Callable[..., Awaitable[tuple[str, db.KeyRow]]]
BODY = {"model": "claude-fast", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


def message(usage: dict[str, Any]) -> dict[str, Any]:
    """A whole Messages reply carrying `usage` as the upstream reported it."""
    head = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5"}
    return head | {"content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn", "usage": usage}


async def post(server: TestServer, key: str, body: Any = None) -> int:
    async with (
        aiohttp.ClientSession() as s,
        s.post(str(server.make_url("/v1/messages")), json=body or BODY, headers={"x-api-key": key}) as r,
    ):
        await r.read()
        return r.status


@pytest.fixture
async def proxy(database_url: str) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(upstream_of(database_url))
    await proxy.start()
    yield proxy
    await proxy.close()


# --- 4. prices that match the invoice -------------------------------------------------------------------


async def test_cache_writes_are_priced_by_lifetime_and_web_searches_per_thousand(
    gateway: TestServer, upstream: FakeUpstream, make_user: MakeUser, pool: asyncpg.Pool
) -> None:
    usage = {
        "input_tokens": 1000,
        "output_tokens": 100,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 3000,
        "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
        "server_tool_use": {"web_search_requests": 3},
    }
    upstream.enqueue(body=message(usage))
    key, _ = await make_user()
    assert await post(gateway, key) == 200
    [row] = await flushed_usage(gateway, pool)
    assert (row["cache_write_tokens"], row["cache_write_5m_tokens"], row["cache_write_1h_tokens"]) == (3000, 1000, 2000)
    assert row["web_search_requests"] == 3
    # claude-haiku-4-5: input 1.00, output 5.00, 5-minute write 1.25, 1-hour write 2x input = 2.00 (USD per
    # million tokens); web search 10 USD per 1,000.
    expected = (1000 * 1 + 100 * 5 + 1000 * Decimal("1.25") + 2000 * 2) / Decimal(1_000_000) + 3 * Decimal("0.01")
    assert row["cost_usd"] == expected


async def test_a_configured_one_hour_price_and_web_search_price_are_used(
    make_gateway: GatewayFactory, upstream: FakeUpstream, make_user: MakeUser, pool: asyncpg.Pool
) -> None:
    price = {"input": 1.0, "output": 5.0, "cache_write": 1.25, "cache_read": 0.1}
    price |= {"cache_write_1h": 3.0, "web_search_per_1k": 20.0}
    server = await make_gateway(pricing={"claude-haiku-4-5": price})
    usage = {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 1_000_000}
    usage |= {"cache_creation": {"ephemeral_1h_input_tokens": 1_000_000}, "server_tool_use": {"web_search_requests": 1}}
    upstream.enqueue(body=message(usage))
    key, _ = await make_user()
    assert await post(server, key) == 200
    [row] = await flushed_usage(server, pool)
    assert row["cost_usd"] == Decimal("3.02")


@pytest.mark.parametrize(
    ("reported", "recorded"),
    [
        # -7 is no output count: the reply's "ok" is billed from its text (1 token), as a broken stream is
        pytest.param({"input_tokens": -500, "output_tokens": -7}, (0, 1), id="negative"),
        pytest.param({"input_tokens": 2**40, "output_tokens": 10}, (MAX_COUNT, 10), id="absurd"),
        pytest.param({"input_tokens": "lots", "output_tokens": 1e300}, (0, MAX_COUNT), id="not-a-count"),
    ],
)
async def test_untrusted_counts_are_clamped_never_credited(
    gateway: TestServer,
    upstream: FakeUpstream,
    make_user: MakeUser,
    pool: asyncpg.Pool,
    reported: dict[str, Any],
    recorded: tuple[int, int],
) -> None:
    upstream.enqueue(body=message(reported))
    key, _ = await make_user()
    assert await post(gateway, key) == 200
    [row] = await flushed_usage(gateway, pool)
    assert (row["input_tokens"], row["output_tokens"]) == recorded
    assert row["cost_usd"] >= 0


# --- 5. no row lost to one bad row; spill as soon as a flush fails ---------------------------------------


async def test_one_row_the_driver_refuses_does_not_take_its_batch_down(
    make_gateway: GatewayFactory, make_user: MakeUser, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    gateway = await make_gateway(usage_log={"flush_interval_ms": 60_000})  # only this test flushes
    key, _ = await make_user()
    usage_log = gateway.app[SERVICES].ledger
    await usage_log.flush()
    for _ in range(20):
        assert await post(gateway, key) == 200
    # One more request whose row the driver cannot encode (an int out of int4 range raises OverflowError in
    # asyncpg, before PostgreSQL sees it): it must be set aside, alone.
    assert await post(gateway, key) == 200
    bad = list(usage_log._rows[-1])
    bad[db.USAGE_COLUMNS.index("status")] = 2**40
    usage_log._rows[-1] = tuple(bad)
    assert await usage_log.flush() == 20
    assert await db.count_usage(pool) == 20
    rejected = SpillDir(tmp_path / "spill")
    [aside] = [p for p in (tmp_path / "spill").iterdir() if p.name.startswith("usage-rejected")]
    assert len(rejected.read(aside)) == 1
    assert await post(gateway, key) == 200  # the key is not held at 429 by the row that was set aside


async def test_a_failed_flush_spills_its_rows_at_once(
    make_gateway: GatewayFactory, proxy: TcpProxy, database_url: str, make_key: Any, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    server = await make_gateway(dsn=through(database_url, proxy.port), usage_log={"flush_interval_ms": 60_000})
    key, _ = await make_key()
    assert await post(server, key) == 200
    await proxy.cut()
    for _ in range(3):
        assert await post(server, key) == 200
    usage_log = server.app[SERVICES].ledger
    assert await usage_log.flush() == 0
    assert usage_log.pending == 0  # nothing waits in memory for the queue's bound
    spill = SpillDir(tmp_path / "spill")
    assert sum(len(spill.read(p)) for p in spill.pending_files()) == 4
    await proxy.restore()
    await usage_log.flush()
    assert await db.count_usage(pool) == 4 and not spill.has_work()


async def test_sigkill_during_an_outage_loses_at_most_one_flush_interval(
    database_url: str, upstream: FakeUpstream, make_key: Any, proxy: TcpProxy, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """The README's bound: rows recorded more than one flush interval before a SIGKILL are on disk or stored."""
    interval_ms = 100
    key, _ = await make_key()
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"server: {{port: {port}}}\ndatabase: {{url: '{through(database_url, proxy.port)}'}}\n"
        f"providers: {{anthropic: {{base_url: '{upstream.url}', api_key: k, retries: {{attempts: 1}}}}}}\n"
        "models: {claude-fast: {provider: anthropic, model: claude-haiku-4-5}}\n"
        f"usage_log: {{flush_interval_ms: {interval_ms}, spill_dir: '{tmp_path}/spill'}}\n"
        "auth: {bcrypt_rounds: 4}\nlogging: {format: json, level: error}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ANTHROPIC_", "DATABASE_URL"))}
    cmd = [sys.executable, "-m", "gateway", "--config", str(config), "serve"]
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            await wait_healthy(s, base)
            headers = {"x-api-key": key}
            async with s.post(f"{base}/v1/messages", json=BODY, headers=headers) as r:
                assert r.status == 200  # the key is verified (and cached) while the database is up
            await asyncio.sleep(interval_ms / 1000 * 3)
            await proxy.cut()
            for _ in range(10):
                async with s.post(f"{base}/v1/messages", json=BODY, headers=headers) as r:
                    assert r.status == 200
            await asyncio.sleep(interval_ms / 1000 * 5)  # generous: a flush attempt fails and spills
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    # Spill files, including one a replay attempt had claimed (renamed) when the process died.
    on_disk = sum(len(SpillDir.read(p)) for p in (tmp_path / "spill").glob("usage-spill-*"))
    assert await db.count_usage(pool) + on_disk == 11


async def test_shutdown_during_a_flush_loses_no_row(
    gateway: TestServer, make_key: Any, pool: asyncpg.Pool, database_url: str
) -> None:
    """Shutdown used to cancel the flusher in the middle of its write, and the batch it held was gone."""
    key, _ = await make_key()
    usage_log = gateway.app[SERVICES].ledger
    blocker = await asyncpg.connect(database_url)
    try:
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute("LOCK TABLE usage_counters IN EXCLUSIVE MODE")  # the flusher's write now waits
        assert await post(gateway, key) == 200
        await asyncio.sleep(0.3)  # the flusher (50 ms interval) is inside its write
        closing = asyncio.create_task(usage_log.close())
        await asyncio.sleep(0.1)
        await blocking.rollback()
        await asyncio.wait_for(closing, 10)
    finally:
        await blocker.close()
    assert await db.count_usage(pool) == 1


def test_compose_waits_longer_than_the_gateway_shutdown_grace() -> None:
    """Docker's default 10 s before SIGKILL cut long streams off, and their usage rows with them."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    grace = compose["services"]["gateway"]["stop_grace_period"]
    seconds = float(grace.removesuffix("s"))
    assert seconds > load_config(ROOT / "gateway.yaml", environ={"ANTHROPIC_API_KEY": "x"}).server.shutdown_grace_s
