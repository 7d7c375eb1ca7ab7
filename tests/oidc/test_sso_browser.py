"""The console's "Sign in with SSO" in a real browser (Debian's Chromium, Playwright) against oidc-provider.

The whole authorization-code flow: the gateway's sign-in page, the provider's login and consent pages
(devInteractions), the callback, and the console the person's groups allow: an admin gets the overview, a viewer
their own page (admin pages 403), an unmapped person is refused on the sign-in page with the reason.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from tests.oidc.conftest import StartGateway, sso_section
from tests.oidc.provider import OidcProvider

playwright_api = pytest.importorskip("playwright.async_api", reason="pip install playwright (the test extras)")
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)"
)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        await chromium.close()


async def sign_in_with_sso(browser: Any, server: TestServer, login: str) -> Any:
    """A fresh browser signs in as `login` at the provider (any password: devInteractions) and consents."""
    context = await browser.new_context()
    # The provider's dev pages import a web font; this machine has no internet, so do not wait for it.
    await context.route("https://fonts.googleapis.com/**", lambda route: route.abort())
    page = await context.new_page()
    await page.goto(str(server.make_url("/console/")))
    assert page.url.endswith("/console/sign-in")
    await page.click("#sso")
    await page.wait_for_selector("input[name=login]")
    await page.fill("input[name=login]", login)
    await page.fill("input[name=password]", "any")
    await page.click("button[type=submit]")
    await page.wait_for_selector("button[type=submit]:has-text('Continue')")  # the consent page
    await page.click("button[type=submit]:has-text('Continue')")
    await page.wait_for_url(f"{server.make_url('/console')}/**")
    await page.wait_for_load_state()
    return page


async def test_sign_in_with_sso_maps_groups_to_console_roles(
    idp: OidcProvider, start_gateway: StartGateway, browser: Any, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    server = await start_gateway(idp, sso=sso_section(idp), caller=None)

    admin = await sign_in_with_sso(browser, server, "alice")  # groups: developers, gateway-admins -> admin
    await admin.wait_for_url(str(server.make_url("/console/")))
    assert await admin.locator("nav[aria-label=Console]").get_by_text("Users").count() == 1
    assert "sso:alice@example.com" in await admin.locator(".who").inner_text()
    await admin.screenshot(path=str(tmp_path / "sso-admin.png"), full_page=True)
    row = await pool.fetchrow("SELECT sso_subject, sso_role, sso_team FROM console_sessions")
    assert dict(row) == {"sso_subject": "sso:alice@example.com", "sso_role": "admin", "sso_team": "platform"}
    # the role read at sign-in holds for sso.session_max_age_s (default 1 hour), not the console's 8 hours
    lifetime = await pool.fetchval("SELECT extract(epoch FROM expires_at - now()) FROM console_sessions")
    assert 3000 < lifetime <= 3600
    await admin.click(".sign-out button[type=submit]")
    await admin.wait_for_url(str(server.make_url("/console/sign-in")))
    assert await pool.fetchval("SELECT count(*) FROM console_sessions") == 0

    viewer = await sign_in_with_sso(browser, server, "victor")  # finance -> viewer: reads everything
    await viewer.wait_for_url(str(server.make_url("/console/")))
    response = await viewer.goto(str(server.make_url("/console/users")))
    assert response.status == 200
    response = await viewer.goto(str(server.make_url("/console/keys")))  # admin only: management keys
    assert response.status == 403

    context = await browser.new_context()
    await context.route("https://fonts.googleapis.com/**", lambda route: route.abort())
    page = await context.new_page()
    await page.goto(str(server.make_url("/console/sign-in")))
    await page.click("#sso")
    await page.fill("input[name=login]", "mallory")  # interns: mapped to nothing, and no default role
    await page.fill("input[name=password]", "any")
    await page.click("button[type=submit]")
    await page.click("button[type=submit]:has-text('Continue')")
    await page.wait_for_selector("[role=alert]")
    assert "no 'groups' value" in await page.locator("[role=alert]").inner_text()
    assert (
        await pool.fetchval("SELECT count(*) FROM console_sessions WHERE sso_subject = 'sso:mallory@example.com'") == 0
    )
    await page.screenshot(path=str(tmp_path / "sso-refused.png"), full_page=True)


async def test_a_code_from_another_browsers_sign_in_is_refused(
    idp: OidcProvider, start_gateway: StartGateway, browser: Any, pool: asyncpg.Pool
) -> None:
    """Code injection: the attacker's own code pasted into a victim's callback (with the victim's state) fails the
    PKCE check at the provider, since the victim's verifier does not match; no session starts."""
    server = await start_gateway(idp, sso=sso_section(idp), caller=None)
    attacker = await browser.new_context()
    await attacker.route("https://fonts.googleapis.com/**", lambda route: route.abort())
    page = await attacker.new_page()
    await page.goto(str(server.make_url("/console/sso/start")))
    # The attacker's own callback must not spend the code: without the flow cookie the gateway refuses it unread.
    await attacker.clear_cookies(name="gateway_sso_flow")
    await page.fill("input[name=login]", "alice")
    await page.fill("input[name=password]", "any")
    await page.click("button[type=submit]")
    await page.click("button[type=submit]:has-text('Continue')")
    await page.wait_for_selector("[role=alert]")
    assert "not started from this browser" in await page.locator("[role=alert]").inner_text()
    assert "/console/sso/callback?" in page.url
    code = page.url.split("code=", 1)[1].split("&", 1)[0]

    victim = await browser.new_context()
    victim_page = await victim.new_page()
    landed = await victim_page.goto(str(server.make_url("/console/sso/start")))  # at the provider's login page
    request = landed.request
    while request.redirected_from is not None:  # back to the gateway's redirect to the provider
        request = request.redirected_from
    location = (await request.response()).headers["location"]
    victim_state = location.split("state=", 1)[1].split("&", 1)[0]
    response = await victim_page.goto(str(server.make_url(f"/console/sso/callback?code={code}&state={victim_state}")))
    assert response.status == 401
    assert "refused the sign-in code" in await victim_page.locator("[role=alert]").inner_text()
    assert await pool.fetchval("SELECT count(*) FROM console_sessions") == 0
