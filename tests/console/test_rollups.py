"""usage_daily and usage_latency_daily: kept with the counters, in the same transaction, never counted twice."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from gateway import db
from gateway.console.charts import percentile_ms, tokens_per_day_by_model
from gateway.console.pages import ClosedDays
from tests.console.rows import as_usage_row

MakeUser = Callable[..., Awaitable[tuple[str, db.KeyRow]]]


def usage_row(key: db.KeyRow, **fields: Any) -> tuple[Any, ...]:
    """A usage row in db.USAGE_COLUMNS order."""
    row: dict[str, Any] = {
        "id": uuid.uuid4(),
        "created_at": datetime(2026, 11, 3, 12, 0, tzinfo=UTC),
        "request_id": "r",
        "key_id": key.id,
        "user_id": key.user_id,
        "route": "messages",
        "alias": "claude-fast",
        "provider": "anthropic",
        "provider_model": "claude-haiku-4-5",
        "status": 200,
        "input_tokens": 10,
        "output_tokens": 5,
        "cache_read_tokens": 2,
        "cache_write_tokens": 1,
        "cost_usd": Decimal("0.001"),
        "latency_ms": 30.0,
        "ttfb_ms": None,
        "streamed": False,
        **fields,
    }
    return as_usage_row(row)


async def daily(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT * FROM usage_daily ORDER BY day, provider_model, route")
    return [dict(r) for r in rows]


async def test_rollup_sums_a_batch_per_day_key_route_and_model(pool: asyncpg.Pool, make_user: MakeUser) -> None:
    _, key = await make_user("ada@example.com")
    other_day = datetime(2026, 11, 4, 0, 0, 1, tzinfo=UTC)
    await db.insert_usage(
        pool,
        [
            usage_row(key),
            usage_row(key, status=500, latency_ms=900.0, cost_usd=None),
            usage_row(key, created_at=other_day, provider_model="claude-sonnet-4-5", output_tokens=100),
        ],
    )
    rows = await daily(pool)
    assert [(r["day"], r["provider_model"], r["requests"], r["errors"]) for r in rows] == [
        (date(2026, 11, 3), "claude-haiku-4-5", 2, 1),
        (date(2026, 11, 4), "claude-sonnet-4-5", 1, 0),
    ]
    first = rows[0]
    assert (first["input_tokens"], first["output_tokens"], first["cache_read_tokens"], first["cache_write_tokens"]) == (
        20,
        10,
        4,
        2,
    )
    assert first["cost_usd"] == Decimal("0.001") and first["unpriced"] == 1 and first["user_id"] == key.user_id
    latency = await db.latency_by_day(pool, date(2026, 11, 1), date(2026, 12, 1))
    assert sum(latency[date(2026, 11, 3)]) == 2 and sum(latency[date(2026, 11, 4)]) == 1


async def test_a_replayed_batch_adds_nothing_to_the_rollups(pool: asyncpg.Pool, make_user: MakeUser) -> None:
    """A spill file replayed after a crash re-sends ids already stored: neither the log nor the rollup grows."""
    _, key = await make_user("ada@example.com")
    batch = [usage_row(key), usage_row(key)]
    await db.insert_usage(pool, batch)
    await db.insert_usage(pool, [*batch, usage_row(key)])  # two old rows, one new
    (row,) = await daily(pool)
    assert row["requests"] == 3 == await db.count_usage(pool)
    assert row["input_tokens"] == 30


async def test_rollups_equal_the_log_they_summarise(pool: asyncpg.Pool, make_user: MakeUser) -> None:
    """Many batches, several users and days: every rollup figure equals a GROUP BY over usage_log."""
    keys = [(await make_user(f"u{i}@example.com"))[1] for i in range(3)]
    for n in range(12):
        await db.insert_usage(
            pool,
            [
                usage_row(
                    keys[(n + i) % 3],
                    created_at=datetime(2026, 11, 1 + (n + i) % 5, i, tzinfo=UTC),
                    route=("messages", "chat_completions")[i % 2],
                    input_tokens=n * 7 + i,
                    status=(200, 200, 429)[i % 3],
                    cost_usd=Decimal(n) / 1000,
                )
                for i in range(9)
            ],
        )
    expected = await pool.fetch(
        "SELECT (created_at AT TIME ZONE 'UTC')::date AS day, key_id, route, count(*) AS requests,"
        " count(*) FILTER (WHERE status >= 400) AS errors, sum(input_tokens) AS input_tokens, sum(cost_usd) AS cost"
        " FROM usage_log GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    )
    got = await pool.fetch(
        "SELECT day, key_id, route, requests, errors, input_tokens, cost_usd AS cost FROM usage_daily ORDER BY 1, 2, 3"
    )
    assert [tuple(r) for r in got] == [tuple(r) for r in expected]


async def test_the_migration_rolls_up_usage_stored_before_it(database_url: str, pool: asyncpg.Pool) -> None:
    """sql/006 fills usage_daily from the rows already in usage_log (an upgrade keeps its history)."""
    sql = (db.SQL_DIR / "006_console.sql").read_text()
    rollup_part = sql[sql.index("-- Rollups of the usage already stored") :]
    new = await db.insert_key(pool, lookup_id="0123456789abcdef", key_hash="x", name="svc", is_admin=False)
    await pool.execute(
        f"INSERT INTO usage_log ({', '.join(db.USAGE_COLUMNS)}) VALUES"
        f" ({', '.join(f'${i + 1}' for i in range(len(db.USAGE_COLUMNS)))})",
        *usage_row(new),
    )
    assert await daily(pool) == []  # inserted behind insert_usage's back: no rollup yet
    await pool.execute(rollup_part)
    (row,) = await daily(pool)
    assert (row["requests"], row["input_tokens"], row["key_id"]) == (1, 10, new.id)


@pytest.mark.parametrize(
    ("histogram", "fraction", "expected"),
    [
        pytest.param([0, 0, 10] + [0] * 16, 0.5, 3.5, id="middle of the 2-5 ms bucket"),
        pytest.param([0] * 19, 0.5, None, id="no requests"),
        pytest.param([0] * 8 + [50, 50] + [0] * 9, 0.95, 950.0, id="p95 in the 500-1000 ms bucket"),
    ],
)
def test_percentile_from_histogram(histogram: list[int], fraction: float, expected: float | None) -> None:
    assert percentile_ms(histogram, fraction) == expected


async def test_estimated_rows_are_counted_where_usage_log_has_the_column(
    pool: asyncpg.Pool, make_user: MakeUser
) -> None:
    """With `usage_estimated` on usage_log (the billing-estimates migration), the rollup counts the true ones.

    Done in one rolled-back transaction, so the shared test database keeps its schema.
    """
    _, key = await make_user("ada@example.com")
    rows = [usage_row(key), usage_row(key), usage_row(key)]
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute(  # IF NOT EXISTS: sql/005_billing.sql may have added it already
                "ALTER TABLE usage_log ADD COLUMN IF NOT EXISTS usage_estimated boolean NOT NULL DEFAULT false"
            )
            await conn.execute(
                f"CREATE TEMP TABLE usage_incoming ON COMMIT DROP AS SELECT {db._COLUMN_LIST} FROM usage_log"
                " WITH NO DATA"
            )
            await conn.copy_records_to_table("usage_incoming", records=rows, columns=db.USAGE_COLUMNS)
            await conn.execute(db._STORE_BATCH)
            await conn.execute("UPDATE usage_log SET usage_estimated = true WHERE id = $1", rows[0][0])
            await conn.execute(db._ROLL_UP_BATCH)
            estimated, requests = await conn.fetchrow("SELECT estimated, requests FROM usage_daily")
        finally:
            await tx.rollback()
    assert (estimated, requests) == (1, 3)


def test_chart_labels_from_callers_are_escaped() -> None:
    """A pass-through routing rule lets a caller choose the model id that becomes a series name."""
    svg = tokens_per_day_by_model(
        [{"day": date(2026, 11, 1), "name": "<script>alert(1)</script>", "tokens": 5}], [date(2026, 11, 1)], "t"
    )
    assert "<script>" not in svg and "&lt;script&gt;" in svg


async def test_closed_days_are_read_once_per_ttl_and_today_always(pool: asyncpg.Pool, make_user: MakeUser) -> None:
    """The overview keeps the sums of the month's past days for a minute; a new day or the TTL reads them again."""
    _, key = await make_user("ada@example.com")
    now = [0.0]
    closed = ClosedDays(ttl_s=60, clock=lambda: now[0])
    month, today = date(2026, 11, 1), date(2026, 11, 10)
    await db.insert_usage(pool, [usage_row(key, created_at=datetime(2026, 11, 3, tzinfo=UTC))])
    assert sum(r["requests"] for r in await closed.rows(pool, month, today)) == 1
    await db.insert_usage(pool, [usage_row(key, created_at=datetime(2026, 11, 4, tzinfo=UTC))])  # a late row
    assert sum(r["requests"] for r in await closed.rows(pool, month, today)) == 1  # cached
    now[0] = 61
    assert sum(r["requests"] for r in await closed.rows(pool, month, today)) == 2  # the TTL ran out
    await db.insert_usage(pool, [usage_row(key, created_at=datetime(2026, 11, 10, tzinfo=UTC))])  # today's
    assert sum(r["requests"] for r in await closed.rows(pool, month, date(2026, 11, 11))) == 3  # a new day
    assert await closed.rows(pool, month, month) == []  # the 1st: no closed day yet
