"""The embedded server starts, answers, stops, and starts again on the same data dir."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from gateway.embedded_pg import EmbeddedPostgres, start_embedded_postgres


async def start(data_dir: Path) -> EmbeddedPostgres:
    # initdb and pg_ctl are blocking subprocesses: keep them off the event loop, as the gateway must.
    return await asyncio.to_thread(start_embedded_postgres, data_dir)


async def fetchval(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def test_starts_answers_select_1_and_stops(tmp_path: Path) -> None:
    server = await start(tmp_path / "pgdata")
    try:
        assert server.started
        assert await fetchval(server.dsn, "select 1") == 1
        assert await fetchval(server.dsn, "select current_database()") == "gateway"
    finally:
        await asyncio.to_thread(server.stop)
    assert not (tmp_path / "pgdata" / "postmaster.pid").exists()


async def test_restart_reuses_the_data_dir(tmp_path: Path) -> None:
    first = await start(tmp_path / "pgdata")
    try:
        await fetchval(first.dsn, "create table kept as select 'from the first run' as note")
    finally:
        await asyncio.to_thread(first.stop)

    second = await start(tmp_path / "pgdata")
    try:
        assert second.started
        assert await fetchval(second.dsn, "select note from kept") == "from the first run"
    finally:
        await asyncio.to_thread(second.stop)


async def test_start_reuses_a_server_left_running(tmp_path: Path) -> None:
    first = await start(tmp_path / "pgdata")
    try:
        second = await start(tmp_path / "pgdata")
        assert not second.started
        assert second.dsn == first.dsn
        assert await fetchval(second.dsn, "select 1") == 1
    finally:
        await asyncio.to_thread(first.stop)
