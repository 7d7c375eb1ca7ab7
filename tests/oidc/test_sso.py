"""Single sign-on and caller JWTs against a real OpenID provider (oidc-provider, tests/oidc/provider.mjs).

Caller JWTs on the model routes (both SDKs), every hostile token refused with 401 in the caller's dialect, key
rotation at the provider without restarting the gateway, people's tokens on the management API mapped to roles,
the console flow's state / nonce checks, and the `sso:` / `caller_jwt:` config errors naming the YAML path.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import asyncpg
import jwt
import openai
import pytest
import yaml
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization

from gateway import db
from gateway.config import ConfigError, parse_config
from gateway.errors import Unauthenticated
from gateway.roles import Role
from gateway.sso.config import SsoConfig
from gateway.sso.issuer import IssuerKeys
from gateway.sso.people import identity_of
from tests.conftest import flushed_usage
from tests.oidc.conftest import ROLES, StartGateway, caller_section, sso_section
from tests.oidc.provider import CALLER_AUDIENCE, MANAGEMENT_AUDIENCE, OidcProvider, SigningKey

MakeUser = Callable[..., Awaitable[tuple[str, db.KeyRow]]]
ROUTES = {  # path -> (body, dialect)
    "/v1/messages": (
        {"model": "claude-fast", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
        "anthropic",
    ),
    "/v1/chat/completions": ({"model": "claude-fast", "messages": [{"role": "user", "content": "hi"}]}, "openai"),
    "/v1/responses": ({"model": "claude-fast", "input": "hi"}, "openai"),
}


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def post(server: TestServer, path: str, token: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(server.make_url(path), json=body, headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        return resp.status, await resp.json()


def assert_dialect_401(status: int, body: dict[str, Any], dialect: str) -> str:
    """The 401 is in the caller's own error shape; returns the message."""
    assert status == 401, body
    if dialect == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
        return str(body["error"]["message"])
    assert body["error"]["type"] == "invalid_request_error" or body["error"]["code"] == "invalid_api_key", body
    return str(body["error"]["message"])


# --- caller JWTs on the model routes ------------------------------------------------------------------------


async def test_caller_jwt_with_the_anthropic_and_openai_sdks(
    idp: OidcProvider, start_gateway: StartGateway, make_user: MakeUser, pool: asyncpg.Pool, key: str
) -> None:
    """A token the provider minted for alice's CLI is alice: her key's usage rows, through both real SDKs."""
    _, alice = await make_user("alice@example.com")
    server = await start_gateway(idp, sso=None, caller=caller_section(idp))
    token = await idp.client_token("alice-cli", CALLER_AUDIENCE)
    base = str(server.make_url(""))
    async with anthropic.AsyncAnthropic(base_url=base, auth_token=token, max_retries=0) as claude:
        message = await claude.messages.create(
            model="claude-fast", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
    assert message.content[0].type == "text"
    async with openai.AsyncOpenAI(base_url=base + "/v1", api_key=token, max_retries=0) as gpt:
        chat = await gpt.chat.completions.create(model="claude-fast", messages=[{"role": "user", "content": "hi"}])
    assert chat.choices[0].message.content
    status, _ = await post(server, "/v1/messages", key, ROUTES["/v1/messages"][0])  # gateway keys work beside it
    assert status == 200
    rows = await flushed_usage(server, pool)
    mine = [r for r in rows if r["key_id"] == alice.id]
    assert sorted(r["route"] for r in mine) == ["chat_completions", "messages"]
    assert all(r["user_id"] == alice.user_id and r["status"] == 200 for r in mine)


async def test_a_jwt_shaped_claude_code_token_from_elsewhere_still_maps_to_its_user(
    idp: OidcProvider, start_gateway: StartGateway, make_key: MakeUser
) -> None:
    """Only tokens naming the caller_jwt issuer are judged as caller JWTs; other JWT-shaped credentials reach the
    Claude Code token mapping as before."""
    admin, _ = await make_key("ops", admin=True)
    server = await start_gateway(idp, sso=None, caller=caller_section(idp))
    foreign = jwt.encode(
        {"iss": "https://other.example.com", "sub": "cc"}, "a-secret-of-theirs-32-bytes-long!", "HS256"
    )
    user = {"email": "cc@example.com", "firstname": "C", "lastname": "C", "claudecodeUserKey": foreign}
    async with (
        aiohttp.ClientSession() as http,
        http.post(server.make_url("/v1/user-api-keys"), json=user, headers={"x-api-key": admin}) as resp,
    ):
        assert resp.status == 201, await resp.text()
    assert (await post(server, "/v1/messages", foreign, ROUTES["/v1/messages"][0]))[0] == 200


def hostile_tokens(idp: OidcProvider) -> dict[str, str]:
    """Tokens that must all be refused: each differs from a good one in exactly the way its name says."""
    good = {"email": "alice@example.com", "aud": CALLER_AUDIENCE, "sub": "alice-cli"}
    now = int(time.time())
    real = idp.sign(good)
    head, payload, signature = real.split(".")
    public_pem = (
        idp.keys[0]
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    confused_head = _b64({"alg": "HS256", "typ": "JWT", "kid": idp.keys[0].kid})
    confused_mac = hmac.new(public_pem, f"{confused_head}.{payload}".encode(), hashlib.sha256).digest()
    return {
        "expired": idp.sign({**good, "iat": now - 7200, "exp": now - 3600}),
        "wrong_audience": idp.sign({**good, "aud": "urn:someone-else"}),
        "wrong_issuer": idp.sign({**good, "iss": "https://evil.example.com"}),
        "no_expiry": idp.sign({**good, "exp": None}),
        "alg_none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "unsigned": f"{head}.{payload}.",
        "tampered": f"{head}.{_b64({**claims, 'email': 'root@example.com'})}.{signature}",
        "bad_signature": f"{head}.{payload}.{signature[:-6]}AAAAAA",
        # the classic key-confusion attack: HMAC-SHA256 keyed with the issuer's public key
        "hs256_public_key": f"{confused_head}.{payload}.{base64.urlsafe_b64encode(confused_mac).rstrip(b'=').decode()}",
        "unknown_key": idp.sign(good, key=SigningKey.make("not-published")),
        "unknown_user": idp.sign({**good, "email": "ghost@example.com"}),
        "no_user_claim": idp.sign({"aud": CALLER_AUDIENCE, "sub": "x"}),
        "garbage": "eyJhbGciOi.not-a-jwt.at-all",
    }


HOSTILE = [
    "expired",
    "wrong_audience",
    "wrong_issuer",
    "no_expiry",
    "alg_none",
    "unsigned",
    "tampered",
    "bad_signature",
    "hs256_public_key",
    "unknown_key",
    "unknown_user",
    "no_user_claim",
    "garbage",
]


async def test_every_hostile_token_gets_401_in_the_callers_dialect(
    idp: OidcProvider, start_gateway: StartGateway, make_user: MakeUser, pool: asyncpg.Pool
) -> None:
    await make_user("alice@example.com")
    server = await start_gateway(idp, sso=None, caller=caller_section(idp))
    tokens = hostile_tokens(idp)
    good = idp.sign({"email": "alice@example.com", "aud": CALLER_AUDIENCE, "sub": "alice-cli"})
    for path, (body, _) in ROUTES.items():  # the control: the same shape of token, untouched, is accepted
        assert (await post(server, path, good, body))[0] == 200, path
    for name in HOSTILE:
        for path, (body, dialect) in ROUTES.items():
            status, answer = await post(server, path, tokens[name], body)
            message = assert_dialect_401(status, answer, dialect)
            assert message, (name, path)
    provider_minted = await idp.client_token("alice-cli", "urn:someone-else")  # the provider's own, wrong aud
    status, answer = await post(server, "/v1/messages", provider_minted, ROUTES["/v1/messages"][0])
    assert "audience" in assert_dialect_401(status, answer, "anthropic").lower()
    rows = await flushed_usage(server, pool)
    assert sum(r["status"] == 200 for r in rows) == 3  # only the control requests reached the upstream


async def test_a_refused_token_is_refused_before_the_body_is_read(
    idp: OidcProvider, start_gateway: StartGateway
) -> None:
    """Auth is from the headers: a 401 comes back while the announced body never arrives."""
    server = await start_gateway(idp, sso=None, caller=caller_section(idp))
    token = hostile_tokens(idp)["expired"]
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        f"POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n".encode()
    )
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    assert b" 401 " in status_line


async def test_key_rotation_at_the_provider_without_restarting_the_gateway(
    rotating_idp: OidcProvider, start_gateway: StartGateway, make_user: MakeUser
) -> None:
    idp = rotating_idp
    await make_user("alice@example.com")
    server = await start_gateway(idp, sso=None, caller=caller_section(idp))
    body = ROUTES["/v1/chat/completions"][0]
    before = await idp.client_token("alice-cli", CALLER_AUDIENCE)
    assert (await post(server, "/v1/chat/completions", before, body))[0] == 200
    old_key = idp.rotate()  # the provider restarts signing with key-2; key-1 is gone from its JWKS
    after = await idp.client_token("alice-cli", CALLER_AUDIENCE)
    assert jwt.get_unverified_header(after)["kid"] == "key-2"
    assert (await post(server, "/v1/chat/completions", after, body))[0] == 200  # unknown kid: keys refetched
    status, answer = await post(server, "/v1/chat/completions", before, body)  # the old key no longer verifies
    assert "key-1" in assert_dialect_401(status, answer, "openai")
    forged_with_old = idp.sign({"email": "alice@example.com", "aud": CALLER_AUDIENCE}, key=old_key)
    assert (await post(server, "/v1/chat/completions", forged_with_old, body))[0] == 401


async def test_unknown_key_ids_refetch_at_most_once_per_interval(
    rotating_idp: OidcProvider, start_gateway: StartGateway, make_user: MakeUser
) -> None:
    """With jwks_min_refetch_s set high, a rotation is seen only after the interval: floods of made-up kids cost
    the issuer nothing, and the cached key keeps answering."""
    idp = rotating_idp
    await make_user("alice@example.com")
    server = await start_gateway(idp, sso=None, caller=caller_section(idp, jwks_min_refetch_s=3600))
    body = ROUTES["/v1/messages"][0]
    before = await idp.client_token("alice-cli", CALLER_AUDIENCE)
    assert (await post(server, "/v1/messages", before, body))[0] == 200
    idp.rotate()
    after = await idp.client_token("alice-cli", CALLER_AUDIENCE)
    status, answer = await post(server, "/v1/messages", after, body)
    assert "key-2" in assert_dialect_401(status, answer, "anthropic")  # no refetch within the interval
    assert (await post(server, "/v1/messages", before, body))[0] == 200  # the cached token still answers


async def test_an_unreachable_issuer_leaves_the_cached_keys_working(
    rotating_idp: OidcProvider, start_gateway: StartGateway, make_user: MakeUser
) -> None:
    idp = rotating_idp
    await make_user("alice@example.com")
    server = await start_gateway(idp, sso=None, caller=caller_section(idp, jwks_cache_s=0.2))
    body = ROUTES["/v1/messages"][0]
    assert (await post(server, "/v1/messages", idp.sign({"email": "alice@example.com", "aud": CALLER_AUDIENCE}), body))[
        0
    ] == 200
    idp.stop()
    await asyncio.sleep(0.3)  # the key cache is stale: the next token tries the issuer, which is down
    fresh = idp.sign({"email": "alice@example.com", "aud": CALLER_AUDIENCE, "jti": "another"})
    assert (await post(server, "/v1/messages", fresh, body))[0] == 200
    unknown = idp.sign({"email": "alice@example.com", "aud": CALLER_AUDIENCE}, key=SigningKey.make("key-9"))
    status, answer = await post(server, "/v1/messages", unknown, body)
    assert "key-9" in assert_dialect_401(status, answer, "anthropic")


# --- people on the management API ---------------------------------------------------------------------------


async def admin_get(server: TestServer, token: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(server.make_url("/v1/user-api-keys"), headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        return resp.status, await resp.json()


async def test_management_api_takes_a_persons_token_with_the_role_from_groups(
    idp: OidcProvider, start_gateway: StartGateway, make_user: MakeUser, pool: asyncpg.Pool
) -> None:
    await make_user("grace@example.com")
    server = await start_gateway(idp, sso=sso_section(idp), caller=caller_section(idp))
    ops = await idp.client_token("ops-cli", MANAGEMENT_AUDIENCE)  # groups: gateway-admins -> admin
    status, body = await admin_get(server, ops)
    assert status == 200 and [u["email"] for u in body] == ["grace@example.com"]
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            server.make_url("/v1/user-api-keys"),
            json={"email": "new@example.com", "firstname": "New", "lastname": "Person"},
            headers={"Authorization": f"Bearer {ops}"},
        ) as resp,
    ):
        assert resp.status == 201, await resp.text()
    actor = await pool.fetchrow(
        "SELECT k.name, a.actor FROM key_audit a JOIN api_keys k ON k.id = a.actor_key_id WHERE a.action = 'created'"
    )
    assert actor["name"] == "sso:ops@example.com"  # the audit names the person
    assert actor["actor"] == "sso:ops@example.com"
    finance = await idp.client_token("finance-cli", MANAGEMENT_AUDIENCE)  # viewer: reads everything, changes nothing
    assert (await admin_get(server, finance))[0] == 200
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            server.make_url("/v1/user-api-keys"),
            json={"email": "other@example.com", "firstname": "Other", "lastname": "Person"},
            headers={"Authorization": f"Bearer {finance}"},
        ) as resp,
    ):
        assert resp.status == 403, await resp.text()
    intern = await idp.client_token("intern-cli", MANAGEMENT_AUDIENCE)  # unmapped, no default role
    status, body = await admin_get(server, intern)
    assert status == 403 and "sso.roles" in body["error"]
    caller_token = await idp.client_token("ops-cli", CALLER_AUDIENCE)  # a caller token is not a person's
    status, body = await admin_get(server, caller_token)
    assert status == 401 and "audience" in body["error"].lower()
    status, body = await admin_get(server, hostile_tokens(idp)["expired"].replace(CALLER_AUDIENCE, MANAGEMENT_AUDIENCE))
    assert status == 401


# --- role mapping -------------------------------------------------------------------------------------------


def sso_config(**overrides: Any) -> SsoConfig:
    base = {"issuer": "https://idp.example.com", "client_id": "gw", "client_secret_env": "S"}
    return SsoConfig.model_validate({**base, "redirect_url": "https://gw/cb", "roles": ROLES, **overrides})


@pytest.mark.parametrize(
    ("groups", "default", "role"),
    [
        pytest.param(["gateway-admins"], None, Role.ADMIN, id="admin"),
        pytest.param(["developers", "gateway-admins"], None, Role.ADMIN, id="strongest-wins"),
        pytest.param(["finance"], None, Role.VIEWER, id="viewer"),
        pytest.param(["team-leads", "finance"], None, Role.TEAM_ADMIN, id="team-admin-over-viewer"),
        pytest.param("developers", None, Role.USER, id="a-string-claim"),
        pytest.param(["interns"], "user", Role.USER, id="unmapped-gets-the-default"),
        pytest.param(["interns"], None, None, id="unmapped-refused"),
        pytest.param(None, None, None, id="no-claim-refused"),
    ],
)
def test_role_from_the_groups_claim(groups: Any, default: str | None, role: Role | None) -> None:
    cfg = sso_config(default_role=default, team_claim="team")
    claims = {"sub": "u1", "email": "u@example.com", "groups": groups, "team": "platform"}
    if role is None:
        with pytest.raises(Exception, match="maps to a gateway role") as refused:
            identity_of(cfg, claims)
        assert getattr(refused.value, "status", None) == 403
        return
    person = identity_of(cfg, claims)
    assert (person.role, person.subject, person.team) == (role, "sso:u@example.com", "platform")


# --- the console flow's checks ------------------------------------------------------------------------------


async def test_callback_refuses_a_wrong_state_and_a_missing_flow(
    idp: OidcProvider, start_gateway: StartGateway
) -> None:
    server = await start_gateway(idp, sso=sso_section(idp), caller=None)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(server.make_url("/console/sso/callback?code=x&state=y")) as resp:
            assert resp.status == 400 and "not started from this browser" in await resp.text()
        async with http.get(server.make_url("/console/sso/start"), allow_redirects=False) as resp:
            assert resp.status == 303
            location = resp.headers["Location"]
        assert location.startswith(idp.issuer + "/auth?")
        query = dict(x.split("=", 1) for x in location.split("?", 1)[1].split("&"))
        assert query["code_challenge_method"] == "S256" and query["nonce"] and query["state"]
        async with http.get(server.make_url(f"/console/sso/callback?code=x&state={query['state']}x")) as resp:
            assert resp.status == 400 and "state parameter is not the one" in await resp.text()


async def test_id_token_nonce_must_be_the_one_sent(idp: OidcProvider) -> None:
    """The nonce check, on a token the provider's key signed: right nonce accepted, any other refused."""
    async with aiohttp.ClientSession() as http:
        keys = IssuerKeys(sso_config(issuer=idp.issuer), http)
        token = idp.sign({"aud": "gw", "sub": "alice", "nonce": "n-1"})
        assert (await keys.verify(token, audience="gw", nonce="n-1"))["sub"] == "alice"
        with pytest.raises(Unauthenticated, match="nonce"):
            await keys.verify(token, audience="gw", nonce="n-2")


# --- config -------------------------------------------------------------------------------------------------

MINIMAL = {
    "providers": {"anthropic": {"type": "anthropic", "base_url": "http://upstream", "api_key": "k"}},
    "models": {"claude-fast": {"provider": "anthropic", "model": "claude-haiku-4-5"}},
}
SSO = {
    "issuer": "https://idp.example.com",
    "client_id": "gw",
    "client_secret_env": "SSO_SECRET",
    "redirect_url": "https://gw/cb",
}


@pytest.mark.parametrize(
    ("section", "error"),
    [
        pytest.param({"sso": {**SSO, "roles": {"finance": "boss"}}}, "sso.roles.finance: Input should be", id="role"),
        pytest.param({"sso": {**SSO, "colour": "blue"}}, "sso.colour: unknown key (allowed: ", id="unknown-key"),
        pytest.param(
            {"sso": {**SSO, "client_secret_env": "UNSET"}}, "sso.client_secret_env: the environment", id="env"
        ),
        pytest.param({"caller_jwt": {"issuer": "ftp://x", "audience": "a"}}, "caller_jwt.issuer: ", id="issuer"),
        pytest.param({"caller_jwt": {"issuer": "https://x"}}, "caller_jwt.audience: required", id="audience"),
        pytest.param(  # a model-route token would also be a person's management-API credential, and back
            {"sso": {**SSO, "api_audience": "api"}, "caller_jwt": {"issuer": SSO["issuer"], "audience": "api"}},
            "caller_jwt.audience: 'api' is also sso.api_audience",
            id="shared-audience",
        ),
        pytest.param(
            {"sso": SSO, "caller_jwt": {"issuer": SSO["issuer"] + "/", "audience": "gw"}},
            "caller_jwt.audience: 'gw' is also sso.client_id",
            id="client-id-audience",
        ),
    ],
)
def test_config_errors_name_the_yaml_path(section: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({**MINIMAL, **section}, {"SSO_SECRET": "s"})
    assert str(exc.value).startswith(error)


def test_the_client_secret_never_prints() -> None:
    cfg = parse_config({**MINIMAL, "sso": SSO}, {"SSO_SECRET": "very-secret-value"})
    assert cfg.identity.sso is not None
    assert cfg.identity.sso.client_secret.get_secret_value() == "very-secret-value"
    assert "very-secret-value" not in repr(cfg) and "very-secret-value" not in str(cfg.identity)


def test_the_readme_keycloak_example_is_a_valid_config() -> None:
    """The README's *Single sign-on* YAML, as written, parses (with its secret variable set)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Single sign-on\n") :]
    example = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    cfg = parse_config({**MINIMAL, **example}, {"GATEWAY_SSO_CLIENT_SECRET": "from-keycloak"})
    assert cfg.identity.sso is not None and cfg.identity.caller_jwt is not None
    assert cfg.identity.sso.roles["finance"] is Role.VIEWER
    assert cfg.identity.sso.redirect_url.endswith("/console/sso/callback")
