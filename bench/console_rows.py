"""Console pages on a real history: 10 million usage rows (and their rollups) in a scratch database, each page timed.

    python bench/console_rows.py                 # 10,000,000 rows, 1,000 users, 90 days
    python bench/console_rows.py --rows 100000   # a quick look
    python bench/console_rows.py --keep          # keep the database; then: --dsn URL times the pages again

Seeds usage_log with generate_series (server-side, no round trips), builds usage_daily and usage_latency_daily
from it exactly as sql/006_console.sql does for an upgrade, starts the gateway on that database, signs in to the
console and times every page (median of --repeat GETs after one warm-up). Target: < 300 ms each. The scratch
database is dropped at the end. Needs a PostgreSQL (DATABASE_URL or 127.0.0.1:5432, as the tests).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg
from aiohttp.test_utils import TestServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway import db
from gateway.app import build_app
from gateway.keys import generate_key
from tests.conftest import gateway_config
from tests.pg import create_test_database

TARGET_MS = 300.0

SEED_USERS = """
INSERT INTO users (id, email, firstname, lastname, limit_tokens)
SELECT gen_random_uuid(), 'user' || n || '@example.com', 'User', 'N' || n, CASE WHEN n % 10 = 0 THEN 2000000 END
FROM generate_series(1, $1) AS n
"""
SEED_KEYS = """
INSERT INTO api_keys (lookup_id, key_hash, name, is_admin, user_id)
SELECT md5(u.id::text)::varchar(16), 'x', u.email, false, u.id FROM users u
"""
# Rows spread evenly over the last `days` days (ending now), over every key, three models and three routes.
SEED_USAGE = """
INSERT INTO usage_log (id, created_at, request_id, key_id, user_id, route, alias, provider, provider_model, status,
                       input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, latency_ms,
                       ttfb_ms, streamed)
SELECT gen_random_uuid(), now() - (n::float8 / $2 * $3) * interval '1 day', 'bench', k.id, k.user_id,
       (ARRAY['messages', 'chat_completions', 'responses'])[1 + n % 3],
       (ARRAY['claude-fast', 'claude-quality', 'claude-premium'])[1 + n % 3], 'anthropic',
       (ARRAY['claude-haiku-4-5', 'claude-sonnet-4-5', 'claude-opus-4-5'])[1 + n % 3],
       CASE WHEN n % 50 = 0 THEN 500 ELSE 200 END, 500 + n % 3000, 50 + n % 700, n % 2000, 0,
       (500 + n % 3000) * 0.000003, 80 + n % 4000, NULL, n % 2 = 0
FROM generate_series($4::bigint, $5::bigint) AS n
JOIN api_keys k ON k.id = 1 + n % $1
"""


async def seed(dsn: str, rows: int, users: int, days: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await db.migrate(conn)
        await conn.execute(SEED_USERS, users)
        await conn.execute(SEED_KEYS)
        started, chunk = time.monotonic(), 1_000_000
        for low in range(0, rows, chunk):
            await conn.execute(SEED_USAGE, users, rows, days, low, min(rows, low + chunk) - 1, timeout=None)
            print(f"  {min(rows, low + chunk):,} rows ({time.monotonic() - started:.0f} s)", flush=True)
        sql = (db.SQL_DIR / "006_console.sql").read_text()
        await conn.execute("TRUNCATE usage_daily, usage_latency_daily")
        await conn.execute(sql[sql.index("-- Rollups of the usage already stored") :], timeout=None)
        await conn.execute(  # the month counters, as the flusher would have kept them
            "INSERT INTO usage_counters (scope, scope_id, month, tokens, cost_usd, requests, unpriced)"
            " SELECT 'user', user_id::text, date_trunc('month', day)::date, sum(input_tokens + output_tokens"
            " + cache_read_tokens + cache_write_tokens), sum(cost_usd), sum(requests), sum(unpriced)"
            " FROM usage_daily GROUP BY 2, 3 UNION ALL"
            " SELECT 'key', key_id::text, date_trunc('month', day)::date, sum(input_tokens + output_tokens"
            " + cache_read_tokens + cache_write_tokens), sum(cost_usd), sum(requests), sum(unpriced)"
            " FROM usage_daily GROUP BY 2, 3",
            timeout=None,
        )
        await conn.execute("VACUUM ANALYZE", timeout=None)
        daily = await conn.fetchval("SELECT count(*) FROM usage_daily")
        print(
            f"seeded {rows:,} usage rows, {users:,} users, {daily:,} usage_daily rows"
            f" in {time.monotonic() - started:.0f} s"
        )
    finally:
        await conn.close()


async def time_pages(dsn: str, repeat: int) -> list[tuple[str, float, float, float]]:
    admin = generate_key(rounds=4)
    pool = await db.create_pool(dsn)
    await db.insert_key(pool, lookup_id=admin.lookup_id, key_hash=admin.key_hash, name="bench", is_admin=True)
    user_id = await pool.fetchval(
        "SELECT user_id FROM usage_counters c JOIN users u ON u.id::text = c.scope_id"
        " CROSS JOIN LATERAL (SELECT c.scope_id::uuid AS user_id) x"
        " WHERE c.scope = 'user' ORDER BY c.tokens DESC LIMIT 1"
    )
    user_key = generate_key(rounds=4)
    await pool.close()
    server = TestServer(build_app(gateway_config("http://127.0.0.1:9"), dsn=dsn))
    await server.start_server()
    pages = [
        "/console/",
        "/console/users",
        "/console/users?q=user99",
        "/console/users?page=30",
        f"/console/users/{user_id}",
        "/console/keys",
        "/console/audit",
        "/console/config",
        "/console/me",
    ]
    results = []
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            form = await (await http.get(server.make_url("/console/sign-in"))).text()
            csrf = re.search(r'name="csrf" value="([^"]+)"', form)
            assert csrf
            signed_in = await http.post(
                server.make_url("/console/sign-in"),
                data={"csrf": csrf.group(1), "key": admin.plaintext},
                allow_redirects=False,  # the overview's first GET below is then a cold one
            )
            assert signed_in.status == 303
            for path in pages:
                samples = []
                for _ in range(repeat + 1):
                    started = time.perf_counter()
                    async with http.get(server.make_url(path)) as resp:
                        await resp.read()
                        assert resp.status == 200, (path, resp.status)
                    samples.append((time.perf_counter() - started) * 1000)
                # The first GET of a page also compiles its template (and fills the overview's closed-days sums).
                results.append((path, samples[0], statistics.median(samples[1:]), max(samples[1:])))
    finally:
        await server.close()
    del user_key
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database and print its URL")
    parser.add_argument("--dsn", help="time the pages on a database seeded before with --keep; seed nothing")
    args = parser.parse_args()
    if args.dsn:
        results = await time_pages(args.dsn, args.repeat)
    else:
        dsn, drop = await create_test_database()
        try:
            await seed(dsn, args.rows, args.users, args.days)
            results = await time_pages(dsn, args.repeat)
        finally:
            if args.keep:
                print(f"kept: {dsn}  (drop it with: psql -c 'DROP DATABASE {dsn.rsplit('/', 1)[-1]}')")
            else:
                await drop()
    print(f"\n| page | first ms | median ms | max ms | all < {TARGET_MS:.0f} ms |\n| --- | --- | --- | --- | --- |")
    for path, first, median, worst in results:
        verdict = "PASS" if max(first, worst) < TARGET_MS else "MISS"
        print(f"| `{path}` | {first:.1f} | {median:.1f} | {worst:.1f} | {verdict} |")


if __name__ == "__main__":
    asyncio.run(main())
