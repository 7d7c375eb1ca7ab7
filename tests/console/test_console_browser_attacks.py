"""Hostile strings in every console page, in a real browser: nothing runs, nothing breaks the CSP.

User names and emails, model ids and aliases from usage rows (a passthrough routing rule records whatever model
id the caller sent), audit reasons, key names and search terms all end up in pages and in the SVG charts.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from gateway import db
from tests.console.rows import as_usage_row
from tests.console.test_console_browser import CHROMIUM, MakeKey, browser, sign_in

__all__ = ["browser"]  # the fixture, shared with the other browser tests

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)"
)


def payload(n: int) -> str:
    """Markup that, were it ever taken as HTML or script, would set window.__xss."""
    return f'"><img src=x onerror="window.__xss={n}"><script>window.__xss={n}</script><svg onload="window.__xss={n}">'


async def test_hostile_strings_are_shown_as_text_everywhere(
    gateway: TestServer, browser: Any, pool: asyncpg.Pool, make_key: MakeKey
) -> None:
    admin, admin_row = await make_key("ops", admin=True)
    await make_key(payload(1), admin=False)
    user_id = await pool.fetchval(
        "INSERT INTO users (email, firstname, lastname) VALUES ($1, $2, $3) RETURNING id",
        f"{payload(2)}@example.com",
        payload(3),
        payload(4),
    )
    key_row = await db.insert_key(
        pool, lookup_id="0123456789abcdef", key_hash="x", name="u", is_admin=False, user_id=user_id
    )
    await pool.execute(
        "INSERT INTO key_audit (user_id, action, reason, actor_key_id) VALUES ($1, 'regenerated', $2, $3)",
        user_id,
        payload(5),
        admin_row.id,
    )
    now = datetime.now(UTC)
    values = {
        "id": uuid.uuid4(),
        "created_at": now,
        "request_id": "hostile",
        "key_id": key_row.id,
        "user_id": user_id,
        "route": "messages",
        "alias": payload(6),
        "provider": "anthropic",
        "provider_model": payload(7),
        "status": 200,
        "input_tokens": 10,
        "output_tokens": 5,
        "cost_usd": Decimal("0.01"),
        "latency_ms": 12.0,
        "streamed": False,
    }
    await db.insert_usage(pool, [as_usage_row(values)])

    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    problems: list[str] = []
    page.on("dialog", lambda d: problems.append(f"dialog {d.message}"))

    def on_console(message: Any) -> None:
        if message.type == "error" and not message.location.get("url", "").endswith("/favicon.ico"):
            problems.append(f"console {message.text}")  # a CSP violation is one

    page.on("console", on_console)
    await sign_in(page, gateway, admin)
    paths = ["/console/", "/console/users", f"/console/users/{user_id}", "/console/keys", "/console/audit"]
    paths += ["/console/users?q=" + payload(8).replace("#", "%23"), "/console/me"]
    for path in paths:
        response = await page.goto(str(gateway.make_url(path)))
        assert response is not None and response.status == 200, path
        await page.wait_for_load_state("load")
        assert await page.evaluate("window.__xss") is None, path
        assert await page.locator("main img, main iframe").count() == 0, (path, problems)
        assert await page.locator("main script").count() == 0, (path, problems)
    await page.goto(str(gateway.make_url(f"/console/users/{user_id}")))
    text = await page.inner_text("main")
    assert payload(3) in text and payload(5) in text and payload(7) in text
    assert problems == []
