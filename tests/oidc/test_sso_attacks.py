"""Single sign-on attacked: people whose claims no longer match the gateway's teams, unverified emails, and names
that collide with SSO identities (issue 21), against the real OpenID provider (tests/oidc/provider.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
from aiohttp.test_utils import TestServer

from gateway import db
from gateway.app import build_app
from tests.conftest import gateway_config
from tests.fakes.tcp_proxy import TcpProxy, through, upstream_of
from tests.fakes.upstream import FakeUpstream
from tests.oidc.conftest import StartGateway, caller_section, sso_section
from tests.oidc.provider import CALLER_AUDIENCE, CLIENT_SECRET, MANAGEMENT_AUDIENCE, SECRET_ENV, OidcProvider

MakeUser = Callable[..., Awaitable[tuple[str, db.KeyRow]]]


async def call(server: TestServer, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        kwargs: dict[str, Any] = {} if body is None else {"json": body}
        headers = {"Authorization": f"Bearer {token}"}
        async with http.request(method, server.make_url(path), headers=headers, **kwargs) as resp:
            return resp.status, await resp.json()


def person(idp: OidcProvider, email: str, groups: list[str], team: str | None = None, **claims: Any) -> str:
    """A person's access token for the management API, signed with the provider's own key."""
    extra = {"team": team} if team is not None else {}
    return idp.sign({"sub": email, "email": email, "aud": MANAGEMENT_AUDIENCE, "groups": groups, **extra, **claims})


async def test_a_team_admin_whose_team_is_renamed_or_unknown_reads_nobody_elses_users(
    idp: OidcProvider, start_gateway: StartGateway, make_user: MakeUser, pool: asyncpg.Pool
) -> None:
    """A team_admin with no live team behind their claim is refused (403), never treated as "no team filter"."""
    server = await start_gateway(idp, sso=sso_section(idp), caller=None)
    ops = person(idp, "ops@example.com", ["gateway-admins"])
    status, team = await call(server, "POST", "/v1/teams", ops, {"name": "platform"})
    assert status == 201, team
    await make_user("outsider@example.com")  # in no team
    lead = person(idp, "lead@example.com", ["team-leads"], "platform")
    status, mine = await call(server, "GET", "/v1/user-api-keys", lead)
    assert status == 200 and mine == []  # the control: its own (empty) team
    ghost = person(idp, "ghost@example.com", ["team-leads"], "no-such-team")
    renamed = await call(server, "PATCH", f"/v1/teams/{team['id']}", ops, {"name": "platform-eng"})
    assert renamed[0] == 200
    for token in (ghost, lead):  # an unknown team, and a team renamed since the claim was set
        for method, path in (
            ("GET", "/v1/user-api-keys"),
            ("GET", "/v1/user-api-keys/usage"),
            ("GET", "/v1/teams"),
        ):
            status, body = await call(server, method, path, token)
            assert status == 403, (method, path, body)
            assert "team" in body["error"], body
        body = {"email": "new@example.com", "firstname": "N", "lastname": "P"}
        status, answer = await call(server, "POST", "/v1/user-api-keys", token, body)
        assert status == 403, answer
    assert await pool.fetchval("SELECT count(*) FROM users WHERE email = 'new@example.com'") == 0


async def test_a_management_key_cannot_take_an_sso_identitys_name(
    idp: OidcProvider, start_gateway: StartGateway, pool: asyncpg.Pool
) -> None:
    """`sso:<subject>` names the key rows of SSO identities: a key named so would collide with one (a 500 before)
    or stand in for a person who has not signed in yet; it is refused with 400, and nothing is written."""
    server = await start_gateway(idp, sso=sso_section(idp), caller=None)
    ops = person(idp, "ops@example.com", ["gateway-admins"])
    assert (await call(server, "GET", "/v1/teams", ops))[0] == 200  # ops's identity row now exists
    for name in ("sso:ops@example.com", "sso:victor@example.com"):
        status, body = await call(server, "POST", "/v1/management-keys", ops, {"name": name, "role": "viewer"})
        assert status == 400 and "sso:" in body["error"], body
    assert await pool.fetchval("SELECT count(*) FROM api_keys WHERE name LIKE 'sso:%'") == 1
    status, made = await call(server, "POST", "/v1/management-keys", ops, {"name": "ssoish", "role": "viewer"})
    assert status == 201, made


async def test_an_unverified_email_names_no_gateway_user(
    idp: OidcProvider, start_gateway: StartGateway, make_user: MakeUser, pool: asyncpg.Pool
) -> None:
    """`email_verified: false` (an address typed in at the issuer, nobody checked it) is not the gateway user with
    that email: a caller token is refused with 401, and a person acts and is audited as their `sub`."""
    _, grace = await make_user("grace@example.com")
    server = await start_gateway(idp, sso=sso_section(idp), caller=caller_section(idp))
    message = {"model": "claude-fast", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    claimed = {"sub": "mallory", "email": "Grace@Example.com", "aud": CALLER_AUDIENCE}
    status, body = await call(server, "POST", "/v1/messages", idp.sign({**claimed, "email_verified": True}), message)
    assert status == 200, body  # the control: a verified address is the user
    status, body = await call(server, "POST", "/v1/messages", idp.sign({**claimed, "email_verified": False}), message)
    assert status == 401 and body["error"]["type"] == "authentication_error", body
    assert "verified" in body["error"]["message"]
    token = person(idp, "grace@example.com", ["gateway-admins"], sub="mallory", email_verified=False)
    assert (await call(server, "POST", "/v1/teams", token, {"name": "platform"}))[0] == 201
    row = await pool.fetchrow("SELECT actor, actor_key_id FROM gateway_audit WHERE action = 'team_created'")
    assert row["actor"] == "sso:mallory" and row["actor_key_id"] != grace.id


async def test_a_cached_caller_token_follows_its_users_changes_at_once(
    idp: OidcProvider, start_gateway: StartGateway, make_user: MakeUser, pool: asyncpg.Pool
) -> None:
    """A verified caller JWT is remembered with its user's Principal; moving the user into a spent team, raising
    their limit, or deleting them is seen by this process at once, as for their key (not auth.cache_ttl_s later)."""
    alice_key, _ = await make_user("alice@example.com", limit_tokens=1)
    server = await start_gateway(idp, sso=sso_section(idp), caller=caller_section(idp, jwks_min_refetch_s=0))
    ops = person(idp, "ops@example.com", ["gateway-admins"])
    message = {"model": "claude-fast", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    token = idp.sign({"sub": "alice-cli", "email": "alice@example.com", "aud": CALLER_AUDIENCE})
    assert (await call(server, "POST", "/v1/messages", token, message))[0] == 200
    status, body = await call(server, "POST", "/v1/messages", token, message)
    assert status == 429 and body["error"]["type"] == "rate_limit_error"  # her own limit of 1 token
    user = await pool.fetchval("SELECT id FROM users WHERE email = 'alice@example.com'")
    raised = await call(server, "POST", f"/v1/user-api-keys/{user}/increase-token-limit", ops, {"increment": 10**6})
    assert raised[0] == 200
    assert (await call(server, "POST", "/v1/messages", token, message))[0] == 200  # the raised limit, at once
    status, team = await call(server, "POST", "/v1/teams", ops, {"name": "spent", "monthlyTokenLimit": 0})
    assert status == 201
    assert (await call(server, "PUT", f"/v1/user-api-keys/{user}/team", ops, {"teamId": team["id"]}))[0] == 200
    status, body = await call(server, "POST", "/v1/messages", token, message)
    assert status == 429 and body.get("scope") == "team", body  # the new team's limit, at once
    assert (await call(server, "DELETE", f"/v1/user-api-keys/{user}", ops))[0] == 200
    status, body = await call(server, "POST", "/v1/messages", token, message)
    assert status == 401 and body["error"]["type"] == "authentication_error", body
    assert (await call(server, "POST", "/v1/messages", alice_key, message))[0] == 401  # her key, the control


async def test_the_database_away_is_a_503_for_a_new_caller_token_and_a_persons_token(
    idp: OidcProvider, database_url: str, upstream: FakeUpstream, make_user: MakeUser, tmp_path: Any
) -> None:
    """A token never seen needs the database (its user, a person's team and identity row): with PostgreSQL away that
    is a 503 in the caller's own shape, never a 500."""
    await make_user("alice@example.com")
    proxy = TcpProxy(upstream_of(database_url))
    await proxy.start()
    cfg = gateway_config(
        upstream.url,
        usage_log={"spill_dir": str(tmp_path / "spill")},
        sso=sso_section(idp),
        caller_jwt=caller_section(idp),
        environ={SECRET_ENV: CLIENT_SECRET},
    )
    server = TestServer(build_app(cfg, dsn=through(database_url, proxy.port)), host="127.0.0.1")
    await server.start_server()
    try:
        token = idp.sign({"sub": "alice-cli", "email": "alice@example.com", "aud": CALLER_AUDIENCE})
        message = {"model": "claude-fast", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
        chat = {"model": "claude-fast", "messages": [{"role": "user", "content": "hi"}]}
        await proxy.cut()
        status, body = await call(server, "POST", "/v1/messages", token, message)
        assert status == 503 and body["type"] == "error" and "database" in body["error"]["message"], body
        status, body = await call(server, "POST", "/v1/chat/completions", token, chat)
        assert status == 503 and "database" in body["error"]["message"], body
        status, body = await call(server, "GET", "/v1/teams", person(idp, "ops@example.com", ["gateway-admins"]))
        assert status == 503 and "database" in body["error"], body
    finally:
        await server.close()
        await proxy.close()


async def test_claims_postgresql_cannot_hold_are_refused_not_a_500(
    idp: OidcProvider, start_gateway: StartGateway, make_user: MakeUser
) -> None:
    """A NUL in a signed email, team or subject claim (PostgreSQL text cannot hold one) is a 401 / 403 in the
    caller's shape, never a 500 from the query it would have reached."""
    await make_user("alice@example.com")
    server = await start_gateway(idp, sso=sso_section(idp), caller=caller_section(idp))
    message = {"model": "claude-fast", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    token = idp.sign({"sub": "alice-cli", "email": "alice@example.com\x00", "aud": CALLER_AUDIENCE})
    status, body = await call(server, "POST", "/v1/messages", token, message)
    assert status == 401 and body["error"]["type"] == "authentication_error", body
    for claims in ({"team": "plat\x00form"}, {"email": "ops\x00@example.com"}, {"sub": "x\x00", "email": None}):
        token = idp.sign(
            {"sub": "ops", "email": "ops@example.com", "aud": MANAGEMENT_AUDIENCE, **claims}
            | {"groups": ["team-leads" if "team" in claims else "gateway-admins"]}
        )
        status, body = await call(server, "GET", "/v1/teams", token)
        assert status in (401, 403) and "error" in body, (claims, body)


async def test_one_person_is_one_identity_whatever_the_case_of_their_email(
    idp: OidcProvider, start_gateway: StartGateway, pool: asyncpg.Pool
) -> None:
    """Emails are matched in any case everywhere in the gateway (users, caller JWTs); a person's audit subject and
    identity row are too, so `Ops@Example.com` and `ops@example.com` are not two actors."""
    server = await start_gateway(idp, sso=sso_section(idp), caller=None)
    for email, team in (("Ops@Example.COM", "a"), ("ops@example.com", "b")):
        assert (await call(server, "POST", "/v1/teams", person(idp, email, ["gateway-admins"]), {"name": team}))[
            0
        ] == 201
    rows = await pool.fetch("SELECT actor, actor_key_id FROM gateway_audit WHERE action = 'team_created'")
    assert {(r["actor"], r["actor_key_id"]) for r in rows} == {("sso:ops@example.com", rows[0]["actor_key_id"])}
    assert await pool.fetchval("SELECT count(*) FROM api_keys WHERE name LIKE 'sso:%'") == 1
