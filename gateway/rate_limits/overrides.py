"""Per-key and per-user rate limits from the management API, held in memory and re-read every few seconds.

The table (sql/010) is small, one row per key or user given its own limits, so each process reads it
whole every `rate_limits.overrides_refresh_s`; the process that answers the PUT or DELETE applies it at once,
the others within that interval. A NULL field falls back to gateway.yaml's default for the scope.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from gateway import db
from gateway.config import RateLimit

log = structlog.get_logger("gateway.rate_limits")

FIELDS = ("requests_per_minute", "tokens_per_minute", "in_flight")


@dataclass(frozen=True, slots=True)
class Override:
    """One scope's own limits; None: the configured default for that kind."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    in_flight: int | None = None

    def over(self, default: RateLimit) -> RateLimit:
        given = {name: value for name in FIELDS if (value := getattr(self, name)) is not None}
        return default.model_copy(update=given) if given else default


class RateLimitOverrides:
    """`(scope, scope_id) -> Override`, e.g. `("key", "42")` or `("user", "<uuid>")`."""

    def __init__(self, pool: asyncpg.Pool, refresh_s: float) -> None:
        self._pool, self._refresh_s = pool, refresh_s
        self.by_scope: dict[tuple[str, str], Override] = {}
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        rows = await self._pool.fetch(f"SELECT scope, scope_id, {', '.join(FIELDS)} FROM rate_limit_overrides")
        self.by_scope = {(r["scope"], r["scope_id"]): Override(*(r[f] for f in FIELDS)) for r in rows}

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep_fresh())

    async def _keep_fresh(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.refresh()
            except db.UNAVAILABLE_OR_FAILED as exc:  # keep the last known overrides
                log.warning("rate_limit_overrides_refresh_failed", error=str(exc))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def put(self, scope: str, scope_id: str, override: Override) -> None:
        await self._pool.execute(
            f"INSERT INTO rate_limit_overrides (scope, scope_id, {', '.join(FIELDS)}) VALUES ($1, $2, $3, $4, $5)"
            " ON CONFLICT (scope, scope_id) DO UPDATE SET requests_per_minute = EXCLUDED.requests_per_minute,"
            " tokens_per_minute = EXCLUDED.tokens_per_minute, in_flight = EXCLUDED.in_flight, updated_at = now()",
            scope,
            scope_id,
            *(getattr(override, f) for f in FIELDS),
        )
        self.by_scope[(scope, scope_id)] = override

    async def delete(self, scope: str, scope_id: str) -> bool:
        status: str = await self._pool.execute(
            "DELETE FROM rate_limit_overrides WHERE scope = $1 AND scope_id = $2", scope, scope_id
        )
        self.by_scope.pop((scope, scope_id), None)
        return status.endswith(" 1")

    async def listing(self) -> list[dict[str, Any]]:
        rows = await self._pool.fetch(
            f"SELECT scope, scope_id, {', '.join(FIELDS)}, updated_at FROM rate_limit_overrides ORDER BY 1, 2"
        )
        return [dict(r) for r in rows]
