"""Every SQL statement the gateway runs at run time, as named functions over an asyncpg pool.

The schema itself lives in numbered files in `sql/`; `migrate()` applies them in order, once each.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

SQL_DIR = Path(os.environ.get("GATEWAY_SQL_DIR", Path(__file__).resolve().parent.parent / "sql"))
MIGRATION_LOCK = 0x6761_7465_7761_79  # pg_advisory_lock key ("gateway"): replicas starting together wait in turn


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, command_timeout=30)


# --- migrations --------------------------------------------------------------------------------------


def migration_files(sql_dir: Path = SQL_DIR) -> list[Path]:
    files = sorted(p for p in sql_dir.glob("*.sql") if p.name[:3].isdigit())
    if not files:
        raise FileNotFoundError(f"no numbered .sql files in {sql_dir} (set GATEWAY_SQL_DIR)")
    return files


async def migrate(conn: asyncpg.Connection, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply the `sql/` files not yet recorded in schema_migrations, each in its own transaction.

    Returns the names applied. Safe to run twice and from several processes at once (advisory lock).
    """
    applied_now = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        for path in migration_files(sql_dir):
            if path.name in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text(encoding="utf-8"))
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", path.name)
            applied_now.append(path.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied_now


async def ping(pool: asyncpg.Pool) -> bool:
    try:
        async with pool.acquire(timeout=2) as conn:
            return await conn.fetchval("SELECT 1", timeout=2) == 1
    except (OSError, asyncpg.PostgresError, TimeoutError, asyncpg.InterfaceError):
        return False


# --- keys --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyRow:
    id: int
    lookup_id: str
    key_hash: str
    name: str
    is_admin: bool
    created_at: datetime
    revoked_at: datetime | None


_KEY_COLUMNS = "id, lookup_id, key_hash, name, is_admin, created_at, revoked_at"


async def insert_key(pool: asyncpg.Pool, *, lookup_id: str, key_hash: str, name: str, is_admin: bool) -> KeyRow:
    row = await pool.fetchrow(
        f"INSERT INTO api_keys (lookup_id, key_hash, name, is_admin) VALUES ($1, $2, $3, $4) RETURNING {_KEY_COLUMNS}",
        lookup_id,
        key_hash,
        name,
        is_admin,
    )
    return KeyRow(**dict(row))


async def find_key(pool: asyncpg.Pool, lookup_id: str) -> KeyRow | None:
    row = await pool.fetchrow(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE lookup_id = $1", lookup_id)
    return KeyRow(**dict(row)) if row else None


async def list_keys(pool: asyncpg.Pool) -> list[KeyRow]:
    rows = await pool.fetch(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY id")
    return [KeyRow(**dict(r)) for r in rows]


async def revoke_key(pool: asyncpg.Pool, key_id: int) -> bool:
    """Mark a key revoked; False when no such (unrevoked) key exists."""
    status = await pool.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", key_id)
    return status.endswith(" 1")


# --- usage -------------------------------------------------------------------------------------------

USAGE_COLUMNS = (
    "id",
    "created_at",
    "request_id",
    "key_id",
    "route",
    "alias",
    "provider",
    "provider_model",
    "status",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_usd",
    "latency_ms",
    "ttfb_ms",
    "streamed",
)


async def insert_usage(pool: asyncpg.Pool, rows: Sequence[Sequence[Any]]) -> None:
    """Write a batch of usage rows (tuples in USAGE_COLUMNS order) with one COPY, skipping ids already stored.

    COPY goes to a temporary table first, so a batch retried after a lost connection is not counted twice.
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("CREATE TEMP TABLE IF NOT EXISTS usage_incoming (LIKE usage_log) ON COMMIT DELETE ROWS")
        await conn.copy_records_to_table("usage_incoming", records=rows, columns=USAGE_COLUMNS)
        await conn.execute("INSERT INTO usage_log SELECT * FROM usage_incoming ON CONFLICT (id) DO NOTHING")


async def count_usage(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM usage_log"))


async def usage_rows(pool: asyncpg.Pool, *, key_id: int | None = None) -> list[dict[str, Any]]:
    """Usage rows, oldest first (for tests, the CLI and the admin API)."""
    if key_id is None:
        rows = await pool.fetch("SELECT * FROM usage_log ORDER BY created_at, id")
    else:
        rows = await pool.fetch("SELECT * FROM usage_log WHERE key_id = $1 ORDER BY created_at, id", key_id)
    return [dict(r) for r in rows]
