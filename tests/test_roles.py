"""Every management endpoint and console page, for every role: allowed (anything but 401/403/5xx) or 403.

The cases are generated from the route tables themselves (gateway/management.py ROUTES, gateway/console PAGES),
and EXPECTED below is written out by hand: an endpoint added to a table without a line here fails
`test_every_endpoint_has_expectations`, and a line that disagrees with the table fails the HTTP check.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from gateway import db
from gateway.console import PAGES
from gateway.edge import MANAGEMENT_PATHS
from gateway.keys import generate_key
from gateway.management import ROUTES
from gateway.roles import Role

MakeUser = Callable[..., Awaitable[tuple[str, db.KeyRow]]]
A, T, V, U = Role.ADMIN, Role.TEAM_ADMIN, Role.VIEWER, Role.USER

# (method, path) -> the roles that may call it. A team_admin's calls here are on its own team and its users.
EXPECTED: dict[tuple[str, str], set[Role]] = {
    ("POST", "/v1/user-api-keys"): {A, T},
    ("GET", "/v1/user-api-keys"): {A, T, V},
    ("GET", "/v1/user-api-keys/usage"): {A, T, V},
    ("DELETE", "/v1/user-api-keys/{id}"): {A, T},
    ("POST", "/v1/user-api-keys/{id}/regenerate"): {A, T},
    ("POST", "/v1/user-api-keys/{id}/increase-token-limit"): {A, T},
    ("GET", "/v1/user-api-keys/{id}/usage-history"): {A, T, V},
    ("PUT", "/v1/user-api-keys/{id}/team"): {A},
    ("GET", "/v1/teams"): {A, T, V},
    ("POST", "/v1/teams"): {A},
    ("GET", "/v1/teams/{team}/usage"): {A, T, V},
    ("PATCH", "/v1/teams/{team}"): {A},
    ("DELETE", "/v1/teams/{team}"): {A},
    ("GET", "/v1/management-keys"): {A},
    ("POST", "/v1/management-keys"): {A},
    ("DELETE", "/v1/management-keys/{key}"): {A},
    ("GET", "/v1/audit"): {A, V},
    ("GET", "/v1/dlp-findings"): {A, V},
    ("GET", "/v1/rate-limits"): {A, V},
    ("PUT", "/v1/rate-limits/{scope}/{id}"): {A},
    ("DELETE", "/v1/rate-limits/{scope}/{id}"): {A},
}
CONSOLE_EXPECTED: dict[tuple[str, str], set[Role]] = {
    ("GET", "/"): {A, V},
    ("GET", "/users"): {A, T, V},
    ("POST", "/users"): {A, T},
    ("GET", "/users/{id}"): {A, T, V},
    ("POST", "/users/{id}/regenerate"): {A, T},
    ("POST", "/users/{id}/limit"): {A, T},
    ("POST", "/users/{id}/delete"): {A, T},
    ("GET", "/teams"): {A, T, V},
    ("GET", "/keys"): {A},
    ("POST", "/keys"): {A},
    ("POST", "/keys/{id}/revoke"): {A},
    ("GET", "/audit"): {A, V},
    ("GET", "/config"): {A},
    ("GET", "/me"): {A, T, V, U},
}
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class World:
    """One key per role; a team with a user in it (the team_admin's); a spare key to revoke."""

    keys: dict[Role, str]
    team_id: int
    user_id: str
    spare_key_id: int


async def make_world(pool: asyncpg.Pool, make_user: MakeUser) -> World:
    team = await db.create_team(pool, name="Platform", limit_tokens=None, limit_usd=None, actor=None)
    user_key, user_row = await make_user("dev@example.com")
    assert user_row.user_id is not None
    await db.set_user_team(pool, user_row.user_id, team.id, actor=None)
    keys = {U: user_key}
    for role, team_id in ((A, None), (T, team.id), (V, None), (V, None)):
        new = generate_key(rounds=4)
        row = await db.create_service_key(
            pool,
            lookup_id=new.lookup_id,
            key_hash=new.key_hash,
            name=f"{role.value}-key",
            is_admin=role is A,
            actor=None,
            role=role.value,
            role_team_id=team_id,
        )
        keys.setdefault(role, new.plaintext)
        spare = row.id  # the second viewer key: the one DELETE /v1/management-keys/{key} revokes
    return World(keys, team.id, str(user_row.user_id), spare)


def concrete(path: str, world: World) -> str:
    return (
        path.replace("{scope}/{id}", f"user/{world.user_id}")
        .replace("{id}", world.user_id)
        .replace("{team}", str(world.team_id))
        .replace("{key}", str(world.spare_key_id))
    )


BODIES: dict[tuple[str, str], Any] = {  # a body an allowed role gets past validation with (else {}: a 400 is fine)
    ("POST", "/v1/user-api-keys"): {"email": "new@example.com", "firstname": "N", "lastname": "U"},
    ("POST", "/v1/user-api-keys/{id}/increase-token-limit"): {"increment": 5},
    ("PUT", "/v1/user-api-keys/{id}/team"): {"teamId": None},
    ("POST", "/v1/teams"): {"name": "Research"},
    ("PATCH", "/v1/teams/{team}"): {"name": "Platform 2"},
    ("POST", "/v1/management-keys"): {"name": "ci", "role": "viewer"},
    ("PUT", "/v1/rate-limits/{scope}/{id}"): {"requestsPerMinute": 5},
}


def test_every_endpoint_has_expectations() -> None:
    """A route added to a table without a line in EXPECTED (or the reverse) fails here."""
    assert {(r.method, r.path) for r in ROUTES} == set(EXPECTED)
    assert {(p.method, p.path) for p in PAGES} == set(CONSOLE_EXPECTED)


@pytest.mark.parametrize("route", ROUTES, ids=[f"{r.method} {r.path}" for r in ROUTES])
async def test_management_endpoint_for_every_role(
    gateway: TestServer, pool: asyncpg.Pool, make_user: MakeUser, route: Any
) -> None:
    world = await make_world(pool, make_user)
    allowed = EXPECTED[(route.method, route.path)]
    url = str(gateway.make_url(concrete(route.path, world)))
    body = BODIES.get((route.method, route.path), {})
    async with aiohttp.ClientSession() as http:
        for role in (U, V, T, A):  # the changing roles last: a refused call must find everything in place
            kwargs: dict[str, Any] = {"json": body} if route.method in ("POST", "PUT", "PATCH") else {}
            headers = {"Authorization": f"Bearer {world.keys[role]}"}
            async with http.request(route.method, url, headers=headers, **kwargs) as resp:
                answer = await resp.json()
                if role in allowed:
                    assert resp.status not in (401, 403) and resp.status < 500, (role, resp.status, answer)
                else:
                    assert resp.status == 403, (role, resp.status, answer)
                    assert "needs an admin key" in answer["error"] and f"'{role.value}'" in answer["error"]


async def _signed_in(http: aiohttp.ClientSession, server: TestServer, key: str) -> str:
    """Sign in with `key`; the session's CSRF token (from /console/me, open to every role)."""
    async with http.get(server.make_url("/console/sign-in")) as page:
        token = CSRF.search(await page.text())
    assert token
    async with http.post(server.make_url("/console/sign-in"), data={"csrf": token.group(1), "key": key}) as resp:
        assert resp.status == 200
    async with http.get(server.make_url("/console/me")) as page:
        found = CSRF.search(await page.text())
    assert found
    return found.group(1)


CONSOLE_FORMS = {
    "/users": {"email": "new@example.com", "firstname": "N", "lastname": "U"},
    "/users/{id}/regenerate": {"reason": "lost"},
    "/users/{id}/limit": {"increment": "5"},
    "/keys": {"name": "ci"},
    "/keys/{id}/revoke": {"reason": "old"},
}


@pytest.mark.parametrize("page", PAGES, ids=[f"{p.method} /console{p.path}" for p in PAGES])
async def test_console_page_for_every_role(
    gateway: TestServer, pool: asyncpg.Pool, make_user: MakeUser, page: Any
) -> None:
    world = await make_world(pool, make_user)
    allowed = CONSOLE_EXPECTED[(page.method, page.path)]
    path = page.path.replace("/keys/{id}", f"/keys/{world.spare_key_id}")
    url = gateway.make_url("/console" + concrete(path, world))
    for role in (U, V, T, A):
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            csrf = await _signed_in(http, gateway, world.keys[role])
            form = {"csrf": csrf, **CONSOLE_FORMS.get(page.path, {})} if page.method == "POST" else None
            async with http.request(page.method, url, data=form, allow_redirects=False) as resp:
                text = await resp.text()
                if role in allowed:
                    assert resp.status not in (401, 403) and resp.status < 500, (role, resp.status, text[:300])
                else:
                    assert resp.status == 403, (role, resp.status)
                    assert "needs an admin key" in text and f"role is {role.value}" in text


ME_EXPECTED = [
    ("GET", "/v1/me", {A, T, V, U}),
    ("GET", "/v1/me/usage", {A, T, V, U}),
    ("POST", "/v1/me/regenerate", {U}),
]


@pytest.mark.parametrize(("method", "path", "allowed"), ME_EXPECTED, ids=[f"{m} {p}" for m, p, _ in ME_EXPECTED])
async def test_self_service_for_every_role(
    gateway: TestServer, pool: asyncpg.Pool, make_user: MakeUser, method: str, path: str, allowed: set[Role]
) -> None:
    world = await make_world(pool, make_user)
    async with aiohttp.ClientSession() as http:
        for role in (A, T, V, U):
            headers = {"Authorization": f"Bearer {world.keys[role]}"}
            async with http.request(method, gateway.make_url(path), headers=headers) as resp:
                assert resp.status == (200 if role in allowed else 403), (role, await resp.text())


def test_every_management_route_renders_its_errors_in_the_management_shape() -> None:
    """gateway/edge.py's MANAGEMENT_PATHS covers every route of the table, and nothing else: a 404 or 405 under a
    management path is `{"error": "..."}`, never an OpenAI-shaped body."""
    prefixes = {"/".join(route.path.split("/")[:3]) for route in ROUTES}
    assert set(MANAGEMENT_PATHS) == prefixes
