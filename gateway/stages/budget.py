"""Stage 3: refuse a request before any upstream token is spent once its monthly budget is used up.

Pass-through until the budgets issue lands: the interface (enforce flag, a 429 BudgetExceeded in the
caller's dialect) is fixed here so the pipeline's shape does not change when it does.
"""

from __future__ import annotations

from gateway.pipeline import Exchange, Next


class CheckBudget:
    """Refuse with 429 once a key's or user's month is used up (not enforced yet: every request passes)."""

    def __init__(self, *, enforce: bool) -> None:
        self._enforce = enforce

    async def __call__(self, ex: Exchange, call_next: Next) -> None:
        await call_next(ex)
