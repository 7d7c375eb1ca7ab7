"""The console in a real browser: Debian's Chromium driven by Playwright, checked by axe-core.

Chromium is launched by its path (never downloaded); axe-core comes from npm (.ci/run installs it into
.ci/node_modules). Screenshots of every page land in the test's tmp directory (and in $CONSOLE_SCREENSHOTS,
when set, which is how docs/console-*.png were made).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from gateway import db
from tests.console.rows import as_usage_row

playwright_api = pytest.importorskip("playwright.async_api", reason="pip install playwright (the test extras)")

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
REPO = Path(__file__).resolve().parents[2]
AXE = next(
    (
        p
        for p in (REPO / ".ci/node_modules/axe-core/axe.min.js", Path(os.environ.get("AXE_CORE_JS", "/nonexistent")))
        if p.is_file()
    ),
    None,
)
WIDTHS = (1280, 390)
MakeKey = Callable[..., Awaitable[tuple[str, db.KeyRow]]]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)"
)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        await chromium.close()


class Shots:
    """Saves full-page screenshots into the test's directory (and $CONSOLE_SCREENSHOTS when set)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.extra = Path(os.environ["CONSOLE_SCREENSHOTS"]) if os.environ.get("CONSOLE_SCREENSHOTS") else None
        if self.extra:
            self.extra.mkdir(parents=True, exist_ok=True)

    async def take(self, page: Any, name: str) -> Path:
        path = self.directory / f"{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        if self.extra:
            shutil.copy(path, self.extra / path.name)
        return path


async def seed_usage(pool: asyncpg.Pool, keys: list[db.KeyRow], *, rows_per_key: int = 40) -> None:
    """Usage this month for each key, on several days, models and routes, a few errors and estimates among them."""
    now = datetime.now(UTC)
    rows = []
    for k_index, key in enumerate(keys):
        for i in range(rows_per_key):
            when = max(now - timedelta(days=i % 6, minutes=i), now.replace(day=1, hour=0, minute=0, second=1))
            model = ("claude-haiku-4-5", "claude-sonnet-4-5")[i % 2]
            values = {
                "id": uuid.uuid4(),
                "created_at": when,
                "request_id": f"seed-{k_index}-{i}",
                "key_id": key.id,
                "user_id": key.user_id,
                "route": ("messages", "chat_completions", "responses")[i % 3],
                "alias": "claude-fast" if model.startswith("claude-haiku") else "claude-quality",
                "provider": "anthropic",
                "provider_model": model,
                "status": 500 if i % 13 == 0 else 200,
                "input_tokens": 1000 + 37 * i,
                "output_tokens": 200 + k_index * 50,
                "cache_read_tokens": 500,
                "cache_write_tokens": 0,
                "cost_usd": Decimal("0.0125") * (k_index + 1),
                "latency_ms": 120.0 + 40 * (i % 9),
                "ttfb_ms": None,
                "streamed": i % 2 == 0,
            }
            rows.append(as_usage_row(values))
    await db.insert_usage(pool, rows)


async def month_totals_from_the_log(pool: asyncpg.Pool) -> tuple[Decimal, int, int]:
    """The month's spend, tokens and requests summed from usage_log itself (not from the rollups)."""
    month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    row = await pool.fetchrow(
        "SELECT coalesce(sum(cost_usd), 0) AS cost, coalesce(sum(input_tokens + output_tokens + cache_read_tokens"
        " + cache_write_tokens), 0) AS tokens, count(*) AS requests FROM usage_log WHERE created_at >= $1",
        month,
    )
    return row["cost"], int(row["tokens"]), int(row["requests"])


async def sign_in(page: Any, server: TestServer, key: str) -> None:
    await page.goto(str(server.make_url("/console/")))
    assert page.url.endswith("/console/sign-in")  # no session: the sign-in page
    await page.fill("#key", key)
    await page.click("button[type=submit]")
    await page.wait_for_load_state()


async def me_status(server: TestServer, key: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(server.make_url("/v1/me"), headers={"Authorization": f"Bearer {key}"}) as resp,
    ):
        return resp.status, await resp.json()


async def test_admin_signs_in_manages_a_user_and_signs_out(
    gateway: TestServer, browser: Any, pool: asyncpg.Pool, make_key: MakeKey, make_user: MakeKey, tmp_path: Path
) -> None:
    shots = Shots(tmp_path / "screenshots")
    admin, _ = await make_key("ops", admin=True)
    users = [
        (await make_user(f"{name}@example.com", limit_tokens=limit))[1]
        for name, limit in (("grace", 60_000), ("alan", 200_000), ("edsger", None))
    ]
    await seed_usage(pool, users)
    page = await (await browser.new_context(viewport={"width": 1280, "height": 900})).new_page()

    await page.goto(str(gateway.make_url("/console/users")))
    await shots.take(page, "sign-in")
    await sign_in(page, gateway, admin)
    assert page.url.endswith("/console/")
    cost, tokens, requests = await month_totals_from_the_log(pool)
    assert await page.inner_text("[data-testid=spend]") == f"${cost:,.2f}"
    assert await page.inner_text("[data-testid=tokens]") == f"{tokens:,}"
    assert await page.inner_text("[data-testid=requests]") == f"{requests:,}"
    near = await page.inner_text("#near-h + .table-wrap")
    assert "grace@example.com" in near and "edsger@example.com" not in near  # grace is over her 60,000 tokens
    await shots.take(page, "overview")
    await page.get_by_role("link", name="grace@example.com").first.click()
    grace_tokens = await pool.fetchval(
        "SELECT tokens FROM usage_counters WHERE scope = 'user' AND scope_id = $1", str(users[0].user_id)
    )
    assert await page.inner_text("[data-testid=month-tokens]") == f"{grace_tokens:,} of 60,000"
    await shots.take(page, "user")

    # Create a user: the key is shown once and works at once.
    await page.get_by_role("link", name="Users").click()
    await page.fill("#email", "ada@example.com")
    await page.fill("#firstname", "Ada")
    await page.fill("#lastname", "Lovelace")
    await page.get_by_role("button", name="Create user").click()
    first_key = await page.input_value("[data-testid=new-key]")
    assert first_key.startswith("gw-")
    assert first_key in await page.inner_text("#cfg-claude")  # the ready-made Claude Code settings
    status, me = await me_status(gateway, first_key)
    assert status == 200 and me["user"]["email"] == "ada@example.com"
    await shots.take(page, "user-created")

    # Her page: regenerate with a reason; the old key stops working, the new one works.
    await page.goto(str(gateway.make_url("/console/users?q=lovelace")))
    await page.get_by_role("link", name="ada@example.com").click()
    await shots.take(page, "user-new")
    await page.fill("#reason", "laptop lost")
    await page.get_by_role("button", name="Regenerate").click()
    second_key = await page.input_value("[data-testid=new-key]")
    assert second_key != first_key
    assert (await me_status(gateway, first_key))[0] == 401
    assert (await me_status(gateway, second_key))[0] == 200

    # Raise her limit by a million.
    await page.go_back()
    await page.reload()
    await page.fill("#increment", "1,000,000")
    await page.get_by_role("button", name="Raise limit").click()
    assert "raised to 11,000,000" in await page.inner_text(".flash")
    assert await page.inner_text("[data-testid=token-limit]") == "11,000,000"
    assert await pool.fetchval("SELECT limit_tokens FROM users WHERE email = 'ada@example.com'") == 11_000_000
    assert (await me_status(gateway, second_key))[1]["tokenLimit"] == 11_000_000

    for name in ("keys", "audit", "config"):
        await page.goto(str(gateway.make_url(f"/console/{name}")))
        await shots.take(page, name)
    audit = await page.goto(str(gateway.make_url("/console/audit")))
    assert audit is not None and audit.status == 200
    text = await page.inner_text("main")
    assert "regenerated" in text and "laptop lost" in text and "token_limit_increased" in text

    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url("**/console/sign-in")
    assert page.url.endswith("/console/sign-in")
    await page.goto(str(gateway.make_url("/console/")))
    assert page.url.endswith("/console/sign-in")


async def test_a_user_key_sees_its_own_month_and_gets_403_on_admin_pages(
    gateway: TestServer, browser: Any, pool: asyncpg.Pool, make_user: MakeKey, tmp_path: Path
) -> None:
    shots = Shots(tmp_path / "screenshots")
    key, row = await make_user("grace@example.com", limit_tokens=500_000)
    await seed_usage(pool, [row])
    page = await (await browser.new_context(viewport={"width": 390, "height": 844})).new_page()
    await sign_in(page, gateway, key)
    assert page.url.endswith("/console/me")
    tokens = await pool.fetchval(
        "SELECT tokens FROM usage_counters WHERE scope = 'user' AND scope_id = $1", str(row.user_id)
    )
    assert await page.inner_text("[data-testid=month-tokens]") == f"{tokens:,} of 500,000"
    await shots.take(page, "me")
    for path in ("/console/", "/console/users", f"/console/users/{row.user_id}", "/console/keys", "/console/config"):
        response = await page.goto(str(gateway.make_url(path)))
        assert response is not None and response.status == 403, path


@pytest.mark.skipif(AXE is None, reason="axe-core not installed: npm install --prefix .ci axe-core (.ci/run does)")
async def test_every_page_passes_axe_at_desktop_and_phone_width(
    gateway: TestServer, browser: Any, pool: asyncpg.Pool, make_key: MakeKey, make_user: MakeKey, tmp_path: Path
) -> None:
    assert AXE is not None
    shots = Shots(tmp_path / "a11y")
    admin, _ = await make_key("ops", admin=True)
    _, user = await make_user("grace@example.com", limit_tokens=60_000)
    await seed_usage(pool, [user])
    pages = [
        "/console/",
        "/console/users",
        f"/console/users/{user.user_id}",
        "/console/keys",
        "/console/audit",
        "/console/config",
        "/console/me",
    ]
    failures = []
    for width in WIDTHS:
        # bypass_csp: the console allows no inline script, and axe is injected as one
        context = await browser.new_context(viewport={"width": width, "height": 900}, bypass_csp=True)
        page = await context.new_page()
        await page.goto(str(gateway.make_url("/console/sign-in")))
        failures += await axe_violations(page, f"sign-in@{width}")
        await sign_in(page, gateway, admin)
        for path in pages:
            await page.goto(str(gateway.make_url(path)))
            failures += await axe_violations(page, f"{path}@{width}")
            overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            if overflow > 1:
                failures.append(f"{path}@{width}: the page is {overflow} px wider than the window")
            await shots.take(page, f"{path.strip('/').replace('/', '_') or 'overview'}-{width}")
        await context.close()
    assert failures == []


async def axe_violations(page: Any, where: str) -> list[str]:
    """axe-core's serious and critical violations on the page, one line each."""
    await page.add_script_tag(path=str(AXE))
    result = await page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{where}: {v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
