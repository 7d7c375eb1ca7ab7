"""The budget check's view of month-to-date usage: database counters plus this process's own recent usage.

The counters in PostgreSQL (usage_counters) are incremented by every process's usage flush. This view
re-reads them every `refresh_s` seconds and adds what this process recorded since: rows still queued or
being flushed, and rows flushed after the last read began. So the hot path costs dict lookups, no query,
yet every process sharing the database sees every other's usage within one refresh interval.

It also holds this process's reservations: what the requests in flight may still cost (an estimate made at
admission, released when the request's real usage is recorded). The budget check admits a request while
usage plus the reservations of the requests already in flight is under the limit. The README's *Budgets*
section states the overshoot this leaves, on one process and across several.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from uuid import UUID

import asyncpg
import structlog

from gateway import db

log = structlog.get_logger("gateway.budgets")

Scope = tuple[date, str, str]  # (month, "user" | "key" | "team", id)
Amounts = dict[Scope, list[Decimal]]  # scope -> [tokens, cost_usd]


def month_of(moment: datetime) -> date:
    """The first day of `moment`'s UTC calendar month: the key of every monthly counter."""
    moment = moment.astimezone(UTC)
    return date(moment.year, moment.month, 1)


def utc_now() -> datetime:
    return datetime.now(UTC)


def _epoch(day: date) -> float:
    """Seconds since the epoch at the start (00:00 UTC) of `day`."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def scopes(month: date, key_id: int, user_id: UUID | None, team_id: int | None = None) -> list[Scope]:
    """The counters one request moves: its key's, its user's (if any) and its team's (if any)."""
    out: list[Scope] = [(month, "key", str(key_id))]
    if user_id is not None:
        out.append((month, "user", str(user_id)))
    if team_id is not None:
        out.append((month, "team", str(team_id)))
    return out


class MonthView:
    """Month-to-date tokens per user, USD per key, and both per team, as the budget check sees them."""

    def __init__(self, pool: asyncpg.Pool | None, *, refresh_s: float = 2.0, clock: Callable[[], datetime] = utc_now):
        self._pool, self.refresh_s, self.clock = pool, refresh_s, clock
        self._snapshot: dict[Scope, list[Decimal]] = {}
        # This process's usage the snapshot does not hold yet: recorded (queued or being flushed) or stored
        # after the snapshot was read. One running total per scope, so a check is two dict lookups.
        self._local: Amounts = defaultdict(lambda: [Decimal(0), Decimal(0)])
        self._stored: dict[int, Amounts] = {}  # flush number -> amounts stored since the last snapshot began
        self._flushes = itertools.count(1)
        self._last_flush = 0
        self._task: asyncio.Task[None] | None = None
        self._reserved: Amounts = defaultdict(lambda: [Decimal(0), Decimal(0)])  # scope -> in-flight estimates
        self._month, self._month_span = date.min, (0.0, 0.0)  # the current month and its [start, end) in epoch s

    def month(self) -> date:
        """The current UTC month, as `month_of(self.clock())`.

        With the real clock, a comparison of `time.time()` with the month's bounds: a request asks several times,
        and each datetime.now, astimezone and date cost more than the rest of its budget check.
        """
        if self.clock is not utc_now:  # a test's clock
            return month_of(self.clock())
        now = time.time()
        start, end = self._month_span
        if not start <= now < end:
            self._month = month = month_of(datetime.fromtimestamp(now, UTC))
            following = date(month.year + month.month // 12, month.month % 12 + 1, 1)
            self._month_span = (_epoch(month), _epoch(following))
        return self._month

    # --- what the budget check asks ---

    def tokens_reserved(self, user_id: UUID) -> int:
        entry = self._reserved.get((self.month(), "user", str(user_id)))
        return int(entry[0]) if entry else 0

    def cost_reserved(self, key_id: int) -> Decimal:
        entry = self._reserved.get((self.month(), "key", str(key_id)))
        return entry[1] if entry else Decimal(0)

    def team_reserved(self, team_id: int) -> tuple[int, Decimal]:
        """(tokens, USD) the requests in flight on this process hold against a team's month."""
        entry = self._reserved.get((self.month(), "team", str(team_id)))
        return (int(entry[0]), entry[1]) if entry else (0, Decimal(0))

    def reserve(
        self, key_id: int, user_id: UUID | None, tokens: int, cost: Decimal, team_id: int | None = None
    ) -> Amounts:
        """Hold `tokens` and `cost` against the key's, the user's and the team's month until `release`."""
        held: Amounts = {}
        for scope in scopes(self.month(), key_id, user_id, team_id):
            entry = self._reserved[scope]
            entry[0] += tokens
            entry[1] += cost
            held[scope] = [Decimal(tokens), cost]
        return held

    def release(self, held: Amounts) -> None:
        """The request ended (its real usage already recorded): drop what `reserve` held."""
        for scope, (tokens, cost) in held.items():
            entry = self._reserved[scope]
            entry[0] -= tokens
            entry[1] -= cost
            if not entry[0] and not entry[1]:
                del self._reserved[scope]

    def tokens_used(self, user_id: UUID) -> int:
        return int(self._used((self.month(), "user", str(user_id)))[0])

    def cost_used(self, key_id: int) -> Decimal:
        return self._used((self.month(), "key", str(key_id)))[1]

    def team_used(self, team_id: int) -> tuple[int, Decimal]:
        """(tokens, USD) of a team's month: the usage rows made for it, whoever is in it now."""
        tokens, cost = self._used((self.month(), "team", str(team_id)))
        return int(tokens), cost

    def _used(self, scope: Scope) -> list[Decimal]:
        base, local = self._snapshot.get(scope), self._local.get(scope)
        tokens, cost = (base[0], base[1]) if base else (Decimal(0), Decimal(0))
        if local:
            tokens, cost = tokens + local[0], cost + local[1]
        return [tokens, cost]

    # --- what the usage log tells it ---

    def recorded(
        self,
        when: datetime,
        key_id: int,
        user_id: UUID | None,
        tokens: int,
        cost: Decimal | None,
        team_id: int | None = None,
    ) -> None:
        for scope in scopes(month_of(when), key_id, user_id, team_id):
            entry = self._local[scope]
            entry[0] += tokens
            entry[1] += cost or 0

    def stored(self, amounts: Amounts) -> None:
        """A flush committed these amounts: they stay counted locally until a snapshot read after it holds them."""
        self._last_flush = next(self._flushes)
        self._stored[self._last_flush] = amounts

    def dropped(self, amounts: Amounts) -> None:
        """Rows the database refused (set aside for an operator): no longer counted by this process."""
        for scope, (tokens, cost) in amounts.items():
            entry = self._local[scope]
            entry[0] -= tokens
            entry[1] -= cost

    # --- the refresh ---

    async def refresh(self) -> None:
        """Re-read this month's counters; drop local amounts the new snapshot already contains."""
        if self._pool is None:
            return
        flushed_before = self._last_flush
        month = self.month()
        counters = await db.month_counters(self._pool, month)
        self._snapshot = {(month, c.scope, c.scope_id): [Decimal(c.tokens), c.cost_usd] for c in counters}
        for number in [n for n in self._stored if n <= flushed_before]:
            for scope, (tokens, cost) in self._stored.pop(number).items():  # now in the snapshot
                entry = self._local[scope]
                entry[0] -= tokens
                entry[1] -= cost
                if not entry[0] and not entry[1]:
                    del self._local[scope]

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-view-refresh")

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("budget_refresh_failed", error=str(exc))  # keep the last known counters
            await asyncio.sleep(self.refresh_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
