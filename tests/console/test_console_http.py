"""The console over plain HTTP (no browser): sign-in, sessions, CSRF, roles, /v1/me. The browser tests are in
test_console_browser.py."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from gateway import db
from tests.conftest import GatewayFactory, flushed_usage
from tests.fakes.tcp_proxy import TcpProxy, through, upstream_of

MakeKey = Callable[..., Awaitable[tuple[str, db.KeyRow]]]
MESSAGE = {"model": "claude-fast", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
ADMIN_PAGES = ["/console/", "/console/users", "/console/keys", "/console/audit", "/console/config"]
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def url(server: TestServer, path: str) -> str:
    return str(server.make_url(path))


async def sign_in(http: aiohttp.ClientSession, server: TestServer, key: str) -> aiohttp.ClientResponse:
    async with http.get(url(server, "/console/sign-in")) as page:
        token = CSRF.search(await page.text())
    assert token, "the sign-in form carries a CSRF token"
    return await http.post(url(server, "/console/sign-in"), data={"csrf": token.group(1), "key": key})


async def csrf_of(http: aiohttp.ClientSession, server: TestServer, path: str) -> str:
    async with http.get(url(server, path)) as page:
        assert page.status == 200, await page.text()
        found = CSRF.search(await page.text())
    assert found
    return found.group(1)


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


@pytest.mark.parametrize("path", [*ADMIN_PAGES, "/console/me"])
async def test_no_session_redirects_to_sign_in(gateway: TestServer, http: aiohttp.ClientSession, path: str) -> None:
    async with http.get(url(gateway, path), allow_redirects=False) as resp:
        assert resp.status == 303
        assert resp.headers["Location"] == "/console/sign-in"


async def test_admin_key_signs_in_with_a_strict_http_only_cookie(
    gateway: TestServer, http: aiohttp.ClientSession, make_key: MakeKey
) -> None:
    admin, _ = await make_key("ops", admin=True)
    resp = await sign_in(http, gateway, admin)
    assert resp.status == 200 and str(resp.url).endswith("/console/")
    cookie = resp.history[0].headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=28800" in cookie
    assert "Secure" not in cookie  # plain HTTP here; behind TLS (X-Forwarded-Proto: https) it is Secure
    assert admin not in cookie and admin not in await resp.text()
    for path in ADMIN_PAGES:
        async with http.get(url(gateway, path)) as page:
            assert page.status == 200, path
            assert admin not in await page.text()
            assert page.headers["Cache-Control"] == "no-store"


async def test_cookie_is_secure_behind_tls(gateway: TestServer, http: aiohttp.ClientSession) -> None:
    async with http.get(url(gateway, "/console/sign-in"), headers={"X-Forwarded-Proto": "https"}) as page:
        assert "Secure" in page.headers["Set-Cookie"]


async def test_a_wrong_key_is_refused_and_no_session_starts(gateway: TestServer, http: aiohttp.ClientSession) -> None:
    resp = await sign_in(http, gateway, "gw-0123456789abcdef_not-a-real-secret")
    assert resp.status == 401
    assert "invalid or revoked API key" in await resp.text()
    async with http.get(url(gateway, "/console/"), allow_redirects=False) as page:
        assert page.status == 303


async def test_user_key_reaches_its_own_page_but_no_admin_page(
    gateway: TestServer, http: aiohttp.ClientSession, make_user: MakeKey, pool: asyncpg.Pool
) -> None:
    user_key, _ = await make_user("ada@example.com")
    resp = await sign_in(http, gateway, user_key)
    assert str(resp.url).endswith("/console/me")
    assert "ada@example.com" in await resp.text()
    for path in ADMIN_PAGES:
        async with http.get(url(gateway, path)) as page:
            assert page.status == 403, path
    csrf = await csrf_of(http, gateway, "/console/me")
    async with http.post(url(gateway, "/console/keys"), data={"csrf": csrf, "name": "mine", "admin": "on"}) as resp:
        assert resp.status == 403
    assert await db.service_keys(pool) == []


@pytest.mark.parametrize("csrf", [None, "", "forged-token"])
async def test_a_post_without_the_csrf_token_is_refused(
    gateway: TestServer, http: aiohttp.ClientSession, make_key: MakeKey, pool: asyncpg.Pool, csrf: str | None
) -> None:
    admin, _ = await make_key("ops", admin=True)
    await sign_in(http, gateway, admin)
    form = {"name": "ci", "admin": "on"} | ({} if csrf is None else {"csrf": csrf})
    async with http.post(url(gateway, "/console/keys"), data=form) as resp:
        assert resp.status == 403
        assert "CSRF" in await resp.text()
    assert [k.name for k in await db.service_keys(pool)] == ["ops"]  # no "ci" key was made


async def test_sign_in_itself_needs_the_csrf_token(
    gateway: TestServer, http: aiohttp.ClientSession, make_key: MakeKey
) -> None:
    admin, _ = await make_key("ops", admin=True)
    async with http.post(url(gateway, "/console/sign-in"), data={"key": admin}) as resp:
        assert resp.status == 403


async def test_revoking_the_key_ends_its_sessions(
    gateway: TestServer, http: aiohttp.ClientSession, make_key: MakeKey, pool: asyncpg.Pool
) -> None:
    admin, row = await make_key("ops", admin=True)
    await sign_in(http, gateway, admin)
    await db.revoke_key(pool, row.id)
    async with http.get(url(gateway, "/console/"), allow_redirects=False) as page:
        assert page.status == 303


async def test_sign_out_forgets_the_session(
    gateway: TestServer, http: aiohttp.ClientSession, make_key: MakeKey
) -> None:
    admin, _ = await make_key("ops", admin=True)
    await sign_in(http, gateway, admin)
    csrf = await csrf_of(http, gateway, "/console/")
    stolen = {c.key: c.value for c in http.cookie_jar}
    async with http.post(url(gateway, "/console/sign-out"), data={"csrf": csrf}) as resp:
        assert str(resp.url).endswith("/console/sign-in")
    async with http.get(url(gateway, "/console/"), allow_redirects=False) as page:
        assert page.status == 303
    # A copy of the cookie taken before sign-out (a shared machine, a proxy log) opens nothing either.
    async with (
        aiohttp.ClientSession(cookies=stolen) as thief,
        thief.get(url(gateway, "/console/"), allow_redirects=False) as page,
    ):
        assert page.status == 303


async def test_console_can_be_switched_off(make_gateway: GatewayFactory, http: aiohttp.ClientSession) -> None:
    server = await make_gateway(console={"enabled": False})
    async with http.get(url(server, "/console/sign-in")) as resp:
        assert resp.status == 404


async def test_me_in_both_dialects(
    gateway: TestServer, http: aiohttp.ClientSession, make_user: MakeKey, pool: asyncpg.Pool
) -> None:
    user_key, row = await make_user("ada@example.com", limit_tokens=5000)
    async with http.post(url(gateway, "/v1/messages"), json=MESSAGE, headers={"x-api-key": user_key}) as resp:
        assert resp.status == 200
    (usage,) = await flushed_usage(gateway, pool)
    tokens = usage["input_tokens"] + usage["output_tokens"] + usage["cache_read_tokens"] + usage["cache_write_tokens"]
    for headers in ({"x-api-key": user_key}, {"Authorization": f"Bearer {user_key}"}):
        async with http.get(url(gateway, "/v1/me"), headers=headers) as resp:
            me = await resp.json()
        assert me["user"]["email"] == "ada@example.com" and me["keyId"] == row.lookup_id
        assert (me["tokensUsed"], me["tokenLimit"], me["requests"]) == (tokens, 5000, 1)
        async with http.get(url(gateway, "/v1/me/usage"), headers=headers) as resp:
            (day,) = (await resp.json())["days"]
        assert (day["model"], day["totalTokens"], day["requests"]) == ("claude-haiku-4-5", tokens, 1)


async def test_me_errors_in_the_callers_dialect(gateway: TestServer, http: aiohttp.ClientSession, key: str) -> None:
    async with http.get(url(gateway, "/v1/me"), headers={"x-api-key": "gw-0123456789abcdef_wrong"}) as resp:
        assert resp.status == 401
        assert (await resp.json())["type"] == "error"  # Anthropic's shape
    async with http.get(url(gateway, "/v1/me")) as resp:
        assert resp.status == 401
        assert "message" in (await resp.json())["error"]  # OpenAI's shape
    async with http.get(
        url(gateway, "/v1/me/usage?from=2026-13-01"), headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        assert resp.status == 400
        assert "'from'" in (await resp.json())["error"]["message"]
    async with http.get(
        url(gateway, "/v1/me/usage?from=2020-01-01&to=2026-01-01"), headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        assert resp.status == 400


async def test_a_huge_sign_in_body_is_refused_unread(gateway: TestServer, http: aiohttp.ClientSession) -> None:
    async with http.get(url(gateway, "/console/sign-in")) as page:
        token = CSRF.search(await page.text())
    assert token
    form = {"csrf": token.group(1), "key": "gw-" + "a" * 200_000}
    async with http.post(url(gateway, "/console/sign-in"), data=form) as resp:
        assert resp.status == 413


async def test_search_text_is_not_a_pattern_and_odd_input_is_a_4xx(
    gateway: TestServer, http: aiohttp.ClientSession, make_key: MakeKey, make_user: MakeKey
) -> None:
    admin, _ = await make_key("ops", admin=True)
    await make_user("a_b@example.com")
    await make_user("axb@example.com")
    await sign_in(http, gateway, admin)
    async with http.get(url(gateway, "/console/users"), params={"q": "a_b"}) as page:
        text = await page.text()
    assert "a_b@example.com" in text and "axb@example.com" not in text  # `_` matched literally
    for path, status in [
        ("/console/users?page=0", 400),
        ("/console/users?page=²", 400),
        ("/console/users?q=%00%F0%9F%92%A5", 200),
        ("/console/users/not-a-uuid", 404),
        ("/console/users/00000000-0000-0000-0000-000000000000", 404),
        ("/console/audit?page=99999", 200),
    ]:
        async with http.get(url(gateway, path)) as resp:
            assert resp.status == status, path
    csrf = await csrf_of(http, gateway, "/console/users")
    for form in ({"email": "nope", "firstname": "a", "lastname": "b"}, {"email": "x@example.com"}):
        async with http.post(url(gateway, "/console/users"), data={"csrf": csrf, **form}) as resp:
            assert resp.status == 400
    async with http.post(
        url(gateway, "/console/users"),
        data={"csrf": csrf, "email": "a_b@example.com", "firstname": "a", "lastname": "b"},
    ) as resp:
        assert resp.status == 409


async def test_database_away_is_a_503_page_and_a_503_from_me(
    make_gateway: GatewayFactory, database_url: str, make_key: MakeKey, http: aiohttp.ClientSession
) -> None:
    """Console pages and /v1/me answer 503 (never a 500 traceback page) while PostgreSQL is unreachable."""
    proxy = TcpProxy(upstream_of(database_url))
    await proxy.start()
    try:
        server = await make_gateway(dsn=through(database_url, proxy.port))
        admin, _ = await make_key("ops", admin=True)
        await sign_in(http, server, admin)
        async with http.get(url(server, "/v1/me"), headers={"Authorization": f"Bearer {admin}"}) as resp:
            assert resp.status == 200  # the key is now in the cache
        await proxy.cut()
        async with http.get(url(server, "/console/")) as page:
            assert page.status == 503
            assert "cannot reach its database" in await page.text()
        async with http.get(url(server, "/v1/me"), headers={"Authorization": f"Bearer {admin}"}) as resp:
            assert resp.status == 503
            assert "database" in (await resp.json())["error"]["message"]
    finally:
        await proxy.close()


async def test_console_without_the_slash_and_static_files(gateway: TestServer, http: aiohttp.ClientSession) -> None:
    async with http.get(url(gateway, "/console"), allow_redirects=False) as resp:
        assert resp.status == 301 and resp.headers["Location"] == "/console/"
    async with http.get(url(gateway, "/console/static/console.css")) as resp:
        assert resp.status == 200 and "text/css" in resp.headers["Content-Type"]
    async with http.get(url(gateway, "/console/static/../../gateway.yaml")) as resp:
        assert resp.status in (403, 404)
