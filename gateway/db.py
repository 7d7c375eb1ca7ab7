"""Every SQL statement the gateway runs at run time, as named functions over an asyncpg pool.

The schema itself lives in numbered files in `sql/`; `migrate()` applies them in order, once each.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import astuple, dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit
from uuid import UUID

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy
from pypika import Criterion, Field, Order, Parameter, PostgreSQLQuery, Table
from pypika import functions as fn
from pypika.enums import Matching
from pypika.queries import QueryBuilder
from pypika.terms import AtTimezone, BasicCriterion, EmptyCriterion, Function, Term

from gateway.roles import Actor

SQL_DIR = Path(os.environ.get("GATEWAY_SQL_DIR", Path(__file__).resolve().parent.parent / "sql"))
# A connection of its own (asyncpg.connect) or one borrowed from the pool (pool.acquire()): the same API.
Connection = asyncpg.Connection | PoolConnectionProxy
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
# The same, or any other error PostgreSQL reports: what a background task or a health check shrugs off.
UNAVAILABLE_OR_FAILED: tuple[type[BaseException], ...] = (*UNAVAILABLE, asyncpg.PostgresError)
LOOKUP_TIMEOUT_S = 3.0  # a key lookup that takes longer is treated as the database being away


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, statement_cache_size: int = 100
) -> asyncpg.Pool:
    # timeout: connecting; command_timeout: any statement (a batch COPY included).
    # statement_cache_size=0 behind PgBouncer in transaction mode: a named prepared statement lives on one
    # server connection, and the next transaction may run on another. Forgotten, every request risks a
    # "prepared statement does not exist" 500, so a pooler seen in between turns the cache off by itself.
    if statement_cache_size and await behind_a_pooler(dsn):
        structlog.get_logger("gateway.db").warning(
            "statement_cache_off",
            reason="the server listens on another port than the one dialled: a pooler (PgBouncer) or proxy is"
            " in between; set database.statement_cache_size: 0 to say so",
        )
        statement_cache_size = 0
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        timeout=5,
        command_timeout=30,
        statement_cache_size=statement_cache_size,
    )


async def behind_a_pooler(dsn: str) -> bool:
    """Whether PostgreSQL listens on another TCP port than the DSN's (PgBouncer: 6432 onto 5432).

    False over a unix socket (no port). A published container port (5433 onto 5432) reads as a pooler too:
    the cost is only asyncpg's statement cache.
    """
    try:
        dialled = urlsplit(dsn).port or int(os.environ.get("PGPORT") or 5432)
    except ValueError:  # several hosts (h1:5432,h2:5432): no one port to compare
        return False
    conn = await asyncpg.connect(dsn, timeout=5, statement_cache_size=0)
    try:
        port = await conn.fetchval("SELECT inet_server_port()")
    finally:
        await conn.close()
    return port is not None and port != dialled


# --- migrations --------------------------------------------------------------------------------------


def migration_files(sql_dir: Path = SQL_DIR) -> list[Path]:
    files = sorted(p for p in sql_dir.glob("*.sql") if p.name[:3].isdigit())
    if not files:
        raise FileNotFoundError(f"no numbered .sql files in {sql_dir} (set GATEWAY_SQL_DIR)")
    return files


async def migrate(conn: Connection, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply the `sql/` files not yet recorded in schema_migrations, each in its own transaction.

    Returns the names applied. Safe to run twice and from several processes at once: each file's transaction
    first takes a transaction-scoped advisory lock and re-reads what is applied. A transaction-scoped lock,
    not a session one, so that it also holds (and is released) behind PgBouncer in transaction mode, where
    consecutive statements outside a transaction may run on different server connections.
    """
    applied_now = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
    for path in migration_files(sql_dir):
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            if await conn.fetchval("SELECT 1 FROM schema_migrations WHERE name = $1", path.name):
                continue
            await conn.execute(path.read_text(encoding="utf-8"))
            await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", path.name)
        applied_now.append(path.name)
    return applied_now


async def ping(pool: asyncpg.Pool) -> bool:
    try:
        row = await _looked_up(pool, "SELECT 1", timeout_s=2)
        return row is not None and row[0] == 1
    except UNAVAILABLE_OR_FAILED:
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
    role: str | None = None  # a management key's role (admin | team_admin | viewer); NULL: a user's or service key
    role_team_id: int | None = None  # the team a team_admin key administers
    team_id: int | None = None  # the team of the key's user (its usage counts there), if any
    team_limit_tokens: int | None = None  # that team's monthly limits; NULL: none
    team_limit_usd: Decimal | None = None


_KEY_SELECT = """
    SELECT k.id, k.lookup_id, k.key_hash, k.name, k.is_admin, k.created_at, k.revoked_at,
           k.user_id, k.monthly_limit_usd, u.limit_tokens, k.role, k.team_id AS role_team_id,
           t.id AS team_id, t.limit_tokens AS team_limit_tokens, t.limit_usd AS team_limit_usd
    FROM api_keys k LEFT JOIN users u ON u.id = k.user_id LEFT JOIN teams t ON t.id = u.team_id
"""


def _returned(row: asyncpg.Record | None) -> asyncpg.Record:
    """The row an INSERT or UPDATE ... RETURNING wrote; raises LookupError if it matched none (a bug, not input)."""
    if row is None:
        raise LookupError("a RETURNING statement returned no row")
    return row


def _key(row: asyncpg.Record) -> KeyRow:
    return KeyRow(**dict(row))


async def insert_key(
    conn: asyncpg.Pool | Connection,
    *,
    lookup_id: str,
    key_hash: str,
    name: str,
    is_admin: bool,
    user_id: UUID | None = None,
    role: str | None = None,
    role_team_id: int | None = None,
) -> KeyRow:
    """Insert a key; `is_admin` implies role admin, and `role` admin implies is_admin (the two stay in step)."""
    role = "admin" if is_admin else role
    key_id = await conn.fetchval(
        "INSERT INTO api_keys (lookup_id, key_hash, name, is_admin, user_id, role, team_id)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        lookup_id,
        key_hash,
        name,
        role == "admin",
        user_id,
        role,
        role_team_id,
    )
    return _key(_returned(await conn.fetchrow(_KEY_SELECT + " WHERE k.id = $1", key_id)))


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
    "team_id",  # sql/011_teams_and_roles.sql
)
_COLUMN_LIST = ", ".join(USAGE_COLUMNS)

# Rows new to usage_log (a replayed batch adds nothing) increment the month's counters of their key, user, team.
_STORE_BATCH = f"""
WITH stored AS (
    INSERT INTO usage_log ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM usage_incoming
    ON CONFLICT (id, created_at) DO NOTHING  -- usage_log's key: partitioned by created_at (sql/009)
    RETURNING key_id, user_id, team_id, date_trunc('month', created_at AT TIME ZONE 'UTC')::date AS month,
              input_tokens + output_tokens + cache_read_tokens + cache_write_tokens AS tokens, cost_usd
), scoped AS (
    SELECT 'key' AS scope, key_id::text AS scope_id, month, tokens, cost_usd FROM stored
    UNION ALL
    SELECT 'user', user_id::text, month, tokens, cost_usd FROM stored WHERE user_id IS NOT NULL
    UNION ALL
    SELECT 'team', team_id::text, month, tokens, cost_usd FROM stored WHERE team_id IS NOT NULL
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
        await conn.execute(_ROLL_UP_BATCH)


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
    team_id: int | None = None


_USER_COLUMNS = "id, email, firstname, lastname, limit_tokens, created_at, updated_at, team_id"


class Conflict(Exception):
    """A unique value (email, Claude Code token) is already taken; the message names which."""


async def create_user(
    pool: asyncpg.Pool,
    *,
    email: str,
    firstname: str,
    lastname: str,
    claudecode_hmac: bytes | None,
    key: tuple[str, str],
    actor: Actor | None,
    team_id: int | None = None,
) -> tuple[UserRow, KeyRow]:
    """Insert a user (in `team_id`, if given) and their first gateway key (`key` = (lookup_id, bcrypt hash)) in one
    transaction. Raises Conflict for a taken email or token, LookupError for a team that does not exist."""
    async with pool.acquire() as conn, conn.transaction():
        if team_id is not None and await team_by_id(conn, team_id, lock=True) is None:
            raise LookupError(f"no team with id {team_id}")
        try:
            row = await conn.fetchrow(
                f"INSERT INTO users (email, firstname, lastname, claudecode_key_hmac, team_id)"
                f" VALUES ($1, $2, $3, $4, $5) RETURNING {_USER_COLUMNS}",
                email,
                firstname,
                lastname,
                claudecode_hmac,
                team_id,
            )
        except asyncpg.UniqueViolationError as exc:
            what = "claudecodeUserKey" if "claudecode" in (exc.constraint_name or "") else "email"
            raise Conflict(f"a user with this {what} already exists") from None
        user = UserRow(**dict(_returned(row)))
        key_row = await insert_key(conn, lookup_id=key[0], key_hash=key[1], name=email, is_admin=False, user_id=user.id)
        await _audit(conn, user.id, "created", None, actor, None, key_row.id)
    return user, key_row


async def _audit(
    conn: Connection,
    user_id: UUID,
    action: str,
    reason: str | None,
    actor: Actor | None,
    old_key_id: int | None,
    new_key_id: int | None,
) -> None:
    """One audit row of a change to a user, naming who made it (`actor.subject`; None: the command line)."""
    await conn.execute(
        "INSERT INTO key_audit (user_id, action, reason, actor_key_id, old_key_id, new_key_id, actor)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        user_id,
        action,
        reason,
        actor.key_id if actor else None,
        old_key_id,
        new_key_id,
        actor.subject if actor else None,
    )


async def get_user(pool: asyncpg.Pool, user_id: UUID) -> UserRow | None:
    row = await pool.fetchrow(f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1 AND deleted_at IS NULL", user_id)
    return UserRow(**dict(row)) if row else None


async def list_users(pool: asyncpg.Pool, *, team_id: int | None = None) -> list[UserRow]:
    """Live users, oldest first; only those of `team_id` when given."""
    rows = await pool.fetch(
        f"SELECT {_USER_COLUMNS} FROM users WHERE deleted_at IS NULL AND ($1::bigint IS NULL OR team_id = $1)"
        " ORDER BY created_at, id",
        team_id,
    )
    return [UserRow(**dict(r)) for r in rows]


async def delete_user(pool: asyncpg.Pool, user_id: UUID, *, actor: Actor | None) -> list[int] | None:
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
        await _audit(conn, user_id, "deleted", None, actor, revoked[0]["id"] if revoked else None, None)
    return [r["id"] for r in revoked]


async def regenerate_user_key(
    pool: asyncpg.Pool,
    user_id: UUID,
    *,
    new_key: Callable[[], Awaitable[tuple[str, str]]],
    reason: str | None,
    actor: Actor | None,
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
        user = UserRow(**dict(_returned(row)))
        new = await insert_key(
            conn, lookup_id=key[0], key_hash=key[1], name=user.email, is_admin=False, user_id=user_id
        )
        await _audit(conn, user_id, "regenerated", reason, actor, old, new.id)
    return user, new, old


class AboveTeamLimit(Exception):
    """A team_admin asked for a user limit above the team's monthly token limit; the message gives both."""


async def increase_token_limit(
    pool: asyncpg.Pool,
    user_id: UUID,
    increment: int,
    *,
    default_limit: int,
    actor: Actor | None,
    within_team_limit: bool = False,
) -> int | None:
    """Add `increment` to the user's monthly token limit (starting from the default); None: no such user.

    `within_team_limit` (a team_admin's change): raises AboveTeamLimit, changing nothing, when the new limit would
    exceed the user's team's monthly token limit; the team row is locked meanwhile, so a concurrent change of it waits.
    """
    async with pool.acquire() as conn, conn.transaction():
        new_limit = await conn.fetchval(
            "UPDATE users SET limit_tokens = coalesce(limit_tokens, $2) + $3, updated_at = now()"
            " WHERE id = $1 AND deleted_at IS NULL RETURNING limit_tokens",
            user_id,
            default_limit,
            increment,
        )
        if new_limit is None:
            return None
        if within_team_limit:
            cap = await conn.fetchval(
                "SELECT t.limit_tokens FROM users u JOIN teams t ON t.id = u.team_id WHERE u.id = $1 FOR UPDATE OF t",
                user_id,
            )
            if cap is not None and new_limit > cap:
                raise AboveTeamLimit(f"the new limit ({new_limit}) would exceed the team's monthly token limit ({cap})")
        await _audit(conn, user_id, "token_limit_increased", f"+{increment}", actor, None, None)
    return int(new_limit)


async def users_month_usage(pool: asyncpg.Pool, month: date, *, team_id: int | None = None) -> list[dict[str, Any]]:
    """Each live user (of `team_id` when given) with this month's counters and their key's USD limit (NULL: default)."""
    rows = await pool.fetch(
        """
        SELECT u.id, u.email, u.firstname, u.lastname, u.created_at, u.updated_at, u.limit_tokens, u.team_id,
               coalesce(c.tokens, 0) AS tokens, coalesce(c.requests, 0) AS requests,
               coalesce(c.cost_usd, 0) AS cost_usd, k.monthly_limit_usd
        FROM users u
        LEFT JOIN usage_counters c ON c.scope = 'user' AND c.scope_id = u.id::text AND c.month = $1
        LEFT JOIN api_keys k ON k.user_id = u.id AND k.revoked_at IS NULL
        WHERE u.deleted_at IS NULL AND ($2::bigint IS NULL OR u.team_id = $2)
        ORDER BY u.created_at, u.id
        """,
        month,
        team_id,
    )
    return [dict(r) for r in rows]


# --- queries assembled at run time -----------------------------------------------------------------------
# A query whose shape depends on the request (which filters are set, paging, the grouping asked for) is built
# with pypika, never by joining SQL text; every value goes in as a $n parameter (Params), so a filter value
# never becomes SQL and one plan serves every page. Statements whose shape is fixed stay plain SQL strings.


class Params:
    """The values of a query's $n parameters in the order they are used: `param(value)` is the next `$n`.

    >>> param = Params()
    >>> str(param(10)), str(param("audit")), param.values
    ('$1', '$2', [10, 'audit'])
    """

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any) -> Parameter:
        self.values.append(value)
        return Parameter(f"${len(self.values)}")


def _utc_days(column: Field, start: date | None, end: date | None, param: Params) -> Criterion:
    """`column` (timestamptz) within the UTC days `start`..`end`, both inclusive; None: open on that side.

    Bounds are instants (midnight UTC), so the column's own index serves the range.
    """
    where: Criterion = EmptyCriterion()
    if start is not None:
        where &= column >= param(datetime.combine(start, time(), UTC))
    if end is not None and end < date.max:  # the last representable day: no upper bound at all
        where &= column < param(datetime.combine(end + timedelta(days=1), time(), UTC))
    return where


def _as_int(term: Parameter) -> int:
    """A $n where pypika's annotation asks for an int (LIMIT, OFFSET); it renders any term there."""
    return cast(int, term)


def _page(query: QueryBuilder, param: Params, limit: int, offset: int) -> QueryBuilder:
    """`LIMIT $n OFFSET $m`: one prepared statement serves every page, where literal numbers would prepare one
    statement per page (asyncpg's statement cache is keyed by the SQL text)."""
    return query.limit(_as_int(param(limit))).offset(_as_int(param(offset)))


# pypika's Cast, Coalesce, NullIf and AtTimezone carry no annotations (mypy --strict refuses to call them);
# these names give them the signatures used here.
_cast: Callable[[Term, str], Term] = fn.Cast
_coalesce: Callable[[Term, Any], Term] = fn.Coalesce
_nullif: Callable[[Term, Any], Term] = fn.NullIf
_at_time_zone: Callable[[Term, str], Term] = AtTimezone

_TOKEN_COLUMNS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


async def user_usage_history(
    pool: asyncpg.Pool, user_id: UUID, *, start: date | None, end: date | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    """Usage per UTC day and model for one user, newest day first; `end` is inclusive."""
    log, param = Table("usage_log"), Params()
    day = _cast(_at_time_zone(log.created_at, "UTC"), "date").as_("day")
    alias, model = log.field("alias"), log.provider_model
    query = (
        PostgreSQLQuery.from_(log)
        .select(day, alias, model, fn.Count("*").as_("requests"))
        .select(*(fn.Sum(log.field(c)).as_(c) for c in _TOKEN_COLUMNS))
        .select(fn.Sum(log.cost_usd).as_("cost_usd"), (fn.Count("*") - fn.Count(log.cost_usd)).as_("unpriced_requests"))
        .where(log.user_id == param(user_id))
        .where(_utc_days(log.created_at, start, end, param))
        .groupby(day, alias, model)
        .orderby(day, order=Order.desc)
        .orderby(alias, model)
    )
    query = _page(query, param, limit, offset)
    return [dict(r) for r in await pool.fetch(query.get_sql(), *param.values)]


# --- data-loss prevention findings -----------------------------------------------------------------------

DLP_FINDING_COLUMNS = (
    "request_id",
    "key_id",
    "user_id",
    "route",
    "alias",
    "detector",
    "action",
    "location",
    "occurrences",
)


async def insert_dlp_findings(pool: asyncpg.Pool, rows: Sequence[Sequence[Any]]) -> None:
    """Store one request's findings (tuples in DLP_FINDING_COLUMNS order); never a found value."""
    async with pool.acquire(timeout=LOOKUP_TIMEOUT_S) as conn:
        await conn.copy_records_to_table("dlp_findings", records=rows, columns=DLP_FINDING_COLUMNS)


_FINDINGS_LISTED = ("id", "created_at", *DLP_FINDING_COLUMNS)


async def dlp_findings(
    pool: asyncpg.Pool,
    *,
    start: date | None = None,
    end: date | None = None,
    user_id: UUID | None = None,
    detector: str | None = None,
    action: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Findings, newest first, filtered by UTC day range (inclusive), user, detector and action (None: any)."""
    findings, param = Table("dlp_findings"), Params()
    query = (
        PostgreSQLQuery.from_(findings)
        .select(*_FINDINGS_LISTED)
        .where(_utc_days(findings.created_at, start, end, param))
    )
    for column, value in (("user_id", user_id), ("detector", detector), ("action", action)):
        if value is not None:
            query = query.where(findings.field(column) == param(value))
    query = _page(query.orderby(findings.created_at, findings.id, order=Order.desc), param, limit, offset)
    return [dict(r) for r in await pool.fetch(query.get_sql(), *param.values)]


# --- the console: daily rollups and what its pages read ----------------------------------------------
# Console pages read usage_daily / usage_latency_daily (sql/006_console.sql), never a month of usage_log.
# Queries whose shape depends on the request (filters, paging) are assembled with pypika; values always go in
# as $n parameters, never into the SQL text.

# Upper bounds (ms) of the latency histogram's buckets; bucket i counts latencies in [bound[i-1], bound[i]),
# bucket 0 those under 1 ms, bucket len(bounds) those of 600 s and more. sql/006_console.sql repeats them.
LATENCY_BOUNDS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000, 600000)
_BOUNDS_SQL = f"ARRAY[{', '.join(map(str, LATENCY_BOUNDS_MS))}]::real[]"

# Rolls up the rows this transaction stored (xmin = this transaction: a replayed row that was already there is
# skipped, as _STORE_BATCH skips it). Reads usage_log itself, whole rows, so columns added to the usage row later
# need no change here; `usage_estimated` counts where that column exists (to_jsonb reads NULL where it does not).
# user_id is the key's, the same on every row of a key: max() keeps it out of the conflict key.
_ROLL_UP_BATCH = f"""
WITH new AS (
    SELECT l.key_id, l.user_id, l.route, l.alias, l.provider_model, l.status, l.latency_ms, l.cost_usd,
           l.input_tokens, l.output_tokens, l.cache_read_tokens, l.cache_write_tokens,
           (l.created_at AT TIME ZONE 'UTC')::date AS day,
           coalesce((to_jsonb(l) ->> 'usage_estimated')::boolean, false) AS estimated
    FROM usage_log l
    WHERE l.id IN (SELECT id FROM usage_incoming) AND l.xmin = pg_current_xact_id()::xid
), latency AS (
    INSERT INTO usage_latency_daily AS h (day, bucket, requests)
    SELECT day, width_bucket(latency_ms, {_BOUNDS_SQL}), count(*) FROM new GROUP BY 1, 2
    ON CONFLICT (day, bucket) DO UPDATE SET requests = h.requests + EXCLUDED.requests
)
INSERT INTO usage_daily AS d (day, key_id, user_id, route, alias, provider_model, requests, errors, input_tokens,
                              output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, unpriced, estimated)
SELECT day, key_id, max(user_id::text)::uuid, route, alias, provider_model, count(*),
       count(*) FILTER (WHERE status >= 400), sum(input_tokens), sum(output_tokens), sum(cache_read_tokens),
       sum(cache_write_tokens), coalesce(sum(cost_usd), 0), count(*) - count(cost_usd),
       count(*) FILTER (WHERE estimated)
FROM new GROUP BY day, key_id, route, alias, provider_model
ON CONFLICT (day, key_id, route, alias, provider_model) DO UPDATE SET
    requests = d.requests + EXCLUDED.requests,
    errors = d.errors + EXCLUDED.errors,
    input_tokens = d.input_tokens + EXCLUDED.input_tokens,
    output_tokens = d.output_tokens + EXCLUDED.output_tokens,
    cache_read_tokens = d.cache_read_tokens + EXCLUDED.cache_read_tokens,
    cache_write_tokens = d.cache_write_tokens + EXCLUDED.cache_write_tokens,
    cost_usd = d.cost_usd + EXCLUDED.cost_usd,
    unpriced = d.unpriced + EXCLUDED.unpriced,
    estimated = d.estimated + EXCLUDED.estimated
"""

_daily = Table("usage_daily")
_DAILY_SUMS = (
    fn.Sum(_daily.requests).as_("requests"),
    fn.Sum(_daily.errors).as_("errors"),
    fn.Sum(_daily.input_tokens + _daily.output_tokens + _daily.cache_read_tokens + _daily.cache_write_tokens).as_(
        "tokens"
    ),
    fn.Sum(_daily.cost_usd).as_("cost_usd"),
    fn.Sum(_daily.unpriced).as_("unpriced"),
    fn.Sum(_daily.estimated).as_("estimated"),
)
DAILY_DIMENSIONS = frozenset({"provider_model", "alias", "route"})


def _daily_between(start: date, end: date, user_id: UUID | None) -> tuple[QueryBuilder, list[Any]]:
    """usage_daily rows with start <= day < end (of one user when `user_id`), and the values of its $n."""
    query = PostgreSQLQuery.from_(_daily).where(_daily.day >= Parameter("$1")).where(_daily.day < Parameter("$2"))
    args: list[Any] = [start, end]
    if user_id is not None:
        query = query.where(_daily.user_id == Parameter("$3"))
        args.append(user_id)
    return query, args


def _numbers(row: asyncpg.Record) -> dict[str, Any]:
    """A rollup sum row with NULL sums (no rows) read as 0."""
    return {k: (0 if v is None and k in _SUM_NAMES else v) for k, v in dict(row).items()}


_SUM_NAMES = frozenset({"requests", "errors", "tokens", "cost_usd", "unpriced", "estimated"})


async def usage_by(
    pool: asyncpg.Pool, dimension: str, start: date, end: date, *, user_id: UUID | None = None, by_day: bool = False
) -> list[dict[str, Any]]:
    """Sums per `dimension` (provider_model | alias | route) over [start, end), costliest first; per day too
    when `by_day` (then oldest day first)."""
    if dimension not in DAILY_DIMENSIONS:
        raise ValueError(f"dimension must be one of {sorted(DAILY_DIMENSIONS)}, not {dimension!r}")
    query, args = _daily_between(start, end, user_id)
    column = _daily.field(dimension)
    if by_day:
        query = query.select(_daily.day, column.as_("name"), *_DAILY_SUMS).groupby(_daily.day, column)
        query = query.orderby(_daily.day).orderby(column)
    else:
        query = query.select(column.as_("name"), *_DAILY_SUMS).groupby(column)
        query = query.orderby(Field("cost_usd"), order=Order.desc).orderby(column)
    return [_numbers(r) for r in await pool.fetch(query.get_sql(), *args)]


async def usage_breakdown(pool: asyncpg.Pool, start: date, end: date) -> list[dict[str, Any]]:
    """Sums per (day, route, provider_model) over [start, end): one scan of the month's rollup rows, from which
    the overview derives its totals, days, models and routes (a few hundred rows, summed in Python)."""
    query, args = _daily_between(start, end, None)
    columns = (_daily.day, _daily.route, _daily.provider_model)
    query = query.select(*columns, *_DAILY_SUMS).groupby(*columns)
    return [_numbers(r) for r in await pool.fetch(query.get_sql(), *args)]


async def latency_by_day(pool: asyncpg.Pool, start: date, end: date) -> dict[date, list[int]]:
    """Per UTC day in [start, end): request counts per latency bucket (index = bucket, see LATENCY_BOUNDS_MS)."""
    rows = await pool.fetch(
        "SELECT day, bucket, requests FROM usage_latency_daily WHERE day >= $1 AND day < $2 ORDER BY day", start, end
    )
    out: dict[date, list[int]] = {}
    for r in rows:
        out.setdefault(r["day"], [0] * (len(LATENCY_BOUNDS_MS) + 1))[r["bucket"]] += r["requests"]
    return out


# One row per live user with this month's tokens (user counter) and USD (their live key's counter, which is
# what the budget check compares with the key's limit), limits resolved against the configured defaults.
# $1: the month, $2: the default token limit, $3: the default USD limit.
_u, _k = Table("users", alias="u"), Table("api_keys", alias="k")
_cu, _ck = Table("usage_counters", alias="cu"), Table("usage_counters", alias="ck")
_USERS_MONTH = (
    PostgreSQLQuery.from_(_u)
    .left_join(_k)
    .on((_k.user_id == _u.id) & _k.revoked_at.isnull())
    .left_join(_cu)
    .on((_cu.month == Parameter("$1")) & (_cu.scope == "user") & (_cu.scope_id == _cast(_u.id, "text")))
    .left_join(_ck)
    .on((_ck.month == Parameter("$1")) & (_ck.scope == "key") & (_ck.scope_id == _cast(_k.id, "text")))
    .select(_u.id, _u.email, _u.firstname, _u.lastname, _u.created_at, _k.id.as_("key_id"), _k.lookup_id)
    .select(
        _coalesce(_u.limit_tokens, Parameter("$2")).as_("limit_tokens"),
        _coalesce(_k.monthly_limit_usd, Parameter("$3")).as_("limit_usd"),
        _coalesce(_cu.tokens, 0).as_("tokens"),
        _coalesce(_cu.requests, 0).as_("requests"),
        _coalesce(_cu.cost_usd, 0).as_("cost_usd"),
        _coalesce(_ck.cost_usd, 0).as_("key_cost_usd"),
    )
    .where(_u.deleted_at.isnull())
)
_TOP_USERS = (
    _USERS_MONTH.where(_cu.requests > 0)
    .orderby(_cu.cost_usd, _cu.tokens, order=Order.desc)
    .orderby(_u.email)
    .limit(_as_int(Parameter("$4")))
    .get_sql()
)
_month = _USERS_MONTH.as_("m")
_NEAR_LIMIT = (
    PostgreSQLQuery.from_(_month)
    .select("*")
    .where(
        (_month.tokens >= _cast(Parameter("$4"), "numeric") * _month.limit_tokens)
        | (_month.key_cost_usd >= _cast(Parameter("$4"), "numeric") * _month.limit_usd)
    )
    # fullest first; DESC puts NULLs (a limit of 0) first, as PostgreSQL does by default
    .orderby(
        Function(
            "GREATEST",
            _month.tokens / _cast(_nullif(_month.limit_tokens, 0), "numeric"),
            _month.key_cost_usd / _nullif(_month.limit_usd, 0),
        ),
        order=Order.desc,
    )
    .orderby(_month.email)
    .limit(100)
    .get_sql()
)


async def top_users(
    pool: asyncpg.Pool, month: date, *, default_tokens: int, default_usd: Decimal, limit: int = 10
) -> list[dict[str, Any]]:
    """The users who spent most this month (USD, then tokens), with their limits."""
    return [dict(r) for r in await pool.fetch(_TOP_USERS, month, default_tokens, default_usd, limit)]


async def users_near_limit(
    pool: asyncpg.Pool, month: date, *, default_tokens: int, default_usd: Decimal, ratio: float = 0.8
) -> list[dict[str, Any]]:
    """Users at or over `ratio` of their token limit or of their key's USD limit this month, fullest first."""
    args = (month, default_tokens, default_usd, Decimal(str(ratio)))
    return [dict(r) for r in await pool.fetch(_NEAR_LIMIT, *args)]


def _user_filter(search: str, param: Params, team_id: int | None = None) -> Criterion:
    """Live users (of `team_id` when given), and when `search` is given, those whose email or "first last" contains
    it (any case)."""
    users = Table("users")
    where: Criterion = users.deleted_at.isnull()
    if team_id is not None:
        where &= users.team_id == param(team_id)
    if search:
        name = Function("CONCAT", users.firstname, " ", users.lastname)
        # LIKE's own wildcards in the search are literal characters
        pattern = param("%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        # BasicCriterion is what Term.ilike builds; ilike's own annotation takes only a str pattern, not a Parameter
        where &= BasicCriterion(Matching.ilike, users.email, pattern) | BasicCriterion(Matching.ilike, name, pattern)
    return where


async def find_users(
    pool: asyncpg.Pool,
    month: date,
    *,
    search: str,
    limit: int,
    offset: int,
    default_tokens: int,
    default_usd: Decimal,
    team_id: int | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """A page of live users (of `team_id` when given) whose email or name contains `search` (any case), newest
    first, and the match count."""
    users, counted, param = Table("users"), Params(), Params()
    count = PostgreSQLQuery.from_(users).select(fn.Count("*")).where(_user_filter(search, counted, team_id))
    total = await pool.fetchval(count.get_sql(), *counted.values)
    for value in (month, default_tokens, default_usd):  # $1..$3 of _USERS_MONTH
        param(value)
    page = PostgreSQLQuery.from_(users).select(users.id).where(_user_filter(search, param, team_id))
    page = _page(page.orderby(users.created_at, order=Order.desc).orderby(users.id), param, limit, offset)
    query = _USERS_MONTH.where(_u.id.isin(page)).orderby(_u.created_at, order=Order.desc).orderby(_u.id)
    return [dict(r) for r in await pool.fetch(query.get_sql(), *param.values)], int(total)


async def recent_usage(pool: asyncpg.Pool, user_id: UUID, *, limit: int = 20) -> list[dict[str, Any]]:
    """The user's latest usage rows, newest first (one index scan of usage_log_user_time)."""
    rows = await pool.fetch(
        "SELECT created_at, route, alias, provider_model, status, input_tokens + output_tokens + cache_read_tokens"
        " + cache_write_tokens AS tokens, cost_usd, latency_ms, request_id FROM usage_log"
        " WHERE user_id = $1 ORDER BY created_at DESC LIMIT $2",
        user_id,
        limit,
    )
    return [dict(r) for r in rows]


async def audit_page(
    pool: asyncpg.Pool, *, user_id: UUID | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[dict[str, Any]], int]:
    """Management actions (key_audit and gateway_audit), newest first, with who did them; and how many match."""
    trail, users = Table("audit_trail"), Table("users")
    actor, target = Table("api_keys", alias="actor"), Table("api_keys", alias="target")
    counted, param = Params(), Params()
    count = PostgreSQLQuery.from_(trail).select(fn.Count("*"))
    query = (
        PostgreSQLQuery.from_(trail)
        .left_join(actor)
        .on(actor.id == trail.actor_key_id)
        .left_join(target)
        .on(target.id == trail.target_key_id)
        .left_join(users)
        .on(users.id == trail.user_id)
        .select(
            trail.id,
            trail.created_at,
            trail.action,
            trail.reason,
            trail.user_id,
            trail.actor,
            trail.team_id,
            trail.target,
            users.email.as_("user_email"),
            actor.name.as_("actor_name"),
            actor.lookup_id.as_("actor_lookup_id"),
            target.name.as_("target_name"),
            target.lookup_id.as_("target_lookup_id"),
        )
        .orderby(trail.created_at, trail.id, order=Order.desc)
    )
    if user_id is not None:
        query, count = query.where(trail.user_id == param(user_id)), count.where(trail.user_id == counted(user_id))
    query = _page(query, param, limit, offset)
    rows = await pool.fetch(query.get_sql(), *param.values)
    return [dict(r) for r in rows], int(await pool.fetchval(count.get_sql(), *counted.values))


async def service_keys(pool: asyncpg.Pool) -> list[KeyRow]:
    """Gateway keys that belong to no user (admin and service keys), newest first."""
    return [_key(r) for r in await pool.fetch(_KEY_SELECT + " WHERE k.user_id IS NULL ORDER BY k.id DESC")]


async def create_service_key(
    pool: asyncpg.Pool,
    *,
    lookup_id: str,
    key_hash: str,
    name: str,
    is_admin: bool,
    actor: Actor | None,
    role: str | None = None,
    role_team_id: int | None = None,
) -> KeyRow:
    """A gateway key that belongs to no user (a management key when it has a `role`), audited, in one transaction.

    Raises LookupError when `role_team_id` names no live team.
    """
    async with pool.acquire() as conn, conn.transaction():
        if role_team_id is not None and await team_by_id(conn, role_team_id, lock=True) is None:
            raise LookupError(f"no team with id {role_team_id}")
        row = await insert_key(
            conn,
            lookup_id=lookup_id,
            key_hash=key_hash,
            name=name,
            is_admin=is_admin,
            role=role,
            role_team_id=role_team_id,
        )
        action = "admin_key_created" if row.is_admin else f"{row.role}_key_created" if row.role else "key_created"
        await _gateway_audit(conn, action, actor, target_key_id=row.id, team_id=role_team_id)
    return row


async def _gateway_audit(
    conn: Connection | asyncpg.Pool,
    action: str,
    actor: Actor | None,
    *,
    reason: str | None = None,
    target_key_id: int | None = None,
    team_id: int | None = None,
    target: str | None = None,
) -> None:
    """One audit row of a change that is not to a user (keys, teams, rate limits), naming who made it."""
    await conn.execute(
        "INSERT INTO gateway_audit (action, reason, actor_key_id, target_key_id, actor, team_id, target)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        action,
        reason,
        actor.key_id if actor else None,
        target_key_id,
        actor.subject if actor else None,
        team_id,
        target,
    )


async def audit_change(
    pool: asyncpg.Pool, action: str, actor: Actor | None, *, target: str, reason: str | None = None
) -> None:
    """Audit a change made elsewhere (a rate-limit override, written by gateway/rate_limits/overrides.py)."""
    await _gateway_audit(pool, action, actor, target=target, reason=reason)


async def revoke_service_key(pool: asyncpg.Pool, key_id: int, *, reason: str | None, actor: Actor | None) -> bool:
    """Revoke a key that belongs to no user (a user's key is regenerated or deleted with the user); False: none."""
    async with pool.acquire() as conn, conn.transaction():
        status = await conn.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND user_id IS NULL AND revoked_at IS NULL", key_id
        )
        if not status.endswith(" 1"):
            return False
        await _gateway_audit(conn, "key_revoked", actor, reason=reason, target_key_id=key_id)
    return True


async def start_console_session(
    pool: asyncpg.Pool,
    id_hash: bytes,
    key_id: int,
    max_age_s: int,
    *,
    per_key: int = 20,
    sso: SsoSession | None = None,
) -> None:
    """Record a console sign-in (and forget expired ones, so the table stays the size of the live sessions).

    A key keeps its `per_key` newest sessions: a signed-in key can sign in again in a loop (its check is cached),
    and the table must not grow with it; the oldest browser is signed out instead.
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM console_sessions WHERE expires_at < now()")
        await conn.execute(
            "DELETE FROM console_sessions WHERE id_hash IN (SELECT id_hash FROM console_sessions WHERE key_id = $1"
            " ORDER BY created_at DESC, id_hash OFFSET $2)",
            key_id,
            per_key - 1,
        )
        await conn.execute(
            "INSERT INTO console_sessions (id_hash, key_id, expires_at, sso_subject, sso_role, sso_team)"
            " VALUES ($1, $2, now() + make_interval(secs => $3), $4, $5, $6)",
            id_hash,
            key_id,
            float(max_age_s),
            *(astuple(sso) if sso else (None, None, None)),
        )


async def console_session_key(pool: asyncpg.Pool, id_hash: bytes) -> KeyRow | None:
    """The key of a live console session: not signed out, not expired, the key not revoked, its user not deleted."""
    row = await pool.fetchrow(
        _KEY_SELECT + " JOIN console_sessions s ON s.key_id = k.id WHERE s.id_hash = $1 AND s.expires_at > now()"
        " AND k.revoked_at IS NULL AND (k.user_id IS NULL OR u.deleted_at IS NULL)",
        id_hash,
    )
    return _key(row) if row else None


async def end_console_session(pool: asyncpg.Pool, id_hash: bytes) -> None:
    await pool.execute("DELETE FROM console_sessions WHERE id_hash = $1", id_hash)


async def month_counter(pool: asyncpg.Pool, month: date, scope: str, scope_id: str) -> dict[str, Any]:
    """One usage_counters row (tokens, cost_usd, requests, unpriced), zeros when there is none yet."""
    row = await pool.fetchrow(
        "SELECT tokens, cost_usd, requests, unpriced FROM usage_counters WHERE month = $1 AND scope = $2"
        " AND scope_id = $3",
        month,
        scope,
        scope_id,
    )
    return dict(row) if row else {"tokens": 0, "cost_usd": Decimal(0), "requests": 0, "unpriced": 0}


async def key_usage_by_day(pool: asyncpg.Pool, key_id: int, start: date, end: date) -> list[dict[str, Any]]:
    """Per UTC day and provider model in [start, end) for one key (a caller without a user), oldest first."""
    query, args = _daily_between(start, end, None)
    query = query.where(_daily.key_id == Parameter("$3")).select(_daily.day, _daily.provider_model.as_("name"))
    query = query.select(*_DAILY_SUMS).groupby(_daily.day, _daily.provider_model).orderby(_daily.day)
    return [_numbers(r) for r in await pool.fetch(query.get_sql(), *args, key_id)]


async def user_live_key(pool: asyncpg.Pool, user_id: UUID) -> KeyRow | None:
    """The user's one unrevoked gateway key, if any."""
    row = await pool.fetchrow(_KEY_SELECT + " WHERE k.user_id = $1 AND k.revoked_at IS NULL", user_id)
    return _key(row) if row else None


@dataclass(frozen=True, slots=True)
class SsoSession:
    """Who signed in to the console through OpenID Connect: `sso:<email or sub>`, the mapped role, the team name."""

    subject: str
    role: str
    team: str | None


async def console_session_sso(pool: asyncpg.Pool, id_hash: bytes) -> SsoSession | None:
    """The SSO identity of a console session (None for a session signed in with a key)."""
    row = await pool.fetchrow(
        "SELECT sso_subject, sso_role, sso_team FROM console_sessions WHERE id_hash = $1 AND sso_subject IS NOT NULL",
        id_hash,
    )
    return SsoSession(row["sso_subject"], row["sso_role"], row["sso_team"]) if row else None


async def user_key_by_email(pool: asyncpg.Pool, email: str) -> KeyRow | None:
    """The live gateway key of the undeleted user with this email (any case), if any."""
    row = await _looked_up(
        pool,
        _KEY_SELECT + " WHERE lower(u.email) = lower($1) AND u.deleted_at IS NULL AND k.revoked_at IS NULL",
        email,
    )
    return _key(row) if row else None


async def sso_identity_key(pool: asyncpg.Pool, name: str, make: Callable[[], tuple[str, str]]) -> KeyRow:
    """The key row standing for an SSO identity (`name` = 'sso:<subject>'), made on first use.

    `make()` gives (lookup_id, key_hash) of a key whose plaintext nobody keeps. Two first sign-ins at once: the
    partial unique index api_keys_sso_identity lets one insert win; the other reads its row.
    """
    query = _KEY_SELECT + " WHERE k.name = $1 AND k.user_id IS NULL AND k.revoked_at IS NULL"
    if (row := await pool.fetchrow(query, name)) is not None:
        return _key(row)
    lookup_id, key_hash = make()
    await pool.execute(
        "INSERT INTO api_keys (lookup_id, key_hash, name, is_admin) VALUES ($1, $2, $3, false) ON CONFLICT DO NOTHING",
        lookup_id,
        key_hash,
        name,
    )
    return _key(_returned(await pool.fetchrow(query, name)))


# --- teams (issue 21) --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TeamRow:
    id: int
    name: str
    limit_tokens: int | None  # monthly; NULL: no team token limit
    limit_usd: Decimal | None  # monthly; NULL: no team USD limit
    created_at: datetime
    updated_at: datetime


_TEAM_COLUMNS = "id, name, limit_tokens, limit_usd, created_at, updated_at"


async def team_by_id(conn: asyncpg.Pool | Connection, team_id: int, *, lock: bool = False) -> TeamRow | None:
    """A live team by id; `lock` (inside a transaction) holds its row until the commit, so it cannot be deleted."""
    sql = f"SELECT {_TEAM_COLUMNS} FROM teams WHERE id = $1 AND deleted_at IS NULL" + (" FOR SHARE" if lock else "")
    row = await conn.fetchrow(sql, team_id)
    return TeamRow(**dict(row)) if row else None


async def team_by_name(conn: asyncpg.Pool | Connection, name: str) -> TeamRow | None:
    """A live team by name, in any case (how a team claimed from single sign-on is found)."""
    row = await conn.fetchrow(
        f"SELECT {_TEAM_COLUMNS} FROM teams WHERE lower(name) = lower($1) AND deleted_at IS NULL", name
    )
    return TeamRow(**dict(row)) if row else None


async def create_team(
    pool: asyncpg.Pool, *, name: str, limit_tokens: int | None, limit_usd: Decimal | None, actor: Actor | None
) -> TeamRow:
    """A new team, audited; Conflict when a live team has that name (in any case)."""
    async with pool.acquire() as conn, conn.transaction():
        try:
            row = await conn.fetchrow(
                f"INSERT INTO teams (name, limit_tokens, limit_usd) VALUES ($1, $2, $3) RETURNING {_TEAM_COLUMNS}",
                name,
                limit_tokens,
                limit_usd,
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(f"a team named {name!r} already exists") from None
        team = TeamRow(**dict(_returned(row)))
        await _gateway_audit(conn, "team_created", actor, team_id=team.id, reason=name)
    return team


@dataclass(frozen=True, slots=True)
class TeamChange:
    """What a PATCH of a team changes: only the fields marked `set_*` (a limit set to None: no team limit)."""

    name: str | None = None
    set_limit_tokens: bool = False
    limit_tokens: int | None = None
    set_limit_usd: bool = False
    limit_usd: Decimal | None = None

    def describe(self) -> str:
        parts = [f"name={self.name}"] if self.name is not None else []
        parts += [f"limit_tokens={self.limit_tokens}"] if self.set_limit_tokens else []
        parts += [f"limit_usd={self.limit_usd}"] if self.set_limit_usd else []
        return ", ".join(parts)


async def update_team(pool: asyncpg.Pool, team_id: int, change: TeamChange, *, actor: Actor | None) -> TeamRow | None:
    """Rename a team or set its limits (one audit row); None: no such team; Conflict: the name is taken."""
    async with pool.acquire() as conn, conn.transaction():
        try:
            row = await conn.fetchrow(
                "UPDATE teams SET name = coalesce($2, name),"
                " limit_tokens = CASE WHEN $3 THEN $4 ELSE limit_tokens END,"
                " limit_usd = CASE WHEN $5 THEN $6 ELSE limit_usd END, updated_at = now()"
                f" WHERE id = $1 AND deleted_at IS NULL RETURNING {_TEAM_COLUMNS}",
                team_id,
                change.name,
                change.set_limit_tokens,
                change.limit_tokens,
                change.set_limit_usd,
                change.limit_usd,
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(f"a team named {change.name!r} already exists") from None
        if row is None:
            return None
        action = "team_renamed" if change.name is not None else "team_limits_changed"
        await _gateway_audit(conn, action, actor, team_id=team_id, reason=change.describe())
    return TeamRow(**dict(row))


async def delete_team(pool: asyncpg.Pool, team_id: int, *, actor: Actor | None) -> bool:
    """Delete an empty team (kept as deleted, so its usage and audit rows still name it); False: no such team.

    Raises Conflict while a live user is in it or a live team_admin key administers it (move or delete them first).
    """
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchval("SELECT 1 FROM teams WHERE id = $1 AND deleted_at IS NULL FOR UPDATE", team_id) is None:
            return False
        users = await conn.fetchval("SELECT count(*) FROM users WHERE team_id = $1 AND deleted_at IS NULL", team_id)
        if users:
            raise Conflict(f"the team still has {users} user(s); move or delete them first")
        keys = await conn.fetchval("SELECT count(*) FROM api_keys WHERE team_id = $1 AND revoked_at IS NULL", team_id)
        if keys:
            raise Conflict(f"the team still has {keys} live team_admin key(s); revoke them first")
        await conn.execute("UPDATE teams SET deleted_at = now(), updated_at = now() WHERE id = $1", team_id)
        await _gateway_audit(conn, "team_deleted", actor, team_id=team_id)
    return True


async def teams_month_usage(pool: asyncpg.Pool, month: date, *, team_id: int | None = None) -> list[dict[str, Any]]:
    """Every live team (or one) with its limits, live members and this month's counters (usage made for it)."""
    rows = await pool.fetch(
        f"""
        SELECT {", ".join("t." + c for c in _TEAM_COLUMNS.split(", "))},
               (SELECT count(*) FROM users u WHERE u.team_id = t.id AND u.deleted_at IS NULL) AS members,
               coalesce(c.tokens, 0) AS tokens, coalesce(c.cost_usd, 0) AS cost_usd,
               coalesce(c.requests, 0) AS requests
        FROM teams t
        LEFT JOIN usage_counters c ON c.month = $1 AND c.scope = 'team' AND c.scope_id = t.id::text
        WHERE t.deleted_at IS NULL AND ($2::bigint IS NULL OR t.id = $2)
        ORDER BY lower(t.name), t.id
        """,
        month,
        team_id,
    )
    return [dict(r) for r in rows]


async def team_usage_by_user(pool: asyncpg.Pool, team_id: int, start: date, end: date) -> list[dict[str, Any]]:
    """A team's usage in [start, end) per user who made it there (members since gone included), costliest first.

    Reads usage_log by its (team_id, created_at) index: one team's month of rows.
    """
    rows = await pool.fetch(
        """
        SELECT l.user_id, u.email, count(*) AS requests,
               sum(l.input_tokens + l.output_tokens + l.cache_read_tokens + l.cache_write_tokens) AS tokens,
               coalesce(sum(l.cost_usd), 0) AS cost_usd
        FROM usage_log l LEFT JOIN users u ON u.id = l.user_id
        WHERE l.team_id = $1 AND l.created_at >= $2::date::timestamp AT TIME ZONE 'UTC'
          AND l.created_at < $3::date::timestamp AT TIME ZONE 'UTC'
        GROUP BY l.user_id, u.email
        ORDER BY 5 DESC, 3 DESC, u.email
        """,
        team_id,
        start,
        end,
    )
    return [dict(r) for r in rows]


async def set_user_team(
    pool: asyncpg.Pool, user_id: UUID, team_id: int | None, *, actor: Actor | None
) -> UserRow | None:
    """Move a user to `team_id` (None: out of any team), audited; None: no such user; LookupError: no such team.

    Usage counts for the new team from now on; the rows already made stay with the team they were made for.
    """
    async with pool.acquire() as conn, conn.transaction():
        if team_id is not None and await team_by_id(conn, team_id, lock=True) is None:
            raise LookupError(f"no team with id {team_id}")
        before = await conn.fetchval(
            "SELECT coalesce(team_id::text, 'none') FROM users WHERE id = $1 AND deleted_at IS NULL FOR UPDATE", user_id
        )
        if before is None:
            return None
        row = await conn.fetchrow(
            f"UPDATE users SET team_id = $2, updated_at = now() WHERE id = $1 RETURNING {_USER_COLUMNS}",
            user_id,
            team_id,
        )
        reason = f"team {before} -> {team_id if team_id is not None else 'none'}"
        await _audit(conn, user_id, "team_changed", reason, actor, None, None)
    return UserRow(**dict(_returned(row)))


async def management_keys(pool: asyncpg.Pool) -> list[KeyRow]:
    """Live keys with a role (admin, team_admin, viewer), newest first."""
    sql = _KEY_SELECT + " WHERE k.role IS NOT NULL AND k.revoked_at IS NULL ORDER BY k.id DESC"
    return [_key(r) for r in await pool.fetch(sql)]
