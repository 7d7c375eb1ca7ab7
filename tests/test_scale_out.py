"""Three `gateway serve` replicas behind a real HAProxy, sharing rate limits through a real Redis, with and
without PgBouncer (transaction mode) in front of PostgreSQL.

Shows: a 60 rpm key gets exactly 60 requests in its first minute across the replicas; tokens per minute
hold within the stated bound; usage rows == requests served; a replica stopped mid-load (SIGTERM, as a
rolling deploy does) loses no accepted request's row, because HAProxy retries a request only when it could
not connect (nothing was sent) and the stopping replica finishes what it accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from gateway import db
from tests.fakes.upstream import FakeUpstream
from tests.net import free_port
from tests.redis_server import redis_url

ROOT = Path(__file__).resolve().parent.parent
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
MakeUser = Callable[..., Awaitable[tuple[str, db.KeyRow]]]
CHAT = {"model": "claude-fast", "messages": [{"role": "user", "content": "hi"}]}
REPLICAS = 3

pytestmark = pytest.mark.skipif(
    not (os.access(HAPROXY, os.X_OK) and os.access(PGBOUNCER, os.X_OK)),
    reason="haproxy and pgbouncer are Debian packages that .ci/run installs",
)


@pytest.fixture(scope="session")
def redis() -> Iterator[str]:
    yield from redis_url()


async def wait_until_up(url: str, proc: asyncio.subprocess.Process | None = None, tries: int = 300) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(tries):
            if proc is not None and proc.returncode is not None:
                raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with s.get(url, timeout=aiohttp.ClientTimeout(total=1)) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200")


def world_readable_dir() -> Path:
    """PgBouncer refuses to run as root, so as root it runs as `nobody`, which must read its files."""
    path = Path(tempfile.mkdtemp(prefix="gw-pgbouncer-"))
    path.chmod(0o755)
    return path


@contextlib.asynccontextmanager
async def pgbouncer(database_url: str) -> AsyncIterator[str]:
    """PgBouncer in transaction mode in front of the test database's server; yields the DSN through it."""
    parts = urlsplit(database_url)
    port, work = free_port(), world_readable_dir()
    (work / "users.txt").write_text(f'"{parts.username}" ""\n')
    (work / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={parts.hostname} port={parts.port}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {work}/users.txt\n"
        "pool_mode = transaction\nmax_client_conn = 500\ndefault_pool_size = 8\n"
        "ignore_startup_parameters = extra_float_digits\n"
    )
    for child in work.iterdir():
        child.chmod(0o644)
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    log = (work / "pgbouncer.log").open("wb")  # opened here: `nobody` may not create files
    proc = await asyncio.create_subprocess_exec(PGBOUNCER, *user, str(work / "pgbouncer.ini"), stderr=log)
    dsn = parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}").geturl()
    try:
        for _ in range(100):
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                conn = await asyncpg.connect(dsn, statement_cache_size=0, timeout=1)
                await conn.close()
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"pgbouncer did not start: {(work / 'pgbouncer.log').read_text()}")
        yield dsn
    finally:
        proc.terminate()
        await proc.wait()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


@contextlib.asynccontextmanager
async def haproxy(backends: list[int], work: Path) -> AsyncIterator[str]:
    """HAProxy round-robin over the replicas, health-checking /health; yields its base URL.

    `retry-on conn-failure` + `redispatch`: a request is retried on another replica only when its connection
    could not be made, i.e. before any byte of it was sent, so a POST is never run twice.
    `http-server-close`: one connection per request to the replicas, so no request is ever sent on an idle
    connection that a stopping replica is closing.
    """
    port = free_port()
    servers = "".join(f"  server g{i} 127.0.0.1:{p} check\n" for i, p in enumerate(backends))
    config = work / "haproxy.cfg"
    config.write_text(
        "defaults\n  mode http\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n"
        "  retries 3\n  retry-on conn-failure\n  option redispatch 1\n  option http-server-close\n"
        f"frontend in\n  bind 127.0.0.1:{port}\n  default_backend replicas\n"
        "backend replicas\n  balance roundrobin\n  option httpchk GET /health\n  http-check expect status 200\n"
        "  default-server inter 300ms fall 2 rise 2\n" + servers
    )
    proc = await asyncio.create_subprocess_exec(HAPROXY, "-f", str(config), "-db", stdout=asyncio.subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_until_up(f"{base}/health", proc)
        yield base
    finally:
        proc.terminate()
        await proc.wait()


@contextlib.asynccontextmanager
async def replicas(
    dsn: str, upstream: FakeUpstream, redis: str, work: Path, *, pgbouncer: bool
) -> AsyncIterator[tuple[list[asyncio.subprocess.Process], list[int]]]:
    """Three `gateway serve` processes on one database and one Redis; default 60 requests a minute a key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ANTHROPIC_", "DATABASE_URL"))}
    prefix = f"gw-test:{secrets.token_hex(6)}:"
    procs, ports = [], []
    for i in range(REPLICAS):
        port = free_port()
        config = work / f"gateway-{i}.yaml"
        config.write_text(
            f"server: {{port: {port}, auth_failures_per_minute: 1000}}\n"
            f"database: {{url: '{dsn}', pool_max: 4, statement_cache_size: {0 if pgbouncer else 100}}}\n"
            f"providers: {{anthropic: {{base_url: '{upstream.url}', api_key: k, retries: {{attempts: 1}}}}}}\n"
            "models: {claude-fast: {provider: anthropic, model: claude-haiku-4-5}}\n"
            f"rate_limits: {{redis_url: '{redis}', key_prefix: '{prefix}', key: {{requests_per_minute: 60}}}}\n"
            f"usage_log: {{flush_interval_ms: 50, spill_dir: '{work}/spill-{i}'}}\n"
            "budgets: {refresh_s: 0.1}\nmetrics: {require_admin: false}\nlogging: {format: json, level: warning}\n"
        )
        cmd = [sys.executable, "-m", "gateway", "--config", str(config), "serve"]
        procs.append(await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, env=env))
        ports.append(port)
    try:
        for proc, port in zip(procs, ports, strict=True):
            await wait_until_up(f"http://127.0.0.1:{port}/health", proc)
        yield procs, ports
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
        for proc in procs:
            await asyncio.wait_for(proc.wait(), 30)


async def load(
    base: str,
    key: str,
    total: int,
    concurrency: int,
    statuses: list[int],
    *,
    mark: tuple[int, asyncio.Event] | None = None,
) -> None:
    """`total` chat requests from `concurrency` sequential clients; every status is appended to `statuses`.

    `mark` = (n, event): the event is set once n answers have come.
    """
    remaining = iter(range(total))
    headers = {"Authorization": f"Bearer {key}"}

    async def client(s: aiohttp.ClientSession) -> None:
        for _ in remaining:
            try:
                async with s.post(f"{base}/v1/chat/completions", json=CHAT, headers=headers) as r:
                    await r.read()
                    statuses.append(r.status)
            except aiohttp.ClientError:
                statuses.append(0)
            if mark is not None and len(statuses) >= mark[0]:
                mark[1].set()

    async with aiohttp.ClientSession() as s:
        await asyncio.gather(*(client(s) for _ in range(concurrency)))


async def spend_budget(base: str, key: str, *, clients: int) -> int:
    """Clients send one request every 50 ms until the budget refuses them; returns how many were served."""
    served = 0

    async def client(s: aiohttp.ClientSession) -> None:
        nonlocal served
        for _ in range(100):
            async with s.post(
                f"{base}/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}
            ) as r:
                body = await r.json(content_type=None)
            if r.status == 429:
                assert body["error"]["code"] == "monthly_token_limit", body
                return
            assert r.status == 200, body
            served += 1
            await asyncio.sleep(0.05)

    async with aiohttp.ClientSession() as s:
        await asyncio.gather(*(client(s) for _ in range(clients)))
    return served


async def served_by_replica(ports: list[int]) -> list[int]:
    """200s each replica answered on the chat route, read from its /metrics."""
    counts = []
    async with aiohttp.ClientSession() as s:
        for port in ports:
            async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                text = await r.text()
            found = re.findall(r'gateway_requests_total\{[^}]*route="chat_completions"[^}]*status="200"\} (\S+)', text)
            counts.append(int(sum(float(v) for v in found)))
    return counts


async def rows_for(pool: asyncpg.Pool, key_id: int) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM usage_log WHERE key_id = $1", key_id))


@pytest.mark.parametrize("through_pgbouncer", [False, True], ids=["direct", "pgbouncer"])
async def test_three_replicas_behind_haproxy_share_limits_and_lose_no_usage_row(
    database_url: str,
    upstream: FakeUpstream,
    make_user: MakeUser,
    pool: asyncpg.Pool,
    redis: str,
    tmp_path: Path,
    through_pgbouncer: bool,
) -> None:
    upstream.usage(input_tokens=95, output_tokens=5)  # 100 tokens a request
    burst_key, burst = await make_user("burst@example.com")
    tpm_key, tpm = await make_user("tokens@example.com")
    steady_key, steady = await make_user("steady@example.com")
    budget_key, budget = await make_user("budget@example.com", limit_tokens=2000)
    await pool.execute(
        "INSERT INTO rate_limit_overrides (scope, scope_id, requests_per_minute, tokens_per_minute) VALUES"
        " ('key', $1, 0, 1000), ('key', $2, 0, NULL)",  # 0: no request limit; 1000 tokens a minute
        str(tpm.id),
        str(steady.id),
    )
    async with contextlib.AsyncExitStack() as stack:
        dsn = await stack.enter_async_context(pgbouncer(database_url)) if through_pgbouncer else database_url
        procs, ports = await stack.enter_async_context(
            replicas(dsn, upstream, redis, tmp_path, pgbouncer=through_pgbouncer)
        )
        base = await stack.enter_async_context(haproxy(ports, tmp_path))

        # 1. a burst of 120 from a 60 rpm key, 12 at a time, well inside one minute
        statuses: list[int] = []
        await load(base, burst_key, 120, 12, statuses)
        assert statuses.count(200) == 60 and statuses.count(429) == 60
        per_replica = await served_by_replica(ports)
        assert sum(per_replica) == 60 and all(n > 0 for n in per_replica)  # all three admitted some

        # 2. tokens per minute: 1000, 100 a request, 3 clients; settled after each reply, so up to the
        # requests in flight when the limit is crossed (3) and one settlement still on its way may pass
        statuses = []
        await load(base, tpm_key, 30, 3, statuses)
        assert 10 <= statuses.count(200) <= 14 and statuses.count(200) + statuses.count(429) == 30, statuses
        tpm_served = statuses.count(200)

        # 3. a monthly token budget of 2000 (20 requests), 3 clients pausing 50 ms between requests: the bound
        # of README's *Budgets*, the requests in flight (3) plus what the other replicas serve before this one
        # sees their usage (flush 50 ms + refresh 100 ms, 60 % slack: at most 15 requests from 3 clients)
        served_budget = await spend_budget(base, budget_key, clients=3)
        assert 20 <= served_budget <= 20 + 3 + math.ceil((0.05 + 0.1) * 1.6 * 3 / 0.05)

        # 4. steady load; one replica is stopped (SIGTERM) after a third of it
        statuses = []
        third = asyncio.Event()
        running = asyncio.create_task(load(base, steady_key, 240, 6, statuses, mark=(80, third)))
        await third.wait()
        procs[0].send_signal(signal.SIGTERM)
        await running
        assert await asyncio.wait_for(procs[0].wait(), 30) == 0
        # A request can fail only if it was on its way into the stopping replica's accept queue when the
        # replica closed it (HAProxy had connected, so it does not retry a POST): at most one per client.
        # A balancer drain before SIGTERM avoids even these (README, "Running several replicas").
        failed = [status for status in statuses if status != 200]
        assert len(statuses) == 240 and len(failed) <= 6 and set(failed) <= {0, 502, 503}, failed
        steady_served = statuses.count(200)
    # every replica has stopped and flushed: one row per served request, none more
    assert await rows_for(pool, burst.id) == 60
    assert await rows_for(pool, tpm.id) == tpm_served
    assert await rows_for(pool, steady.id) == steady_served
    assert await rows_for(pool, budget.id) == served_budget
