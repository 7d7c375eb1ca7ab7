"""usage_log's monthly partitions: created ahead of time, and old months dropped whole.

sql/009 partitions usage_log by `created_at`, one partition per UTC calendar month, named
`usage_log_YYYY_MM`. Each gateway process runs `keep_partitions` at start and then daily: it creates the
current month and the next `AHEAD_MONTHS` (idempotent, under a transaction-scoped advisory lock, so
replicas starting together and PgBouncer in transaction mode are both fine), and, when
`usage_log.retention_months` is N > 0, drops the partitions that end on or before the first day of the
month N months before the current one. Example, on 2026-11-15 with N = 2: September, October and
November stay; August and older go. Monthly totals stay in usage_counters (never dropped), so budgets and
the per-user usage summary are unaffected.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import UTC, date, datetime

import asyncpg
import structlog

from gateway import db

log = structlog.get_logger("gateway.partitions")

AHEAD_MONTHS = 2  # a month's partition exists at least two months before its first row
PARTITION_LOCK = 0x7573_6167_655F_70  # pg_advisory_xact_lock key ("usage_p")
EVERY_S = 24 * 3600.0
# DDL on a partition queues for an exclusive lock behind any long query on usage_log, and every read and
# write of usage_log then queues behind it: give up after this long and try again at the next round.
LOCK_TIMEOUT = "1s"
RETRY_S = 600.0  # after a failed round (a report held the lock all along, the database was away)
_NAME = re.compile(r"^usage_log_(\d{4})_(\d{2})$")


def month_start(day: date, plus: int = 0) -> date:
    """The first day of `day`'s month, moved by `plus` months (negative: back)."""
    index = day.year * 12 + day.month - 1 + plus
    return date(index // 12, index % 12 + 1, 1)


def partition_name(month: date) -> str:
    return f"usage_log_{month:%Y_%m}"


async def ensure_partitions(pool: asyncpg.Pool, today: date, ahead: int = AHEAD_MONTHS) -> list[str]:
    """Create the partitions for today's month and `ahead` months after it; returns the names created."""
    created = []
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        if not await _is_partitioned(conn):
            return []
        existing = set(await _partitions(conn))
        for plus in range(ahead + 1):
            month = month_start(today, plus)
            name = partition_name(month)
            if name in existing:
                continue
            start, end = (datetime.combine(m, datetime.min.time(), UTC) for m in (month, month_start(month, 1)))
            # Made beside usage_log, then attached: rows that reached the DEFAULT partition for this month
            # (no partition in time) move into it first, else ATTACH would refuse. DDL takes no parameters;
            # the bounds come from dates, never from input.
            bounds = f"FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
            await conn.execute(f"CREATE TABLE {name} (LIKE usage_log INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
            await conn.execute(
                f"WITH moved AS (DELETE FROM usage_log_default WHERE created_at >= $1 AND created_at < $2"
                f" RETURNING *) INSERT INTO {name} SELECT * FROM moved",
                start,
                end,
            )
            await conn.execute(f"ALTER TABLE usage_log ATTACH PARTITION {name} FOR VALUES {bounds}")
            created.append(name)
    return created


async def drop_old_partitions(pool: asyncpg.Pool, today: date, retention_months: int) -> list[str]:
    """Drop whole months older than `retention_months` before today's month; returns the names dropped.

    Only partitions named `usage_log_YYYY_MM` are considered; the DEFAULT partition is never dropped, but
    its rows older than the kept months are deleted. Raises asyncpg.LockNotAvailableError when a query on
    usage_log holds it longer than LOCK_TIMEOUT (the caller tries again at its next round).
    """
    if retention_months <= 0:
        return []
    keep_from = month_start(today, -retention_months)
    dropped = []
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        for name in await _partitions(conn):
            match = _NAME.match(name)
            if match and date(int(match[1]), int(match[2]), 1) < keep_from:
                await conn.execute(f"DROP TABLE {name}")  # name matched ^usage_log_\d{4}_\d{2}$
                dropped.append(name)
        # rows for months without a partition wait in the DEFAULT one (spilled rows replayed after their
        # month was dropped, clocks far off): retention applies to them too, else they stay forever
        keep_from_at = datetime.combine(keep_from, datetime.min.time(), UTC)
        if await _is_partitioned(conn):
            await conn.execute("DELETE FROM usage_log_default WHERE created_at < $1", keep_from_at)
    return dropped


async def keep_partitions(
    pool: asyncpg.Pool,
    retention_months: int,
    *,
    today: Callable[[], date],
    every_s: float = EVERY_S,
) -> None:
    """Run forever (a background task): ensure partitions ahead and apply retention, at start and daily.

    A failure (database away, a lock not had within LOCK_TIMEOUT) is logged and tried again after RETRY_S,
    not a day later; the DEFAULT partition holds any row that arrives for a month whose partition could not
    be made in time.
    """
    while True:
        wait_s = every_s
        try:
            created = await ensure_partitions(pool, today())
            dropped = await drop_old_partitions(pool, today(), retention_months)
            if created or dropped:
                log.info("usage_partitions", created=created, dropped=dropped)
        except db.UNAVAILABLE_OR_FAILED as exc:
            log.warning("usage_partitions_failed", error=str(exc), retry_s=RETRY_S)
            wait_s = min(every_s, RETRY_S)
        await asyncio.sleep(wait_s)


async def _is_partitioned(conn: db.Connection) -> bool:
    return bool(await conn.fetchval("SELECT relkind = 'p' FROM pg_class WHERE oid = 'usage_log'::regclass"))


async def _partitions(conn: db.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'usage_log'::regclass ORDER BY 1"
    )
    return [r["relname"] for r in rows]
