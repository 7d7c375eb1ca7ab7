"""Stage 3: refuse a request before any upstream token is spent once its monthly budget is used up.

Two limits, as the original design had them: a monthly token limit per user (`limitToken`) and a monthly
USD limit per gateway key (`monthlyLimitUsd`). Usage comes from the in-process UsageView, never a query.
"""

from __future__ import annotations

from decimal import Decimal

from gateway.budgets import UsageView
from gateway.config import BudgetConfig
from gateway.errors import BudgetExceeded
from gateway.keys import Principal
from gateway.metrics import Metrics
from gateway.pipeline import Exchange, Next


class CheckBudget:
    """Refuse with 429 (in the caller's dialect, with the usage figures) once a monthly limit is reached."""

    def __init__(self, usage: UsageView, budgets: BudgetConfig, metrics: Metrics | None = None) -> None:
        self._usage, self._enforce, self._metrics = usage, budgets.enforce, metrics or Metrics()
        self._default_tokens = budgets.monthly_token_limit
        self._default_usd = Decimal(str(budgets.monthly_limit_usd))

    async def __call__(self, ex: Exchange, call_next: Next) -> None:
        if self._enforce and ex.billable:
            assert ex.principal is not None
            try:
                self.check(ex.principal)
            except BudgetExceeded as refused:
                self._metrics.budget_rejections.inc((refused.code,))
                raise
        await call_next(ex)

    def check(self, who: Principal) -> None:
        if who.user_id is not None:
            limit = who.token_limit if who.token_limit is not None else self._default_tokens
            used = self._usage.tokens_used(who.user_id)
            if used >= limit:
                raise BudgetExceeded(
                    f"Monthly token limit exceeded ({used} / {limit} tokens)",
                    code="monthly_token_limit",
                    extra={"tokensUsed": used, "tokenLimit": limit},
                )
        limit_usd = who.usd_limit if who.usd_limit is not None else self._default_usd
        cost = self._usage.cost_used(who.key_id)
        if cost >= limit_usd:
            raise BudgetExceeded(
                f"Monthly budget exceeded ({cost:.2f} / {limit_usd:.2f} USD)",
                code="monthly_budget_limit",
                extra={"costUsedUsd": float(round(cost, 6)), "costLimitUsd": float(limit_usd)},
            )
