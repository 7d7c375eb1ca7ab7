"""Routed model == billed model == the model the upstream parses, for any byte sequence a caller sends.

The upstream (like Python's json.loads) lets the last of duplicate keys win; the gateway must never route and
bill one value while the upstream serves another (issue: a second, or escaped, top-level "model" key).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import GatewayFactory
from tests.fakes.upstream import FakeUpstream

ALIASES = {"claude-fast": "claude-haiku-4-5", "claude-quality": "claude-sonnet-4-5"}
MODEL_VALUES = ["claude-fast", "claude-quality", "claude-opus-4-5", "claude-haiku-4-5"]
WHITESPACE = st.sampled_from(["", " ", "\n", "\t  ", "\r\n "])


@st.composite
def model_key(draw: st.DrawFn) -> str:
    """`"model"` with any of its letters written as a \\u escape (hex in either case)."""
    letters = []
    for ch in "model":
        if draw(st.booleans()):
            code = f"{ord(ch):04x}"
            letters.append("\\u" + (code.upper() if draw(st.booleans()) else code))
        else:
            letters.append(ch)
    return '"' + "".join(letters) + '"'


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A Messages body whose top-level and nested "model" keys vary in number, spelling, value and position."""
    value = st.sampled_from(MODEL_VALUES).map(json.dumps)
    plain = '"model"'
    models = draw(st.lists(st.tuples(st.one_of(st.just(plain), model_key()), value), min_size=1, max_size=3))
    items = [*models, ('"max_tokens"', "16"), ('"messages"', '[{"role": "user", "content": "hi"}]')]
    if draw(st.booleans()):  # a nested "model" is not the model (Claude Code's Task tool has one)
        items.append(('"metadata"', '{"model": ' + draw(value) + "}"))
    items = draw(st.permutations(items))
    ws = [draw(WHITESPACE) for _ in range(len(items) * 3 + 2)]
    parts = [f"{ws[3 * i]}{k}{ws[3 * i + 1]}:{ws[3 * i + 2]}{v}" for i, (k, v) in enumerate(items)]
    return ("{" + ",".join(parts) + ws[-1] + "}").encode()


async def _post(server: TestServer, raw: bytes, key: str) -> tuple[int, str]:
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s, s.post(server.make_url("/v1/messages"), data=raw, headers=headers) as r:
        await r.read()
        return r.status, r.headers["x-request-id"]


async def _row(server: TestServer, pool: asyncpg.Pool, request_id: str) -> dict[str, Any] | None:
    from gateway.app_keys import SERVICES

    await server.app[SERVICES].ledger.flush()
    row = await pool.fetchrow("SELECT * FROM usage_log WHERE request_id = $1", request_id)
    return dict(row) if row else None


async def test_upstream_parses_the_model_that_was_routed_and_billed(
    make_gateway: GatewayFactory, upstream: FakeUpstream, key: str, pool: asyncpg.Pool
) -> None:
    server = await make_gateway()
    loop = asyncio.get_running_loop()

    def on_loop(coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    # @given runs synchronously, so the property runs in a thread while the gateway serves on this loop.
    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(raw=bodies())
    def property_holds(raw: bytes) -> None:
        seen = len(upstream.requests)
        status, request_id = on_loop(_post(server, raw, key))
        sent = upstream.requests[seen:]
        row = on_loop(_row(server, pool, request_id))
        if not sent:  # refused before the upstream: nothing served, nothing billed
            assert status in (400, 404), (status, raw)
            assert row is None
            return
        [call] = sent
        assert status == 200, raw
        assert row is not None
        served = json.loads(call.raw_body)["model"]  # last key wins, as the upstream parses
        assert served == row["provider_model"] == ALIASES[row["alias"]], raw
        top_level = json.loads(call.raw_body, object_pairs_hook=lambda pairs: pairs)  # every key, duplicates too
        assert [v for k, v in top_level if k == "model"] == [served], raw  # only the routed value remains

    await asyncio.to_thread(property_holds)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"model": "claude-fast", "max_tokens": 16, "model": "claude-opus-4-5"}', id="duplicate"),
        pytest.param(b'{"model": "claude-fast", "max_tokens": 16, "mod\\u0065l": "claude-opus-4-5"}', id="escaped"),
        pytest.param(b'{"model": "claude-fast", "max_tokens": 16, "model": null}', id="null"),
        pytest.param(b'{"model": "claude-fast\\ud800", "max_tokens": 16}', id="lone-surrogate"),
        pytest.param(b'{"model": "claude-fast\\q", "max_tokens": 16}', id="bad-escape"),
    ],
)
async def test_a_second_or_broken_model_is_refused_in_anthropic_shape(
    gateway: TestServer, upstream: FakeUpstream, key: str, raw: bytes
) -> None:
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s, s.post(gateway.make_url("/v1/messages"), data=raw, headers=headers) as r:
        assert r.status == 400
        body = await r.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "model" in body["error"]["message"] or "not valid JSON" in body["error"]["message"]
    assert upstream.requests == []


async def test_openai_passthrough_duplicate_model_reaches_upstream_once(
    make_gateway: GatewayFactory, upstream: FakeUpstream, key: str
) -> None:
    """A fully parsed body routes by the last key; the patched body must carry only that routed value."""
    server = await make_gateway(
        providers={"openai": {"type": "openai", "base_url": upstream.url + "/v1", "api_key": "sk-test"}},
        models={"gpt-fast": {"provider": "openai", "model": "gpt-4o-mini"}},
    )
    raw = b'{"model": "claude-fast", "messages": [{"role": "user", "content": "hi"}], "model": "gpt-fast"}'
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    url = server.make_url("/v1/chat/completions")
    async with aiohttp.ClientSession() as s, s.post(url, data=raw, headers=headers) as r:
        assert r.status == 200, await r.text()
    sent = upstream.requests[-1].raw_body
    assert json.loads(sent)["model"] == "gpt-4o-mini"
    assert b"claude-fast" not in sent and b"gpt-fast" not in sent
