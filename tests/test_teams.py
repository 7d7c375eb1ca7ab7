"""Teams (issue 21) against a running gateway and a real PostgreSQL: CRUD, team budgets and their 429, moving a
user mid-month, what a team_admin may and may not do, and the acting identity on every audit row."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from gateway import db
from gateway.composition import SERVICES
from gateway.keys import generate_key
from tests.conftest import GatewayFactory, flushed_usage
from tests.fakes.upstream import FakeUpstream

MakeKey = Callable[..., Awaitable[tuple[str, db.KeyRow]]]
MakeUser = Callable[..., Awaitable[tuple[str, db.KeyRow]]]
MESSAGE = {"model": "claude-fast", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


async def call(
    server: TestServer, method: str, path: str, key: str, body: Any = None, **headers: str
) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        kwargs: dict[str, Any] = {} if body is None else {"json": body}
        auth = {"Authorization": f"Bearer {key}", **headers}
        async with http.request(method, server.make_url(path), headers=auth, **kwargs) as resp:
            return resp.status, await resp.json()


async def message(server: TestServer, key: str, route: str = "/v1/messages") -> tuple[int, Any]:
    return await call(server, "POST", route, key, MESSAGE)


async def management_key(pool: asyncpg.Pool, role: str, team_id: int | None = None) -> tuple[str, int]:
    new = generate_key(rounds=4)
    row = await db.create_service_key(
        pool,
        lookup_id=new.lookup_id,
        key_hash=new.key_hash,
        name=f"{role}-key",
        is_admin=role == "admin",
        actor=None,
        role=role,
        role_team_id=team_id,
    )
    return new.plaintext, row.id


@pytest.fixture
async def admin(pool: asyncpg.Pool) -> str:
    return (await management_key(pool, "admin"))[0]


async def new_team(server: TestServer, admin: str, name: str, **limits: Any) -> dict[str, Any]:
    status, team = await call(server, "POST", "/v1/teams", admin, {"name": name, **limits})
    assert status == 201, team
    return dict(team)


async def user_in(server: TestServer, key: str, email: str, team_id: int | None = None) -> dict[str, Any]:
    body = {"email": email, "firstname": "A", "lastname": "B", **({"teamId": team_id} if team_id else {})}
    status, user = await call(server, "POST", "/v1/user-api-keys", key, body)
    assert status == 201, user
    return dict(user)


# --- CRUD ------------------------------------------------------------------------------------------------


async def test_team_crud_and_delete_refused_while_it_has_users(gateway: TestServer, admin: str) -> None:
    team = await new_team(gateway, admin, "Platform", monthlyTokenLimit=5000, monthlyLimitUsd=12.5)
    assert (team["name"], team["monthlyTokenLimit"], team["monthlyLimitUsd"]) == ("Platform", 5000, 12.5)
    assert (await call(gateway, "POST", "/v1/teams", admin, {"name": "platform"}))[0] == 409  # names in any case
    status, renamed = await call(gateway, "PATCH", f"/v1/teams/{team['id']}", admin, {"name": "Infra"})
    assert status == 200 and renamed["name"] == "Infra" and renamed["monthlyTokenLimit"] == 5000
    status, cleared = await call(gateway, "PATCH", f"/v1/teams/{team['id']}", admin, {"monthlyTokenLimit": None})
    assert status == 200 and cleared["monthlyTokenLimit"] is None and cleared["monthlyLimitUsd"] == 12.5
    user = await user_in(gateway, admin, "ada@example.com", team["id"])
    status, listed = await call(gateway, "GET", "/v1/teams", admin)
    assert status == 200 and [(t["name"], t["members"]) for t in listed] == [("Infra", 1)]

    status, refused = await call(gateway, "DELETE", f"/v1/teams/{team['id']}", admin)
    assert status == 409 and "1 user" in refused["error"]
    status, moved = await call(gateway, "PUT", f"/v1/user-api-keys/{user['id']}/team", admin, {"teamId": None})
    assert status == 200 and moved["teamId"] is None
    assert (await call(gateway, "DELETE", f"/v1/teams/{team['id']}", admin))[0] == 200
    assert (await call(gateway, "GET", "/v1/teams", admin))[1] == []
    assert (await call(gateway, "DELETE", f"/v1/teams/{team['id']}", admin))[0] == 404
    assert (await new_team(gateway, admin, "Infra"))["id"] != team["id"]  # the name is free again


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        pytest.param("POST", "/v1/teams", {}, "'name' is required", id="no-name"),
        pytest.param("POST", "/v1/teams", {"name": "x", "monthlyTokenLimit": -1}, "monthlyTokenLimit", id="neg"),
        pytest.param("POST", "/v1/teams", {"name": "x", "monthlyTokenLimit": 1.5}, "monthlyTokenLimit", id="float"),
        pytest.param("POST", "/v1/teams", {"name": "x", "monthlyLimitUsd": "5"}, "monthlyLimitUsd", id="usd-str"),
        pytest.param("POST", "/v1/teams", {"name": "x", "members": 3}, "unknown field", id="unknown"),
        pytest.param("PATCH", "/v1/teams/{team}", {}, "at least one", id="empty-patch"),
        pytest.param("POST", "/v1/teams", {"name": "Pla\u202emroft"}, "control characters", id="bidi-override"),
        pytest.param("POST", "/v1/teams", {"name": "Ops\x1b[2J"}, "control characters", id="terminal-escape"),
        pytest.param("PATCH", "/v1/teams/{team}", {"name": "Ops\nAdmins"}, "control characters", id="line-break"),
        pytest.param("POST", "/v1/teams", {"name": "Ops\x00"}, "NUL", id="nul"),
        pytest.param("POST", "/v1/teams", {"name": "x" * 10_000}, "longer than", id="10k-name"),
        pytest.param("POST", "/v1/management-keys", {"name": "k\u2067", "role": "viewer"}, "control", id="key-bidi"),
        pytest.param("POST", "/v1/management-keys", {"name": "sso:a@b.c", "role": "admin"}, "sso:", id="sso-name"),
        pytest.param("POST", "/v1/management-keys", {"name": "SSO:a@b.c", "role": "admin"}, "sso:", id="sso-case"),
        pytest.param("POST", "/v1/management-keys", {"name": "k", "role": "user"}, "'role'", id="role-user"),
        pytest.param("POST", "/v1/management-keys", {"name": "k", "role": "team_admin"}, "teamId", id="no-team"),
        pytest.param("POST", "/v1/management-keys", {"name": "k", "role": "viewer", "teamId": 1}, "teamId", id="team"),
        pytest.param("PUT", "/v1/user-api-keys/{user}/team", {}, "'teamId' is required", id="no-team-id"),
        pytest.param("PUT", "/v1/user-api-keys/{user}/team", {"teamId": "1"}, "teamId", id="team-id-str"),
    ],
)
async def test_bad_team_and_key_bodies_are_400(
    gateway: TestServer, admin: str, method: str, path: str, body: Any, expected: str
) -> None:
    team = await new_team(gateway, admin, "Platform")
    user = await user_in(gateway, admin, "ada@example.com")
    status, answer = await call(gateway, method, path.format(team=team["id"], user=user["id"]), admin, body)
    assert status == 400 and expected in answer["error"], answer


@pytest.mark.parametrize(
    ("method", "path", "raw"),
    [
        pytest.param("POST", "/v1/management-keys", '{"name": "k", "role": "viewer", "role": "admin"}', id="role"),
        pytest.param(
            "POST", "/v1/teams", '{"name": "A", "monthlyTokenLimit": 5, "monthlyTokenLimit": null}', id="limit"
        ),
        pytest.param("PUT", "/v1/user-api-keys/{user}/team", '{"teamId": {team}, "teamId": null}', id="team-id"),
        pytest.param(
            "POST",
            "/v1/user-api-keys",
            '{"email": "b@example.com", "firstname": "B", "lastname": "C", "email": "c@example.com"}',
            id="email",
        ),
        pytest.param("POST", "/v1/teams", '{"name": ' + "[" * 1000 + "]" * 1000 + "}", id="deep-not-500"),
        pytest.param("PUT", "/v1/rate-limits/user/{user}", '{"inFlight": ' + "[" * 1000 + "]" * 1000 + "}", id="deep"),
    ],
)
async def test_a_field_given_twice_is_a_400(
    gateway: TestServer, pool: asyncpg.Pool, admin: str, method: str, path: str, raw: str
) -> None:
    """Which of two values was meant is anyone's guess (orjson keeps the last, a proxy in front may read the first):
    every management body refuses a repeated field, as /v1/rate-limits does, and nothing is changed."""
    team = await new_team(gateway, admin, "Platform")
    user = await user_in(gateway, admin, "ada@example.com", team["id"])
    before = await pool.fetchval("SELECT count(*) FROM gateway_audit") + await pool.fetchval(
        "SELECT count(*) FROM key_audit"
    )
    headers = {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}
    target = gateway.make_url(path.replace("{user}", user["id"]))
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, target, data=raw.replace("{team}", str(team["id"])), headers=headers) as resp,
    ):
        answer = await resp.json()
    expected = "nested too deeply" if "[[[" in raw else "more than once"
    assert resp.status == 400 and expected in answer["error"], answer
    after = await pool.fetchval("SELECT count(*) FROM gateway_audit") + await pool.fetchval(
        "SELECT count(*) FROM key_audit"
    )
    assert after == before


# --- budgets ---------------------------------------------------------------------------------------------


async def spend_until_refused(server: TestServer, key: str, route: str = "/v1/messages") -> tuple[int, Any]:
    for served in range(50):
        status, body = await message(server, key, route)
        if status == 429:
            return served, body
        assert status == 200, body
    raise AssertionError("never refused")


async def test_team_token_limit_refuses_with_scope_team_in_both_dialects(
    gateway: TestServer, upstream: FakeUpstream, admin: str
) -> None:
    upstream.usage(input_tokens=40, output_tokens=5)  # 45 tokens a request
    team = await new_team(gateway, admin, "Platform", monthlyTokenLimit=100)
    ada = await user_in(gateway, admin, "ada@example.com", team["id"])
    bob = await user_in(gateway, admin, "bob@example.com", team["id"])
    assert (await message(gateway, ada["apiKey"]))[0] == 200
    assert (await message(gateway, bob["apiKey"]))[0] == 200  # 90 < 100: one more for whoever asks
    served, body = await spend_until_refused(gateway, ada["apiKey"])
    assert served == 1  # 135 >= 100
    assert body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Team monthly token limit exceeded (135 / 100 tokens)"},
        "tokensUsed": 135,
        "tokenLimit": 100,
        "scope": "team",
        "teamId": team["id"],
    }
    status, body = await message(gateway, bob["apiKey"], "/v1/chat/completions")  # bob's own limit is far off
    assert status == 429 and body["error"]["code"] == "monthly_token_limit" and body["scope"] == "team"
    assert (body["tokensUsed"], body["tokenLimit"]) == (135, 100)


async def test_team_usd_limit_refuses_with_scope_team(gateway: TestServer, upstream: FakeUpstream, admin: str) -> None:
    upstream.usage(input_tokens=1000, output_tokens=5)  # $0.001025 a request on claude-haiku-4-5
    team = await new_team(gateway, admin, "Platform", monthlyLimitUsd=0.002)
    ada = await user_in(gateway, admin, "ada@example.com", team["id"])
    served, body = await spend_until_refused(gateway, ada["apiKey"], "/v1/chat/completions")
    assert served == 2
    assert body["error"]["code"] == "monthly_budget_limit" and body["scope"] == "team"
    assert body["costUsedUsd"] == pytest.approx(0.00205) and body["costLimitUsd"] == pytest.approx(0.002)


@pytest.mark.parametrize(
    ("user_limit", "team_limit", "served", "scope"),
    [
        pytest.param(100, 10_000, 3, None, id="user-tighter"),
        pytest.param(10_000, 100, 3, "team", id="team-tighter"),
        pytest.param(100, 200, 3, None, id="user-reached-first"),
        pytest.param(200, 100, 3, "team", id="team-reached-first"),
    ],
)
async def test_the_tighter_limit_refuses(
    gateway: TestServer,
    upstream: FakeUpstream,
    pool: asyncpg.Pool,
    admin: str,
    user_limit: int,
    team_limit: int,
    served: int,
    scope: str | None,
) -> None:
    upstream.usage(input_tokens=40, output_tokens=5)  # 45 tokens a request: refused at 135 against 100
    team = await new_team(gateway, admin, "Platform", monthlyTokenLimit=team_limit)
    ada = await user_in(gateway, admin, "ada@example.com", team["id"])
    await pool.execute(
        "UPDATE users SET limit_tokens = $2 WHERE id = $1::uuid", ada["id"], user_limit
    )  # not cached yet
    count, body = await spend_until_refused(gateway, ada["apiKey"])
    assert count == served
    assert body.get("scope") == scope  # the user's 429 keeps its original fields, without a scope
    assert (body["tokensUsed"], body["tokenLimit"]) == (135, min(user_limit, team_limit))


async def test_a_user_moved_mid_month_counts_in_the_new_team_from_then_on(
    gateway: TestServer, upstream: FakeUpstream, pool: asyncpg.Pool, admin: str
) -> None:
    upstream.usage(input_tokens=40, output_tokens=5)  # 45 tokens a request
    first = await new_team(gateway, admin, "Platform", monthlyTokenLimit=100)
    second = await new_team(gateway, admin, "Research", monthlyTokenLimit=1000)
    ada = await user_in(gateway, admin, "ada@example.com", first["id"])
    for _ in range(2):
        assert (await message(gateway, ada["apiKey"]))[0] == 200
    assert (await call(gateway, "PUT", f"/v1/user-api-keys/{ada['id']}/team", admin, {"teamId": second["id"]}))[
        0
    ] == 200
    for _ in range(3):  # the first team's 100 no longer applies: 90 tokens there, 135 in the new one
        assert (await message(gateway, ada["apiKey"]))[0] == 200
    rows = await flushed_usage(gateway, pool)
    assert [r["team_id"] for r in rows] == [first["id"]] * 2 + [second["id"]] * 3
    await gateway.app[SERVICES].month_view.refresh()
    for team, tokens in ((first, 90), (second, 135)):
        status, usage = await call(gateway, "GET", f"/v1/teams/{team['id']}/usage", admin)
        assert status == 200 and usage["totalTokens"] == tokens, usage
        assert [(u["email"], u["totalTokens"]) for u in usage["users"]] == [("ada@example.com", tokens)]
    status, listed = await call(gateway, "GET", "/v1/teams", admin)
    assert [(t["name"], t["members"], t["totalTokens"]) for t in listed] == [("Platform", 0, 90), ("Research", 1, 135)]


# --- team_admin ------------------------------------------------------------------------------------------


async def test_team_admin_manages_its_own_team_only_and_never_above_its_limit(
    gateway: TestServer, pool: asyncpg.Pool, admin: str
) -> None:
    ours = await new_team(gateway, admin, "Platform", monthlyTokenLimit=20_000_000)
    theirs = await new_team(gateway, admin, "Research")
    lead, _ = await management_key(pool, "team_admin", ours["id"])
    outsider = await user_in(gateway, admin, "eve@example.com", theirs["id"])
    loner = await user_in(gateway, admin, "sam@example.com")  # in no team

    mine = await user_in(gateway, lead, "ada@example.com")  # goes into the team_admin's own team
    assert mine["id"] in {u["id"] for u in (await call(gateway, "GET", "/v1/user-api-keys", lead))[1]}
    body = {"email": "x@example.com", "firstname": "X", "lastname": "Y", "teamId": theirs["id"]}
    assert (await call(gateway, "POST", "/v1/user-api-keys", lead, body))[0] == 403
    assert [u["email"] for u in (await call(gateway, "GET", "/v1/user-api-keys", lead))[1]] == ["ada@example.com"]
    assert [u["email"] for u in (await call(gateway, "GET", "/v1/user-api-keys/usage", lead))[1]] == ["ada@example.com"]
    assert [t["name"] for t in (await call(gateway, "GET", "/v1/teams", lead))[1]] == ["Platform"]
    assert (await call(gateway, "GET", f"/v1/teams/{theirs['id']}/usage", lead))[0] == 403

    for other in (outsider, loner):
        for method, path, payload in (
            ("DELETE", "/v1/user-api-keys/{id}", None),
            ("POST", "/v1/user-api-keys/{id}/regenerate", None),
            ("POST", "/v1/user-api-keys/{id}/increase-token-limit", {"increment": 1}),
            ("GET", "/v1/user-api-keys/{id}/usage-history", None),
        ):
            status, answer = await call(gateway, method, path.format(id=other["id"]), lead, payload)
            assert status == 403 and "own team" in answer["error"], (method, path, answer)
    assert (await db.get_user(pool, uuid.UUID(outsider["id"]))) is not None

    raise_by = f"/v1/user-api-keys/{mine['id']}/increase-token-limit"
    status, raised = await call(gateway, "POST", raise_by, lead, {"increment": 5_000_000})  # 10 M default -> 15 M
    assert status == 200 and raised["newLimit"] == 15_000_000
    status, refused = await call(gateway, "POST", raise_by, lead, {"increment": 5_000_001})  # 20,000,001 > 20 M
    assert status == 403 and "team" in refused["error"]
    assert (await db.get_user(pool, uuid.UUID(mine["id"]))).limit_tokens == 15_000_000  # type: ignore[union-attr]
    status, raised = await call(gateway, "POST", raise_by, admin, {"increment": 5_000_001})  # an admin may
    assert status == 200 and raised["newLimit"] == 20_000_001


# --- management keys, self-service, audit ----------------------------------------------------------------


async def test_management_keys_with_roles_and_the_audit_names_every_actor(
    gateway: TestServer, pool: asyncpg.Pool, admin: str
) -> None:
    team = await new_team(gateway, admin, "Platform")
    status, made = await call(
        gateway, "POST", "/v1/management-keys", admin, {"name": "lead", "role": "team_admin", "teamId": team["id"]}
    )
    assert status == 201 and (made["role"], made["teamId"]) == ("team_admin", team["id"])
    lead = made["apiKey"]
    user = await user_in(gateway, lead, "ada@example.com")
    status, viewer = await call(gateway, "POST", "/v1/management-keys", admin, {"name": "finance", "role": "viewer"})
    assert status == 201
    assert (await call(gateway, "POST", "/v1/teams", viewer["apiKey"], {"name": "Nope"}))[0] == 403
    put = {"requestsPerMinute": 5}
    assert (await call(gateway, "PUT", f"/v1/rate-limits/user/{user['id']}", admin, put))[0] == 200
    assert (await call(gateway, "PATCH", f"/v1/teams/{team['id']}", admin, {"monthlyTokenLimit": 1000}))[0] == 200
    status, regenerated = await call(gateway, "POST", "/v1/me/regenerate", user["apiKey"])
    assert status == 200 and (await message(gateway, regenerated["apiKey"]))[0] == 200
    assert (await message(gateway, user["apiKey"]))[0] == 401  # the old key stops at once
    assert (await call(gateway, "DELETE", f"/v1/management-keys/{viewer['id']}", admin))[0] == 200
    assert (await call(gateway, "GET", "/v1/audit", viewer["apiKey"]))[0] == 401  # revoked

    admin_id = (await db.find_key(pool, admin[3:19])).id  # type: ignore[union-attr]
    old_user_key = (await db.find_key(pool, user["apiKey"][3:19])).id  # type: ignore[union-attr]
    status, page = await call(gateway, "GET", "/v1/audit", admin)
    assert status == 200
    trail = [(e["action"], e["actor"]) for e in reversed(page["entries"])]
    assert trail == [
        ("admin_key_created", None),  # by the fixture, straight in the database
        ("team_created", f"key:{admin_id}"),
        ("team_admin_key_created", f"key:{admin_id}"),
        ("created", f"key:{made['id']}"),  # the user, by the team_admin key
        ("viewer_key_created", f"key:{admin_id}"),
        ("rate_limit_set", f"key:{admin_id}"),
        ("team_limits_changed", f"key:{admin_id}"),
        ("regenerated", f"key:{old_user_key}"),  # by the user's own key
        ("key_revoked", f"key:{admin_id}"),
    ]
    rate = next(e for e in page["entries"] if e["action"] == "rate_limit_set")
    assert rate["target"] == f"rate-limit:user:{user['id']}"
    assert page["total"] == len(trail)


async def test_the_environment_admin_key_is_named_in_the_audit(make_gateway: GatewayFactory) -> None:
    server = await make_gateway(auth={"admin_key": "e" * 40})
    await new_team(server, "e" * 40, "Platform")
    status, page = await call(server, "GET", "/v1/audit", "e" * 40)
    assert status == 200 and [(e["action"], e["actor"]) for e in page["entries"]] == [
        ("team_created", "env:GATEWAY_ADMIN_KEY")
    ]


async def test_a_management_key_cannot_regenerate_itself_as_a_user(gateway: TestServer, admin: str) -> None:
    status, body = await call(gateway, "POST", "/v1/me/regenerate", admin)
    assert status == 403 and "user's own gateway key" in body["error"]["message"]


# --- the README's example, as written --------------------------------------------------------------------


def readme_commands() -> str:
    """The bash block of the README's *Teams and roles* section, as one script."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = text.index("## Teams and roles\n")
    section = text[start : text.index("\n## ", start + 1)]
    (block,) = re.findall(r"```bash\n(.*?)```", section, re.DOTALL)
    return str(block)


async def test_the_readme_teams_example_works_as_written(
    gateway: TestServer, upstream: FakeUpstream, admin: str
) -> None:
    upstream.usage(input_tokens=25, output_tokens=6)  # 31 tokens a request: 0, 31 < 50, then 62 >= 50
    env = {"PATH": os.environ["PATH"], "GW": str(gateway.make_url("")).rstrip("/"), "ADMIN": admin}
    commands = readme_commands().replace("\\\n", " ").splitlines()  # continuation lines joined
    runnable = [c for c in commands if c.strip() and c[0] != "#"]
    runnable.insert(-1, "sleep 1")  # the usage flush (every 50 ms here) before the team's month is read
    script = "\n".join(["set -euo pipefail", *(f"{c}\necho" for c in runnable)])
    done = await asyncio.to_thread(
        subprocess.run, ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    statuses, refused, usage = [line for line in done.stdout.splitlines() if line.strip()]
    assert statuses.split() == ["200", "200", "429", "429"]
    body = json.loads(refused)
    assert (body["scope"], body["tokensUsed"], body["tokenLimit"]) == ("team", 62, 50)
    team = json.loads(usage)
    assert (team["name"], team["totalTokens"], [u["email"] for u in team["users"]]) == (
        "Platform",
        62,
        ["grace@example.com"],
    )


# --- the console -----------------------------------------------------------------------------------------


async def test_console_team_admin_sees_and_changes_its_own_team_only_and_is_audited(
    gateway: TestServer, upstream: FakeUpstream, pool: asyncpg.Pool, admin: str
) -> None:
    ours = await new_team(gateway, admin, "Platform")
    theirs = await new_team(gateway, admin, "Research")
    lead, lead_id = await management_key(pool, "team_admin", ours["id"])
    ada = await user_in(gateway, admin, "ada@example.com", ours["id"])
    eve = await user_in(gateway, admin, "eve@example.com", theirs["id"])
    assert (await message(gateway, ada["apiKey"]))[0] == 200
    await flushed_usage(gateway, pool)
    csrf = re.compile(r'name="csrf" value="([^"]+)"')
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(gateway.make_url("/console/sign-in")) as page:
            token = csrf.search(await page.text())
        assert token
        form = {"csrf": token.group(1), "key": lead}
        async with http.post(gateway.make_url("/console/sign-in"), data=form) as resp:
            assert resp.status == 200
        async with http.get(gateway.make_url("/console/users")) as page:
            text = await page.text()
            assert page.status == 200 and "ada@example.com" in text and "eve@example.com" not in text
            session_csrf = csrf.search(text)
        assert session_csrf
        async with http.get(gateway.make_url("/console/teams")) as page:
            text = await page.text()
            assert page.status == 200 and "Platform" in text and "Research" not in text and "ada@example.com" in text
        async with http.get(gateway.make_url(f"/console/users/{eve['id']}")) as page:
            assert page.status == 403
        posted = {"csrf": session_csrf.group(1), "increment": "5"}
        limit = gateway.make_url(f"/console/users/{eve['id']}/limit")
        async with http.post(limit, data=posted, allow_redirects=False) as resp:
            assert resp.status == 403
        limit = gateway.make_url(f"/console/users/{ada['id']}/limit")
        async with http.post(limit, data=posted, allow_redirects=False) as resp:
            assert resp.status == 303
        new_user = {"csrf": session_csrf.group(1), "email": "sam@example.com", "firstname": "S", "lastname": "M"}
        async with http.post(gateway.make_url("/console/users"), data=new_user) as resp:
            assert resp.status == 201
    sam = next(u for u in await db.list_users(pool) if u.email == "sam@example.com")
    assert sam.team_id == ours["id"]  # a team_admin's new user joins its team
    trail = await pool.fetch("SELECT action, actor FROM key_audit WHERE actor = $1 ORDER BY id", f"key:{lead_id}")
    assert [(r["action"], r["actor"]) for r in trail] == [
        ("token_limit_increased", f"key:{lead_id}"),
        ("created", f"key:{lead_id}"),
    ]
