"""Rate limits: requests and tokens per minute and requests in flight, per key and per user, in one process.

The same rules are counted by LocalLimiter (per process) and RedisLimiter (shared); the table-driven tests
run on both. tests/test_scale_out.py shows the shared counts across replicas behind a balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from aiohttp.test_utils import TestServer

from gateway import db
from gateway.composition import SERVICES
from gateway.config import ConfigError, RateLimit
from gateway.errors import ServiceUnavailable
from gateway.metrics import Metrics
from gateway.rate_limits.limiter import Limiter, LocalLimiter, Scope
from gateway.rate_limits.redis_limiter import BACKOFF_S, RedisLimiter
from tests.conftest import GatewayFactory, gateway_config
from tests.fakes.upstream import FakeUpstream
from tests.net import free_port
from tests.redis_server import redis_url

MakeUser = Callable[..., Awaitable[tuple[str, db.KeyRow]]]
MakeKey = Callable[..., Awaitable[tuple[str, db.KeyRow]]]
MESSAGES = {"model": "claude-fast", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
CHAT = {"model": "claude-fast", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="session")
def redis() -> Iterator[str]:
    yield from redis_url()


@pytest.fixture
def prefix() -> str:
    return f"gw-test:{secrets.token_hex(6)}:"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0 + 0.5  # seconds; half a second into a minute

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["local", "redis"])
async def limiter(request: pytest.FixtureRequest, redis: str, prefix: str) -> AsyncIterator[Limiter]:
    made: Limiter = (
        LocalLimiter()
        if request.param == "local"
        else RedisLimiter(redis, prefix=prefix, timeout_s=1.0, fail_closed=True)
    )
    yield made
    await made.aclose()


async def test_requests_per_minute_admits_exactly_the_limit(limiter: Limiter) -> None:
    scope = [Scope("key:1", RateLimit(requests_per_minute=5))]
    verdicts = [await limiter.acquire(scope) for _ in range(7)]
    assert [v.admitted for v in verdicts] == [True] * 5 + [False] * 2
    assert [v.requests_remaining for v in verdicts[:5]] == [4, 3, 2, 1, 0]
    refused = verdicts[5]
    assert refused.refused_by == "requests" and refused.requests_remaining == 0
    assert 55_000 < refused.retry_after_ms <= 60_001  # the oldest of the five leaves the window in ~60 s


async def test_in_flight_counts_until_release(limiter: Limiter) -> None:
    scope = [Scope("key:2", RateLimit(in_flight=2))]
    first, second = await limiter.acquire(scope), await limiter.acquire(scope)
    third = await limiter.acquire(scope)
    assert (first.admitted, second.admitted, third.admitted) == (True, True, False)
    assert third.refused_by == "in_flight"
    await limiter.release(scope, first.ticket, 0)
    assert (await limiter.acquire(scope)).admitted


async def test_tokens_per_minute_refuse_once_settled_tokens_reach_the_limit(limiter: Limiter) -> None:
    scope = [Scope("key:3", RateLimit(tokens_per_minute=1000))]
    for _ in range(2):
        verdict = await limiter.acquire(scope)
        assert verdict.admitted
        await limiter.release(scope, verdict.ticket, 600)  # 600, then 1200 >= 1000
    refused = await limiter.acquire(scope)
    assert (refused.admitted, refused.refused_by, refused.tokens_remaining) == (False, "tokens", 0)
    assert refused.retry_after_ms > 0


async def test_a_request_refused_by_its_user_is_counted_for_neither_scope(limiter: Limiter) -> None:
    key = Scope("key:4", RateLimit(requests_per_minute=10))
    user = Scope("user:u4", RateLimit(requests_per_minute=1))
    assert (await limiter.acquire([key, user])).admitted
    refused = await limiter.acquire([key, user])
    assert not refused.admitted and refused.scope == user
    # the key's count did not grow with the refused request: 9 of its 10 are left for it alone
    assert [(await limiter.acquire([key])).admitted for _ in range(10)] == [True] * 9 + [False]


async def test_local_limiter_window_slides_with_the_clock() -> None:
    clock = Clock()
    limiter = LocalLimiter(clock=clock)
    scope = [Scope("key:5", RateLimit(requests_per_minute=2, tokens_per_minute=100))]
    assert (await limiter.acquire(scope)).admitted
    clock.now += 30
    second = await limiter.acquire(scope)
    await limiter.release(scope, second.ticket, 150)
    refused = await limiter.acquire(scope)
    assert refused.refused_by == "requests" and 29_000 < refused.retry_after_ms <= 30_001
    clock.now += 30.01  # the first request left the window; the 150 tokens still weigh
    refused = await limiter.acquire(scope)
    assert refused.refused_by == "tokens"
    clock.now += 120  # two minutes on, nothing is left
    assert (await limiter.acquire(scope)).admitted


# --- through the gateway ------------------------------------------------------------------------------


def limits(redis: str, prefix: str, **sections: Any) -> dict[str, Any]:
    return {"redis_url": redis, "key_prefix": prefix, **sections}


async def post(server: TestServer, path: str, key: str, body: Any) -> tuple[int, Any, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(str(server.make_url(path)), json=body, headers={"Authorization": f"Bearer {key}"}) as r,
    ):
        return r.status, await r.json(content_type=None), r.headers


async def test_429_in_each_dialect_with_its_rate_limit_headers(
    make_gateway: GatewayFactory, make_user: MakeUser, redis: str, prefix: str
) -> None:
    server = await make_gateway(rate_limits=limits(redis, prefix, key={"requests_per_minute": 2}))
    key, _ = await make_user()
    assert [(await post(server, "/v1/messages", key, MESSAGES))[0] for _ in range(2)] == [200, 200]

    status, body, headers = await post(server, "/v1/messages", key, MESSAGES)
    assert status == 429
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert "2 requests per minute per key" in body["error"]["message"]
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert headers["anthropic-ratelimit-requests-limit"] == "2"
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    assert "x-ratelimit-limit-requests" not in headers

    status, body, headers = await post(server, "/v1/chat/completions", key, CHAT)
    assert status == 429
    assert body["error"] == {
        "message": body["error"]["message"],
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert "anthropic-ratelimit-requests-limit" not in headers


async def test_sdks_read_the_429_as_rate_limit_errors(
    make_gateway: GatewayFactory, make_user: MakeUser, redis: str, prefix: str
) -> None:
    server = await make_gateway(rate_limits=limits(redis, prefix, user={"requests_per_minute": 1}))
    key, _ = await make_user()
    assert (await post(server, "/v1/messages", key, MESSAGES))[0] == 200
    claude = anthropic.AsyncAnthropic(base_url=str(server.make_url("/")), api_key=key, max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as refused:
        await claude.messages.create(**MESSAGES)  # type: ignore[call-overload]
    assert refused.value.response.headers["retry-after"]
    await claude.close()
    gpt = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as limited:
        await gpt.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert limited.value.code == "rate_limit_exceeded"
    await gpt.close()


async def test_tokens_per_minute_through_the_gateway_leave_usage_rows_only_for_served_requests(
    make_gateway: GatewayFactory, make_user: MakeUser, upstream: FakeUpstream, pool: Any, redis: str, prefix: str
) -> None:
    upstream.usage(input_tokens=95, output_tokens=5)  # 100 tokens a request
    server = await make_gateway(rate_limits=limits(redis, prefix, key={"tokens_per_minute": 250}))
    key, _ = await make_user()
    statuses = [(await post(server, "/v1/chat/completions", key, CHAT))[0] for _ in range(6)]
    served = statuses.count(200)
    # 0, 100 and 200 tokens used are under 250; the fourth may slip in if the third's settlement is late
    assert 3 <= served <= 4 and statuses[served:] == [429] * (6 - served)
    await server.app[SERVICES].ledger.flush()
    assert await db.count_usage(pool) == served


async def test_no_limits_means_no_check(make_gateway: GatewayFactory, key: str) -> None:
    server = await make_gateway(rate_limits={"redis_url": f"redis://127.0.0.1:{free_port()}/0", "fail": "closed"})
    # nothing is limited, so the unreachable Redis is never asked and fail: closed never triggers
    assert (await post(server, "/v1/messages", key, MESSAGES))[0] == 200


@pytest.mark.parametrize(("fail", "expected"), [("open", 200), ("closed", 503)])
async def test_redis_away_fails_open_or_closed_and_is_counted(
    make_gateway: GatewayFactory, key: str, fail: str, expected: int
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    server = await make_gateway(rate_limits={"redis_url": dead, "fail": fail, "key": {"requests_per_minute": 1}})
    statuses = [(await post(server, "/v1/messages", key, MESSAGES))[0] for _ in range(3)]
    assert statuses == [expected] * 3  # open: unlimited while Redis is away; closed: refused, not a 500
    metrics = server.app[SERVICES].metrics
    assert metrics.rate_limit_redis_errors.values[("check",)] >= 1
    if fail == "open":
        assert metrics.rate_limit_unchecked.values[()] == 3


async def test_overrides_through_the_management_api(
    make_gateway: GatewayFactory, make_key: MakeKey, make_user: MakeUser, redis: str, prefix: str
) -> None:
    server = await make_gateway(rate_limits=limits(redis, prefix, key={"requests_per_minute": 100}))
    admin, _ = await make_key("admin", admin=True)
    key, row = await make_user()
    auth = {"Authorization": f"Bearer {admin}"}
    async with aiohttp.ClientSession() as s:
        url = str(server.make_url(f"/v1/rate-limits/key/{row.id}"))
        async with s.put(url, json={"requestsPerMinute": 1}, headers=auth) as r:
            assert r.status == 200
            answer = await r.json()
        assert answer["effective"] == {"requestsPerMinute": 1, "tokensPerMinute": 0, "inFlight": 0}
        assert [(await post(server, "/v1/messages", key, MESSAGES))[0] for _ in range(2)] == [200, 429]
        async with s.get(str(server.make_url("/v1/rate-limits")), headers=auth) as r:
            listing = await r.json()
        assert listing["counting"] == "redis"
        assert [(o["scope"], o["id"], o["requestsPerMinute"]) for o in listing["overrides"]] == [
            ("key", str(row.id), 1)
        ]
        async with s.delete(url, headers=auth) as r:
            assert r.status == 200
        assert (await post(server, "/v1/messages", key, MESSAGES))[0] == 200  # back to 100 a minute
        async with s.delete(url, headers=auth) as r:
            assert r.status == 404


@pytest.mark.parametrize(
    ("path", "body", "status", "says"),
    [
        ("/v1/rate-limits/team/1", {}, 404, "no rate-limit scope 'team'"),
        ("/v1/rate-limits/key/999999", {}, 404, "no key with id '999999'"),
        ("/v1/rate-limits/key/\uff11\uff12", {}, 404, "no key"),  # full-width digits are not an id
        ("/v1/rate-limits/user/not-a-uuid", {}, 404, "no user"),
        ("/v1/rate-limits/key/{key_id}", {"requestsPerMinute": -1}, 400, "'requestsPerMinute' must be null"),
        ("/v1/rate-limits/key/{key_id}", {"inFlight": True}, 400, "'inFlight' must be null"),
        ("/v1/rate-limits/key/{key_id}", {"tokensPerMinute": 2**31}, 400, "from 0 to"),
        ("/v1/rate-limits/key/{key_id}", {"rpm": 5}, 400, "unknown field 'rpm'"),
    ],
)
async def test_override_input_is_checked(
    gateway: TestServer, make_key: MakeKey, path: str, body: Any, status: int, says: str
) -> None:
    admin, row = await make_key("admin", admin=True)
    async with (
        aiohttp.ClientSession() as s,
        s.put(
            str(gateway.make_url(path.format(key_id=row.id))), json=body, headers={"Authorization": f"Bearer {admin}"}
        ) as r,
    ):
        assert r.status == status
        assert says in (await r.json())["error"]


async def test_overrides_need_an_admin_key(gateway: TestServer, make_user: MakeUser) -> None:
    key, row = await make_user()
    async with (
        aiohttp.ClientSession() as s,
        s.put(
            str(gateway.make_url(f"/v1/rate-limits/key/{row.id}")),
            json={"requestsPerMinute": 0},
            headers={"Authorization": f"Bearer {key}"},
        ) as r,
    ):
        assert r.status == 403


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"fail": "maybe"}, "rate_limits.fail: 'maybe' is not one of open, closed"),
        ({"redis_url": "localhost:6379"}, "rate_limits.redis_url: 'localhost:6379' is not a redis://"),
        ({"key": {"requests_per_minute": -5}}, "rate_limits.key.requests_per_minute: must be 0 or more"),
        ({"user": {"rpm": 5}}, "rate_limits.user.rpm: unknown key"),
    ],
)
def test_config_errors_name_the_value(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        gateway_config("http://127.0.0.1:1", rate_limits=section)


async def test_a_client_hanging_up_mid_stream_frees_its_slot_and_its_tokens_count(
    make_gateway: GatewayFactory, make_user: MakeUser, upstream: FakeUpstream, redis: str, prefix: str
) -> None:
    upstream.usage(input_tokens=400, output_tokens=5)
    upstream.enqueue(chunk_delay_s=0.2)  # a slow stream, dropped after its first line
    section = {"in_flight": 1, "tokens_per_minute": 800}
    server = await make_gateway(rate_limits=limits(redis, prefix, key=section))
    key, _ = await make_user()
    url, headers = str(server.make_url("/v1/messages")), {"x-api-key": key}
    async with aiohttp.ClientSession() as s:
        r = await s.post(url, json={**MESSAGES, "stream": True}, headers=headers)
        await r.content.readline()
        assert (await post(server, "/v1/messages", key, MESSAGES))[0] == 429  # its one slot is taken
        r.close()  # the client goes away mid-stream
        for _ in range(100):  # the relay notices, the stage settles in the background
            status, body, _ = await post(server, "/v1/messages", key, MESSAGES)
            if status == 200:
                break
            await asyncio.sleep(0.05)
        assert status == 200
        # the dropped stream's 400 input tokens and this request's 405 are over 800 a minute
        status, body, headers_ = await post(server, "/v1/messages", key, MESSAGES)
    assert status == 429 and "800 tokens per minute" in body["error"]["message"]
    assert headers_["anthropic-ratelimit-tokens-limit"] == "800"


async def test_redis_restarting_is_survived_and_checks_resume(tmp_path: Any) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]

    async def start() -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL)
        for _ in range(100):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return proc
            await asyncio.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    metrics = Metrics()
    limiter = RedisLimiter(
        f"redis://127.0.0.1:{port}/0", prefix="t:", timeout_s=0.5, fail_closed=False, metrics=metrics
    )
    closed_metrics = Metrics()
    closed = RedisLimiter(
        f"redis://127.0.0.1:{port}/0", prefix="t:", timeout_s=0.5, fail_closed=True, metrics=closed_metrics
    )
    scope = [Scope("key:1", RateLimit(requests_per_minute=100))]
    slot = [Scope("key:2", RateLimit(in_flight=5, tokens_per_minute=1000))]
    proc = await start()
    try:
        assert (await limiter.acquire(scope)).ticket  # checked in Redis
        held = await closed.acquire(slot)
        proc.terminate()
        await proc.wait()
        unchecked = await limiter.acquire(scope)
        assert unchecked.admitted and not unchecked.ticket  # fail open: admitted without a check
        assert metrics.rate_limit_redis_errors.values[("check",)] == 1
        await closed.release(slot, held.ticket, 100)  # the request is over: counted, never raised
        assert closed_metrics.rate_limit_redis_errors.values[("settle",)] == 1
        with pytest.raises(ServiceUnavailable):  # fail closed: 503 while Redis is away
            await closed.acquire(slot)
        proc = await start()
        await asyncio.sleep(BACKOFF_S + 0.1)  # after the backoff Redis is asked again
        assert (await limiter.acquire(scope)).ticket
    finally:
        await limiter.aclose()
        await closed.aclose()
        proc.terminate()
        await proc.wait()
