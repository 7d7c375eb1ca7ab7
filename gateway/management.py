"""The management API's route table: every endpoint, its handler and the roles it admits, on one screen.

`ROUTES` is the only place an endpoint is declared: `add_routes` registers it behind `guarded` (authenticate,
check the role, parse the declared body and query (gateway/management_schemas.py), then run); gateway/openapi.py
documents it from the same entry (x-roles, request body, query parameters); the README's Endpoints table states
the same roles, and the role x endpoint test (tests/test_roles.py) is generated from it, so an endpoint cannot be
added without its expectations.
A role admits the endpoint; a team_admin is further limited, inside the handler, to its own team's users.
Errors are `{"error": "..."}`: 401 without a valid key, 403 for a role the endpoint does not admit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.hdrs import EXPECT

from gateway import admin, db, teams_api
from gateway.admin import AdminError, UserKeysApi, authenticate_actor
from gateway.app_keys import RUNTIME, SERVICES, SLOTS
from gateway.edge import expect_after_auth
from gateway.error_shape import ErrorShape
from gateway.errors import GatewayError, ServiceUnavailable, error_response
from gateway.management_schemas import (
    PARSED,
    PARSED_QUERY,
    Body,
    CreateManagementKeyRequest,
    CreateTeamRequest,
    CreateUserRequest,
    DaysPage,
    DlpQuery,
    IncreaseTokenLimitRequest,
    MoveUserRequest,
    Page,
    Query,
    RateLimitRequest,
    RegenerateRequest,
    UpdateTeamRequest,
    read_body,
    read_query,
)
from gateway.request_body import send_continue
from gateway.roles import ADMIN_ONLY, MANAGERS, READERS, TEAM_READERS, Role

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: admin.ApiHandler
    roles: frozenset[Role]  # who may call it; a team_admin only for its own team (see the handler)
    body: type[Body] | None = None  # the JSON body it takes (gateway/management_schemas.py), parsed by the guard
    query: type[Query] | None = None  # the query parameters it reads, likewise


api, teams = UserKeysApi, teams_api
ROUTES: tuple[Route, ...] = (
    # users and their keys (a team_admin: the users of its own team; new users go into it)
    Route("POST", "/v1/user-api-keys", api.create, MANAGERS, body=CreateUserRequest),
    Route("GET", "/v1/user-api-keys", api.list, TEAM_READERS),
    Route("GET", "/v1/user-api-keys/usage", api.usage, TEAM_READERS),
    Route("DELETE", "/v1/user-api-keys/{id}", api.delete, MANAGERS),
    Route("POST", "/v1/user-api-keys/{id}/regenerate", api.regenerate, MANAGERS, body=RegenerateRequest),
    Route(
        "POST",
        "/v1/user-api-keys/{id}/increase-token-limit",
        api.increase_token_limit,
        MANAGERS,
        body=IncreaseTokenLimitRequest,
    ),
    Route("GET", "/v1/user-api-keys/{id}/usage-history", api.usage_history, TEAM_READERS, query=DaysPage),
    Route("PUT", "/v1/user-api-keys/{id}/team", teams.move_user, ADMIN_ONLY, body=MoveUserRequest),
    # teams (a team_admin reads its own)
    Route("GET", "/v1/teams", teams.list_teams, TEAM_READERS),
    Route("POST", "/v1/teams", teams.create_team, ADMIN_ONLY, body=CreateTeamRequest),
    Route("GET", "/v1/teams/{team}/usage", teams.team_usage, TEAM_READERS),
    Route("PATCH", "/v1/teams/{team}", teams.update_team, ADMIN_ONLY, body=UpdateTeamRequest),
    Route("DELETE", "/v1/teams/{team}", teams.delete_team, ADMIN_ONLY),
    # management keys, audit
    Route("GET", "/v1/management-keys", teams.list_management_keys, ADMIN_ONLY),
    Route("POST", "/v1/management-keys", teams.create_management_key, ADMIN_ONLY, body=CreateManagementKeyRequest),
    Route("DELETE", "/v1/management-keys/{key}", teams.revoke_management_key, ADMIN_ONLY),
    Route("GET", "/v1/audit", teams.audit, READERS, query=Page),
    # data-loss prevention and rate limits
    Route("GET", "/v1/dlp-findings", admin.dlp_findings, READERS, query=DlpQuery),
    Route("GET", "/v1/rate-limits", admin.list_rate_limits, READERS),
    Route("PUT", "/v1/rate-limits/{scope}/{id}", admin.put_rate_limit, ADMIN_ONLY, body=RateLimitRequest),
    Route("DELETE", "/v1/rate-limits/{scope}/{id}", admin.delete_rate_limit, ADMIN_ONLY),
)


def _refusal(route: Route, role: Role) -> str:
    others = sorted(r.value for r in route.roles - {Role.ADMIN})
    wanted = "an admin key" + (f" or a management key with role {' or '.join(others)}" if others else "")
    return f"this endpoint needs {wanted}; this key's role is {role.value!r}"


def guarded(route: Route) -> Handler:
    """Authenticate, require one of the route's roles, and answer every failure as {"error": "..."}.

    `Expect: 100-continue` is answered only once the caller proved to have the role (see continue_after_auth).
    """

    async def run(request: web.Request) -> web.StreamResponse:
        try:
            actor = await authenticate_actor(request)
            if not actor.may(route.roles):
                raise AdminError(403, _refusal(route, actor.role))
            if EXPECT in request.headers:
                await send_continue(request)
            with request.config_dict[SLOTS]:  # only now: a caller not yet authenticated holds no slot
                if route.query is not None:
                    request[PARSED_QUERY] = read_query(request, route.query)
                if route.body is not None:  # once, here: the handler takes it with body_of(request, Model)
                    request[PARSED] = await read_body(request, route.body)
                return await route.handler(
                    UserKeysApi(request.config_dict[RUNTIME].config, request.config_dict[SERVICES]), request, actor
                )
        except GatewayError as err:  # AdminError, or a 401/403 from authentication: in this API's error shape
            return error_response(err, ErrorShape.MANAGEMENT)
        except db.UNAVAILABLE:  # nothing was changed: the caller may simply retry
            message = "the gateway's database is unreachable; retry shortly"
            return error_response(ServiceUnavailable(message, headers={"Retry-After": "5"}), ErrorShape.MANAGEMENT)

    return run


def add_routes(app: web.Application, mounted_at: str = "") -> None:
    """Register every route of ROUTES behind its guard, on `app` mounted at `mounted_at` (the gateway's /v1
    sub-application: "/v1"). 100 Continue only after authentication: a refused body is never invited."""
    for route in ROUTES:
        handler = guarded(route)
        methods = (route.method, "HEAD") if route.method == "GET" else (route.method,)  # a GET answers HEAD too
        for method in methods:
            path = route.path.removeprefix(mounted_at)
            app.router.add_route(method, path, handler, expect_handler=expect_after_auth(ErrorShape.MANAGEMENT))
