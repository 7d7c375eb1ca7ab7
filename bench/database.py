"""The real PostgreSQL the gateway under test writes to, and the usage-log count the benchmark checks.

The server is the first of: DATABASE_URL (used as it is); the local server on 127.0.0.1:5432 (trust auth,
user postgres), where a fresh database `gw_bench_<hex>` is made and dropped afterwards; the embedded
server, through tests/pg.py's `create_test_database`, as the tests get it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from tests.pg import create_test_database, with_database

LOCAL_SERVER_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
_PROBE_TIMEOUT_S = 1.0


@dataclass(frozen=True, slots=True)
class Database:
    dsn: str
    where: str  # said in the report
    drop: Callable[[], Awaitable[None]] | None  # None: not ours to drop


async def open_database() -> Database:
    if url := os.environ.get("DATABASE_URL"):
        return Database(url, "DATABASE_URL", None)
    if await _reachable(LOCAL_SERVER_DSN):
        return await _fresh_local_database()
    dsn, drop = await create_test_database()
    return Database(dsn, "embedded PostgreSQL (tests/pg.py)", drop)


async def _reachable(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=_PROBE_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _fresh_local_database() -> Database:
    name = f"gw_bench_{secrets.token_hex(6)}"
    await _execute(LOCAL_SERVER_DSN, f'CREATE DATABASE "{name}"')

    async def drop() -> None:
        await _execute(LOCAL_SERVER_DSN, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return Database(with_database(LOCAL_SERVER_DSN, name), f"127.0.0.1:5432, database {name}", drop)


async def usage_by_status(dsn: str) -> dict[int, int]:
    """Rows in usage_log, counted per HTTP status."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT status, count(*) AS n FROM usage_log GROUP BY status")
    finally:
        await conn.close()
    return {int(r["status"]): int(r["n"]) for r in rows}


async def settled_usage(dsn: str, *, quiet_s: float = 1.0, limit_s: float = 20.0) -> dict[int, int]:
    """Counts once the gateway's batched flusher has written everything (unchanged for `quiet_s`)."""
    last, stable_since, deadline = await usage_by_status(dsn), time.monotonic(), time.monotonic() + limit_s
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        now = await usage_by_status(dsn)
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= quiet_s:
            break
    return last
