"""The embedded server starts, answers, stops, and starts again on the same data dir."""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import subprocess
from pathlib import Path

import asyncpg
import pytest

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


def _without_password(dsn: str) -> str:
    """The same URL with the password taken out: what a process that cannot read the password file has."""
    return re.sub(r"//postgres:[^@]*@", "//postgres@", dsn)


async def test_the_socket_alone_admits_no_one_the_password_is_private(tmp_path: Path) -> None:
    server = await start(tmp_path / "pgdata")
    try:
        password_file = tmp_path / ".pgdata.password"
        assert password_file.stat().st_mode & 0o777 == 0o600 and password_file.stat().st_uid == os.geteuid()
        assert await fetchval(server.dsn, "select 1") == 1
        with pytest.raises(asyncpg.InvalidPasswordError):
            await fetchval(_without_password(server.dsn), "select 1")
        hba = (tmp_path / "pgdata" / "pg_hba.conf").read_text()
        assert not [line for line in hba.splitlines() if line.split("#")[0].split()[-1:] == ["trust"]]
    finally:
        await asyncio.to_thread(server.stop)


@pytest.mark.skipif(os.geteuid() != 0, reason="as root the server runs as `nobody`; this checks that account")
async def test_a_process_running_as_the_servers_account_is_not_a_superuser(tmp_path: Path) -> None:
    server = await start(tmp_path / "pgdata")
    nobody = pwd.getpwnam("nobody")
    psql = Path(server._tools.bin_dir) / "psql"
    try:
        done = await asyncio.to_thread(
            subprocess.run,
            [str(psql), "-X", "-w", "-h", str(server.socket_dir), "-U", "postgres", "-d", "gateway", "-c", "select 1"],
            capture_output=True, text=True, user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[], cwd="/",
            env={"PATH": "/usr/bin:/bin"}, check=False,
        )  # fmt: skip
        assert done.returncode != 0 and "password" in done.stderr
    finally:
        await asyncio.to_thread(server.stop)


async def test_a_data_dir_that_trusted_its_socket_is_switched_to_the_password(tmp_path: Path) -> None:
    first = await start(tmp_path / "pgdata")
    await asyncio.to_thread(first.stop)
    hba = tmp_path / "pgdata" / "pg_hba.conf"  # as an earlier version left it: initdb --auth=trust
    hba.write_text(re.sub(r"scram-sha-256\s*$", "trust", hba.read_text(), flags=re.MULTILINE))
    (tmp_path / ".pgdata.password").unlink()

    second = await start(tmp_path / "pgdata")
    try:
        assert await fetchval(second.dsn, "select 1") == 1
        with pytest.raises(asyncpg.InvalidPasswordError):
            await fetchval(_without_password(second.dsn), "select 1")
    finally:
        await asyncio.to_thread(second.stop)
