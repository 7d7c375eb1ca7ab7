"""The console's pages (GET): overview, users, a user, keys, audit log, config, and a user's own page.

Usage figures come from the daily rollups (usage_daily) and the month counters, never from a scan of usage_log;
only a user's recent requests read usage_log, by index, 20 rows.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import aiohttp_jinja2
import asyncpg
from aiohttp import web

from gateway import db
from gateway.accounting.month_view import month_of
from gateway.app_keys import RUNTIME
from gateway.composition import SERVICES, Services
from gateway.config import GatewayConfig
from gateway.console import charts
from gateway.console.session import Visitor
from gateway.keys import lookup_id_of
from gateway.roles import Role

PAGE_SIZE = 25
MAX_PAGE = 100_000


def _ctx(request: web.Request) -> tuple[GatewayConfig, Services, date]:
    svc = request.config_dict[SERVICES]
    return request.config_dict[RUNTIME].config, svc, month_of(svc.month_view.clock())


def next_month(month: date) -> date:
    return (month + timedelta(days=32)).replace(day=1)


def month_days(month: date, today: date) -> list[date]:
    """Every day of `month` up to `today` (all of it for a past month)."""
    last = min(today, next_month(month) - timedelta(days=1))
    return [month + timedelta(days=i) for i in range((last - month).days + 1)]


def _fill_days(rows: list[dict[str, Any]], days: list[date]) -> list[dict[str, Any]]:
    """One row per day, zeros where the rollup has none (a chart's x axis without holes)."""
    by_day = {r["day"]: r for r in rows}
    zero = {"requests": 0, "errors": 0, "tokens": 0, "cost_usd": Decimal(0), "unpriced": 0, "estimated": 0}
    return [by_day.get(d, {**zero, "day": d}) for d in days]


def _limits(cfg: GatewayConfig) -> dict[str, Any]:
    return {
        "default_tokens": cfg.budgets.monthly_token_limit,
        "default_usd": Decimal(str(cfg.budgets.monthly_limit_usd)),
    }


def _page_number(request: web.Request) -> int:
    value = request.query.get("page", "1")
    # The length first: int() refuses strings over 4300 digits with a ValueError (a 500 otherwise).
    if not (value.isascii() and value.isdigit() and len(value) <= len(str(MAX_PAGE)) and 1 <= int(value) <= MAX_PAGE):
        raise web.HTTPBadRequest(text=f"'page' must be a whole number from 1 to {MAX_PAGE}")
    return int(value)


SUMS = ("requests", "errors", "tokens", "cost_usd", "unpriced", "estimated")
CLOSED_DAYS_TTL_S = 60.0


class ClosedDays:
    """The overview's breakdown of this month's days before today, kept for CLOSED_DAYS_TTL_S.

    Days before today no longer change (only a replayed spill file can still add to them, and that shows within
    the TTL), so an overview reads only today's rollup rows: on 10 M usage rows that is a few ms instead of
    summing a month of rollups on every page (about 100-250 ms on this machine under load).
    """

    def __init__(self, ttl_s: float = CLOSED_DAYS_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s, self._clock = ttl_s, clock
        self._key: tuple[date, date] | None = None
        self._rows: list[dict[str, Any]] = []
        self._read_at = 0.0

    async def rows(self, pool: asyncpg.Pool, month: date, today: date) -> list[dict[str, Any]]:
        """Rollup sums per (day, route, provider_model) for month <= day < today."""
        if self._key != (month, today) or self._clock() - self._read_at > self._ttl_s:
            self._rows = await db.usage_breakdown(pool, month, max(month, today)) if today > month else []
            self._key, self._read_at = (month, today), self._clock()
        return self._rows


CLOSED_DAYS = web.AppKey("console_closed_days", ClosedDays)


def sum_by(rows: list[dict[str, Any]], key: str | None, label: str = "name") -> list[dict[str, Any]]:
    """Add up rollup rows per value of `key` (all into one when None), in first-seen order; the value goes in `label`.

    >>> sum_by([{"route": "messages", **dict.fromkeys(SUMS, 1)}] * 2, "route")[0]["requests"]
    2
    """
    out: dict[Any, dict[str, Any]] = {}
    for r in rows:
        value = r[key] if key else None
        if (acc := out.get(value)) is None:
            acc = out[value] = {label: value, **dict.fromkeys(SUMS, 0)}
        for name in SUMS:
            acc[name] += r[name]
    return list(out.values())


def _costliest_first(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (-r["cost_usd"], str(r["name"])))


async def overview(request: web.Request, who: Visitor) -> web.StreamResponse:
    """This month: totals, spend per day, per model and route, top users, users near limits, errors and latency."""
    cfg, svc, month = _ctx(request)
    today = svc.month_view.clock().date()
    start, end = month, next_month(month)
    closed = await request.config_dict[CLOSED_DAYS].rows(svc.pool, month, today)
    breakdown = closed + await db.usage_breakdown(svc.pool, max(today, start), end)
    daily = _fill_days(sum_by(breakdown, "day", label="day"), month_days(month, today))
    latency = await db.latency_by_day(svc.pool, start, end)
    health = [
        {
            **r,
            "error_rate": r["errors"] / r["requests"] if r["requests"] else None,
            "p50": charts.percentile_ms(latency[r["day"]], 0.5) if r["day"] in latency else None,
            "p95": charts.percentile_ms(latency[r["day"]], 0.95) if r["day"] in latency else None,
        }
        for r in reversed(daily)
        if r["requests"]
    ]
    totals = sum_by(breakdown, None) or [dict.fromkeys(SUMS, 0)]
    context = {
        "who": who,
        "month": month,
        "totals": totals[0],
        "spend_chart": charts.spend_per_day(daily, f"Spend per day, {month:%B %Y} (USD)"),
        "by_model": _costliest_first(sum_by(breakdown, "provider_model")),
        "by_route": _costliest_first(sum_by(breakdown, "route")),
        "top_users": await db.top_users(svc.pool, month, **_limits(cfg)),
        "near_limit": await db.users_near_limit(svc.pool, month, **_limits(cfg)),
        "health": health,
    }
    return aiohttp_jinja2.render_template("overview.html", request, context)


async def users(request: web.Request, who: Visitor) -> web.StreamResponse:
    """Users with this month's usage; ?q= searches email and name, ?page= pages."""
    cfg, svc, month = _ctx(request)
    search = request.query.get("q", "").strip()[:200].replace("\x00", "")
    if any(lookup_id_of(word) for word in search.split()):  # pasted to find its owner: never echo a secret
        raise web.HTTPBadRequest(
            text="That is a gateway key, a secret: it is neither searched nor shown. Search by the owner's email"
            " or name; if the key was shared, regenerate it."
        )
    number = _page_number(request)
    team = who.actor.team_id if who.actor.role is Role.TEAM_ADMIN else None  # a team_admin sees its own team
    rows, total = await db.find_users(
        svc.pool, month, search=search, limit=PAGE_SIZE, offset=(number - 1) * PAGE_SIZE, team_id=team, **_limits(cfg)
    )
    pages = max(1, -(-total // PAGE_SIZE))
    context = {"who": who, "rows": rows, "total": total, "q": search, "page": number, "pages": pages, "month": month}
    return aiohttp_jinja2.render_template("users.html", request, context)


def user_id_of(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["id"])
    except ValueError:
        raise web.HTTPNotFound(text="no such user") from None


async def user(request: web.Request, who: Visitor) -> web.StreamResponse:
    """One user: month figures and limits, daily usage per model, recent requests, audit trail, actions."""
    cfg, svc, month = _ctx(request)
    user_id = user_id_of(request)
    found = await db.get_user(svc.pool, user_id)
    if found is None:
        raise web.HTTPNotFound(text="no such user")
    if not who.actor.reads_team(found.team_id):
        raise web.HTTPForbidden(text="a team admin sees the users of their own team only")
    context = {"who": who, "user": found, **await user_usage(svc, cfg, month, found)}
    context["recent"] = await db.recent_usage(svc.pool, user_id)
    context["audit"], _ = await db.audit_page(svc.pool, user_id=user_id, limit=50)
    return aiohttp_jinja2.render_template("user.html", request, context)


async def user_usage(svc: Services, cfg: GatewayConfig, month: date, found: db.UserRow) -> dict[str, Any]:
    """A user's month: counters against limits, and the chart and table of daily tokens per model."""
    today = svc.month_view.clock().date()
    days = month_days(month, today)
    counter = await db.month_counter(svc.pool, month, "user", str(found.id))
    key = await db.user_live_key(svc.pool, found.id)
    key_counter = await db.month_counter(svc.pool, month, "key", str(key.id)) if key else None
    by_model = await db.usage_by(svc.pool, "provider_model", month, next_month(month), user_id=found.id, by_day=True)
    default_usd = Decimal(str(cfg.budgets.monthly_limit_usd))
    return {
        "month": month,
        "counter": counter,
        "limit_tokens": found.limit_tokens if found.limit_tokens is not None else cfg.budgets.monthly_token_limit,
        "key": key,
        "key_cost": key_counter["cost_usd"] if key_counter else Decimal(0),
        "limit_usd": key.monthly_limit_usd if key and key.monthly_limit_usd is not None else default_usd,
        "daily_rows": list(reversed(by_model)),
        "chart": charts.tokens_per_day_by_model(by_model, days, f"Tokens per day by model, {month:%B %Y}"),
    }


async def keys(request: web.Request, who: Visitor) -> web.StreamResponse:
    """Gateway keys that belong to no user: admin and service keys."""
    _, svc, _ = _ctx(request)
    context = {"who": who, "keys": await db.service_keys(svc.pool)}
    return aiohttp_jinja2.render_template("keys.html", request, context)


async def audit(request: web.Request, who: Visitor) -> web.StreamResponse:
    """Every management action, newest first: what, on whom, by which key, why."""
    _, svc, _ = _ctx(request)
    number = _page_number(request)
    rows, total = await db.audit_page(svc.pool, limit=PAGE_SIZE * 2, offset=(number - 1) * PAGE_SIZE * 2)
    pages = max(1, -(-total // (PAGE_SIZE * 2)))
    context = {"who": who, "rows": rows, "total": total, "page": number, "pages": pages}
    return aiohttp_jinja2.render_template("audit.html", request, context)


async def config(request: web.Request, who: Visitor) -> web.StreamResponse:
    """The configuration in force (read-only): aliases, routing rules, prices, budgets, when it was loaded."""
    runtime = request.config_dict[RUNTIME]
    cfg = runtime.config
    context = {"who": who, "cfg": cfg, "loaded_at": runtime.loaded_at, "unpriced": cfg.unpriced_models()}
    return aiohttp_jinja2.render_template("config.html", request, context)


async def me(request: web.Request, who: Visitor) -> web.StreamResponse:
    """A caller's own month: usage against their limits and their daily usage per model."""
    cfg, svc, month = _ctx(request)
    context: dict[str, Any] = {"who": who, "month": month}
    found = await db.get_user(svc.pool, who.user_id) if who.user_id else None
    if found is not None:
        context |= {"user": found, **await user_usage(svc, cfg, month, found)}
    else:  # an admin or service key: its own usage
        today = svc.month_view.clock().date()
        rows = await db.key_usage_by_day(svc.pool, who.key_id, month, next_month(month))
        counter = await db.month_counter(svc.pool, month, "key", str(who.key_id))
        context |= {
            "user": None,
            "counter": counter,
            "daily_rows": list(reversed(rows)),
            "chart": charts.tokens_per_day_by_model(rows, month_days(month, today), f"Tokens per day, {month:%B %Y}"),
        }
    return aiohttp_jinja2.render_template("me.html", request, context)


async def teams(request: web.Request, who: Visitor) -> web.StreamResponse:
    """Teams with their limits, members and this month's usage made there (a team_admin: its own team)."""
    _, svc, month = _ctx(request)
    own = who.actor.team_id if who.actor.role is Role.TEAM_ADMIN else None
    rows = await db.teams_month_usage(svc.pool, month, team_id=own)
    for row in rows:
        row["by_user"] = await db.team_usage_by_user(svc.pool, row["id"], month, next_month(month))
    return aiohttp_jinja2.render_template("teams.html", request, {"who": who, "month": month, "teams": rows})
