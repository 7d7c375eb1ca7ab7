"""After key mapping, before the budget: requests per minute, tokens per minute and requests in flight.

Runs after authentication (it needs the key and user) and before the budget check. A refused request gets a
429 in the caller's dialect with `Retry-After` and the rate-limit headers its SDK reads: OpenAI's
`x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (reset as a duration, e.g. `6m0s`, `1.5s`) on
OpenAI routes, Anthropic's `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}` (reset as an
RFC 3339 time) on /v1/messages. Tokens (input, cache writes and output; cache reads are free, as at Anthropic)
are settled when the request ends, stream included.
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta

from gateway.config import RateLimit, RateLimitConfig
from gateway.error_shape import ErrorShape
from gateway.errors import RateLimited
from gateway.keys import Principal
from gateway.metrics import Metrics
from gateway.pipeline import Exchange, Next
from gateway.rate_limits import limiter as leases  # LEASE_MS read at each use
from gateway.rate_limits.limiter import IN_FLIGHT, TOKENS, Limiter, Scope, Verdict
from gateway.rate_limits.overrides import RateLimitOverrides

NO_LIMIT = RateLimit()


class CheckRateLimit:
    """Admit or refuse (429) each request against its key's and its user's limits."""

    def __init__(
        self, limiter: Limiter, limits: RateLimitConfig, overrides: RateLimitOverrides | None, metrics: Metrics
    ) -> None:
        self._limiter, self._overrides, self._metrics = limiter, overrides, metrics
        self._key_default, self._user_default = limits.key, limits.user
        self._any_default = limits.key.any or limits.user.any  # neither: only an override can limit anyone
        self._settling: set[asyncio.Task[None]] = set()  # held so that a settlement is not collected mid-way

    def scopes(self, who: Principal) -> list[Scope]:
        """The scopes with any limit for this caller, key first; [] means nothing to check."""
        by_scope = self._overrides.by_scope if self._overrides is not None else {}
        if not by_scope and not self._any_default:  # the common case: no limit anywhere, nothing to build
            return []
        scopes = []
        key = str(who.key_id)
        limit = o.over(self._key_default) if (o := by_scope.get(("key", key))) else self._key_default
        if limit.any:
            scopes.append(Scope(f"key:{key}", limit))
        if who.user_id is not None:
            user = str(who.user_id)
            limit = o.over(self._user_default) if (o := by_scope.get(("user", user))) else self._user_default
            if limit.any:
                scopes.append(Scope(f"user:{user}", limit))
        return scopes

    async def __call__(self, ex: Exchange, call_next: Next) -> None:
        assert ex.principal is not None
        scopes = self.scopes(ex.principal)
        if not scopes:  # the common case without limits: no Redis round trip
            await call_next(ex)
            return
        verdict = await self._limiter.acquire(scopes)
        if not verdict.admitted:
            assert verdict.scope is not None
            self._metrics.rate_limit_rejections.inc((verdict.scope.name.split(":")[0], verdict.refused_by))
            raise refusal(verdict, ex.dialect)
        in_flight = bool(verdict.ticket) and any(s.limit.in_flight for s in scopes)
        if not in_flight and not any(s.limit.tokens_per_minute for s in scopes):
            await call_next(ex)  # requests per minute only: nothing to settle afterwards
            return
        keeper = LeaseKeeper(self._limiter, scopes, verdict.ticket, self._settling) if in_flight else None
        try:
            await call_next(ex)
        finally:
            if keeper is not None:
                keeper.stop()
            # settled in the background: the reply is complete, the caller need not wait for Redis
            # cache writes are fresh input the upstream processed (Anthropic counts them in its input tokens
            # per minute); left out, a caller marking every prompt for caching would pass the limit almost free
            tokens = ex.usage.input_tokens + ex.usage.cache_write_tokens + ex.usage.output_tokens
            task = asyncio.create_task(self._limiter.release(scopes, verdict.ticket, tokens))
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)


class LeaseKeeper:
    """Renews one running request's in-flight lease every LEASE_MS / 3 (a long stream outlasts a lease, and
    an expired lease would let the caller start one request more than its limit). A timer, not a task: most
    requests end before the first renewal."""

    def __init__(self, limiter: Limiter, scopes: list[Scope], ticket: str, tasks: set[asyncio.Task[None]]) -> None:
        self._limiter, self._scopes, self._ticket, self._tasks = limiter, scopes, ticket, tasks
        self._handle = asyncio.get_running_loop().call_later(leases.LEASE_MS / 3000, self._renew)

    def _renew(self) -> None:
        task = asyncio.create_task(self._limiter.renew(self._scopes, self._ticket))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._handle = asyncio.get_running_loop().call_later(leases.LEASE_MS / 3000, self._renew)

    def stop(self) -> None:
        self._handle.cancel()


def refusal(verdict: Verdict, dialect: ErrorShape, now: datetime | None = None) -> RateLimited:
    """The 429 for a refused verdict: the message, Retry-After and the dialect's rate-limit headers."""
    assert verdict.scope is not None
    limit = verdict.scope.limit
    scope = verdict.scope.name.split(":")[0]
    if verdict.refused_by == IN_FLIGHT:
        message = f"Rate limit reached: {limit.in_flight} requests in flight per {scope}"
    elif verdict.refused_by == TOKENS:
        message = f"Rate limit reached: {limit.tokens_per_minute} tokens per minute per {scope}"
    else:
        message = f"Rate limit reached: {limit.requests_per_minute} requests per minute per {scope}"
    headers = {"Retry-After": str(max(1, math.ceil(verdict.retry_after_ms / 1000)))}
    now = now or datetime.now(UTC)
    figures = (
        ("requests", limit.requests_per_minute, verdict.requests_remaining, verdict.requests_reset_ms),
        ("tokens", limit.tokens_per_minute, verdict.tokens_remaining, verdict.tokens_reset_ms),
    )
    for kind, maximum, remaining, reset_ms in figures:
        if not maximum:
            continue
        remaining = max(remaining, 0)
        if dialect is ErrorShape.ANTHROPIC:
            at = now + timedelta(milliseconds=reset_ms)
            if at.microsecond:  # up to the whole second: a reset truncated to before it would invite an early retry
                at = at.replace(microsecond=0) + timedelta(seconds=1)
            reset = at.isoformat(timespec="seconds").replace("+00:00", "Z")
            headers |= {
                f"anthropic-ratelimit-{kind}-limit": str(maximum),
                f"anthropic-ratelimit-{kind}-remaining": str(remaining),
                f"anthropic-ratelimit-{kind}-reset": reset,
            }
        else:
            headers |= {
                f"x-ratelimit-limit-{kind}": str(maximum),
                f"x-ratelimit-remaining-{kind}": str(remaining),
                f"x-ratelimit-reset-{kind}": duration(reset_ms),
            }
    kind = "tokens" if verdict.refused_by == TOKENS else "requests"
    return RateLimited(message, kind=kind, headers=headers)


def duration(ms: int) -> str:
    """OpenAI's reset format: `20ms`, `1.5s`, `6m0s`."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    if ms < 60_000:
        return f"{ms / 1000:g}s"
    minutes, seconds = divmod(math.ceil(ms / 1000), 60)  # whole seconds, rounded up: never "1m60s"
    return f"{minutes}m{seconds}s"
