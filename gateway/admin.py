"""The management API's user endpoints (/v1/user-api-keys): users, their keys and the Claude Code mapping.

Which role may call each endpoint is declared in gateway/management.py's route table; a team_admin is limited
here to the users of its own team (403 for any other), and never raises a limit above its team's.

Field names are the original design's contract (camelCase). Errors are `{"error": "..."}`. Plaintext keys
appear only in the create and regenerate responses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from datetime import date
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from gateway import db
from gateway.accounting.month_view import month_of
from gateway.app_keys import RUNTIME, SERVICES
from gateway.composition import Services
from gateway.config import GatewayConfig
from gateway.errors import ManagementApiError
from gateway.keys import Principal, claudecode_hmac, generate_key
from gateway.management_schemas import (
    CreateUserRequest,
    DaysPage,
    DlpQuery,
    IncreaseTokenLimitRequest,
    RateLimitRequest,
    RegenerateRequest,
    body_of,
    query_of,
)
from gateway.rate_limits.overrides import Override
from gateway.roles import Actor, Role
from gateway.sso.people import actor_of, key_of, person_from_bearer, principal_of
from gateway.stages.auth import presented_credential


class AdminError(ManagementApiError):
    """A refused management API request: `AdminError(404, "no user with id 7")`, answered as {"error": "..."}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message, status=status)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _iso(value: date) -> str:
    return value.isoformat().replace("+00:00", "Z")


# --- path parameters (bodies and queries: gateway/management_schemas.py, parsed by the route's guard) -----


def _user_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["id"])
    except ValueError:
        raise AdminError(404, f"no user with id {request.match_info['id']!r}") from None


# --- handlers ----------------------------------------------------------------------------------------


async def _authenticate(request: web.Request) -> Principal:
    """A person's SSO token (gateway/sso/people.py), else a gateway key or Claude Code token
    (gateway/authentication.py)."""
    people = request.config_dict[SERVICES].sign_ins.people
    if (person := await person_from_bearer(people, presented_credential(request.headers))) is not None:
        return await principal_of(request.config_dict[SERVICES].pool, person)
    return await request.config_dict[RUNTIME].authenticate(request)  # gateway/authentication.py


async def authenticate_actor(request: web.Request) -> Actor:
    """The identity acting on a management request: a person's SSO token (their mapped role and team, audited as
    `sso:<email or sub>`), else the key's own role (`Principal.actor`).

    Raises Unauthenticated (401) for a bad credential, Forbidden (403) for a person no claim maps to a role or a
    team_admin whose team claim names no live team.
    """
    svc = request.config_dict[SERVICES]
    people = svc.sign_ins.people
    if (person := await person_from_bearer(people, presented_credential(request.headers))) is not None:
        actor = await actor_of(svc.pool, person)  # first: a refused person leaves no identity row behind
        return dataclasses.replace(actor, key_id=(await key_of(svc.pool, person)).id)
    return (await _authenticate(request)).actor


class UserKeysApi:
    """Handlers for /v1/user-api-keys, given the running gateway's config and services.

    Every handler takes (request, actor): `actor` is who calls, already admitted by the route's roles.
    """

    def __init__(self, cfg: GatewayConfig, svc: Services) -> None:
        self._cfg, self._svc = cfg, svc
        self._hmac_secret: bytes = svc.claudecode_tokens.secret

    @property
    def config(self) -> GatewayConfig:
        return self._cfg

    @property
    def services(self) -> Services:
        return self._svc

    def evict_user(self, user_id: uuid.UUID) -> None:
        """Forget this process's cached verdicts for a user's keys and token (their limits or team changed)."""
        self._svc.claudecode_tokens.evict_user(user_id)
        self._svc.key_cache.evict_user(user_id)
        if (callers := self._svc.sign_ins.callers) is not None:  # caller JWTs remembered with the user's Principal
            callers.evict_user(user_id)

    def _new_key(self) -> tuple[str, tuple[str, str]]:
        new = generate_key(self._cfg.auth.bcrypt_rounds)
        return new.plaintext, (new.lookup_id, new.key_hash)

    async def _user_for(self, request: web.Request, actor: Actor, *, change: bool) -> db.UserRow:
        """The user named in the path, if `actor` may read (or, with `change`, manage) them: 404 / 403 otherwise."""
        user_id = _user_id(request)
        user = await db.get_user(self._svc.pool, user_id)
        if user is None:
            raise AdminError(404, f"no user with id {user_id}")
        if not (actor.manages_team(user.team_id) if change else actor.reads_team(user.team_id)):
            raise AdminError(403, "a team_admin key manages the users of its own team only")
        return user

    def _team_of_new_user(self, team_id: int | None, actor: Actor) -> int | None:
        """The team a new user goes into: a team_admin's own (it may name no other), or the admin's `teamId`."""
        if actor.role is Role.TEAM_ADMIN:
            if team_id is not None and team_id != actor.team_id:
                raise AdminError(403, "a team_admin key creates users in its own team only")
            return actor.team_id
        return team_id

    async def create(self, request: web.Request, actor: Actor) -> web.Response:
        body = body_of(request, CreateUserRequest)
        team_id = self._team_of_new_user(body.teamId, actor)
        cc_token = body.claudecodeUserKey  # optional: a user who works only in IDEs has no Claude Code token
        plaintext, key = await asyncio.to_thread(self._new_key)
        try:
            user, _ = await db.create_user(
                self._svc.pool,
                email=body.email,
                firstname=body.firstname,
                lastname=body.lastname,
                claudecode_hmac=claudecode_hmac(self._hmac_secret, cc_token) if cc_token is not None else None,
                key=key,
                actor=actor,
                team_id=team_id,
            )
        except db.Conflict as exc:
            raise AdminError(409, str(exc)) from None
        except LookupError as exc:
            raise AdminError(404, str(exc)) from None
        self._svc.claudecode_tokens.evict_all_unknown()  # the token may have been refused a moment ago
        return _json(
            {**_user(user), "apiKey": plaintext, "claudecodeUserKey": cc_token, "aigatewayUserKey": plaintext}, 201
        )

    async def delete(self, request: web.Request, actor: Actor) -> web.Response:
        user_id = (await self._user_for(request, actor, change=True)).id
        revoked = await db.delete_user(self._svc.pool, user_id, actor=actor)
        if revoked is None:
            raise AdminError(404, f"no user with id {user_id}")
        for key_id in revoked:
            self._svc.key_cache.evict_key(key_id)
        self.evict_user(user_id)
        return _json({"success": True})

    async def regenerate(self, request: web.Request, actor: Actor) -> web.Response:
        user_id = (await self._user_for(request, actor, change=True)).id
        reason = body_of(request, RegenerateRequest).reason
        plaintext = ""

        async def new_key() -> tuple[str, str]:  # made while the user's row is locked: one regenerate at a time
            nonlocal plaintext
            plaintext, key = await asyncio.to_thread(self._new_key)
            return key

        try:
            done = await db.regenerate_user_key(self._svc.pool, user_id, new_key=new_key, reason=reason, actor=actor)
        except db.Conflict as exc:
            raise AdminError(409, str(exc)) from None
        if done is None:
            raise AdminError(404, f"no user with id {user_id}")
        user, _, old_key_id = done
        if old_key_id is not None:
            self._svc.key_cache.evict_key(old_key_id)
        self.evict_user(user_id)  # the Claude Code mapping and caller JWTs now lead to the new key
        # The Claude Code token is stored only as an HMAC: the mapping is kept, its plaintext cannot be shown.
        # `apiKey` as in the create answer; `newApiKey` is the original design's name, kept for its clients.
        answer = {"apiKey": plaintext, "newApiKey": plaintext, "claudecodeUserKey": None, "aigatewayUserKey": plaintext}
        return _json({**_user(user), **answer})

    async def increase_token_limit(self, request: web.Request, actor: Actor) -> web.Response:
        user_id = (await self._user_for(request, actor, change=True)).id
        increment = body_of(request, IncreaseTokenLimitRequest).increment
        try:
            new_limit = await db.increase_token_limit(
                self._svc.pool,
                user_id,
                increment,
                default_limit=self._cfg.budgets.monthly_token_limit,
                actor=actor,
                within_team_limit=actor.role is not Role.ADMIN,  # a team_admin never above its team's limit
            )
        except db.AboveTeamLimit as exc:
            raise AdminError(403, f"a team_admin key cannot raise a limit above its team's: {exc}") from None
        except asyncpg.NumericValueOutOfRangeError:
            raise AdminError(400, "the new limit would exceed the largest storable limit") from None
        if new_limit is None:
            raise AdminError(404, f"no user with id {user_id}")
        self.evict_user(user_id)  # cached principals carry the old limit
        return _json({"id": str(user_id), "newLimit": new_limit})

    async def list(self, request: web.Request, actor: Actor) -> web.Response:
        users = await db.list_users(self._svc.pool, team_id=_team_filter(actor))
        default = self._cfg.budgets.monthly_token_limit
        return _json(
            [
                {
                    **_user(u),
                    "limitToken": u.limit_tokens if u.limit_tokens is not None else default,
                    "teamId": u.team_id,
                }
                for u in users
            ]
        )

    async def usage(self, request: web.Request, actor: Actor) -> web.Response:
        month = month_of(self._svc.month_view.clock())
        rows = await db.users_month_usage(self._svc.pool, month, team_id=_team_filter(actor))
        default_usd = Decimal(str(self._cfg.budgets.monthly_limit_usd))
        default_tokens = self._cfg.budgets.monthly_token_limit
        out = []
        for r in rows:
            limit_usd = r["monthly_limit_usd"] if r["monthly_limit_usd"] is not None else default_usd
            limit_tokens = r["limit_tokens"] if r["limit_tokens"] is not None else default_tokens
            out.append(
                {
                    "id": str(r["id"]),
                    "email": r["email"],
                    "firstname": r["firstname"],
                    "lastname": r["lastname"],
                    "createdAt": _iso(r["created_at"]),
                    "updatedAt": _iso(r["updated_at"]),
                    "totalTokens": int(r["tokens"]),
                    "requestCount": int(r["requests"]),
                    "totalCostUsd": float(r["cost_usd"]),
                    "limitUsd": float(limit_usd),
                    "limitToken": int(limit_tokens),
                    "overLimit": r["cost_usd"] >= limit_usd or r["tokens"] >= limit_tokens,
                    "month": month.isoformat()[:7],
                    "teamId": r["team_id"],
                }
            )
        return _json(out)

    async def usage_history(self, request: web.Request, actor: Actor) -> web.Response:
        user_id = (await self._user_for(request, actor, change=False)).id
        page = query_of(request, DaysPage)
        start, end, limit, offset = page.start, page.end, page.limit, page.offset
        # One row more than the page: a next page is announced only when it has something on it.
        rows = await db.user_usage_history(
            self._svc.pool, user_id, start=start, end=end, limit=limit + 1, offset=offset
        )
        history = [_history_entry(r) for r in rows[:limit]]
        next_offset = offset + limit if len(rows) > limit else None
        return _json(
            {"userId": str(user_id), "history": history, "limit": limit, "offset": offset, "nextOffset": next_offset}
        )


def _team_filter(actor: Actor) -> int | None:
    """The team whose users `actor` lists: a team_admin's own; None (everyone) for an admin or a viewer."""
    return actor.team_id if actor.role is Role.TEAM_ADMIN else None


ApiHandler = Callable[[UserKeysApi, web.Request, Actor], Awaitable[web.Response]]


async def dlp_findings(api: UserKeysApi, request: web.Request, actor: Actor) -> web.Response:
    """GET /v1/dlp-findings: what the DLP stage found (never the values), newest first, one page at a time.

    Query (DlpQuery): from, to (UTC days, inclusive), userId, detector, action, limit (1-1000, default 100), offset.
    """
    q = query_of(request, DlpQuery)
    limit, offset = q.limit, q.offset
    rows = await db.dlp_findings(
        request.config_dict[SERVICES].pool,
        start=q.start,
        end=q.end,
        user_id=q.userId,
        detector=q.detector,
        action=q.action,
        limit=limit + 1,
        offset=offset,
    )
    findings = [_finding(r) for r in rows[:limit]]
    next_offset = offset + limit if len(rows) > limit else None
    return _json({"findings": findings, "limit": limit, "offset": offset, "nextOffset": next_offset})


def _finding(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": r["id"],
        "createdAt": _iso(r["created_at"]),
        "requestId": r["request_id"],
        "keyId": r["key_id"],
        "userId": str(r["user_id"]) if r["user_id"] else None,
        "route": r["route"],
        "model": r["alias"],
        "detector": r["detector"],
        "action": r["action"],
        "location": r["location"],
        "occurrences": r["occurrences"],
    }


def _user(u: db.UserRow) -> dict[str, Any]:
    return {
        "id": str(u.id),
        "email": u.email,
        "firstname": u.firstname,
        "lastname": u.lastname,
        "createdAt": _iso(u.created_at),
        "updatedAt": _iso(u.updated_at),
    }


def _history_entry(r: dict[str, Any]) -> dict[str, Any]:
    tokens = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
    return {
        "date": r["day"].isoformat(),
        "model": r["alias"],
        "providerModel": r["provider_model"],
        "requestCount": int(r["requests"]),
        "inputTokens": int(r["input_tokens"]),
        "outputTokens": int(r["output_tokens"]),
        "cacheReadTokens": int(r["cache_read_tokens"]),
        "cacheWriteTokens": int(r["cache_write_tokens"]),
        "totalTokens": sum(int(r[t]) for t in tokens),
        "costUsd": float(r["cost_usd"]) if r["cost_usd"] is not None else None,
        "unpricedRequests": int(r["unpriced_requests"]),
    }


# --- rate-limit overrides (/v1/rate-limits) ----------------------------------------------------------

RATE_LIMIT_FIELDS = {
    "requestsPerMinute": "requests_per_minute",
    "tokensPerMinute": "tokens_per_minute",
    "inFlight": "in_flight",
}


def _limits_json(values: Any) -> dict[str, Any]:
    return {
        camel: getattr(values, name) if not isinstance(values, dict) else values[name]
        for camel, name in RATE_LIMIT_FIELDS.items()
    }


async def list_rate_limits(api: UserKeysApi, request: web.Request, actor: Actor) -> web.Response:
    """GET /v1/rate-limits: the configured defaults and every override (null field: the default)."""
    svc, cfg = request.config_dict[SERVICES], request.config_dict[RUNTIME].config
    assert svc.rate_limit_overrides is not None
    overrides = [
        {"scope": r["scope"], "id": r["scope_id"], **_limits_json(r), "updatedAt": _iso(r["updated_at"])}
        for r in await svc.rate_limit_overrides.listing()
    ]
    defaults = {"key": _limits_json(cfg.rate_limits.key), "user": _limits_json(cfg.rate_limits.user)}
    shared = "redis" if cfg.rate_limits.redis_url else "per-process"
    return _json({"defaults": defaults, "counting": shared, "overrides": overrides})


async def _rate_limit_scope(request: web.Request, *, must_exist: bool = True) -> tuple[str, str]:
    """(scope, id) from the path, checked against the database: 404 for an unknown scope, key or user.

    `must_exist=False` (DELETE) takes the id of a key or user that is gone: its override is still listed and
    must stay removable.
    """
    scope, raw_id = request.match_info["scope"], request.match_info["id"]
    pool = request.config_dict[SERVICES].pool
    if scope == "key" and raw_id.isascii() and raw_id.isdigit() and len(raw_id) < 19:
        if not must_exist or await pool.fetchval("SELECT 1 FROM api_keys WHERE id = $1", int(raw_id)):
            return scope, str(int(raw_id))
    elif scope == "user":
        try:
            user_id = uuid.UUID(raw_id)
        except ValueError:
            user_id = None
        if user_id is not None and (not must_exist or await db.get_user(pool, user_id) is not None):
            return scope, str(user_id)
    elif scope != "key":
        raise AdminError(404, f"no rate-limit scope {scope!r}; use /v1/rate-limits/key/<key id> or /user/<user id>")
    raise AdminError(404, f"no {scope} with id {raw_id!r}")


async def put_rate_limit(api: UserKeysApi, request: web.Request, actor: Actor) -> web.Response:
    """PUT /v1/rate-limits/{key|user}/{id} {"requestsPerMinute": 60, "tokensPerMinute": null, "inFlight": 0}.

    Absent or null: the default from gateway.yaml; 0: no limit of that kind. Replaces the whole override.
    """
    scope, scope_id = await _rate_limit_scope(request)
    body = body_of(request, RateLimitRequest)
    values = {name: getattr(body, camel) for camel, name in RATE_LIMIT_FIELDS.items()}
    svc = request.config_dict[SERVICES]
    assert svc.rate_limit_overrides is not None
    override = Override(**values)
    await svc.rate_limit_overrides.put(scope, scope_id, override)
    await db.audit_change(
        svc.pool, "rate_limit_set", actor, target=f"rate-limit:{scope}:{scope_id}", reason=str(values)
    )
    limits = request.config_dict[RUNTIME].config.rate_limits
    effective = override.over(limits.key if scope == "key" else limits.user)
    return _json({"scope": scope, "id": scope_id, **_limits_json(override), "effective": _limits_json(effective)})


async def delete_rate_limit(api: UserKeysApi, request: web.Request, actor: Actor) -> web.Response:
    """DELETE /v1/rate-limits/{key|user}/{id}: back to the defaults; 404 when there was no override."""
    scope, scope_id = await _rate_limit_scope(request, must_exist=False)
    svc = request.config_dict[SERVICES]
    assert svc.rate_limit_overrides is not None
    if not await svc.rate_limit_overrides.delete(scope, scope_id):
        raise AdminError(404, f"no rate-limit override for {scope} {scope_id}")
    await db.audit_change(svc.pool, "rate_limit_deleted", actor, target=f"rate-limit:{scope}:{scope_id}")
    return _json({"scope": scope, "id": scope_id, "deleted": True})
