"""Self-service: GET /v1/me, GET /v1/me/usage and POST /v1/me/regenerate, for any caller with their own key.

Role `user` (issue 21): every key may read its own figures; a user's key may regenerate itself.

Authenticated like a model request (`x-api-key` or `Authorization: Bearer`, or a registered Claude Code token);
errors come in the dialect the auth header suggests (Anthropic's with `x-api-key`, OpenAI's otherwise). Figures
come from the month counters and the daily rollups, never from a scan of the usage log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

from gateway import db
from gateway.accounting.month_view import month_of
from gateway.app_keys import RUNTIME
from gateway.composition import SERVICES
from gateway.edge import expect_after_auth
from gateway.error_shape import ErrorShape
from gateway.errors import BadRequest, Conflict, Forbidden, GatewayError, ServiceUnavailable, error_response
from gateway.keys import Principal, generate_key
from gateway.management_schemas import Days, read_query

MAX_RANGE_DAYS = 366


def _dialect(request: web.Request) -> ErrorShape:
    return ErrorShape.ANTHROPIC if "x-api-key" in request.headers else ErrorShape.OPENAI


def _json(body: Any, status: int = 200) -> web.Response:
    # One caller's figures: a cache in front must not hand them to the next caller (an `x-api-key` request is
    # not an `Authorization` one, which shared caches already leave alone).
    headers = {"Cache-Control": "private, no-store"}
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


async def _caller(request: web.Request) -> Principal:
    principal: Principal = await request.config_dict[RUNTIME].authenticate(request)  # gateway/authentication.py
    return principal


def _guarded(
    handler: Callable[[web.Request, Principal], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            try:
                return await handler(request, await _caller(request))
            except db.UNAVAILABLE:  # a known key (from the cache) but no counters to read: 503, not 500
                raise ServiceUnavailable("the gateway cannot reach its database; retry shortly") from None
        except GatewayError as err:  # in the shape the caller's SDK reads: Anthropic's with x-api-key
            return error_response(err, _dialect(request))

    return guarded


async def me(request: web.Request, who: Principal) -> web.Response:
    """GET /v1/me: who the key is, and this month's usage against its limits.

    {"keyId": "7f3a…", "name": "ada@example.com", "admin": false, "user": {"id", "email", "firstname", "lastname"},
     "month": "2026-11", "tokensUsed": 1200, "tokenLimit": 10000000, "costUsd": 0.42, "costLimitUsd": 100.0,
     "requests": 7}
    """
    svc, cfg = request.config_dict[SERVICES], request.config_dict[RUNTIME].config
    month = month_of(svc.month_view.clock())
    key_counter = await db.month_counter(svc.pool, month, "key", str(who.key_id))
    user = await db.get_user(svc.pool, who.user_id) if who.user_id else None
    counter = await db.month_counter(svc.pool, month, "user", str(who.user_id)) if user else key_counter
    token_limit = (who.token_limit or cfg.budgets.monthly_token_limit) if user else None
    usd_limit = who.usd_limit if who.usd_limit is not None else Decimal(str(cfg.budgets.monthly_limit_usd))
    return _json(
        {
            "keyId": who.lookup_id,
            "name": who.name,
            "admin": who.is_admin,
            "user": {"id": str(user.id), "email": user.email, "firstname": user.firstname, "lastname": user.lastname}
            if user
            else None,
            "month": month.isoformat()[:7],
            "tokensUsed": int(counter["tokens"]),
            "tokenLimit": token_limit,
            "costUsd": float(key_counter["cost_usd"]),
            "costLimitUsd": float(usd_limit),
            "requests": int(counter["requests"]),
        }
    )


async def usage(request: web.Request, who: Principal) -> web.Response:
    """GET /v1/me/usage?from=2026-11-01&to=2026-11-30: per UTC day and provider model, oldest first.

    `to` is inclusive; the default is this month so far; at most 366 days. Rows: {"date", "model", "requests",
    "totalTokens", "costUsd", "estimatedRequests"}. A user's usage spans their regenerated keys; a key without a
    user reports its own.
    """
    svc = request.config_dict[SERVICES]
    now = svc.month_view.clock()
    asked = read_query(request, Days)  # 400 in the caller's dialect for a bad date
    start, end = asked.start or month_of(now), asked.end or now.date()
    if start > end:
        raise BadRequest("'from' is after 'to'")
    if end == date.max:  # the day after it (the range's open end) does not exist: OverflowError, a 500
        raise BadRequest(f"'to' must be before {date.max.isoformat()}")
    if (end - start).days >= MAX_RANGE_DAYS:
        raise BadRequest(f"the range is longer than {MAX_RANGE_DAYS} days; ask for less")
    after = end + timedelta(days=1)
    if who.user_id is not None:
        rows = await db.usage_by(svc.pool, "provider_model", start, after, user_id=who.user_id, by_day=True)
    else:
        rows = await db.key_usage_by_day(svc.pool, who.key_id, start, after)
    days = [
        {
            "date": r["day"].isoformat(),
            "model": r["name"],
            "requests": int(r["requests"]),
            "totalTokens": int(r["tokens"]),
            "costUsd": float(r["cost_usd"]),
            "estimatedRequests": int(r["estimated"]),
        }
        for r in rows
    ]
    return _json({"from": start.isoformat(), "to": end.isoformat(), "days": days})


async def regenerate(request: web.Request, who: Principal) -> web.Response:
    """POST /v1/me/regenerate: a user's own key replaced by a new one, shown once; the old one stops at once here
    (within auth.cache_ttl_s elsewhere). Audited as `regenerated` by the key itself. 403 for a key of no user.

    {"apiKey": "gw-…", "keyId": "7f3a…", "user": {"id", "email"}}
    """
    if who.user_id is None or who.role is not None:
        raise Forbidden("only a user's own gateway key can regenerate itself; management keys are replaced by an admin")
    svc, cfg = request.config_dict[SERVICES], request.config_dict[RUNTIME].config
    fresh: list[str] = []

    async def new_key() -> tuple[str, str]:  # made while the user's row is locked: one regenerate at a time
        made = await asyncio.to_thread(generate_key, cfg.auth.bcrypt_rounds)
        fresh.append(made.plaintext)
        return made.lookup_id, made.key_hash

    try:
        done = await db.regenerate_user_key(
            svc.pool, who.user_id, new_key=new_key, reason="self-service", actor=who.actor
        )
    except db.Conflict as exc:
        raise Conflict(str(exc)) from None
    if done is None:
        raise Forbidden("this key's user no longer exists")
    user, key, old_key_id = done
    if old_key_id is not None:
        svc.key_cache.evict_key(old_key_id)
    svc.claudecode_tokens.evict_user(user.id)  # the mapping now leads to the new key
    if svc.sign_ins.callers is not None:  # and so do the caller JWTs remembered for the user
        svc.sign_ins.callers.evict_user(user.id)
    return _json({"apiKey": fresh[-1], "keyId": key.lookup_id, "user": {"id": str(user.id), "email": user.email}})


def add_routes(app: web.Application, mounted_at: str = "") -> None:
    """The /v1/me routes, on `app` mounted at `mounted_at` (the gateway's /v1 sub-application: "/v1")."""
    app.router.add_get("/v1/me".removeprefix(mounted_at), _guarded(me))
    app.router.add_get("/v1/me/usage".removeprefix(mounted_at), _guarded(usage))
    # No 100 Continue before authentication (the handler reads no body: its answer stands in for the 100).
    expect = expect_after_auth(ErrorShape.OPENAI)
    app.router.add_post("/v1/me/regenerate".removeprefix(mounted_at), _guarded(regenerate), expect_handler=expect)
