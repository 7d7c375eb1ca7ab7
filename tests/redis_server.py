"""A Redis for the tests: the machine's own on 127.0.0.1:6379 when it answers, else one started for the run.

Tests share the server with whatever else uses it, so each test keeps its keys under a random prefix
(`rate_limits.key_prefix`) instead of flushing the database.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.net import free_port

LOCAL_URL = "redis://127.0.0.1:6379/0"


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def redis_url() -> Iterator[str]:
    """Yield a redis:// URL (for a session fixture); a server started here is stopped afterwards."""
    if _answers(6379):
        yield LOCAL_URL
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no Redis on 127.0.0.1:6379 and no redis-server binary (.ci/run installs redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if _answers(port):
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
