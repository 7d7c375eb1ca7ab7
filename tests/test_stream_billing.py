"""Every generated token is counted: a stream that ends without its final usage is billed for what was relayed,
and a caller that hangs up right after the stream's final event made a complete (200) request.

Parametrised over the three routes a stream can take (Anthropic pass-through, Chat Completions and Responses
translated from Anthropic). TestServer cancels a handler whose caller hangs up, as `gateway serve` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from gateway import db
from tests.conftest import UPSTREAM_KEY, GatewayFactory, flushed_usage
from tests.fakes.upstream import FakeUpstream, anthropic_error

MakeUser = Callable[..., Awaitable[tuple[str, db.KeyRow]]]
MESSAGES = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True)
class Route:
    path: str
    body: dict[str, Any]
    delta: bytes  # a line that carries one relayed text delta
    final: bytes  # the line of the stream's final event
    overloaded: int  # the status an in-stream overloaded_error gets in this dialect


ROUTES = [
    pytest.param(
        Route(
            "/v1/messages",
            {"model": "claude-fast", "max_tokens": 500, "stream": True, "messages": MESSAGES},
            b"event: content_block_delta",
            b"event: message_stop",
            529,
        ),
        id="messages",
    ),
    pytest.param(
        Route(
            "/v1/chat/completions",
            {"model": "claude-fast", "stream": True, "messages": MESSAGES},
            b'"content":',
            b"data: [DONE]",
            503,
        ),
        id="chat",
    ),
    pytest.param(
        Route(
            "/v1/responses",
            {"model": "claude-fast", "stream": True, "input": "hi"},
            b"event: response.output_text.delta",
            b"event: response.completed",
            503,
        ),
        id="responses",
    ),
]


async def _read_until(server: TestServer, key: str, route: Route, stop: Callable[[bytes, int], bool]) -> None:
    """Stream `route`, reading line by line, and hang up as soon as `stop(line, deltas seen)` says so."""
    headers = {"x-api-key": key, "Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as s:
        r = await s.post(str(server.make_url(route.path)), json=route.body, headers=headers)
        assert r.status == 200
        deltas = 0
        async for line in r.content:
            deltas += route.delta in line
            if stop(line, deltas):
                break
        r.close()  # the caller goes away


async def _row(server: TestServer, pool: asyncpg.Pool) -> dict[str, Any]:
    for _ in range(100):
        if rows := await flushed_usage(server, pool):
            [row] = rows
            return row
        await asyncio.sleep(0.05)
    raise AssertionError("no usage row")


@pytest.mark.parametrize("route", ROUTES)
async def test_a_caller_gone_mid_stream_is_billed_for_the_output_relayed(
    gateway: TestServer, upstream: FakeUpstream, make_user: MakeUser, pool: asyncpg.Pool, route: Route
) -> None:
    upstream.chunks = 100  # words, one delta each; the final count (100) never reaches the gateway
    upstream.enqueue(chunk_delay_s=0.01)
    key, _ = await make_user()
    await _read_until(gateway, key, route, lambda line, deltas: deltas >= 50)
    row = await _row(gateway, pool)
    assert row["status"] == 499
    assert row["usage_estimated"] is True
    # 50+ words of ~6 characters were relayed: ~85 tokens at 3.5 characters per token (60 leaves slack), not
    # the 1 that message_start reported; at most the whole reply's ~170.
    assert 60 <= row["output_tokens"] <= 200


@pytest.mark.parametrize("route", ROUTES)
async def test_an_upstream_break_is_billed_for_the_output_relayed(
    gateway: TestServer, upstream: FakeUpstream, make_user: MakeUser, pool: asyncpg.Pool, route: Route
) -> None:
    upstream.chunks = 100
    upstream.enqueue(reset_after_events=60)  # message_start, block start, ping, then 57 deltas: cut
    key, _ = await make_user()
    await _read_until(gateway, key, route, lambda line, deltas: False)
    row = await _row(gateway, pool)
    assert row["status"] >= 500
    assert row["usage_estimated"] is True
    assert 60 <= row["output_tokens"] <= 200


@pytest.mark.parametrize("route", ROUTES)
async def test_an_upstream_gone_silent_is_timed_out_and_billed_for_the_output_relayed(
    make_gateway: GatewayFactory, upstream: FakeUpstream, make_user: MakeUser, pool: asyncpg.Pool, route: Route
) -> None:
    provider = {"type": "anthropic", "base_url": upstream.url, "api_key": UPSTREAM_KEY, "retries": {"attempts": 1}}
    server = await make_gateway(providers={"anthropic": provider | {"timeouts": {"idle": 0.3}}})
    upstream.chunks = 100
    upstream.enqueue(stall_after_events=60)
    key, _ = await make_user()
    await _read_until(server, key, route, lambda line, deltas: False)
    row = await _row(server, pool)
    assert row["status"] == 504
    assert row["usage_estimated"] is True
    assert 60 <= row["output_tokens"] <= 200


@pytest.mark.parametrize("route", ROUTES)
async def test_a_caller_gone_right_after_the_final_event_made_a_complete_request(
    gateway: TestServer, upstream: FakeUpstream, make_user: MakeUser, pool: asyncpg.Pool, route: Route
) -> None:
    """Codex closes right after response.completed on every turn; the upstream may keep the body open."""
    upstream.chunks = 20
    upstream.enqueue(linger_s=1.0)
    key, _ = await make_user()
    await _read_until(gateway, key, route, lambda line, deltas: line.startswith(route.final))
    row = await _row(gateway, pool)
    assert (row["status"], row["usage_estimated"], row["output_tokens"]) == (200, False, 20)


@pytest.mark.parametrize("route", ROUTES)
async def test_a_caller_gone_after_an_in_stream_error_keeps_the_error_status(
    gateway: TestServer, upstream: FakeUpstream, make_user: MakeUser, pool: asyncpg.Pool, route: Route
) -> None:
    """The openai SDK raises on an in-stream error and closes the connection at once."""
    start = {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant"}}
    start["message"] |= {"model": "claude-haiku-4-5", "content": [], "usage": {"input_tokens": 7, "output_tokens": 1}}
    events = [("message_start", start), ("error", anthropic_error("overloaded_error", "Overloaded"))]
    upstream.enqueue(events=events, linger_s=1.0)
    key, _ = await make_user()
    await _read_until(gateway, key, route, lambda line, deltas: b"Overloaded" in line)
    row = await _row(gateway, pool)
    assert row["status"] == route.overloaded


# --- the same rule on an OpenAI-compatible provider (vLLM, Ollama, LiteLLM) --------------------------------

OPENAI_ROUTES = [
    pytest.param(
        Route(
            "/v1/chat/completions",
            {"model": "gpt-fast", "stream": True, "messages": MESSAGES},
            b'"content":',
            b"data: [DONE]",
            502,
        ),
        id="chat-passthrough",
    ),
    pytest.param(
        Route(
            "/v1/messages",
            {"model": "gpt-fast", "max_tokens": 500, "stream": True, "messages": MESSAGES},
            b"event: content_block_delta",
            b"event: message_stop",
            502,
        ),
        id="messages-translated",
    ),
]


@pytest.mark.parametrize("route", OPENAI_ROUTES)
async def test_an_openai_provider_stream_cut_by_the_caller_is_billed_for_the_output_relayed(
    make_gateway: GatewayFactory, upstream: FakeUpstream, make_user: MakeUser, pool: asyncpg.Pool, route: Route
) -> None:
    provider = {"type": "openai", "base_url": f"{upstream.url}/v1", "api_key": "sk-test", "retries": {"attempts": 1}}
    server = await make_gateway(
        providers={"openai": provider}, models={"gpt-fast": {"provider": "openai", "model": "gpt-4o-mini"}}
    )
    upstream.chunks = 100
    upstream.enqueue(chunk_delay_s=0.01)
    key, _ = await make_user()
    await _read_until(server, key, route, lambda line, deltas: deltas >= 50)
    row = await _row(server, pool)
    assert (row["status"], row["usage_estimated"]) == (499, True)
    assert 60 <= row["output_tokens"] <= 200


@pytest.mark.parametrize("route", ROUTES)
async def test_a_whole_reply_the_upstream_holds_back_is_timed_out(
    make_gateway: GatewayFactory, upstream: FakeUpstream, make_user: MakeUser, pool: asyncpg.Pool, route: Route
) -> None:
    """The task that runs a whole reply despite a hang-up must not also turn down aiohttp's own first_byte
    timer, which cancels the same task: the upstream would then hold the caller for as long as it likes."""
    provider = {"type": "anthropic", "base_url": upstream.url, "api_key": UPSTREAM_KEY, "retries": {"attempts": 1}}
    server = await make_gateway(providers={"anthropic": provider | {"timeouts": {"first_byte": 0.3}}})
    upstream.enqueue(delay_s=5)
    key, _ = await make_user()
    started = asyncio.get_running_loop().time()
    headers = {"x-api-key": key, "Authorization": f"Bearer {key}"}
    body = route.body | {"stream": False}
    async with (
        aiohttp.ClientSession() as http,
        http.post(server.make_url(route.path), json=body, headers=headers) as resp,
    ):
        await resp.read()
    assert resp.status == 504
    assert asyncio.get_running_loop().time() - started < 3
    assert (await _row(server, pool))["status"] == 504
