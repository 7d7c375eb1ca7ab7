"""Behind PgBouncer in transaction mode with database.statement_cache_size left at its default."""

from __future__ import annotations

import asyncio
import os

import asyncpg
import pytest

from gateway import db
from tests.pg import create_test_database
from tests.test_scale_out import PGBOUNCER, pgbouncer

pytestmark = pytest.mark.skipif(
    not os.access(PGBOUNCER, os.X_OK), reason="pgbouncer is a Debian package that .ci/run installs"
)


async def test_a_pool_through_pgbouncer_works_with_the_default_statement_cache() -> None:
    """The careless operator forgets `statement_cache_size: 0`: queries must not fail at random."""
    dsn, drop = await create_test_database()
    try:
        async with pgbouncer(dsn) as through:
            pool = await db.create_pool(through, min_size=4, max_size=10)  # statement_cache_size=100
            try:
                failures: list[BaseException] = []

                async def query(i: int) -> None:
                    try:
                        assert await pool.fetchval(f"SELECT $1::int + {i % 7}", i) == i + i % 7
                    except asyncpg.PostgresError as exc:
                        failures.append(exc)

                await asyncio.gather(*(query(i) for i in range(300)))
                assert failures == []
                assert await db.behind_a_pooler(through) and not await db.behind_a_pooler(dsn)
            finally:
                await pool.close()
    finally:
        await drop()
