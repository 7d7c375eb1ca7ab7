"""Stage 5: one usage row for every billable request that reached the relay, whatever happened to it."""

from __future__ import annotations

import asyncio

from gateway.accounting.ledger import Ledger
from gateway.errors import GatewayError
from gateway.pipeline import Exchange, Next


class LogUsage:
    """Queue the request's usage row after the relay finished, failed or was cancelled."""

    def __init__(self, usage_log: Ledger) -> None:
        self._log = usage_log

    async def __call__(self, ex: Exchange, call_next: Next) -> None:
        status = 500
        try:
            await call_next(ex)
            status = ex.status
        except GatewayError as err:
            status = err.status_for(ex.dialect)
            raise
        except asyncio.CancelledError:  # the caller left
            status = ex.status_when_cancelled()
            raise
        finally:
            if ex.billable:
                self._log.record(ex, status)
