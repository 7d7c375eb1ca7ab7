"""A new operator's mistakes on a fresh machine (issue a18), each as it happened, with what they should see.

The CLI and `gateway serve` run as subprocesses, as typed; helpers come from tests/test_first_hour.py.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg import create_test_database
from tests.test_first_hour import clean_env, cli, free_port, write_config
from tests.test_readme import KEY


@pytest.fixture
def empty_database() -> Iterator[str]:
    """A database with no schema and no key: what `DATABASE_URL` names on a first start."""
    dsn, drop = asyncio.run(create_test_database())
    yield dsn
    asyncio.run(drop())


def test_first_admin_key_is_not_lost_when_the_port_is_taken(tmp_path: Path, empty_database: str) -> None:
    """The first start found port 8000 taken: its admin key was made but never printed, and no later start
    prints one (the key table is no longer empty), leaving the operator without an admin key."""
    config = write_config(tmp_path, "http://127.0.0.1:9")
    env = clean_env(DATABASE_URL=empty_database)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        refused = cli(config, "serve", "--port", str(taken.getsockname()[1]), env=env)
    assert refused.returncode == 1
    assert "already in use" in refused.stderr
    assert "First admin key" not in refused.stdout
    listed = cli(config, "keys", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "first-admin" not in listed.stdout  # nothing was made that nobody saw

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(config), "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert server.stdout is not None
        printed = "".join(server.stdout.readline() for _ in range(5))
        assert "First admin key" in printed
        assert KEY.search(printed), printed
    finally:
        server.terminate()
        server.wait(30)
        server.stdout.close()
