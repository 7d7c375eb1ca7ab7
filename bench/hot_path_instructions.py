"""Instructions per model request, counted by callgrind: a figure the load of a shared machine cannot blur.

    python bench/hot_path_instructions.py                  # two callgrind runs (120 and 420 requests), ~10 min
    python bench/hot_path_instructions.py --path /v1/chat/completions
    python bench/hot_path_instructions.py --requests 5     # once, without valgrind: checks the set-up

One process holds the fake upstream, the gateway (full pipeline, the production JSON log line at info, written to
/dev/null) and an aiohttp client posting a small body. Start-up is the same in both runs, so the difference of
their totals divided by the difference of their request counts is the cost of one request: client, fake upstream
and gateway together (the first two are the same code whatever the gateway does, so a change shows in full).
Needs PostgreSQL as the tests do (tests/pg.py) and `valgrind`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WARM_UP = 20
BODY = {"model": "claude-fast", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


async def serve_requests(count: int, path: str) -> None:
    """Start everything, send WARM_UP + `count` requests one after another, stop everything."""
    # imported here, once sys.path names this checkout (the script also runs from a copy of another commit)
    import aiohttp
    from aiohttp.test_utils import TestServer

    from gateway import db
    from gateway.app import build_app
    from gateway.keys import generate_key
    from tests.conftest import gateway_config
    from tests.fakes.upstream import FakeUpstream
    from tests.pg import create_test_database

    fake = FakeUpstream()
    await fake.start()
    dsn, drop = await create_test_database()
    cfg = gateway_config(fake.url, logging={"format": "json", "level": "info"})
    server = TestServer(build_app(cfg, dsn=dsn))
    await server.start_server()
    pool = await db.create_pool(dsn, min_size=1, max_size=2)
    new = generate_key(rounds=4)
    await db.insert_key(pool, lookup_id=new.lookup_id, key_hash=new.key_hash, name="bench", is_admin=False)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(WARM_UP + count):
                async with session.post(server.make_url(path), json=BODY, headers={"x-api-key": new.plaintext}) as r:
                    assert r.status == 200, (r.status, await r.text())
                    await r.read()
    finally:
        await server.close()
        await pool.close()
        await fake.close()
        await drop()


def callgrind_total(count: int, path: str) -> int:
    """Instructions callgrind counts for one whole run of `count` requests."""
    with tempfile.TemporaryDirectory() as scratch:
        argv = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={scratch}/out",
            sys.executable,
            __file__,
            "--requests",
            str(count),
            "--path",
            path,
        ]
        done = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=REPO)
    return int(re.findall(r"Collected : (\d+)", done.stderr)[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", default="/v1/messages")
    parser.add_argument("--requests", type=int, help="run once, in this process, without valgrind")
    args = parser.parse_args()
    if args.requests is not None:
        from gateway.config import LoggingConfig
        from gateway.logs import configure_logging

        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the request lines go here, through the production set-up
        configure_logging(LoggingConfig(format="json", level="info"))
        asyncio.run(serve_requests(args.requests, args.path))
        return
    few, many = 100, 400
    totals = [callgrind_total(n, args.path) for n in (few, many)]
    print(
        f"{args.path}: {(totals[1] - totals[0]) / (many - few):,.0f} instructions per request "
        f"(client + fake upstream + gateway; totals {totals[0]:,} and {totals[1]:,})"
    )


if __name__ == "__main__":
    main()
