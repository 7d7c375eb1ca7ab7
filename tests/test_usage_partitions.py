"""usage_log partitioned by UTC month: rows land in their month, retention drops whole old months only."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg

from gateway import db
from gateway.accounting.partitions import drop_old_partitions, ensure_partitions, month_start
from tests.pg import create_test_database

MakeKey = Callable[..., Awaitable[tuple[str, db.KeyRow]]]


# Columns later sql/ files may add to usage_log get a value of their type (they are not this test's subject).
_BY_TYPE: dict[str, Any] = {"integer": 0, "bigint": 0, "numeric": Decimal(0), "boolean": False, "real": 0.0}
_other_columns: dict[str, Any] = {}


async def learn_columns(conn: asyncpg.Pool | asyncpg.Connection) -> None:
    rows = await conn.fetch(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'usage_log'"
    )
    _other_columns.update({r["column_name"]: _BY_TYPE.get(r["data_type"]) for r in rows})


def row(key_id: int, at: datetime, *, tokens: int = 10) -> tuple[Any, ...]:
    """One usage row in db.USAGE_COLUMNS order."""
    values = _other_columns | {
        "id": uuid.uuid4(),
        "created_at": at,
        "request_id": "r",
        "key_id": key_id,
        "user_id": None,
        "route": "messages",
        "alias": "claude-fast",
        "provider": "anthropic",
        "provider_model": "claude-haiku-4-5",
        "status": 200,
        "input_tokens": tokens,
        "output_tokens": 0,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "cost_usd": Decimal("0.001"),
        "latency_ms": 1.0,
        "ttfb_ms": None,
        "streamed": False,
    }
    return tuple(values.get(c) for c in db.USAGE_COLUMNS)  # a column added after this test's schema: None


async def where_rows_are(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch("SELECT tableoid::regclass::text AS part, count(*) AS n FROM usage_log GROUP BY 1")
    return {r["part"]: r["n"] for r in rows}


async def test_rows_either_side_of_a_month_boundary_land_in_their_months(pool: asyncpg.Pool, make_key: MakeKey) -> None:
    assert await pool.fetchval("SELECT relkind::text FROM pg_class WHERE oid = 'usage_log'::regclass") == "p"
    _, key = await make_key()
    await learn_columns(pool)
    await ensure_partitions(pool, date(2026, 10, 1), ahead=1)
    midnight = datetime(2026, 11, 1, tzinfo=UTC)
    batch = [row(key.id, midnight - timedelta(microseconds=1)), row(key.id, midnight)]
    await db.insert_usage(pool, batch)
    await db.insert_usage(pool, batch)  # a replayed batch: same ids and times, nothing added
    assert await where_rows_are(pool) == {"usage_log_2026_10": 1, "usage_log_2026_11": 1}
    # the monthly rollup matches the raw rows, month by month, and the replay added nothing to it
    rollup = await pool.fetch("SELECT month, tokens, requests FROM usage_counters WHERE scope = 'key' ORDER BY month")
    raw = await pool.fetch(
        "SELECT date_trunc('month', created_at AT TIME ZONE 'UTC')::date AS month,"
        " sum(input_tokens + output_tokens + cache_read_tokens + cache_write_tokens) AS tokens,"
        " count(*) AS requests FROM usage_log GROUP BY 1 ORDER BY 1"
    )
    assert (
        [tuple(r) for r in rollup]
        == [tuple(r) for r in raw]
        == [
            (date(2026, 10, 1), 10, 1),
            (date(2026, 11, 1), 10, 1),
        ]
    )


async def test_a_row_for_a_month_without_partition_is_kept_and_moved_when_the_month_is_made(
    pool: asyncpg.Pool, make_key: MakeKey
) -> None:
    _, key = await make_key()
    await learn_columns(pool)
    far = datetime(2031, 1, 5, 12, tzinfo=UTC)
    await db.insert_usage(pool, [row(key.id, far)])
    assert await where_rows_are(pool) == {"usage_log_default": 1}
    assert await ensure_partitions(pool, far.date(), ahead=0) == ["usage_log_2031_01"]
    assert await where_rows_are(pool) == {"usage_log_2031_01": 1}
    assert await ensure_partitions(pool, far.date(), ahead=0) == []  # idempotent


async def test_retention_drops_only_whole_months_before_the_kept_ones(pool: asyncpg.Pool, make_key: MakeKey) -> None:
    _, key = await make_key()
    await learn_columns(pool)
    await ensure_partitions(pool, date(2025, 6, 1), ahead=6)  # June .. December 2025
    months = [month_start(date(2025, 6, 1), i) for i in range(7)]
    await db.insert_usage(
        pool, [row(key.id, datetime.combine(m, datetime.min.time(), UTC) + timedelta(days=3)) for m in months]
    )
    counters_before = await pool.fetch("SELECT * FROM usage_counters ORDER BY month")

    dropped = await drop_old_partitions(pool, date(2025, 12, 31), retention_months=2)

    assert dropped == [f"usage_log_2025_{m:02d}" for m in (6, 7, 8, 9)]
    kept = await where_rows_are(pool)
    assert kept == {"usage_log_2025_10": 1, "usage_log_2025_11": 1, "usage_log_2025_12": 1}
    # the monthly totals (budgets, usage summary) are rollups kept forever
    assert await pool.fetch("SELECT * FROM usage_counters ORDER BY month") == counters_before
    assert await drop_old_partitions(pool, date(2025, 12, 31), retention_months=0) == []  # 0: keep everything
    names = {r["relname"] for r in await pool.fetch("SELECT relname FROM pg_class WHERE relname LIKE 'usage_log_%'")}
    assert "usage_log_default" in names  # never dropped


async def copy_to_an_early_usage_log(conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
    """COPY rows (in db.USAGE_COLUMNS order) into a usage_log made by the files before 009: only the columns it
    has (later files add more, sql/011's team_id among them)."""
    have = {
        r["column_name"]
        for r in await conn.fetch("SELECT column_name FROM information_schema.columns WHERE table_name = 'usage_log'")
    }
    kept = [i for i, c in enumerate(db.USAGE_COLUMNS) if c in have]
    records = [tuple(r[i] for i in kept) for r in rows]
    await conn.copy_records_to_table("usage_log", records=records, columns=[db.USAGE_COLUMNS[i] for i in kept])


async def test_migration_keeps_existing_rows_columns_and_indexes(tmp_path: Path) -> None:
    """An unpartitioned usage_log with rows, an extra column and an extra index (as a later sql/ file might
    add) comes out partitioned with all of them."""
    early = tmp_path / "early"
    early.mkdir()
    for path in db.migration_files():
        if path.name < "009":
            shutil.copy(path, early / path.name)
    dsn, drop = await create_test_database()
    conn = await asyncpg.connect(dsn)
    try:
        await db.migrate(conn, early)
        await conn.execute("ALTER TABLE usage_log ADD COLUMN extra_count_for_this_test integer NOT NULL DEFAULT 0")
        await conn.execute("CREATE INDEX usage_log_model ON usage_log (provider_model)")
        await learn_columns(conn)
        key_id = await conn.fetchval(
            "INSERT INTO api_keys (lookup_id, key_hash, name, is_admin) VALUES ('x', 'h', 'n', false) RETURNING id"
        )
        old = [row(key_id, datetime(2024, 2, 29, 23, 59, tzinfo=UTC)), row(key_id, datetime(2024, 3, 1, tzinfo=UTC))]
        await copy_to_an_early_usage_log(conn, old)
        await conn.execute("UPDATE usage_log SET extra_count_for_this_test = 3")

        assert "009_usage_log_partitions.sql" in await db.migrate(conn)

        parts = await conn.fetch(
            "SELECT tableoid::regclass::text AS part, extra_count_for_this_test FROM usage_log ORDER BY created_at"
        )
        assert [(p["part"], p["extra_count_for_this_test"]) for p in parts] == [
            ("usage_log_2024_02", 3),
            ("usage_log_2024_03", 3),
        ]
        indexes = {
            r["indexname"] for r in await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'usage_log'")
        }
        assert {"usage_log_pkey", "usage_log_key_time", "usage_log_time", "usage_log_model"} <= indexes
        pkey = await conn.fetchval(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'usage_log_pkey'"
        )
        assert pkey == "PRIMARY KEY (id, created_at)"
        this_month = month_start(datetime.now(UTC).date())
        assert await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"usage_log_{this_month:%Y_%m}")
        assert await db.migrate(conn) == []
    finally:
        await conn.close()
        await drop()
