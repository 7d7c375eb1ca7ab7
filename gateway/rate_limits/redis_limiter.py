"""Rate limits shared by every replica: one atomic Lua script per check, and one per settlement.

The scripts follow the rules in gateway/rate_limits/limiter.py, on Redis' clock (TIME), so replicas with
skewed clocks still count the same minute. Keys, under `rate_limits.key_prefix` + the database's namespace
(gateway_settings.rate_limit_namespace, so gateways on different databases never share counts) + scope name:
    <p>:r           sorted set: admission times (score, ms) of the last minute, member = ticket
    <p>:t:<minute>  integer: tokens settled in that fixed minute (expires after two minutes)
    <p>:f           sorted set: in-flight leases, score = lease expiry (ms)
All keys of one check are computed inside the script from the scope prefixes, so this needs one Redis (or
a primary with replicas), not Redis Cluster.

Redis unreachable or slower than `redis_timeout_s`: the check fails open (admits) or closed (503), as
configured; each failure is counted in gateway_rate_limit_redis_errors and logged once per outage, and for
BACKOFF_S after a failure requests do not wait on Redis at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.errors import ServiceUnavailable
from gateway.metrics import Metrics
from gateway.rate_limits.limiter import (
    ADMIT_UNCHECKED,
    IN_FLIGHT,
    IN_FLIGHT_RETRY_MS,
    LEASE_MS,
    REQUESTS,
    TOKENS,
    Scope,
    Tickets,
    Verdict,
    admitted_verdict,
)

log = structlog.get_logger("gateway.rate_limits")

BACKOFF_S = 1.0  # after a Redis failure, apply the fail policy without asking Redis for this long
KINDS = {1: REQUESTS, 2: TOKENS, 3: IN_FLIGHT}

# KEYS: one prefix per scope. ARGV: ticket, lease ms, in-flight retry ms, then per scope rpm, tpm, in_flight.
# Returns {admitted 0|1, scope index (1-based), refused kind (0, 1 rpm, 2 tpm, 3 in flight), retry ms,
#          requests remaining (-1: no limit), requests reset ms, tokens remaining (-1), tokens reset ms}.
CHECK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ticket, lease, inflight_retry = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local minute = math.floor(now / 60000)
local into = now - minute * 60000
local first = nil
for i, p in ipairs(KEYS) do
  local rpm, tpm, fl = tonumber(ARGV[3 * i + 1]), tonumber(ARGV[3 * i + 2]), tonumber(ARGV[3 * i + 3])
  local kind, retry, rrem, rreset, trem, treset = 0, 0, -1, 0, -1, 0
  if rpm > 0 then
    local k = p .. ':r'
    redis.call('ZREMRANGEBYSCORE', k, '-inf', now - 60000)
    local n = redis.call('ZCARD', k)
    rrem = rpm - n
    if rrem <= 0 then  -- the reset figures are read only for a refusal's headers (each ZRANGE costs)
      kind = 1
      rreset = tonumber(redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')[2]) + 60000 - now
      retry = tonumber(redis.call('ZRANGE', k, n - rpm, n - rpm, 'WITHSCORES')[2]) + 60000 - now + 1
    end
  end
  if tpm > 0 then
    local cur = tonumber(redis.call('GET', p .. ':t:' .. minute) or '0')
    local prev = tonumber(redis.call('GET', p .. ':t:' .. (minute - 1)) or '0')
    local used = math.floor(prev * (60000 - into) / 60000 + cur)
    trem = math.max(tpm - used, 0)
    if cur > 0 then treset = 120000 - into elseif prev > 0 then treset = 60000 - into end
    if used >= tpm and kind == 0 then
      kind = 2
      if cur >= tpm then
        retry = 60000 - into + math.floor(60000 * (1 - tpm / cur)) + 1
      else
        retry = math.max(1, math.floor(60000 * (1 - (tpm - cur) / prev)) - into + 1)
      end
    end
  end
  if fl > 0 and kind == 0 then
    local k = p .. ':f'
    redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
    if redis.call('ZCARD', k) >= fl then kind, retry = 3, inflight_retry end
  end
  if kind ~= 0 then return {0, i, kind, retry, rrem, rreset, trem, treset} end
  if first == nil then first = {1, i, 0, 0, rrem, rreset, trem, treset} end
end
for i, p in ipairs(KEYS) do
  if tonumber(ARGV[3 * i + 1]) > 0 then
    redis.call('ZADD', p .. ':r', now, ticket)
    redis.call('PEXPIRE', p .. ':r', 60000)
  end
  if tonumber(ARGV[3 * i + 3]) > 0 then
    redis.call('ZADD', p .. ':f', now + lease, ticket)
    redis.call('PEXPIRE', p .. ':f', lease)
  end
end
return first
"""

# KEYS: one prefix per scope. ARGV: ticket, tokens, then per scope: tpm, in_flight (0: no such limit).
SETTLE = """
local t = redis.call('TIME')
local minute = math.floor((tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)) / 60000)
local ticket, tokens = ARGV[1], tonumber(ARGV[2])
for i, p in ipairs(KEYS) do
  if tonumber(ARGV[2 * i + 1]) > 0 and tokens > 0 then
    local k = p .. ':t:' .. minute
    redis.call('INCRBY', k, tokens)
    redis.call('EXPIRE', k, 120)
  end
  if tonumber(ARGV[2 * i + 2]) > 0 then redis.call('ZREM', p .. ':f', ticket) end
end
return 1
"""


# KEYS: the prefixes of the scopes with an in-flight limit. ARGV: ticket, lease ms. XX: a lease already ended
# (released, or expired) is not brought back.
RENEW = """
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
for _, p in ipairs(KEYS) do
  if redis.call('ZADD', p .. ':f', 'XX', 'CH', expiry, ARGV[1]) == 1 then
    redis.call('PEXPIRE', p .. ':f', tonumber(ARGV[2]))
  end
end
return 1
"""


class RedisLimiter:
    def __init__(
        self, url: str, *, prefix: str, timeout_s: float, fail_closed: bool, metrics: Metrics | None = None
    ) -> None:
        # no retries inside redis-py: a retry would multiply the wait that every request pays while Redis
        # is away; the next request simply tries again
        self._redis = Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
        )
        self._check = self._redis.register_script(CHECK)
        self._settle = self._redis.register_script(SETTLE)
        self._renew = self._redis.register_script(RENEW)
        self._prefix, self._fail_closed = prefix, fail_closed
        self._metrics = metrics or Metrics()
        self._tickets = Tickets()
        self._down_until = 0.0  # monotonic time before which Redis is not asked
        self._outage_logged = False
        self._pending: set[asyncio.Task[None]] = set()  # lease releases for checks cancelled mid-way

    async def acquire(self, scopes: Sequence[Scope]) -> Verdict:
        if time.monotonic() < self._down_until:
            return self._unavailable()
        ticket = self._tickets()
        args: list[int | str] = [ticket, LEASE_MS, IN_FLIGHT_RETRY_MS]
        for scope in scopes:
            limit = scope.limit
            args += [limit.requests_per_minute, limit.tokens_per_minute, limit.in_flight]
        check = asyncio.ensure_future(self._check(keys=[self._prefix + s.name for s in scopes], args=args))
        try:
            answer = await asyncio.shield(check)
        except asyncio.CancelledError:
            # the caller hung up (handler_cancellation) while Redis may already have counted this request:
            # release its lease once the answer is in, else the slot stays taken for LEASE_MS
            self._pending.add(task := asyncio.create_task(self._release_cancelled(check, scopes, ticket)))
            task.add_done_callback(self._pending.discard)
            raise
        except (RedisError, OSError) as exc:
            self._failed(exc, "check")
            if any(s.limit.in_flight for s in scopes):
                # a timeout may come after Redis ran the check: its lease would hold a slot for LEASE_MS
                self._pending.add(task := asyncio.create_task(self._release_late(scopes, ticket)))
                task.add_done_callback(self._pending.discard)
            return self._unavailable()
        self._recovered()
        admitted, index, kind, retry, r_rem, r_reset, t_rem, t_reset = (int(v) for v in answer)
        verdict = Verdict(
            bool(admitted), scopes[index - 1], KINDS.get(kind, ""), retry, r_rem, r_reset, t_rem, t_reset, ticket
        )
        return admitted_verdict(verdict, ticket) if verdict.admitted else verdict

    async def release(self, scopes: Sequence[Scope], ticket: str, tokens: int) -> None:
        # tried even during a backoff: it runs after the reply, so nobody waits on it, and a lease not
        # released here would hold its in-flight slot for LEASE_MS after a mere blip
        if not ticket:  # admitted unchecked
            return
        args: list[int | str] = [ticket, tokens]
        for scope in scopes:
            args += [scope.limit.tokens_per_minute, scope.limit.in_flight]
        try:
            await self._settle(keys=[self._prefix + s.name for s in scopes], args=args)
        except (RedisError, OSError) as exc:  # the request is over: only count it (a lost settlement)
            self._failed(exc, "settle")

    async def renew(self, scopes: Sequence[Scope], ticket: str) -> None:
        if not ticket or time.monotonic() < self._down_until:  # admitted unchecked, or Redis is away
            return
        keys = [self._prefix + s.name for s in scopes if s.limit.in_flight]
        try:
            await self._renew(keys=keys, args=[ticket, LEASE_MS])
        except (RedisError, OSError) as exc:  # the lease keeps its old expiry; the next renewal tries again
            self._failed(exc, "renew")

    async def _release_late(self, scopes: Sequence[Scope], ticket: str) -> None:
        await asyncio.sleep(BACKOFF_S)  # once Redis had a moment; removing a lease never made is harmless
        await self.release(scopes, ticket, 0)

    async def _release_cancelled(self, check: asyncio.Future[Any], scopes: Sequence[Scope], ticket: str) -> None:
        with contextlib.suppress(RedisError, OSError):
            if (await check)[0]:  # admitted: counted and leased in Redis
                await self.release(scopes, ticket, 0)

    async def aclose(self) -> None:
        await self._redis.aclose()

    def _failed(self, exc: BaseException, op: str) -> None:
        self._metrics.rate_limit_redis_errors.inc((op,))
        self._down_until = time.monotonic() + BACKOFF_S
        if not self._outage_logged:
            self._outage_logged = True
            log.error("rate_limit_redis_unavailable", error=repr(exc), fail="closed" if self._fail_closed else "open")

    def _recovered(self) -> None:
        if self._outage_logged:
            self._outage_logged = False
            log.warning("rate_limit_redis_back")

    def _unavailable(self) -> Verdict:
        if self._fail_closed:
            raise ServiceUnavailable(
                "rate limits cannot be checked right now (rate_limits.fail: closed)", headers={"Retry-After": "1"}
            )
        self._metrics.rate_limit_unchecked.inc(())
        return ADMIT_UNCHECKED
