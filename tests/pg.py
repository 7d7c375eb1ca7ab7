"""A fresh PostgreSQL database per call, on whichever server this machine offers.

The server, probed once per test process, is the first of:
  1. DATABASE_URL, when set (its database must exist; ours are created beside it);
  2. the local server on 127.0.0.1:5432 (trust auth, user postgres, database `test`), as CI machines have;
  3. the embedded server (gateway.embedded_pg) in `.gateway/test-pgdata`. It is left running when the
     tests end, so the next run reuses it in milliseconds, and a run beside this one is not cut off.

Each call creates `gw_test_<16 hex digits>`, so runs side by side, and tests within a run, never share one.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from gateway.embedded_pg import start_embedded_postgres

LOCAL_SERVER_DSN = "postgresql://postgres@127.0.0.1:5432/test"
EMBEDDED_DATA_DIR = Path(__file__).resolve().parents[1] / ".gateway" / "test-pgdata"
_PROBE_TIMEOUT_S = 1.0

_server_dsn: str | None = None  # the chosen server, so that only the first call pays for probing


async def create_test_database() -> tuple[str, Callable[[], Awaitable[None]]]:
    """Create an empty database; return its DSN and a function that drops it, ending open sessions.

    Usage: `dsn, drop = await create_test_database()`, then `await drop()` in the test's `finally`.
    """
    server_dsn = await _choose_server()
    name = f"gw_test_{secrets.token_hex(8)}"
    await _execute(server_dsn, f'CREATE DATABASE "{name}"')

    async def drop() -> None:
        # FORCE ends the sessions a failed test may have left open, which would otherwise block the drop.
        await _execute(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return with_database(server_dsn, name), drop


def with_database(dsn: str, database: str) -> str:
    """The same server, another database: `postgresql://u@h:5432/test?x=1` -> `postgresql://u@h:5432/db?x=1`."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def _choose_server() -> str:
    global _server_dsn
    if _server_dsn is None:
        _server_dsn = os.environ.get("DATABASE_URL") or await _local_server() or await _embedded_server()
    return _server_dsn


async def _local_server() -> str | None:
    try:
        conn = await asyncpg.connect(LOCAL_SERVER_DSN, timeout=_PROBE_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return None  # nothing there, or not the trust-auth server with database `test` we expect
    await conn.close()
    return LOCAL_SERVER_DSN


async def _embedded_server() -> str:
    # initdb and pg_ctl are blocking subprocesses: keep them off the event loop.
    server = await asyncio.to_thread(start_embedded_postgres, EMBEDDED_DATA_DIR)
    return server.dsn


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
