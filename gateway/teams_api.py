"""The management API's teams, management keys and audit endpoints (issue 21); roles in gateway/management.py.

    GET    /v1/teams                    teams with limits, members and this month's usage (a team_admin: its own)
    POST   /v1/teams                    {"name", "monthlyTokenLimit"?, "monthlyLimitUsd"?}       -> 201 the team
    PATCH  /v1/teams/{team}             {"name"?, "monthlyTokenLimit"?, "monthlyLimitUsd"?} (null: no limit)
    DELETE /v1/teams/{team}             409 while it has users or live team_admin keys
    GET    /v1/teams/{team}/usage       this month's figures and the usage made there per user
    PUT    /v1/user-api-keys/{id}/team  {"teamId": 3 | null}: counts there from now; history stays where it was made
    GET    /v1/management-keys          live keys with a role
    POST   /v1/management-keys          {"name", "role": admin | team_admin | viewer, "teamId" (team_admin only)}
    DELETE /v1/management-keys/{key}    revoke
    GET    /v1/audit                    every management change, newest first, with the acting identity

Request bodies and queries are declared in gateway/management_schemas.py and parsed by the route's guard.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from aiohttp import web

from gateway import db
from gateway.accounting.month_view import month_of
from gateway.admin import AdminError, UserKeysApi, _iso, _json, _user_id
from gateway.keys import generate_key
from gateway.management_schemas import (
    CreateManagementKeyRequest,
    CreateTeamRequest,
    MoveUserRequest,
    Page,
    UpdateTeamRequest,
    body_of,
    query_of,
)
from gateway.roles import Actor, Role

# --- request bodies (declared in gateway/management_schemas.py, parsed by the route's guard) ---------------


def _team_change(body: CreateTeamRequest | UpdateTeamRequest) -> db.TeamChange:
    """A team body as a change: a field left out of a PATCH keeps its value (null removes a limit)."""
    given = body.model_fields_set
    return db.TeamChange(
        name=body.name,
        set_limit_tokens="monthlyTokenLimit" in given,
        limit_tokens=body.monthlyTokenLimit,
        set_limit_usd="monthlyLimitUsd" in given,
        limit_usd=body.monthlyLimitUsd,
    )


def _path_id(request: web.Request, name: str, what: str) -> int:
    raw = request.match_info[name]
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        raise AdminError(404, f"no {what} with id {raw!r}")
    return int(raw)


# --- answers -------------------------------------------------------------------------------------------


def _team(t: db.TeamRow | dict[str, Any]) -> dict[str, Any]:
    row = t if isinstance(t, dict) else {f: getattr(t, f) for f in db.TeamRow.__slots__}
    out = {
        "id": row["id"],
        "name": row["name"],
        "monthlyTokenLimit": row["limit_tokens"],
        "monthlyLimitUsd": float(row["limit_usd"]) if row["limit_usd"] is not None else None,
        "createdAt": _iso(row["created_at"]),
        "updatedAt": _iso(row["updated_at"]),
    }
    if "tokens" in row:
        out |= {
            "members": int(row["members"]),
            "totalTokens": int(row["tokens"]),
            "totalCostUsd": float(row["cost_usd"]),
            "requestCount": int(row["requests"]),
        }
    return out


def _management_key(k: db.KeyRow) -> dict[str, Any]:
    return {"id": k.id, "keyId": k.lookup_id, "name": k.name, "role": k.role, "teamId": k.role_team_id}


# --- teams ---------------------------------------------------------------------------------------------


async def list_teams(api: UserKeysApi, request: web.Request, actor: Actor) -> web.Response:
    """GET /v1/teams: every team (a team_admin: its own) with this month's usage made there."""
    svc = api.services
    own = actor.team_id if actor.role is Role.TEAM_ADMIN else None
    rows = await db.teams_month_usage(svc.pool, month_of(svc.month_view.clock()), team_id=own)
    return _json([_team(r) for r in rows])


async def create_team(api: UserKeysApi, request: web.Request, actor: Actor) -> web.Response:
    """POST /v1/teams -> 201 the team; 409 when a team has that name."""
    body = body_of(request, CreateTeamRequest)
    try:
        team = await db.create_team(
            api.services.pool,
            name=body.name,
            limit_tokens=body.monthlyTokenLimit,
            limit_usd=body.monthlyLimitUsd,
            actor=actor,
        )
    except db.Conflict as exc:
        raise AdminError(409, str(exc)) from None
    return _json(_team(team), 201)


async def update_team(api: UserKeysApi, request: web.Request, actor: Actor) -> web.Response:
    """PATCH /v1/teams/{team}: rename, or set a limit (null: none). Members' cached limits are dropped here at once,
    elsewhere within auth.cache_ttl_s."""
    team_id = _path_id(request, "team", "team")
    change = _team_change(body_of(request, UpdateTeamRequest))
    try:
        team = await db.update_team(api.services.pool, team_id, change, actor=actor)
    except db.Conflict as exc:
        raise AdminError(409, str(exc)) from None
    if team is None:
        raise AdminError(404, f"no team with id {team_id}")
    for user in await db.list_users(api.services.pool, team_id=team_id):
        api.evict_user(user.id)
    return _json(_team(team))


async def delete_team(api: UserKeysApi, request: web.Request, actor: Actor) -> web.Response:
    """DELETE /v1/teams/{team}: refused (409) while anyone is in it."""
    team_id = _path_id(request, "team", "team")
    try:
        deleted = await db.delete_team(api.services.pool, team_id, actor=actor)
    except db.Conflict as exc:
        raise AdminError(409, str(exc)) from None
    if not deleted:
        raise AdminError(404, f"no team with id {team_id}")
    return _json({"id": team_id, "deleted": True})


async def team_usage(api: UserKeysApi, request: web.Request, actor: Actor) -> web.Response:
    """GET /v1/teams/{team}/usage: this month's usage made for the team, in total and per user who made it."""
    team_id = _path_id(request, "team", "team")
    if not actor.reads_team(team_id):
        raise AdminError(403, "a team_admin key reads its own team only")
    svc = api.services
    month = month_of(svc.month_view.clock())
    rows = await db.teams_month_usage(svc.pool, month, team_id=team_id)
    if not rows:
        raise AdminError(404, f"no team with id {team_id}")
    users = await db.team_usage_by_user(svc.pool, team_id, month, (month + timedelta(days=32)).replace(day=1))
    per_user = [
        {
            "userId": str(u["user_id"]) if u["user_id"] else None,
            "email": u["email"],
            "totalTokens": int(u["tokens"]),
            "totalCostUsd": float(u["cost_usd"]),
            "requestCount": int(u["requests"]),
        }
        for u in users
    ]
    return _json({**_team(rows[0]), "month": month.isoformat()[:7], "users": per_user})


async def move_user(api: UserKeysApi, request: web.Request, actor: Actor) -> web.Response:
    """PUT /v1/user-api-keys/{id}/team {"teamId": 3 | null}: the user's usage counts there from now on."""
    user_id = _user_id(request)
    team_id = body_of(request, MoveUserRequest).teamId
    try:
        user = await db.set_user_team(api.services.pool, user_id, team_id, actor=actor)
    except LookupError as exc:
        raise AdminError(404, str(exc)) from None
    if user is None:
        raise AdminError(404, f"no user with id {user_id}")
    api.evict_user(user_id)  # cached principals carry the old team
    return _json({"id": str(user.id), "email": user.email, "teamId": user.team_id})


# --- management keys and audit -------------------------------------------------------------------------


async def list_management_keys(api: UserKeysApi, request: web.Request, actor: Actor) -> web.Response:
    """GET /v1/management-keys: live keys with a role, newest first (never a secret)."""
    return _json([_management_key(k) for k in await db.management_keys(api.services.pool)])


async def create_management_key(api: UserKeysApi, request: web.Request, actor: Actor) -> web.Response:
    """POST /v1/management-keys -> 201 with `apiKey`, shown this once."""
    body = body_of(request, CreateManagementKeyRequest)
    name, role, team_id = body.name, body.role, body.teamId
    new = await asyncio.to_thread(generate_key, api.config.auth.bcrypt_rounds)
    try:
        row = await db.create_service_key(
            api.services.pool,
            lookup_id=new.lookup_id,
            key_hash=new.key_hash,
            name=name,
            is_admin=role is Role.ADMIN,
            actor=actor,
            role=role.value,
            role_team_id=team_id,
        )
    except LookupError as exc:
        raise AdminError(404, str(exc)) from None
    return _json({**_management_key(row), "apiKey": new.plaintext}, 201)


async def revoke_management_key(api: UserKeysApi, request: web.Request, actor: Actor) -> web.Response:
    """DELETE /v1/management-keys/{key}: refused here at once, elsewhere within auth.cache_ttl_s."""
    key_id = _path_id(request, "key", "management key")
    if actor.key_id == key_id:
        raise AdminError(409, "this is the key making the request: revoke it with another admin key")
    if not await db.revoke_service_key(api.services.pool, key_id, reason=None, actor=actor):
        raise AdminError(404, f"no live management key with id {key_id}")
    api.services.key_cache.evict_key(key_id)
    return _json({"id": key_id, "revoked": True})


async def audit(api: UserKeysApi, request: web.Request, actor: Actor) -> web.Response:
    """GET /v1/audit?limit=&offset=: management changes, newest first, each with who made it (`actor`)."""
    page = query_of(request, Page)
    limit, offset = page.limit, page.offset
    rows, total = await db.audit_page(api.services.pool, limit=limit, offset=offset)
    entries = [
        {
            "id": r["id"],
            "createdAt": _iso(r["created_at"]),
            "action": r["action"],
            "reason": r["reason"],
            "actor": r["actor"],
            "userId": str(r["user_id"]) if r["user_id"] else None,
            "teamId": r["team_id"],
            "target": r["target"],
        }
        for r in rows
    ]
    return _json({"entries": entries, "total": total, "limit": limit, "offset": offset})
