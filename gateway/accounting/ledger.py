"""The usage log: rows queued in memory by the request path, written to PostgreSQL in batches by one task.

A request only appends a tuple to a list; the flusher writes the list with one COPY every
`flush_interval_ms`, or sooner once `flush_rows` rows wait. A failed write keeps the rows for the next try.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from gateway import db
from gateway.accounting.month_view import Amounts, MonthView, month_of, scopes
from gateway.accounting.spill import SpillDir
from gateway.config import Price
from gateway.metrics import Metrics
from gateway.pipeline import Exchange, Usage

log = structlog.get_logger("gateway.usage")
_MILLION = Decimal(1_000_000)


PerToken = tuple[Decimal, ...]  # USD per token (input, output, 5-minute write, cache read, 1-hour write), per search


def per_token(price: Price) -> PerToken:
    """A price as exact decimals per token (input, output, 5-minute write, cache read, 1-hour write) and per
    web search."""
    per_million = (price.input, price.output, price.cache_write, price.cache_read, price.cache_write_1h_price)
    return (*(Decimal(str(p)) / _MILLION for p in per_million), Decimal(str(price.web_search_per_1k)) / 1000)


def cost_at(rates: PerToken, usage: Usage) -> Decimal:
    """What `usage` cost at `rates` (`per_token`'s decimals).

    Cache writes the provider did not split by lifetime are priced as 5-minute writes.
    """
    per_input, per_output, per_write, per_read, per_write_1h, per_search = rates
    cost = usage.input_tokens * per_input + usage.output_tokens * per_output
    # The other kinds are mostly 0: skipped, not multiplied (each Decimal operation allocates); same value.
    if unsplit_writes := usage.cache_write_tokens - usage.cache_write_1h_tokens:
        cost += unsplit_writes * per_write
    if usage.cache_write_1h_tokens:
        cost += usage.cache_write_1h_tokens * per_write_1h
    if usage.cache_read_tokens:
        cost += usage.cache_read_tokens * per_read
    if usage.web_search_requests:
        cost += usage.web_search_requests * per_search
    return cost


MAX_PRICED_MODELS = 1024  # provider model ids whose rates a ledger keeps (a routing rule may pass callers' ids on)


class RowIds:
    """Usage row ids: a random 64-bit prefix per process and a counter. Unique without a syscall per request
    (uuid4 reads the OS's randomness each time), and a replayed row keeps the id it was made with."""

    def __init__(self) -> None:
        self._prefix = secrets.randbits(64) << 64
        self._next = itertools.count()

    def __call__(self) -> uuid.UUID:
        return uuid.UUID(int=self._prefix | next(self._next))


_COLUMN = {name: i for i, name in enumerate(db.USAGE_COLUMNS)}
_TOKEN_COLUMNS = [_COLUMN[c] for c in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")]


def _amounts(batch: list[tuple[Any, ...]]) -> Amounts:
    """Tokens and cost per (month, scope, id) in a batch of rows, as the usage view counts them."""
    totals: Amounts = {}
    at, key, user, cost = _COLUMN["created_at"], _COLUMN["key_id"], _COLUMN["user_id"], _COLUMN["cost_usd"]
    team = _COLUMN["team_id"]
    for row in batch:
        tokens = sum(row[i] for i in _TOKEN_COLUMNS)
        for scope in scopes(month_of(row[at]), row[key], row[user], row[team]):
            entry = totals.setdefault(scope, [Decimal(0), Decimal(0)])
            entry[0] += tokens
            entry[1] += row[cost] or 0
    return totals


class Ledger:
    """Batches usage rows off the request path; `record` never waits on the database."""

    def __init__(
        self,
        pool: asyncpg.Pool | None,
        price_for: Callable[[str], Price | None],
        view: MonthView,
        *,
        flush_interval_ms: int = 200,
        flush_rows: int = 500,
        max_queue_rows: int = 50_000,
        spill: SpillDir | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._new_id = RowIds()
        self._pool, self._view = pool, view
        self.price_for = price_for
        self._interval_s, self._flush_rows = flush_interval_ms / 1000, flush_rows
        self._max_queue, self._spill = max_queue_rows, spill
        self.spilled = 0
        self._rows: list[tuple[Any, ...]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        # Claimed spill file -> how many of its rows the view was told are stored: a replay done again after the
        # database went away mid-file must not subtract them from this process's usage a second time.
        self._replayed: dict[Path, int] = {}
        self.written = 0

    @property
    def price_for(self) -> Callable[[str], Price | None]:
        """Model id -> its price; set again at a config reload."""
        return self._price_for

    @price_for.setter
    def price_for(self, price_for: Callable[[str], Price | None]) -> None:
        self._price_for = price_for
        self._rates: dict[str, PerToken | None] = {}  # model id -> its rates, computed once per config

    def _rates_of(self, model: str) -> PerToken | None:
        """The model's `per_token` rates, cached: a price lookup and six Decimal divisions per request were not free."""
        if model in self._rates:
            return self._rates[model]
        price = self._price_for(model)
        found = per_token(price) if price is not None else None
        if len(self._rates) < MAX_PRICED_MODELS:
            self._rates[model] = found
        return found

    @property
    def pending(self) -> int:
        return len(self._rows)

    def record(self, ex: Exchange, status: int) -> None:
        """Queue one usage row for a request that reached the routing stage."""
        assert ex.target is not None and ex.principal is not None
        now_ns = time.perf_counter_ns()
        ttfb_ms = (ex.first_byte_ns - ex.started_ns) / 1e6 if ex.first_byte_ns else None
        u, who, when = ex.usage, ex.principal, self._view.clock()
        rates = self._rates_of(ex.target.provider_model)
        cost = cost_at(rates, u) if rates is not None else None
        self._view.recorded(when, who.key_id, who.user_id, u.total, cost, who.team_id)
        self._rows.append(
            (
                self._new_id(),
                when,
                ex.request_id,
                who.key_id,
                who.user_id,
                ex.route,
                ex.target.alias.name,
                ex.target.provider.name,
                ex.target.provider_model,
                status,
                u.input_tokens,
                u.output_tokens,
                u.cache_read_tokens,
                u.cache_write_tokens,
                cost,
                (now_ns - ex.started_ns) / 1e6,
                ttfb_ms,
                ex.streamed,
                u.cache_write_5m_tokens,
                u.cache_write_1h_tokens,
                u.web_search_requests,
                u.estimated,
                who.team_id,  # the user's team now: a later move takes none of this row along
            )
        )
        self._observe(ex, u, cost, ttfb_ms)
        if len(self._rows) >= self._flush_rows:
            self._wake.set()

    def _observe(self, ex: Exchange, u: Usage, cost: Decimal | None, ttfb_ms: float | None) -> None:
        assert ex.target is not None
        m = self._metrics
        alias = m.model_label(ex.target.alias.name)  # configured names only, else "other": bounded series
        if u.input_tokens:  # one `if` per kind: a loop over a tuple of pairs built each request cost more
            m.tokens.inc((alias, "input"), u.input_tokens)
        if u.output_tokens:
            m.tokens.inc((alias, "output"), u.output_tokens)
        if u.cache_read_tokens:
            m.tokens.inc((alias, "cache_read"), u.cache_read_tokens)
        if u.cache_write_tokens:
            m.tokens.inc((alias, "cache_write"), u.cache_write_tokens)
        if cost:
            m.cost.inc((alias,), float(cost))
        if ttfb_ms is not None:
            m.ttfb.observe((ex.route,), ttfb_ms / 1000)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-log-flusher")

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # the flusher must outlive any one bad flush; the rows stay queued or on disk
                log.exception("usage_flusher_error")

    async def flush(self) -> int:
        """Write every queued row now; returns how many were written (0 when the database refused)."""
        async with self._flush_lock:
            if self._pool is None:
                return 0
            if not self._rows:
                await self._replay_spilled()
                return 0
            batch, self._rows = self._rows, []
            started = time.perf_counter()
            try:
                await db.insert_usage(self._pool, batch)
            except db.UNAVAILABLE as exc:
                log.error("usage_flush_failed", rows=len(batch), error=str(exc))
                self._keep(batch)
                return 0
            except Exception:  # any row the driver or the database refuses: isolate it
                return await self._store_one_by_one(batch)
            self._view.stored(_amounts(batch))
            self.written += len(batch)
            self._metrics.usage_flush.observe((), time.perf_counter() - started)
            await self._replay_spilled()
            return len(batch)

    def _keep(self, batch: list[tuple[Any, ...]]) -> None:
        """Rows a flush could not store go to the local journal at once (one fsync per failed flush), so a
        crash during a database outage loses at most the rows recorded since the last flush. Only when the
        journal cannot be written do they wait in memory, up to `max_queue_rows` (beyond, the oldest are lost,
        and logged)."""
        if self._spill is not None:
            try:
                path = self._spill.append(batch)
            except OSError as exc:
                log.error("usage_spill_failed", rows=len(batch), error=str(exc))
            else:
                self.spilled += len(batch)
                self._metrics.usage_spilled.inc((), len(batch))
                log.warning("usage_spilled", rows=len(batch), file=str(path))
                return
        self._rows[:0] = batch
        if (excess := len(self._rows) - self._max_queue) > 0:
            del self._rows[:excess]
            log.error("usage_rows_lost", rows=excess, reason="database and spill directory both unavailable")

    async def _store_one_by_one(self, batch: list[tuple[Any, ...]]) -> int:
        """A batch that failed for a reason other than an outage: one bad row must not take the others down."""
        assert self._pool is not None
        stored: list[tuple[Any, ...]] = []
        for i, row in enumerate(batch):
            try:
                await db.insert_usage(self._pool, [row])
            except db.UNAVAILABLE:
                self._keep(batch[i:])
                break
            except Exception as exc:  # this row alone is refused
                self._set_aside([row], exc)
            else:
                stored.append(row)
        self._view.stored(_amounts(stored))
        self.written += len(stored)
        return len(stored)

    def _set_aside(self, batch: list[tuple[Any, ...]], exc: Exception, *, counted: bool = True) -> None:
        # The view stops counting a row the database will never hold: it must not keep its key at 429.
        with contextlib.suppress(TypeError, ValueError):  # a row too broken to sum was never counted right
            if counted:  # a dead worker's spilled row was never counted by this process
                self._view.dropped(_amounts(batch))
        if self._spill is None:
            log.error("usage_rows_rejected", rows=len(batch), error=repr(exc))
            return
        path = self._spill.append(batch, name=f"usage-rejected-{self._spill.pid}.jsonl")
        log.error("usage_rows_rejected", rows=len(batch), error=repr(exc), kept_in=str(path))

    async def _replay_spilled(self) -> None:
        """The database answers again: store what was spilled (ours and any dead worker's), then delete it."""
        if self._spill is None or self._pool is None or not self._spill.has_work():
            return
        if not await db.ping(self._pool):  # still away: leave the files unclaimed for any process to replay
            return
        for path, ours in self._spill.claim():
            rows, unreadable = self._spill.split(path)
            counted = self._replayed.get(path, 0)  # rows an interrupted replay of this file already told the view
            for start in range(0, len(rows), self._flush_rows):
                chunk = rows[start : start + self._flush_rows]
                if not await self._replay(chunk, ours=ours and start >= counted):
                    return  # still away: the claimed file stays ours and is replayed on a later flush
                self._replayed[path] = max(counted, start + len(chunk))
            self._replayed.pop(path, None)
            if unreadable:  # kept for an operator, once, as the file they came from goes
                kept = self._spill.append_raw(unreadable, name=f"usage-unreadable-{self._spill.pid}.jsonl")
                log.error("usage_spill_lines_unreadable", lines=len(unreadable), file=str(path), kept_in=str(kept))
            path.unlink()
            log.info("usage_spill_replayed", rows=len(rows), file=str(path))

    async def _replay(self, chunk: list[tuple[Any, ...]], *, ours: bool) -> bool:
        """Store spilled rows (ids already stored are skipped); False when the database is away again.

        A row the database refuses (its key deleted since, say) is set aside alone, as in a flush.
        """
        assert self._pool is not None
        try:
            await db.insert_usage(self._pool, chunk)
        except db.UNAVAILABLE:
            return False
        except Exception:  # one refused row: store the others one by one
            stored = []
            for row in chunk:
                try:
                    await db.insert_usage(self._pool, [row])
                except db.UNAVAILABLE:
                    return False
                except Exception as exc:
                    self._set_aside([row], exc, counted=ours)
                else:
                    stored.append(row)
            chunk = stored
        if ours:
            self._view.stored(_amounts(chunk))
        return True

    async def close(self) -> None:
        """Stop the flusher and write what is left (called on shutdown); if the database is away, spill it."""
        if self._task is not None:
            async with self._flush_lock:  # never cancel the flusher halfway through a write: its batch would be lost
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(*db.UNAVAILABLE):
            await self.flush()
        if self._rows and self._spill is not None:
            path = self._spill.append(self._rows)
            log.warning("usage_spilled_at_shutdown", rows=len(self._rows), file=str(path))
            self.spilled += len(self._rows)
            self._rows = []
