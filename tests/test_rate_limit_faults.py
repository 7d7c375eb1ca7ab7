"""Rate limits under attack: hang-ups at each point, Redis blips mid-request, the 429's reset headers."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import anthropic
import asyncpg
import openai
import pytest
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from gateway import db
from gateway.config import RateLimit
from gateway.error_shape import ErrorShape
from gateway.keys import generate_key
from gateway.rate_limits import limiter as limiter_module
from gateway.rate_limits import redis_limiter as redis_limiter_module
from gateway.rate_limits.limiter import Scope, Verdict
from gateway.rate_limits.redis_limiter import BACKOFF_S, RedisLimiter
from gateway.stages.rate_limit import duration, refusal
from tests.conftest import GatewayFactory
from tests.fakes.upstream import FakeUpstream
from tests.pg import create_test_database
from tests.redis_server import redis_url
from tests.test_rate_limits import MakeKey, MakeUser


@pytest.fixture(scope="session")
def redis() -> Iterator[str]:
    yield from redis_url()


@pytest.fixture
def prefix() -> str:
    return f"gw-test:{secrets.token_hex(6)}:"


@pytest.fixture
async def direct(redis: str) -> AsyncIterator[Redis]:
    """A plain client beside the limiter's, to look at (and pause) Redis."""
    client = Redis.from_url(redis)
    yield client
    await client.aclose()


async def test_a_lease_ended_during_a_redis_backoff_is_still_released(redis: str, prefix: str, direct: Redis) -> None:
    """A Redis blip while a request is in flight must not hold that request's slot for LEASE_MS (15 min)."""
    limiter = RedisLimiter(redis, prefix=prefix, timeout_s=0.1, fail_closed=False)
    slot = [Scope("key:1", RateLimit(in_flight=1))]
    try:
        held = await limiter.acquire(slot)
        assert held.admitted and held.ticket
        await direct.execute_command("CLIENT", "PAUSE", "300", "ALL")  # a blip: Redis stalls for 0.3 s
        blip = await limiter.acquire([Scope("key:2", RateLimit(requests_per_minute=5))])
        assert blip.admitted and not blip.ticket  # failed open; the limiter now backs off for BACKOFF_S
        await asyncio.sleep(0.4)  # Redis is back, the backoff still runs; the held request ends now
        await limiter.release(slot, held.ticket, 0)
        assert await direct.zcard(f"{prefix}key:1:f") == 0
        await asyncio.sleep(BACKOFF_S)
        assert (await limiter.acquire(slot)).admitted
    finally:
        await limiter.aclose()


@contextlib.asynccontextmanager
async def slow_answers(redis: str, delay_s: list[float]) -> AsyncIterator[str]:
    """A TCP proxy to Redis that passes commands at once and holds each answer back `delay_s[0]` (settable)."""
    host, port = redis.removeprefix("redis://").split("/")[0].split(":")

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: list[float]) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if delay[0]:
                    await asyncio.sleep(delay[0])
                writer.write(data)
                await writer.drain()
        writer.close()

    writers: list[asyncio.StreamWriter] = []

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(host, int(port))
        writers.extend((client_w, server_w))
        await asyncio.gather(pipe(client_r, server_w, [0.0]), pipe(server_r, client_w, delay_s))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    finally:
        server.close()
        for writer in writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await server.wait_closed()


async def test_a_caller_hanging_up_while_redis_answers_the_check_leaves_no_lease(
    redis: str, prefix: str, direct: Redis
) -> None:
    """handler_cancellation: a client gone while the check is on the wire cancels it after Redis counted it."""
    async with slow_answers(redis, [0.3]) as slow:
        limiter = RedisLimiter(slow, prefix=prefix, timeout_s=2.0, fail_closed=True)
        slot = [Scope("key:1", RateLimit(in_flight=1))]
        try:
            await limiter.acquire([Scope("key:0", RateLimit(in_flight=1))])  # connected, the script loaded
            check = asyncio.create_task(limiter.acquire(slot))
            await asyncio.sleep(0.1)  # the script has run in Redis; its answer is on its way
            check.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await check
            for _ in range(40):
                if await direct.zcard(f"{prefix}key:1:f") == 0:
                    break
                await asyncio.sleep(0.05)
            assert await direct.zcard(f"{prefix}key:1:f") == 0  # the slot is free again, not held 15 min
        finally:
            await limiter.aclose()


async def test_a_check_timing_out_after_redis_counted_it_leaves_no_lease(
    redis: str, prefix: str, direct: Redis
) -> None:
    """Redis slower than redis_timeout_s for a moment (a fork for a snapshot): the check is admitted unchecked,
    but Redis ran it and holds its lease; left there, a key with in_flight: 1 is refused for LEASE_MS."""
    delay = [0.0]
    async with slow_answers(redis, delay) as slow:
        limiter = RedisLimiter(slow, prefix=prefix, timeout_s=0.1, fail_closed=False)
        slot = [Scope("key:1", RateLimit(in_flight=1))]
        try:
            await limiter.acquire([Scope("key:0", RateLimit(in_flight=1))])  # connected, the script loaded
            delay[0] = 0.3
            unchecked = await limiter.acquire(slot)
            assert unchecked.admitted and not unchecked.ticket  # timed out: failed open
            delay[0] = 0.0
            for _ in range(60):
                if await direct.zcard(f"{prefix}key:1:f") == 0:
                    break
                await asyncio.sleep(0.05)
            assert await direct.zcard(f"{prefix}key:1:f") == 0
            await asyncio.sleep(0.1)  # the lease went once the backoff was over
            assert (await limiter.acquire(slot)).ticket  # checked again, and admitted
        finally:
            await limiter.aclose()


@pytest.mark.parametrize(
    ("ms", "text"),
    [(20, "20ms"), (1500, "1.5s"), (59_999, "59.999s"), (60_000, "1m0s"), (119_600, "2m0s"), (360_000, "6m0s")],
)
def test_openai_reset_durations_are_well_formed(ms: int, text: str) -> None:
    assert duration(ms) == text  # never "1m60s"


async def test_gateways_on_different_databases_sharing_one_redis_do_not_share_counts(
    make_gateway: GatewayFactory, make_key: MakeKey, redis: str, prefix: str
) -> None:
    """Staging beside production on one Redis, key_prefix left alike: key 1 of one is not key 1 of the other."""
    section = {"redis_url": redis, "key_prefix": prefix, "key": {"requests_per_minute": 1}}
    other_dsn, drop = await create_test_database()
    try:
        conn = await asyncpg.connect(other_dsn)
        try:
            await db.migrate(conn)
        finally:
            await conn.close()
        other_pool = await db.create_pool(other_dsn, min_size=1, max_size=2)
        try:
            new = generate_key(rounds=4)
            other = await db.insert_key(
                other_pool, lookup_id=new.lookup_id, key_hash=new.key_hash, name="b", is_admin=False
            )
        finally:
            await other_pool.close()
        key, row = await make_key()
        assert row.id == other.id  # the same key id in both databases
        here = await make_gateway(rate_limits=section)
        there = await make_gateway(rate_limits=section, dsn=other_dsn)
        try:
            assert await status_of(here, key) == 200
            assert await status_of(there, new.plaintext) == 200  # its own first request of the minute
            assert await status_of(here, key) == 429
        finally:
            await there.close()  # before its database goes
    finally:
        await drop()


async def status_of(server: TestServer, key: str) -> int:
    body = {"model": "claude-fast", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    async with (
        aiohttp.ClientSession() as s,
        s.post(str(server.make_url("/v1/messages")), json=body, headers={"x-api-key": key}) as r,
    ):
        return r.status


async def admin_call(server: TestServer, admin: str, method: str, path: str, data: bytes = b"") -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, str(server.make_url(path)), data=data, headers=headers) as r,
    ):
        return r.status, await r.json()


async def test_an_override_given_a_field_twice_is_refused(gateway: TestServer, make_key: MakeKey) -> None:
    admin, row = await make_key("admin", admin=True)
    body = b'{"requestsPerMinute": 5, "inFlight": 1, "requestsPerMinute": null}'
    status, answer = await admin_call(gateway, admin, "PUT", f"/v1/rate-limits/key/{row.id}", body)
    assert status == 400 and "'requestsPerMinute' is given more than once" in answer["error"]
    assert (await admin_call(gateway, admin, "GET", "/v1/rate-limits"))[1]["overrides"] == []


async def test_the_override_of_a_deleted_user_can_still_be_removed(
    gateway: TestServer, make_key: MakeKey, make_user: MakeUser, pool: asyncpg.Pool
) -> None:
    admin, _ = await make_key("admin", admin=True)
    _, user_key = await make_user()
    assert user_key.user_id is not None
    path = f"/v1/rate-limits/user/{user_key.user_id}"
    assert (await admin_call(gateway, admin, "PUT", path, b'{"requestsPerMinute": 5}'))[0] == 200
    await db.delete_user(pool, user_key.user_id, actor=None)
    listed = (await admin_call(gateway, admin, "GET", "/v1/rate-limits"))[1]["overrides"]
    assert [o["id"] for o in listed] == [str(user_key.user_id)]  # still listed...
    assert (await admin_call(gateway, admin, "DELETE", path))[0] == 200  # ...so it must be removable
    assert (await admin_call(gateway, admin, "GET", "/v1/rate-limits"))[1]["overrides"] == []
    assert (await admin_call(gateway, admin, "DELETE", path))[0] == 404  # gone now


def test_anthropic_reset_time_is_never_before_the_reset() -> None:
    verdict = Verdict(False, Scope("key:1", RateLimit(requests_per_minute=1)), "requests", 500, 0, 500, -1, 0, "")
    now = datetime(2026, 1, 1, 0, 0, 0, 700_000, tzinfo=UTC)  # the slot frees at 00:00:01.2
    headers = refusal(verdict, ErrorShape.ANTHROPIC, now=now).headers
    assert headers["anthropic-ratelimit-requests-reset"] == "2026-01-01T00:00:02Z"  # not 00:00:01, too early
    assert headers["Retry-After"] == "1"


@pytest.mark.parametrize("counted", ["local", "redis"])
async def test_a_stream_longer_than_a_lease_keeps_its_in_flight_slot(
    make_gateway: GatewayFactory,
    make_user: MakeUser,
    upstream: FakeUpstream,
    redis: str,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    counted: str,
) -> None:
    """A stream running past LEASE_MS (15 min; 0.3 s here) must not let its caller start one request more."""
    monkeypatch.setattr(limiter_module, "LEASE_MS", 300)
    monkeypatch.setattr(redis_limiter_module, "LEASE_MS", 300)
    upstream.enqueue(chunk_delay_s=0.25)  # a slow stream: a second and more
    section: dict[str, Any] = {"key_prefix": prefix, "key": {"in_flight": 1}}
    if counted == "redis":
        section["redis_url"] = redis
    server = await make_gateway(rate_limits=section)
    key, _ = await make_user()
    body = {"model": "claude-fast", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with (
        aiohttp.ClientSession() as s,
        s.post(str(server.make_url("/v1/messages")), json=body, headers={"x-api-key": key}) as stream,
    ):
        assert stream.status == 200
        await stream.content.readline()
        await asyncio.sleep(0.7)  # two lease lengths on, the stream still runs
        assert await status_of(server, key) == 429
        await stream.read()


async def test_cache_writes_count_in_tokens_per_minute(
    make_gateway: GatewayFactory, make_user: MakeUser, upstream: FakeUpstream, redis: str, prefix: str
) -> None:
    """A caller marking every prompt for caching: 900 tokens written to the cache are 900 tokens of input."""
    upstream.usage(input_tokens=10, cache_creation_input_tokens=900, output_tokens=5)
    section = {"redis_url": redis, "key_prefix": prefix, "key": {"tokens_per_minute": 800}}
    server = await make_gateway(rate_limits=section)
    key, _ = await make_user()
    assert await status_of(server, key) == 200
    for _ in range(40):  # settled in the background
        if (status := await status_of(server, key)) == 429:
            break
        await asyncio.sleep(0.05)
    assert status == 429


@pytest.mark.parametrize("sdk", ["anthropic", "openai"])
async def test_sdks_wait_the_retry_after_and_then_get_through(
    make_gateway: GatewayFactory, make_user: MakeUser, upstream: FakeUpstream, redis: str, prefix: str, sdk: str
) -> None:
    """The in-flight 429 says Retry-After: 1; each SDK's own retry waits that long and finds the slot free."""
    upstream.enqueue(delay_s=0.5)  # holds the one slot for half a second
    section = {"redis_url": redis, "key_prefix": prefix, "key": {"in_flight": 1}}
    server = await make_gateway(rate_limits=section)
    key, _ = await make_user()
    holder = asyncio.create_task(status_of(server, key))
    await asyncio.sleep(0.2)
    started = asyncio.get_running_loop().time()
    if sdk == "anthropic":
        claude = anthropic.AsyncAnthropic(base_url=str(server.make_url("/")), api_key=key, max_retries=1)
        reply = await claude.messages.with_raw_response.create(
            model="claude-fast", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
        await claude.close()
    else:
        gpt = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=key, max_retries=1)
        reply = await gpt.chat.completions.with_raw_response.create(
            model="claude-fast", messages=[{"role": "user", "content": "hi"}]
        )
        await gpt.close()
    assert reply.retries_taken == 1  # refused once, then served
    assert asyncio.get_running_loop().time() - started >= 0.9  # after Retry-After, not its own shorter backoff
    assert await holder == 200
