"""usage_log's partitions against a careless operator: rows far off in time, replays after retention."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from datetime import UTC, date, datetime
from pathlib import Path

import asyncpg
import pytest

from gateway import db
from gateway.accounting import partitions as usage_partitions
from gateway.accounting.partitions import drop_old_partitions, ensure_partitions, keep_partitions
from gateway.config import ConfigError
from tests.conftest import gateway_config
from tests.pg import create_test_database
from tests.test_usage_partitions import MakeKey, learn_columns, row, where_rows_are


async def test_retention_also_applies_to_old_rows_waiting_in_the_default_partition(
    pool: asyncpg.Pool, make_key: MakeKey
) -> None:
    """Spilled rows replayed after their month's partition was dropped land in DEFAULT; retention takes them."""
    _, key = await make_key()
    await learn_columns(pool)
    await ensure_partitions(pool, date(2025, 11, 1), ahead=1)
    await db.insert_usage(
        pool,
        [
            row(key.id, datetime(2025, 3, 10, tzinfo=UTC)),  # replayed long after its month went
            row(key.id, datetime(1970, 1, 1, tzinfo=UTC)),  # a device without a clock
            row(key.id, datetime(2025, 11, 2, tzinfo=UTC)),
        ],
    )
    assert await where_rows_are(pool) == {"usage_log_default": 2, "usage_log_2025_11": 1}
    await drop_old_partitions(pool, date(2025, 12, 1), retention_months=2)
    assert await where_rows_are(pool) == {"usage_log_2025_11": 1}


async def test_migration_makes_partitions_only_for_months_with_rows(tmp_path: Path) -> None:
    """One row stamped 1970 must not make one partition per month since then."""
    early = tmp_path / "early"
    early.mkdir()
    for path in db.migration_files():
        if path.name < "009":
            shutil.copy(path, early / path.name)
    dsn, drop = await create_test_database()
    conn = await asyncpg.connect(dsn)
    try:
        await db.migrate(conn, early)
        await learn_columns(conn)
        key_id = await conn.fetchval(
            "INSERT INTO api_keys (lookup_id, key_hash, name, is_admin) VALUES ('x', 'h', 'n', false) RETURNING id"
        )
        rows = [row(key_id, datetime(1970, 1, 1, tzinfo=UTC)), row(key_id, datetime(2024, 3, 1, tzinfo=UTC))]
        await conn.copy_records_to_table("usage_log", records=rows, columns=db.USAGE_COLUMNS)
        await db.migrate(conn)
        parts = await conn.fetchval("SELECT count(*) FROM pg_inherits WHERE inhparent = 'usage_log'::regclass")
        assert parts == 2 + 3 + 1  # the two months with rows, this month and two ahead, DEFAULT
        where = await conn.fetch("SELECT tableoid::regclass::text AS part FROM usage_log ORDER BY created_at")
        assert [r["part"] for r in where] == ["usage_log_1970_01", "usage_log_2024_03"]
    finally:
        await conn.close()
        await drop()


@pytest.mark.parametrize("months", [-1, 99_999])
def test_retention_beyond_any_calendar_is_a_config_error(months: int) -> None:
    """99999 "to keep everything" would reach before year 1: the daily partition keeper would die on it."""
    with pytest.raises(ConfigError, match=re.escape("usage_log.retention_months: must be 0 (keep everything) to 1200")):
        gateway_config("http://127.0.0.1:1", usage_log={"retention_months": months})


async def test_retention_waiting_on_a_long_query_does_not_stall_usage_log(
    pool: asyncpg.Pool, database_url: str
) -> None:
    """A report reading usage_log while the daily retention runs: DROP queues for its exclusive lock, and
    every read and insert of usage_log would queue behind the DROP until the report ends."""
    await ensure_partitions(pool, date(2025, 1, 1), ahead=1)
    report = await asyncpg.connect(database_url)
    try:
        async with report.transaction():
            await report.fetchval("SELECT count(*) FROM usage_log")  # holds its lock until the report ends
            dropping = asyncio.create_task(drop_old_partitions(pool, date(2026, 11, 1), retention_months=2))
            await asyncio.sleep(0.2)
            async with asyncio.timeout(5):  # not until the report ends
                await pool.fetchval("SELECT count(*) FROM usage_log WHERE created_at > now()")
            with pytest.raises(asyncpg.LockNotAvailableError):
                await dropping  # given up, tried again at the next round
    finally:
        await report.close()
    dropped = await drop_old_partitions(pool, date(2026, 11, 1), retention_months=2)  # the report is over
    assert {"usage_log_2025_01", "usage_log_2025_02"} <= set(dropped)


async def test_a_round_that_could_not_drop_is_tried_again_soon_not_a_day_later(
    pool: asyncpg.Pool, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(usage_partitions, "RETRY_S", 0.3, raising=False)
    await ensure_partitions(pool, date(2025, 1, 1), ahead=0)
    report = await asyncpg.connect(database_url)
    keeper = None
    try:
        async with report.transaction():
            await report.fetchval("SELECT count(*) FROM usage_log")
            keeper = asyncio.create_task(keep_partitions(pool, 2, today=lambda: date(2026, 11, 1), every_s=3600))
            await asyncio.sleep(1.5)  # the first round gave up on its lock
        for _ in range(50):  # the report is over: the next try drops the old month
            if not await pool.fetchval("SELECT to_regclass('usage_log_2025_01') IS NOT NULL"):
                break
            await asyncio.sleep(0.1)
        assert not await pool.fetchval("SELECT to_regclass('usage_log_2025_01') IS NOT NULL")
    finally:
        await report.close()
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
