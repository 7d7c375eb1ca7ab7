"""Findings: what was found where, written to the dlp_findings table off the request path (never the value)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

import asyncpg
import structlog

from gateway import db

log = structlog.get_logger("gateway.dlp")
MAX_LOCATION = 200  # a location may name keys of a tool call's input, which the caller chose


@dataclass(frozen=True, slots=True)
class Finding:
    """One detector's values in one place of a request: `occurrences` of them, handled by `action`."""

    detector: str
    action: str
    location: str
    occurrences: int = 1


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """Who sent the request the findings come from."""

    request_id: str
    key_id: int | None
    user_id: UUID | None
    route: str
    alias: str


class FindingsLog:
    """One INSERT per request that had findings, in a task of its own; `flush()` waits for those in flight."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._pending: set[asyncio.Task[None]] = set()

    def record(self, facts: RequestFacts, findings: list[Finding]) -> None:
        rows = [
            (
                facts.request_id,
                facts.key_id,
                facts.user_id,
                facts.route,
                facts.alias[:256].replace("\x00", "\ufffd"),  # the caller's model id, not yet checked by route
                f.detector,
                f.action,
                f.location[:MAX_LOCATION],
                f.occurrences,
            )
            for f in findings
        ]
        task = asyncio.create_task(self._write(rows, facts, sorted({f.detector for f in findings})))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def flush(self) -> None:
        await asyncio.gather(*self._pending, return_exceptions=True)

    async def _write(self, rows: Sequence[Sequence[object]], facts: RequestFacts, detectors: list[str]) -> None:
        try:
            await db.insert_dlp_findings(self._pool, rows)
        except db.UNAVAILABLE_OR_FAILED as exc:
            # The request went on (redacted or recorded); the log line keeps the finding without its value.
            log.warning(
                "dlp_findings_not_stored",
                request_id=facts.request_id,
                detectors=detectors,
                error=repr(exc),
            )
