"""Fixtures: a fresh PostgreSQL database per test run, the fake upstream, and a running gateway.

Factories, not prebuilt objects: `make_gateway(**overrides)` builds the app from a config dict exactly
as `gateway serve` would, `make_key(admin=False)` creates a real key in the database.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway import db
from gateway.app import SERVICES, build_app
from gateway.config import GatewayConfig, parse_config
from gateway.keys import generate_key
from tests.fakes.upstream import FakeUpstream
from tests.pg import create_test_database

UPSTREAM_KEY = "sk-ant-upstream-secret"


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's gateway or provider settings."""
    for name in list(os.environ):
        if name.startswith(("GATEWAY_", "ANTHROPIC_", "OPENAI_", "CLAUDE_")) or name in (
            "ENFORCE_BUDGETS",
            "DEFAULT_MONTHLY_LIMIT_USD",
            "DEFAULT_MONTHLY_TOKEN_LIMIT",
        ):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """One fresh, migrated database for the whole run, dropped at the end."""
    dsn, drop = asyncio.run(create_test_database())

    async def migrate() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await db.migrate(conn)
        finally:
            await conn.close()

    asyncio.run(migrate())
    yield dsn
    asyncio.run(drop())


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the test database, emptied before each test so tests never see each other's rows."""
    pool = await db.create_pool(database_url, min_size=1, max_size=4)
    tables = await pool.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_migrations'"
    )
    if tables:
        await pool.execute(f"TRUNCATE {', '.join(t['tablename'] for t in tables)} RESTART IDENTITY CASCADE")
    yield pool
    await pool.close()


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    await fake.start()
    yield fake
    await fake.close()


def gateway_config(upstream_url: str, *, environ: Mapping[str, str] | None = None, **overrides: Any) -> GatewayConfig:
    """The test config: gateway.yaml's shape, pointed at the fake upstream, with fast bcrypt and flushes; `environ`
    fills `${VAR}` references and the variables a section names (sso.client_secret_env)."""
    raw: dict[str, Any] = {
        # One attempt: tests that enqueue an upstream error expect to see it; tests/test_upstream_faults.py
        # turns retries on where it studies them.
        "providers": {
            "anthropic": {
                "type": "anthropic",
                "base_url": upstream_url,
                "api_key": UPSTREAM_KEY,
                "retries": {"attempts": 1},
            }
        },
        "models": {
            "claude-fast": {"provider": "anthropic", "model": "claude-haiku-4-5"},
            "claude-quality": {
                "provider": "anthropic",
                "model": "claude-sonnet-4-5",
                "thinking_budgets": {"low": 1024, "high": 8192},
            },
            "claude-unpriced": {"provider": "anthropic", "model": "claude-mystery-1"},
        },
        "pricing": {
            "claude-haiku-4-5": {"input": 1.0, "output": 5.0, "cache_write": 1.25, "cache_read": 0.10},
            "claude-sonnet-4-5": {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.30},
        },
        "auth": {"bcrypt_rounds": 4, "cache_ttl_s": 10},
        "server": {"auth_failures_per_minute": 1000},  # tests fail auth on purpose; test_reliability lowers it
        "usage_log": {"flush_interval_ms": 50},
        "logging": {"format": "json", "level": "warning"},
    }
    for section, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(section), dict):
            raw[section] = {**raw[section], **value}
        else:
            raw[section] = value
    return parse_config(raw, environ=environ or {})


GatewayFactory = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def make_gateway(
    database_url: str, upstream: FakeUpstream, pool: asyncpg.Pool, tmp_path: Path
) -> AsyncIterator[GatewayFactory]:
    """Start a gateway (a real listening server) against the fake upstream and the test database."""
    servers: list[TestServer] = []

    async def start(
        *, clock: Callable[[], datetime] | None = None, dsn: str | None = None, **overrides: Any
    ) -> TestServer:
        overrides["usage_log"] = {"spill_dir": str(tmp_path / "spill"), **overrides.get("usage_log", {})}
        cfg = gateway_config(upstream.url, **overrides)
        server = TestServer(build_app(cfg, dsn=dsn or database_url, clock=clock))
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> TestServer:
    return await make_gateway()


@pytest.fixture
def make_key(pool: asyncpg.Pool) -> Callable[..., Awaitable[tuple[str, db.KeyRow]]]:
    async def create(name: str = "alice", *, admin: bool = False) -> tuple[str, db.KeyRow]:
        new = generate_key(rounds=4)
        row = await db.insert_key(pool, lookup_id=new.lookup_id, key_hash=new.key_hash, name=name, is_admin=admin)
        return new.plaintext, row

    return create


@pytest.fixture
def make_user(pool: asyncpg.Pool) -> Callable[..., Awaitable[tuple[str, db.KeyRow]]]:
    """A user with a live gateway key (and optional limits), made directly in the database."""

    async def create(
        email: str = "user@example.com", *, limit_tokens: int | None = None, limit_usd: float | None = None
    ) -> tuple[str, db.KeyRow]:
        user_id = await pool.fetchval(
            "INSERT INTO users (email, firstname, lastname, limit_tokens) VALUES ($1, 'Test', 'User', $2) RETURNING id",
            email,
            limit_tokens,
        )
        new = generate_key(rounds=4)
        row = await db.insert_key(
            pool, lookup_id=new.lookup_id, key_hash=new.key_hash, name=email, is_admin=False, user_id=user_id
        )
        if limit_usd is not None:
            await pool.execute(
                "UPDATE api_keys SET monthly_limit_usd = $2 WHERE id = $1", row.id, Decimal(str(limit_usd))
            )
        return new.plaintext, row

    return create


@pytest.fixture
async def key(make_key: Callable[..., Awaitable[tuple[str, db.KeyRow]]]) -> str:
    plaintext, _ = await make_key()
    return plaintext


async def flushed_usage(server: TestServer, pool: asyncpg.Pool) -> list[dict[str, Any]]:
    """Every usage row, after making the gateway write what it has queued."""
    app: web.Application = server.app
    await app[SERVICES].ledger.flush()
    return await db.usage_rows(pool)
