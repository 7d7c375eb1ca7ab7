"""Stage 3: refuse a request before any upstream token is spent once its monthly budget is used up.

Two limits, as the original design had them: a monthly token limit per user (`limitToken`) and a monthly
USD limit per gateway key (`monthlyLimitUsd`); and, for a user in a team, the team's monthly token and USD limits
(issue 21), checked beside them so that the tighter one refuses. Usage comes from the in-process MonthView,
never a query.

A request admitted reserves what it may cost (input estimated from the body's size, plus its max_tokens, at
its model's price) until its usage row is recorded, and is admitted only while the month's usage plus the
reservations of the requests already in flight is under the limit: forty concurrent requests no longer all
pass a check that none of them has yet moved (see the README's *Budgets* section for the bound).
"""

from __future__ import annotations

import fnmatch
import math
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from gateway.accounting.month_view import Amounts, MonthView
from gateway.config import BudgetConfig, GatewayConfig, ModelAlias, Price
from gateway.dialects.thinking import NO_THINKING_EFFORTS, effort_budget
from gateway.errors import BudgetExceeded
from gateway.keys import Principal
from gateway.metrics import Metrics
from gateway.pipeline import MAX_COUNT, Exchange, Next

BYTES_PER_INPUT_TOKEN = 4  # a request body's JSON bytes per input token; over-reserves prose, fits code/JSON
DEFAULT_MAX_OUTPUT = 4096  # reserved for a body that names no output limit
_MAX_OUTPUT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")  # Messages, Chat, Responses
_MILLION = Decimal(1_000_000)
_NUMBER = (int, float)  # a tuple: `int | float` in the loop built a union object per field and request

PriceOf = Callable[[str], Price | None]
AliasOf = Callable[[str], ModelAlias | None]


def alias_of_requested(cfg: GatewayConfig) -> AliasOf:
    """The alias a requested model id will be routed to (by name, then routing rule); None for a pass-through id.

    Budget runs before routing, so it resolves the id the way the route stage does, for the price and limits only.
    """
    rules = [(rule.match, rule.alias) for rule in cfg.routing.rules]

    def alias_of(requested: str) -> ModelAlias | None:
        if (alias := cfg.models.get(requested)) is not None:
            return alias
        name = next((a for pattern, a in rules if fnmatch.fnmatchcase(requested, pattern)), cfg.routing.default)
        return cfg.models.get(name or "")

    return alias_of


def price_of_requested(cfg: GatewayConfig) -> PriceOf:
    """The price of what a requested model id will be routed to (alias, routing rule, then the id itself)."""
    alias_of = alias_of_requested(cfg)

    def price_of(requested: str) -> Price | None:
        alias = alias_of(requested)
        return cfg.price_for(alias.model if alias is not None else requested)

    return price_of


Rates = tuple[Decimal, Decimal]  # USD per input token, per output token
MAX_PLANNED_IDS = 1024  # requested model ids whose alias and rates a budget stage keeps (ids come from callers)


def rates_of(price: Price | None) -> Rates | None:
    """A price's input and output rates as exact decimals per token; None for an unpriced model."""
    if price is None:
        return None
    return Decimal(str(price.input)) / _MILLION, Decimal(str(price.output)) / _MILLION


def reservation(ex: Exchange, rates: Rates | None, alias: ModelAlias | None = None) -> tuple[int, Decimal]:
    """(tokens, USD) a request may cost: input from the body's size, plus the output limit it asks for."""
    input_tokens = len(ex.raw_body) // BYTES_PER_INPUT_TOKEN
    output_tokens = output_limit(ex.body, alias)
    if rates is None:
        return input_tokens + output_tokens, Decimal(0)
    return input_tokens + output_tokens, input_tokens * rates[0] + output_tokens * rates[1]


def output_limit(body: dict[str, Any], alias: ModelAlias | None = None) -> int:
    """The most output tokens a body may ask for: the largest of its limit fields, else the alias's default.

    The largest, not the first: a Chat body with `max_tokens: 1` and `max_completion_tokens: 64000` is sent
    upstream with the latter. A float counts too (a lenient upstream takes 64000.0 as 64000); at most MAX_COUNT.
    An OpenAI-dialect body without a limit is sent with the alias's `default_max_tokens`, and one with a
    reasoning effort with at least its thinking budget plus that default (gateway/dialects/chat/request.py).
    """
    limits = [
        min(math.ceil(v), MAX_COUNT)
        for f in _MAX_OUTPUT_FIELDS
        if isinstance(v := body.get(f), _NUMBER) and not isinstance(v, bool) and 0 < v < math.inf
    ]
    default = max(DEFAULT_MAX_OUTPUT, alias.default_max_tokens) if alias is not None else DEFAULT_MAX_OUTPUT
    limit = max(limits, default=default)
    if alias is not None and alias.thinking_budgets and (effort := _effort(body)) is not None:
        budget = effort_budget(effort, alias.thinking_budgets) or max(alias.thinking_budgets.values())
        limit = max(limit, budget + alias.default_max_tokens)
    return limit


def _effort(body: dict[str, Any]) -> str | None:
    """The reasoning effort a Chat (`reasoning_effort`) or Responses (`reasoning.effort`) body asks for."""
    reasoning = body.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else body.get("reasoning_effort")
    return effort if isinstance(effort, str) and effort not in NO_THINKING_EFFORTS else None


class CheckBudget:
    """Refuse with 429 (in the caller's dialect, with the usage figures) once a monthly limit is reached."""

    def __init__(
        self,
        usage: MonthView,
        budgets: BudgetConfig,
        metrics: Metrics | None = None,
        price_of: PriceOf | None = None,
        alias_of: AliasOf | None = None,
    ) -> None:
        self._usage, self._enforce, self._metrics = usage, budgets.enforce, metrics or Metrics()
        self._default_tokens = budgets.monthly_token_limit
        self._default_usd = Decimal(str(budgets.monthly_limit_usd))
        self._price_of: PriceOf = price_of or (lambda model: None)
        self._alias_of: AliasOf = alias_of or (lambda model: None)
        self._max_in_flight = budgets.max_in_flight_per_user
        self._in_flight: Counter[Any] = Counter()  # user id (or key id for a key without a user) -> requests
        # requested id -> (its alias, its rates): resolved once per config, not per request (fnmatch, Decimal)
        self._plans: dict[str, tuple[ModelAlias | None, Rates | None]] = {}

    async def __call__(self, ex: Exchange, call_next: Next) -> None:
        if not (self._enforce and ex.billable):
            await call_next(ex)
            return
        who = ex.principal
        assert who is not None
        try:
            self.check(who)
        except BudgetExceeded as refused:
            self._metrics.budget_rejections.inc((refused.code,))
            raise
        alias, rates = self._plan(ex.alias_name)
        tokens, cost = reservation(ex, rates, alias)
        held: Amounts = self._usage.reserve(who.key_id, who.user_id, tokens, cost, who.team_id)
        owner = who.user_id or who.key_id
        self._in_flight[owner] += 1
        try:
            await call_next(ex)  # the usage log (inner) records the real usage before the hold is released
        finally:
            self._usage.release(held)
            self._in_flight[owner] -= 1
            if not self._in_flight[owner]:
                del self._in_flight[owner]

    def _plan(self, requested: str) -> tuple[ModelAlias | None, Rates | None]:
        """The alias and the rates a requested model id is reserved at (cached per id, bounded)."""
        if (plan := self._plans.get(requested)) is None:
            plan = self._alias_of(requested), rates_of(self._price_of(requested))
            if len(self._plans) < MAX_PLANNED_IDS:
                self._plans[requested] = plan
        return plan

    def check(self, who: Principal) -> None:
        """Raise BudgetExceeded unless usage plus the reservations already held is under both limits."""
        if self._max_in_flight is not None and self._in_flight[who.user_id or who.key_id] >= self._max_in_flight:
            raise BudgetExceeded(
                f"Too many requests in progress ({self._max_in_flight} at most per user); retry when one ends",
                code="max_in_flight_per_user",
                extra={"maxInFlight": self._max_in_flight},
            )
        if who.user_id is not None:
            limit = who.token_limit if who.token_limit is not None else self._default_tokens
            used, reserved = self._usage.tokens_used(who.user_id), self._usage.tokens_reserved(who.user_id)
            if used + reserved >= limit:
                raise BudgetExceeded(
                    f"Monthly token limit exceeded ({used} / {limit} tokens){_in_progress(reserved, 'tokens')}",
                    code="monthly_token_limit",
                    extra={"tokensUsed": used, "tokenLimit": limit},
                )
        limit_usd = who.usd_limit if who.usd_limit is not None else self._default_usd
        cost, held = self._usage.cost_used(who.key_id), self._usage.cost_reserved(who.key_id)
        if cost + held >= limit_usd:
            raise BudgetExceeded(
                f"Monthly budget exceeded ({cost:.2f} / {limit_usd:.2f} USD){_in_progress(round(held, 2), 'USD')}",
                code="monthly_budget_limit",
                extra={"costUsedUsd": float(round(cost, 6)), "costLimitUsd": float(limit_usd)},
            )
        if who.team_id is not None:
            self._check_team(who)

    def _check_team(self, who: Principal) -> None:
        """The team's limits, beside the user's and the key's: whichever is reached first refuses (the tighter).

        The 429 has the same fields as the user's and the key's, plus `scope: "team"` and the team's id; the team's
        figures are the usage rows made for it this month, by whoever was in it then.
        """
        assert who.team_id is not None
        (used, cost), (held_tokens, held_usd) = (
            self._usage.team_used(who.team_id),
            self._usage.team_reserved(who.team_id),
        )
        team = {"scope": "team", "teamId": who.team_id}
        if who.team_token_limit is not None and used + held_tokens >= who.team_token_limit:
            raise BudgetExceeded(
                f"Team monthly token limit exceeded ({used} / {who.team_token_limit} tokens)"
                f"{_in_progress(held_tokens, 'tokens')}",
                code="monthly_token_limit",
                extra={"tokensUsed": used, "tokenLimit": who.team_token_limit, **team},
            )
        if who.team_usd_limit is not None and cost + held_usd >= who.team_usd_limit:
            raise BudgetExceeded(
                f"Team monthly budget exceeded ({cost:.2f} / {who.team_usd_limit:.2f} USD)"
                f"{_in_progress(round(held_usd, 2), 'USD')}",
                code="monthly_budget_limit",
                extra={"costUsedUsd": float(round(cost, 6)), "costLimitUsd": float(who.team_usd_limit), **team},
            )


def _in_progress(reserved: object, unit: str) -> str:
    return f"; {reserved} {unit} more held by requests in progress" if reserved else ""
