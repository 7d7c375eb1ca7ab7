"""What a rate-limit check answers, and the in-process limiter used when no Redis is configured.

The rules, shared with the Redis script (gateway/rate_limits/redis_limiter.py) so both count alike:
- requests per minute: a sliding log; a request is admitted when fewer than the limit were admitted in the
  last 60 s. Exact: a 60 rpm key gets 60 requests in any minute, never 61.
- tokens per minute: a sliding-window counter (two fixed minutes, the previous one weighted by how much of
  it still lies in the last 60 s, as Cloudflare's rate limiter does). Tokens are known only after the
  reply, so they are added when the request ends; a request is refused while the estimate is at or above
  the limit. Bound: usage can exceed the limit by what the requests admitted meanwhile consume.
- requests in flight: a set of leases; a lease ends with its request, or after LEASE_MS if the process
  that held it died (a running request renews its lease every LEASE_MS / 3: a stream may outlast one).
A request is checked against every scope it belongs to (its key, its user) at once: it is refused when any
scope refuses, and counted in none of them then.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.config import RateLimit

WINDOW_MS = 60_000
LEASE_MS = 15 * 60_000  # an in-flight lease outlives a crashed process by this much; running requests renew it
IN_FLIGHT_RETRY_MS = 1_000  # what Retry-After says when only the in-flight limit refuses
MAX_SCOPES = 100_000  # the local limiter forgets the least recently used scopes beyond this

REQUESTS, TOKENS, IN_FLIGHT = "requests", "tokens", "in_flight"


@dataclass(frozen=True, slots=True)
class Scope:
    """One thing limits apply to: `key:42` or `user:<uuid>`, with its effective limits."""

    name: str
    limit: RateLimit


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer for one request. Figures describe the refusing scope, or the first one when admitted.

    `*_remaining` is -1 where that scope has no limit of the kind; times are milliseconds from now.
    """

    admitted: bool
    scope: Scope | None = None
    refused_by: str = ""  # requests | tokens | in_flight
    retry_after_ms: int = 0
    requests_remaining: int = -1
    requests_reset_ms: int = 0
    tokens_remaining: int = -1
    tokens_reset_ms: int = 0
    ticket: str = ""  # names this request's in-flight lease and request-log entry


ADMIT_UNCHECKED = Verdict(admitted=True)  # fail open: Redis could not be asked


class Limiter(Protocol):
    async def acquire(self, scopes: Sequence[Scope]) -> Verdict: ...

    async def release(self, scopes: Sequence[Scope], ticket: str, tokens: int) -> None: ...

    async def renew(self, scopes: Sequence[Scope], ticket: str) -> None: ...

    async def aclose(self) -> None: ...


class Tickets:
    """Unique ticket strings, cheaply: this process's random prefix and a counter."""

    def __init__(self) -> None:
        self._prefix, self._next = os.urandom(6).hex(), itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._next):x}"


def tokens_estimate(prev: int, cur: int, into_ms: int) -> int:
    """Tokens used in the sliding minute: the previous fixed minute weighted by its share still inside."""
    return math.floor(prev * (WINDOW_MS - into_ms) / WINDOW_MS + cur)


def tokens_retry_ms(prev: int, cur: int, into_ms: int, limit: int) -> int:
    """Milliseconds until the estimate falls below `limit` with no new tokens (estimate >= limit now)."""
    if cur >= limit:  # only the next minute's decay of this minute's tokens frees room
        return WINDOW_MS - into_ms + math.floor(WINDOW_MS * (1 - limit / cur)) + 1
    return max(1, math.floor(WINDOW_MS * (1 - (limit - cur) / prev)) - into_ms + 1)


def tokens_reset_ms(prev: int, cur: int, into_ms: int) -> int:
    """Milliseconds until the sliding minute holds no tokens at all."""
    if cur:
        return 2 * WINDOW_MS - into_ms
    return WINDOW_MS - into_ms if prev else 0


@dataclass
class _ScopeState:
    admitted: deque[float] = field(default_factory=deque)  # admission times (ms) in the last minute
    minute: int = 0  # the fixed minute `cur` counts
    cur: int = 0
    prev: int = 0
    leases: dict[str, float] = field(default_factory=dict)  # ticket -> expiry (ms)


class LocalLimiter:
    """The rules above, counted in this process only (each replica or worker has its own counts)."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock  # seconds
        self._scopes: OrderedDict[str, _ScopeState] = OrderedDict()
        self._tickets = Tickets()

    def _state(self, name: str, now_ms: float) -> _ScopeState:
        state = self._scopes.get(name)
        if state is None:
            state = self._scopes[name] = _ScopeState()
            while len(self._scopes) > MAX_SCOPES:
                self._scopes.popitem(last=False)
        self._scopes.move_to_end(name)
        minute = int(now_ms // WINDOW_MS)
        if minute != state.minute:
            state.prev = state.cur if minute == state.minute + 1 else 0
            state.minute, state.cur = minute, 0
        while state.admitted and state.admitted[0] <= now_ms - WINDOW_MS:
            state.admitted.popleft()
        for ticket in [t for t, expiry in state.leases.items() if expiry <= now_ms]:
            del state.leases[ticket]
        return state

    async def acquire(self, scopes: Sequence[Scope]) -> Verdict:
        now = self._clock() * 1000
        into = int(now % WINDOW_MS)
        first: Verdict | None = None
        states = []
        for scope in scopes:
            state = self._state(scope.name, now)
            states.append(state)
            limit, refused_by, retry = scope.limit, "", 0
            r_rem, r_reset, t_rem, t_reset = -1, 0, -1, 0
            if rpm := limit.requests_per_minute:
                r_rem = rpm - len(state.admitted)
                r_reset = int(state.admitted[0] + WINDOW_MS - now) if state.admitted else 0
                if r_rem <= 0:
                    refused_by = REQUESTS
                    retry = int(state.admitted[len(state.admitted) - rpm] + WINDOW_MS - now) + 1
            if tpm := limit.tokens_per_minute:
                used = tokens_estimate(state.prev, state.cur, into)
                t_rem, t_reset = tpm - used, tokens_reset_ms(state.prev, state.cur, into)
                if used >= tpm and not refused_by:
                    refused_by, retry = TOKENS, tokens_retry_ms(state.prev, state.cur, into, tpm)
            if limit.in_flight and len(state.leases) >= limit.in_flight and not refused_by:
                refused_by, retry = IN_FLIGHT, IN_FLIGHT_RETRY_MS
            verdict = Verdict(not refused_by, scope, refused_by, retry, r_rem, r_reset, max(t_rem, 0), t_reset)
            if refused_by:
                return verdict
            first = first or verdict
        ticket = self._tickets()
        for scope, state in zip(scopes, states, strict=True):
            if scope.limit.requests_per_minute:
                state.admitted.append(now)
            if scope.limit.in_flight:
                state.leases[ticket] = now + LEASE_MS
        assert first is not None
        return admitted_verdict(first, ticket)

    async def release(self, scopes: Sequence[Scope], ticket: str, tokens: int) -> None:
        now = self._clock() * 1000
        for scope in scopes:
            state = self._state(scope.name, now)
            if scope.limit.tokens_per_minute:
                state.cur += tokens
            state.leases.pop(ticket, None)

    async def renew(self, scopes: Sequence[Scope], ticket: str) -> None:
        now = self._clock() * 1000
        for scope in scopes:
            leases = self._state(scope.name, now).leases
            if ticket in leases:
                leases[ticket] = now + LEASE_MS

    async def aclose(self) -> None:
        return None


def admitted_verdict(first: Verdict, ticket: str) -> Verdict:
    """The admitted verdict, with this request counted in the remaining figures."""
    remaining = first.requests_remaining - 1 if first.requests_remaining > 0 else first.requests_remaining
    return Verdict(
        True,
        first.scope,
        "",
        0,
        remaining,
        first.requests_reset_ms or WINDOW_MS,
        first.tokens_remaining,
        first.tokens_reset_ms,
        ticket,
    )
