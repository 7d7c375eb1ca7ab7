"""The console and /v1/me under attack: odd paging and dates, broken form bodies, forged tokens, races.

Each case here was a 500 (or could have been) before; a hostile or careless caller gets a 4xx page instead.
"""

from __future__ import annotations

import asyncio

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from gateway.console.pages import ClosedDays
from tests.conftest import GatewayFactory
from tests.console.test_console_http import CSRF, MakeKey, csrf_of, http, sign_in, url
from tests.fakes.tcp_proxy import TcpProxy, through, upstream_of

__all__ = ["http"]  # the fixture, shared with the other console tests


@pytest.mark.parametrize("path", ["/console/users", "/console/audit"])
async def test_a_page_number_of_thousands_of_digits_is_a_400(
    gateway: TestServer, http: aiohttp.ClientSession, make_key: MakeKey, path: str
) -> None:
    """int() refuses strings over 4300 digits with a ValueError; the URL limit (8 KiB) lets 5000 through."""
    admin, _ = await make_key("ops", admin=True)
    await sign_in(http, gateway, admin)
    async with http.get(url(gateway, path), params={"page": "9" * 5000}) as resp:
        assert resp.status == 400
        assert "must be a whole number from 1" in await resp.text()


async def test_me_usage_up_to_the_last_day_of_the_calendar_is_a_400(
    gateway: TestServer, http: aiohttp.ClientSession, key: str
) -> None:
    params = {"from": "9999-12-30", "to": "9999-12-31"}
    async with http.get(url(gateway, "/v1/me/usage"), params=params, headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status == 400
        assert "'to'" in (await r.json())["error"]["message"]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", b"csrf=x"),  # no boundary
        ("multipart/form-data; boundary=b", b"--b\r\nGarbage"),
        (
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="csrf"\r\n\r\n\xff\r\n--b--\r\n',
        ),
        ("application/x-www-form-urlencoded; charset=no-such-charset", b"csrf=x"),
    ],
    ids=["no-boundary", "broken-multipart", "multipart-not-utf8", "unknown-charset"],
)
async def test_a_form_body_that_cannot_be_read_is_a_400(
    gateway: TestServer, http: aiohttp.ClientSession, content_type: str, body: bytes
) -> None:
    async with http.get(url(gateway, "/console/sign-in")) as page:
        await page.read()  # a session (and its CSRF token) exists
    async with http.post(url(gateway, "/console/sign-in"), data=body, headers={"Content-Type": content_type}) as resp:
        assert resp.status == 400
        assert "the form could not be read" in await resp.text()


@pytest.mark.parametrize("forged", ["%ff", "%C3%A9t%C3%A9", "%F0%9F%92%A5"], ids=["not-utf8", "accents", "emoji"])
async def test_a_non_ascii_csrf_token_is_a_403(gateway: TestServer, http: aiohttp.ClientSession, forged: str) -> None:
    """hmac.compare_digest raises TypeError on str with non-ASCII characters: the token is compared as bytes."""
    async with http.get(url(gateway, "/console/sign-in")) as page:
        assert CSRF.search(await page.text())
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    async with http.post(url(gateway, "/console/sign-in"), data=f"csrf={forged}&key=x", headers=headers) as resp:
        assert resp.status == 403
        assert "CSRF" in await resp.text()


async def test_creating_one_email_at_once_makes_one_user(
    gateway: TestServer, http: aiohttp.ClientSession, make_key: MakeKey, pool: asyncpg.Pool
) -> None:
    """Six admins' tabs create the same user (in any case) at once: one 201, the others a 409 page."""
    admin, _ = await make_key("ops", admin=True)
    await sign_in(http, gateway, admin)
    csrf = await csrf_of(http, gateway, "/console/users")

    async def create(email: str) -> int:
        form = {"csrf": csrf, "email": email, "firstname": "Ada", "lastname": "Lovelace"}
        async with http.post(url(gateway, "/console/users"), data=form) as resp:
            return resp.status

    emails = ["ada@example.com", "Ada@Example.com", "ADA@EXAMPLE.COM"] * 2
    statuses = await asyncio.gather(*(create(e) for e in emails))
    assert sorted(statuses) == [201, 409, 409, 409, 409, 409]
    assert await pool.fetchval("SELECT count(*) FROM users") == 1
    assert await pool.fetchval("SELECT count(*) FROM api_keys WHERE user_id IS NOT NULL") == 1


@pytest.mark.parametrize(
    ("path", "field", "value"),
    [
        ("/console/users", "firstname", "Ada\x1b]0;owned\x07\x1b[2J"),  # would retitle and clear a terminal
        ("/console/users", "lastname", "Love\r\nlace"),
        ("/console/users", "email", "ada\u202emoc.elpmaxe@example.com"),  # reads as another address
        ("/console/keys", "name", "ci\x1b[31m"),
        ("/console/keys", "name", "\u2067ci\u2069"),
    ],
    ids=["escape", "line-break", "bidi-override", "key-escape", "bidi-isolate"],
)
async def test_control_characters_in_a_form_field_are_a_400(
    gateway: TestServer,
    http: aiohttp.ClientSession,
    make_key: MakeKey,
    pool: asyncpg.Pool,
    path: str,
    field: str,
    value: str,
) -> None:
    admin, _ = await make_key("ops", admin=True)
    await sign_in(http, gateway, admin)
    csrf = await csrf_of(http, gateway, "/console/users")
    form = {"csrf": csrf, "email": "ada@example.com", "firstname": "Ada", "lastname": "Lovelace", "name": "ci"}
    async with http.post(url(gateway, path), data={**form, field: value}) as resp:
        assert resp.status == 400
        assert f"&#39;{field}&#39; must not contain control characters" in await resp.text()
    assert await pool.fetchval("SELECT count(*) FROM users") == 0
    assert await pool.fetchval("SELECT count(*) FROM api_keys") == 1  # the admin's own


async def test_a_key_named_like_an_sso_identity_is_a_400(
    gateway: TestServer, http: aiohttp.ClientSession, make_key: MakeKey, pool: asyncpg.Pool
) -> None:
    """`sso:<subject>` names SSO identities' key rows (sql/015): taken by a key it collides (a 500 before) or
    stands in for a person who has not signed in yet."""
    admin, _ = await make_key("ops", admin=True)
    await pool.execute(
        "INSERT INTO api_keys (lookup_id, key_hash, name, is_admin)"
        " VALUES ('0123456789abcdef', 'x', 'sso:a@b.c', false)"
    )
    await sign_in(http, gateway, admin)
    csrf = await csrf_of(http, gateway, "/console/keys")
    for name in ("sso:a@b.c", "SSO:someone@b.c"):
        async with http.post(url(gateway, "/console/keys"), data={"csrf": csrf, "name": name}) as resp:
            assert resp.status == 400 and "sso:" in await resp.text()
    assert await pool.fetchval("SELECT count(*) FROM api_keys") == 2  # the admin's own, the identity's


async def test_names_in_any_script_are_welcome(
    gateway: TestServer, http: aiohttp.ClientSession, make_key: MakeKey, pool: asyncpg.Pool
) -> None:
    admin, _ = await make_key("ops", admin=True)
    await sign_in(http, gateway, admin)
    csrf = await csrf_of(http, gateway, "/console/users")
    form = {"csrf": csrf, "email": "zoë@exämple.com", "firstname": "Zoë 李 🧑‍💻", "lastname": "אברהם O'Brien"}
    async with http.post(url(gateway, "/console/users"), data=form) as resp:
        assert resp.status == 201
    assert await pool.fetchval("SELECT firstname FROM users") == "Zoë 李 🧑‍💻"


async def test_signing_out_while_the_database_is_away_still_drops_the_cookie(
    make_gateway: GatewayFactory, database_url: str, make_key: MakeKey, http: aiohttp.ClientSession
) -> None:
    """A 503 page, and this browser is signed out all the same (on a shared machine it must not stay signed in)."""
    proxy = TcpProxy(upstream_of(database_url))
    await proxy.start()
    try:
        server = await make_gateway(dsn=through(database_url, proxy.port))
        admin, _ = await make_key("ops", admin=True)
        await sign_in(http, server, admin)
        csrf = await csrf_of(http, server, "/console/")
        await proxy.cut()
        async with http.post(url(server, "/console/sign-out"), data={"csrf": csrf}, allow_redirects=False) as resp:
            assert resp.status == 503
        await proxy.restore()
        async with http.get(url(server, "/console/"), allow_redirects=False) as page:
            assert page.status == 303 and page.headers["Location"] == "/console/sign-in"
    finally:
        await proxy.close()


async def test_a_planted_cookie_is_not_signed_in_by_the_victim(
    gateway: TestServer, http: aiohttp.ClientSession, make_key: MakeKey
) -> None:
    """Session fixation: the attacker's own pre-sign-in cookie, planted in the victim's browser, stays signed out."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as attacker:
        async with attacker.get(url(gateway, "/console/sign-in")) as page:
            await page.read()
        planted = {c.key: c.value for c in attacker.cookie_jar}
        admin, _ = await make_key("ops", admin=True)
        http.cookie_jar.update_cookies(planted)
        resp = await sign_in(http, gateway, admin)
        assert str(resp.url).endswith("/console/")
        resp.release()
        assert {c.key: c.value for c in http.cookie_jar} != planted  # a new cookie on sign-in
        async with attacker.get(url(gateway, "/console/"), allow_redirects=False) as page:
            assert page.status == 303


@pytest.mark.parametrize(
    ("path", "form"),
    [
        ("/console/users", {"email": "eve@example.com", "firstname": "E", "lastname": "ve"}),
        ("/console/users/{user}/regenerate", {"reason": "mine now"}),
        ("/console/users/{user}/limit", {"increment": "1000000000"}),
        ("/console/users/{user}/delete", {"sure": "on"}),
        ("/console/keys", {"name": "eve", "admin": "on"}),
        ("/console/keys/{admin_key}/revoke", {"reason": "bye"}),
    ],
)
async def test_a_user_key_with_a_valid_token_gets_403_from_every_admin_action(
    gateway: TestServer,
    http: aiohttp.ClientSession,
    make_key: MakeKey,
    make_user: MakeKey,
    pool: asyncpg.Pool,
    path: str,
    form: dict[str, str],
) -> None:
    _, admin_row = await make_key("ops", admin=True)
    user_key, user_row = await make_user("mallory@example.com")
    await sign_in(http, gateway, user_key)
    csrf = await csrf_of(http, gateway, "/console/me")
    before = await pool.fetch("SELECT * FROM api_keys ORDER BY id"), await pool.fetch("SELECT * FROM users")
    target = path.format(user=user_row.user_id, admin_key=admin_row.id)
    async with http.post(url(gateway, target), data={"csrf": csrf, **form}, allow_redirects=False) as resp:
        assert resp.status == 403
        assert "needs an admin key" in await resp.text()
    after = await pool.fetch("SELECT * FROM api_keys ORDER BY id"), await pool.fetch("SELECT * FROM users")
    assert after == before


async def test_sign_in_ignores_a_next_parameter(
    gateway: TestServer, http: aiohttp.ClientSession, make_key: MakeKey
) -> None:
    """No open redirect: where sign-in leads depends only on the key's role."""
    admin, _ = await make_key("ops", admin=True)
    async with http.get(url(gateway, "/console/sign-in?next=//evil.example/")) as page:
        token = CSRF.search(await page.text())
    assert token
    target = url(gateway, "/console/sign-in?next=https://evil.example/&redirect=//evil.example")
    form = {"csrf": token.group(1), "key": admin, "next": "https://evil.example/"}
    async with http.post(target, data=form, allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/console/"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/console/", 303),
        ("GET", "/console/no-such-page", 404),
        ("GET", "/console/sign-out", 405),
        ("POST", "/console/sign-out", 403),
        ("GET", "/console/sign-in", 200),
        ("GET", "/console/static/console.js", 200),
    ],
)
async def test_every_answer_forbids_framing_and_caching(
    gateway: TestServer, http: aiohttp.ClientSession, method: str, path: str, status: int
) -> None:
    async with http.request(method, url(gateway, path), allow_redirects=False) as resp:
        assert resp.status == status
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["Cache-Control"] == "no-store"


async def test_another_sessions_token_and_method_overrides_change_nothing(
    gateway: TestServer, http: aiohttp.ClientSession, make_key: MakeKey, pool: asyncpg.Pool
) -> None:
    admin, _ = await make_key("ops", admin=True)
    await sign_in(http, gateway, admin)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as other:
        await (await sign_in(other, gateway, admin)).release()
        others_token = await csrf_of(other, gateway, "/console/keys")
    mine = await csrf_of(http, gateway, "/console/keys")
    assert others_token != mine
    async with http.post(url(gateway, "/console/keys"), data={"csrf": others_token, "name": "ci"}) as resp:
        assert resp.status == 403
    override = {"X-HTTP-Method-Override": "POST", "X-Method-Override": "POST"}
    params = {"_method": "POST", "csrf": mine, "name": "ci"}
    async with http.get(url(gateway, "/console/keys"), params=params, headers=override) as resp:
        assert resp.status == 200  # the keys page, read-only
    async with http.get(url(gateway, "/console/sign-out"), params={"csrf": mine}, allow_redirects=False) as resp:
        assert resp.status == 405
    assert [k["name"] for k in await pool.fetch("SELECT name FROM api_keys")] == ["ops"]
    async with http.get(url(gateway, "/console/keys"), allow_redirects=False) as resp:
        assert resp.status == 200  # still signed in


async def test_signing_in_in_a_loop_keeps_twenty_sessions_per_key(
    gateway: TestServer, make_key: MakeKey, pool: asyncpg.Pool
) -> None:
    """The key check is cached, so a script signs in hundreds of times a second: the table must not grow with it."""
    admin, row = await make_key("ops", admin=True)
    jars = [aiohttp.CookieJar(unsafe=True) for _ in range(22)]
    for jar in jars:
        async with aiohttp.ClientSession(cookie_jar=jar) as browser:
            await (await sign_in(browser, gateway, admin)).release()
    assert await pool.fetchval("SELECT count(*) FROM console_sessions WHERE key_id = $1", row.id) == 20
    for index, jar in enumerate(jars):
        async with (
            aiohttp.ClientSession(cookie_jar=jar) as browser,
            browser.get(url(gateway, "/console/"), allow_redirects=False) as page,
        ):
            assert page.status == (303 if index < 2 else 200), index  # the two oldest were signed out


async def test_behind_a_trusted_proxy_one_guesser_does_not_lock_admins_out_of_sign_in(
    make_gateway: GatewayFactory, make_key: MakeKey
) -> None:
    """Sign-in's throttle counts guesses per client (X-Forwarded-For from a trusted proxy), as the API does."""
    server = await make_gateway(server={"trusted_proxies": ["127.0.0.0/8"], "auth_failures_per_minute": 3})
    admin, row = await make_key("ops", admin=True)
    statuses = []
    for i in range(5):
        async with aiohttp.ClientSession(
            headers={"X-Forwarded-For": "203.0.113.66"}, cookie_jar=aiohttp.CookieJar(unsafe=True)
        ) as guesser:
            resp = await sign_in(guesser, server, f"gw-{row.lookup_id}_guess-{i}")
            statuses.append(resp.status)
            resp.release()
    assert statuses[0] == 401 and statuses[-1] == 429  # the guesser is throttled
    async with aiohttp.ClientSession(
        headers={"X-Forwarded-For": "198.51.100.7"}, cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as admins_browser:
        resp = await sign_in(admins_browser, server, admin)
        assert resp.status == 200 and str(resp.url).endswith("/console/")
        resp.release()
    async with aiohttp.ClientSession(
        headers={"Forwarded": "for=198.51.100.8"}, cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as rfc7239_proxy:
        resp = await sign_in(rfc7239_proxy, server, admin)
        assert resp.status == 200
        resp.release()


async def test_a_key_pasted_into_the_search_box_is_not_shown(
    gateway: TestServer, http: aiohttp.ClientSession, make_key: MakeKey, make_user: MakeKey
) -> None:
    """A careless admin pastes a user's key to find its owner: the page must not show the secret back."""
    admin, _ = await make_key("ops", admin=True)
    user_key, _ = await make_user("ada@example.com")
    await sign_in(http, gateway, admin)
    secret = user_key.split("_", 1)[1]
    for q in (user_key, f"  whose is {user_key} ?"):
        async with http.get(url(gateway, "/console/users"), params={"q": q}) as resp:
            assert resp.status == 400
            text = await resp.text()
        assert secret not in text and "neither searched nor shown" in text
    async with http.get(url(gateway, "/console/users"), params={"q": "gw-ops"}) as resp:
        assert resp.status == 200  # a search for a name with the prefix is still a search


@pytest.mark.parametrize("path", ["/v1/me", "/v1/me/usage"])
async def test_me_answers_are_not_kept_by_a_cache_in_front(
    gateway: TestServer, http: aiohttp.ClientSession, make_user: MakeKey, path: str
) -> None:
    """Behind a caching proxy, one user's /v1/me (sent with x-api-key) must not be served to the next user."""
    user_key, _ = await make_user("ada@example.com")
    async with http.get(url(gateway, path), headers={"x-api-key": user_key}) as resp:
        assert resp.status == 200
        assert "no-store" in resp.headers["Cache-Control"] and "private" in resp.headers["Cache-Control"]


async def test_a_bug_is_a_500_page_that_may_not_be_framed_or_cached(
    gateway: TestServer, http: aiohttp.ClientSession, make_key: MakeKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: object) -> list[object]:
        raise RuntimeError("a bug in a page")

    monkeypatch.setattr(ClosedDays, "rows", broken)
    admin, _ = await make_key("ops", admin=True)
    await sign_in(http, gateway, admin)
    async with http.get(url(gateway, "/console/")) as resp:
        assert resp.status == 500
        assert "a bug in a page" not in await resp.text()
        assert resp.headers["X-Frame-Options"] == "DENY" and resp.headers["Cache-Control"] == "no-store"


async def test_regenerating_one_user_from_four_tabs_at_once_leaves_one_live_key(
    gateway: TestServer, http: aiohttp.ClientSession, make_key: MakeKey, make_user: MakeKey, pool: asyncpg.Pool
) -> None:
    admin, _ = await make_key("ops", admin=True)
    _, row = await make_user("ada@example.com")
    await sign_in(http, gateway, admin)
    csrf = await csrf_of(http, gateway, f"/console/users/{row.user_id}")

    async def regenerate() -> int:
        form = {"csrf": csrf, "reason": "laptop lost"}
        async with http.post(url(gateway, f"/console/users/{row.user_id}/regenerate"), data=form) as resp:
            return resp.status

    statuses = await asyncio.gather(*(regenerate() for _ in range(4)))
    assert all(status in (201, 409) for status in statuses) and 201 in statuses
    live = "SELECT count(*) FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL"
    assert await pool.fetchval(live, row.user_id) == 1
