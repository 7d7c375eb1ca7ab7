"""Every SQL statement the gateway runs at run time, as named functions over an asyncpg pool.

The schema itself lives in numbered files in `sql/`; `migrate()` applies them in order, once each.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg

SQL_DIR = Path(os.environ.get("GATEWAY_SQL_DIR", Path(__file__).resolve().parent.parent / "sql"))
MIGRATION_LOCK = 0x6761_7465_7761_79  # pg_advisory_lock key ("gateway"): replicas starting together wait in turn


# What "the database is unreachable" looks like from asyncpg: the request path keeps serving from its caches
# on these, and refuses only what it cannot decide without the database (503, never 500).
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, crash shutdown
)
LOOKUP_TIMEOUT_S = 3.0  # a key lookup that takes longer is treated as the database being away


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    # timeout: connecting; command_timeout: any statement (a batch COPY included)
    return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, timeout=5, command_timeout=30)


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
        row = await _looked_up(pool, "SELECT 1", timeout_s=2)
        return row is not None and row[0] == 1
    except (*UNAVAILABLE, asyncpg.PostgresError):
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
    user_id: UUID | None = None
    monthly_limit_usd: Decimal | None = None  # NULL: the default from gateway.yaml
    limit_tokens: int | None = None  # the user's monthly token limit; NULL: the default


_KEY_SELECT = """
    SELECT k.id, k.lookup_id, k.key_hash, k.name, k.is_admin, k.created_at, k.revoked_at,
           k.user_id, k.monthly_limit_usd, u.limit_tokens
    FROM api_keys k LEFT JOIN users u ON u.id = k.user_id
"""


def _key(row: asyncpg.Record) -> KeyRow:
    return KeyRow(**dict(row))


async def insert_key(
    conn: asyncpg.Pool | asyncpg.Connection,
    *,
    lookup_id: str,
    key_hash: str,
    name: str,
    is_admin: bool,
    user_id: UUID | None = None,
) -> KeyRow:
    key_id = await conn.fetchval(
        "INSERT INTO api_keys (lookup_id, key_hash, name, is_admin, user_id) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        lookup_id,
        key_hash,
        name,
        is_admin,
        user_id,
    )
    return _key(await conn.fetchrow(_KEY_SELECT + " WHERE k.id = $1", key_id))


async def find_key(pool: asyncpg.Pool, lookup_id: str) -> KeyRow | None:
    row = await _looked_up(pool, _KEY_SELECT + " WHERE k.lookup_id = $1", lookup_id)
    return _key(row) if row else None


async def find_key_by_claudecode_hmac(pool: asyncpg.Pool, token_hmac: bytes) -> KeyRow | None:
    """The live gateway key of the (undeleted) user whose Claude Code token has this HMAC."""
    row = await _looked_up(
        pool,
        _KEY_SELECT + " WHERE u.claudecode_key_hmac = $1 AND u.deleted_at IS NULL AND k.revoked_at IS NULL",
        token_hmac,
    )
    return _key(row) if row else None


async def _looked_up(pool: asyncpg.Pool, query: str, *args: Any, timeout_s: float = LOOKUP_TIMEOUT_S) -> Any:
    """`query`'s first row (or value, for ping), or TimeoutError after `timeout_s` however long asyncpg then takes
    to clean up.

    On a database that stops answering (rather than dropping the connection), a timed-out query is followed by
    a cancel request and the pool's reset of the connection, each waiting in turn: a known key took 33 s to
    authenticate from the cache. The clean-up finishes in the background instead; a lookup still waiting for a
    connection gives up at the same time, so lookups left behind never pile up.
    """

    async def lookup() -> Any:
        async with pool.acquire(timeout=timeout_s) as conn:
            return await conn.fetchrow(query, *args, timeout=timeout_s)

    task = asyncio.ensure_future(lookup())
    task.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved: never "never retrieved"
    return await asyncio.wait_for(asyncio.shield(task), timeout_s)


async def list_keys(pool: asyncpg.Pool) -> list[KeyRow]:
    return [_key(r) for r in await pool.fetch(_KEY_SELECT + " ORDER BY k.id")]


async def revoke_key(pool: asyncpg.Pool, key_id: int) -> bool:
    """Mark a key revoked; False when no such (unrevoked) key exists."""
    status = await pool.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", key_id)
    return status.endswith(" 1")


async def setting(pool: asyncpg.Pool, name: str, make: str) -> str:
    """A value generated once and kept: the stored one, or `make` stored now (first writer wins)."""
    await pool.execute("INSERT INTO gateway_settings (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING", name, make)
    return str(await pool.fetchval("SELECT value FROM gateway_settings WHERE name = $1", name))


# --- usage -------------------------------------------------------------------------------------------

USAGE_COLUMNS = (
    "id",
    "created_at",
    "request_id",
    "key_id",
    "user_id",
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
    "cache_write_5m_tokens",  # sql/005_billing.sql
    "cache_write_1h_tokens",
    "web_search_requests",
    "usage_estimated",
)
_COLUMN_LIST = ", ".join(USAGE_COLUMNS)

# Rows new to usage_log (a replayed batch adds nothing) increment the month's counters of their user and key.
_STORE_BATCH = f"""
WITH stored AS (
    INSERT INTO usage_log ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM usage_incoming
    ON CONFLICT (id) DO NOTHING
    RETURNING key_id, user_id, date_trunc('month', created_at AT TIME ZONE 'UTC')::date AS month,
              input_tokens + output_tokens + cache_read_tokens + cache_write_tokens AS tokens, cost_usd
), scoped AS (
    SELECT 'key' AS scope, key_id::text AS scope_id, month, tokens, cost_usd FROM stored
    UNION ALL
    SELECT 'user', user_id::text, month, tokens, cost_usd FROM stored WHERE user_id IS NOT NULL
)
INSERT INTO usage_counters AS c (scope, scope_id, month, tokens, cost_usd, requests, unpriced)
SELECT scope, scope_id, month, sum(tokens), coalesce(sum(cost_usd), 0), count(*), count(*) - count(cost_usd)
FROM scoped GROUP BY scope, scope_id, month
ON CONFLICT (month, scope, scope_id) DO UPDATE SET
    tokens = c.tokens + EXCLUDED.tokens,
    cost_usd = c.cost_usd + EXCLUDED.cost_usd,
    requests = c.requests + EXCLUDED.requests,
    unpriced = c.unpriced + EXCLUDED.unpriced
"""


async def insert_usage(pool: asyncpg.Pool, rows: Sequence[Sequence[Any]]) -> None:
    """Store a batch of usage rows (tuples in USAGE_COLUMNS order) with one COPY, and count them.

    COPY goes to a temporary table first, so a batch retried after a lost connection is not counted twice.
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS usage_incoming AS SELECT {_COLUMN_LIST} FROM usage_log WITH NO DATA"
        )
        await conn.execute("TRUNCATE usage_incoming")
        await conn.copy_records_to_table("usage_incoming", records=rows, columns=USAGE_COLUMNS)
        await conn.execute(_STORE_BATCH)


@dataclass(frozen=True, slots=True)
class MonthCounter:
    scope: str  # user | key
    scope_id: str
    tokens: int
    cost_usd: Decimal
    requests: int


async def month_counters(pool: asyncpg.Pool, month: date) -> list[MonthCounter]:
    """Every user's and key's usage in one UTC month (the budget check's view of the database)."""
    rows = await pool.fetch(
        "SELECT scope, scope_id, tokens, cost_usd, requests FROM usage_counters WHERE month = $1", month
    )
    return [MonthCounter(**dict(r)) for r in rows]


async def count_usage(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM usage_log"))


async def usage_rows(pool: asyncpg.Pool, *, key_id: int | None = None) -> list[dict[str, Any]]:
    """Usage rows, oldest first (for tests and the admin API)."""
    if key_id is None:
        rows = await pool.fetch("SELECT * FROM usage_log ORDER BY created_at, id")
    else:
        rows = await pool.fetch("SELECT * FROM usage_log WHERE key_id = $1 ORDER BY created_at, id", key_id)
    return [dict(r) for r in rows]


# --- users (the management API) ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserRow:
    id: UUID
    email: str
    firstname: str
    lastname: str
    limit_tokens: int | None
    created_at: datetime
    updated_at: datetime


_USER_COLUMNS = "id, email, firstname, lastname, limit_tokens, created_at, updated_at"


class Conflict(Exception):
    """A unique value (email, Claude Code token) is already taken; the message names which."""


async def create_user(
    pool: asyncpg.Pool,
    *,
    email: str,
    firstname: str,
    lastname: str,
    claudecode_hmac: bytes,
    key: tuple[str, str],
    actor_key_id: int | None,
) -> tuple[UserRow, KeyRow]:
    """Insert a user and their first gateway key (`key` = (lookup_id, bcrypt hash)) in one transaction."""
    async with pool.acquire() as conn, conn.transaction():
        try:
            row = await conn.fetchrow(
                f"INSERT INTO users (email, firstname, lastname, claudecode_key_hmac) VALUES ($1, $2, $3, $4)"
                f" RETURNING {_USER_COLUMNS}",
                email,
                firstname,
                lastname,
                claudecode_hmac,
            )
        except asyncpg.UniqueViolationError as exc:
            what = "claudecodeUserKey" if "claudecode" in (exc.constraint_name or "") else "email"
            raise Conflict(f"a user with this {what} already exists") from None
        user = UserRow(**dict(row))
        key_row = await insert_key(conn, lookup_id=key[0], key_hash=key[1], name=email, is_admin=False, user_id=user.id)
        await _audit(conn, user.id, "created", None, actor_key_id, None, key_row.id)
    return user, key_row


async def _audit(
    conn: asyncpg.Connection,
    user_id: UUID,
    action: str,
    reason: str | None,
    actor_key_id: int | None,
    old_key_id: int | None,
    new_key_id: int | None,
) -> None:
    await conn.execute(
        "INSERT INTO key_audit (user_id, action, reason, actor_key_id, old_key_id, new_key_id)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        user_id,
        action,
        reason,
        actor_key_id,
        old_key_id,
        new_key_id,
    )


async def get_user(pool: asyncpg.Pool, user_id: UUID) -> UserRow | None:
    row = await pool.fetchrow(f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1 AND deleted_at IS NULL", user_id)
    return UserRow(**dict(row)) if row else None


async def list_users(pool: asyncpg.Pool) -> list[UserRow]:
    rows = await pool.fetch(f"SELECT {_USER_COLUMNS} FROM users WHERE deleted_at IS NULL ORDER BY created_at, id")
    return [UserRow(**dict(r)) for r in rows]


async def delete_user(pool: asyncpg.Pool, user_id: UUID, *, actor_key_id: int | None) -> list[int] | None:
    """Soft-delete a user: revoke their keys, free their Claude Code token. Returns revoked key ids (None: no user)."""
    async with pool.acquire() as conn, conn.transaction():
        status = await conn.execute(
            "UPDATE users SET deleted_at = now(), updated_at = now(), claudecode_key_hmac = NULL"
            " WHERE id = $1 AND deleted_at IS NULL",
            user_id,
        )
        if not status.endswith(" 1"):
            return None
        revoked = await conn.fetch(
            "UPDATE api_keys SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL RETURNING id", user_id
        )
        await _audit(conn, user_id, "deleted", None, actor_key_id, revoked[0]["id"] if revoked else None, None)
    return [r["id"] for r in revoked]


async def regenerate_user_key(
    pool: asyncpg.Pool,
    user_id: UUID,
    *,
    new_key: Callable[[], Awaitable[tuple[str, str]]],
    reason: str | None,
    actor_key_id: int | None,
) -> tuple[UserRow, KeyRow, int | None] | None:
    """Revoke the user's live key and issue `new_key()` (lookup id, hash), with an audit row; None: no such user.

    Serialised per user: a concurrent regenerate gets Conflict at once (a transaction-scoped advisory lock per
    user, tried without waiting) rather than a key the other call revokes a moment later; the user's row stays
    locked from before the key is made until the commit, so other writers (a delete) wait for it.
    """
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval(
            "SELECT pg_try_advisory_xact_lock(hashtextextended('regenerate:' || $1::uuid::text, 0))", user_id
        ):
            raise Conflict("a regenerate for this user is already in progress; retry once it has answered")
        found = await conn.fetchval("SELECT id FROM users WHERE id = $1 AND deleted_at IS NULL FOR UPDATE", user_id)
        if found is None:
            return None
        key = await new_key()
        row = await conn.fetchrow(
            f"UPDATE users SET updated_at = now() WHERE id = $1 RETURNING {_USER_COLUMNS}", user_id
        )
        old = await conn.fetchval(
            "UPDATE api_keys SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL RETURNING id", user_id
        )
        user = UserRow(**dict(row))
        new = await insert_key(
            conn, lookup_id=key[0], key_hash=key[1], name=user.email, is_admin=False, user_id=user_id
        )
        await _audit(conn, user_id, "regenerated", reason, actor_key_id, old, new.id)
    return user, new, old


async def increase_token_limit(
    pool: asyncpg.Pool, user_id: UUID, increment: int, *, default_limit: int, actor_key_id: int | None
) -> int | None:
    """Add `increment` to the user's monthly token limit (starting from the default); None: no such user."""
    async with pool.acquire() as conn, conn.transaction():
        new_limit = await conn.fetchval(
            "UPDATE users SET limit_tokens = coalesce(limit_tokens, $2) + $3, updated_at = now()"
            " WHERE id = $1 AND deleted_at IS NULL RETURNING limit_tokens",
            user_id,
            default_limit,
            increment,
        )
        if new_limit is not None:
            await _audit(conn, user_id, "token_limit_increased", f"+{increment}", actor_key_id, None, None)
    return None if new_limit is None else int(new_limit)


async def users_month_usage(pool: asyncpg.Pool, month: date) -> list[dict[str, Any]]:
    """Each live user with this month's counters and their key's USD limit (NULL: default)."""
    rows = await pool.fetch(
        """
        SELECT u.id, u.email, u.firstname, u.lastname, u.created_at, u.updated_at, u.limit_tokens,
               coalesce(c.tokens, 0) AS tokens, coalesce(c.requests, 0) AS requests,
               coalesce(c.cost_usd, 0) AS cost_usd, k.monthly_limit_usd
        FROM users u
        LEFT JOIN usage_counters c ON c.scope = 'user' AND c.scope_id = u.id::text AND c.month = $1
        LEFT JOIN api_keys k ON k.user_id = u.id AND k.revoked_at IS NULL
        WHERE u.deleted_at IS NULL
        ORDER BY u.created_at, u.id
        """,
        month,
    )
    return [dict(r) for r in rows]


async def user_usage_history(
    pool: asyncpg.Pool, user_id: UUID, *, start: date | None, end: date | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    """Usage per UTC day and model for one user, newest day first; `end` is inclusive."""
    rows = await pool.fetch(
        """
        SELECT (created_at AT TIME ZONE 'UTC')::date AS day, alias, provider_model,
               count(*) AS requests,
               sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
               sum(cache_read_tokens) AS cache_read_tokens, sum(cache_write_tokens) AS cache_write_tokens,
               sum(cost_usd) AS cost_usd, count(*) - count(cost_usd) AS unpriced_requests
        FROM usage_log
        WHERE user_id = $1
          AND ($2::date IS NULL OR (created_at AT TIME ZONE 'UTC')::date >= $2::date)
          AND ($3::date IS NULL OR (created_at AT TIME ZONE 'UTC')::date <= $3::date)
        GROUP BY 1, 2, 3
        ORDER BY 1 DESC, 2, 3
        LIMIT $4 OFFSET $5
        """,
        user_id,
        start,
        end,
        limit,
        offset,
    )
    return [dict(r) for r in rows]
