"""The official `anthropic` Python SDK against the gateway: what a real Anthropic caller sees, end to end.

Each test drives `AsyncAnthropic(base_url=<gateway>)` against a running gateway, the fake upstream and a
real PostgreSQL, then checks the SDK's parsed objects, what the upstream received and the usage rows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anthropic
import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from anthropic.types import Message, MessageParam, ToolParam, ToolResultBlockParam

from gateway import db
from tests.conftest import UPSTREAM_KEY, flushed_usage
from tests.fakes.upstream import REPLY_TEXT, FakeUpstream, anthropic_error, anthropic_events_for

MakeKey = Callable[..., Awaitable[tuple[str, db.KeyRow]]]

HI: list[MessageParam] = [{"role": "user", "content": "say hi"}]
FIVE_WORDS = " ".join(REPLY_TEXT.split()[:5])  # the fake replies with its first `chunks` (5) words
TOOLS: list[ToolParam] = [
    {
        "name": "lookup",
        "description": "Look a word up in the dictionary.",
        "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    }
]
SIGNATURE = "EqQBCkYIBxgCKkBfakeSignatureBytes+/=="


@pytest.fixture
async def principal(make_key: MakeKey) -> tuple[str, int]:
    """A fresh gateway key and its id, so usage rows can be matched to it."""
    plaintext, row = await make_key("sdk-user")
    return plaintext, row.id


@pytest.fixture
async def client(gateway: TestServer, principal: tuple[str, int]) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """The SDK as a caller configures it: the gateway's base URL, a gateway key, no retries to hide errors."""
    async with anthropic.AsyncAnthropic(base_url=str(gateway.make_url("")), api_key=principal[0], max_retries=0) as sdk:
        yield sdk


def thinking_message(model: str) -> dict[str, Any]:
    """A reply with a signed thinking block before the text, as extended thinking produces."""
    return {
        "id": "msg_fake_thinking",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [
            {"type": "thinking", "thinking": "The user wants a greeting. Keep it short.", "signature": SIGNATURE},
            {"type": "text", "text": "Hi there!"},
        ],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 30, "output_tokens": 12, "cache_read_input_tokens": 0},
    }


# --- create, stream, count_tokens ---------------------------------------------------------------------


async def test_create_maps_the_alias_and_logs_usage(
    client: anthropic.AsyncAnthropic,
    gateway: TestServer,
    upstream: FakeUpstream,
    principal: tuple[str, int],
    pool: asyncpg.Pool,
) -> None:
    upstream.usage(input_tokens=11, output_tokens=5)
    message = await client.messages.create(model="claude-fast", max_tokens=64, messages=HI)

    assert message.type == "message" and message.stop_reason == "end_turn"
    assert message.content[0].type == "text" and message.content[0].text == FIVE_WORDS
    assert (message.usage.input_tokens, message.usage.output_tokens) == (11, 5)
    sent = upstream.requests[-1]
    assert sent.json["model"] == "claude-haiku-4-5" and sent.json["messages"] == HI
    assert sent.headers["x-api-key"] == UPSTREAM_KEY
    assert sent.headers["anthropic-version"] == client.default_headers["anthropic-version"]  # the SDK's, kept
    [row] = await flushed_usage(gateway, pool)
    assert (row["key_id"], row["alias"], row["provider_model"], row["status"], row["streamed"]) == (
        principal[1],
        "claude-fast",
        "claude-haiku-4-5",
        200,
        False,
    )
    assert (row["input_tokens"], row["output_tokens"]) == (11, 5)


# anthropic 2.x sends `api_key` as `Authorization: Bearer` too; 0.x sent it as `x-api-key`. The gateway takes all.
CREDENTIAL_STYLES: dict[str, Callable[[str], dict[str, Any]]] = {
    "api_key": lambda key: {"api_key": key},
    "auth_token": lambda key: {"auth_token": key},  # Authorization: Bearer, as ANTHROPIC_AUTH_TOKEN does
    "x-api-key-header": lambda key: {"default_headers": {"x-api-key": key}},
}


@pytest.mark.parametrize("style", list(CREDENTIAL_STYLES))
async def test_every_sdk_credential_style_is_accepted_and_never_forwarded(
    gateway: TestServer, upstream: FakeUpstream, principal: tuple[str, int], pool: asyncpg.Pool, style: str
) -> None:
    credentials = CREDENTIAL_STYLES[style](principal[0])
    async with anthropic.AsyncAnthropic(base_url=str(gateway.make_url("")), max_retries=0, **credentials) as sdk:
        message = await sdk.messages.create(model="claude-fast", max_tokens=64, messages=HI)

    assert message.content[0].type == "text" and message.content[0].text == FIVE_WORDS
    sent = upstream.requests[-1]
    assert "authorization" not in {k.lower() for k in sent.headers}  # the caller's key never leaves
    assert sent.headers["x-api-key"] == UPSTREAM_KEY
    [row] = await flushed_usage(gateway, pool)
    assert row["key_id"] == principal[1] and row["status"] == 200


async def test_stream_accumulates_the_reply_and_reports_final_usage(
    client: anthropic.AsyncAnthropic,
    gateway: TestServer,
    upstream: FakeUpstream,
    principal: tuple[str, int],
    pool: asyncpg.Pool,
) -> None:
    upstream.usage(input_tokens=23)
    async with client.messages.stream(model="claude-fast", max_tokens=64, messages=HI) as stream:
        deltas = [text async for text in stream.text_stream]
        final = await stream.get_final_message()

    assert len(deltas) == 5 and "".join(deltas) == FIVE_WORDS
    assert final.content[0].type == "text" and final.content[0].text == FIVE_WORDS
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (23, 5)
    assert upstream.requests[-1].json["stream"] is True
    [row] = await flushed_usage(gateway, pool)
    assert (row["key_id"], row["status"], row["streamed"]) == (principal[1], 200, True)
    assert (row["input_tokens"], row["output_tokens"]) == (23, 5)


async def test_count_tokens_reaches_the_provider_and_is_not_billed(
    client: anthropic.AsyncAnthropic, gateway: TestServer, upstream: FakeUpstream, pool: asyncpg.Pool
) -> None:
    upstream.usage(input_tokens=17)
    count = await client.messages.count_tokens(model="claude-fast", messages=HI)

    assert count.input_tokens == 17
    sent = upstream.requests[-1]
    assert sent.path == "/v1/messages/count_tokens" and sent.json["model"] == "claude-haiku-4-5"
    assert await flushed_usage(gateway, pool) == []


# --- errors: the SDK raises the class that matches the status ------------------------------------------


async def test_upstream_429_raises_rate_limit_error_with_retry_after(
    client: anthropic.AsyncAnthropic, gateway: TestServer, upstream: FakeUpstream, pool: asyncpg.Pool
) -> None:
    upstream.enqueue(status=429, body=anthropic_error("rate_limit_error", "slow down"), headers={"retry-after": "7"})
    with pytest.raises(anthropic.RateLimitError) as caught:
        await client.messages.create(model="claude-fast", max_tokens=64, messages=HI)

    assert caught.value.status_code == 429
    assert caught.value.body == anthropic_error("rate_limit_error", "slow down")
    assert caught.value.response.headers["retry-after"] == "7"
    assert "slow down" in str(caught.value)
    [row] = await flushed_usage(gateway, pool)
    assert row["status"] == 429 and row["output_tokens"] == 0


async def test_upstream_529_raises_overloaded_as_a_server_error(
    client: anthropic.AsyncAnthropic, gateway: TestServer, upstream: FakeUpstream, pool: asyncpg.Pool
) -> None:
    upstream.enqueue(status=529, body=anthropic_error("overloaded_error", "Overloaded"))
    with pytest.raises(anthropic.InternalServerError) as caught:
        await client.messages.create(model="claude-fast", max_tokens=64, messages=HI)

    assert caught.value.status_code == 529
    assert "Overloaded" in str(caught.value)
    [row] = await flushed_usage(gateway, pool)
    assert row["status"] == 529


async def test_stream_refused_with_529_raises_before_any_event(
    client: anthropic.AsyncAnthropic, upstream: FakeUpstream
) -> None:
    upstream.enqueue(status=529, body=anthropic_error("overloaded_error", "Overloaded"))
    with pytest.raises(anthropic.APIStatusError) as caught:
        async with client.messages.stream(model="claude-fast", max_tokens=64, messages=HI) as stream:
            await stream.get_final_message()
    assert caught.value.status_code == 529


async def test_invalid_key_raises_authentication_error(
    gateway: TestServer, upstream: FakeUpstream, pool: asyncpg.Pool
) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=str(gateway.make_url("")), api_key="gw-0123456789abcdef_" + "x" * 43, max_retries=0
    ) as sdk:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await sdk.messages.create(model="claude-fast", max_tokens=64, messages=HI)

    assert caught.value.status_code == 401
    assert upstream.requests == []
    assert await flushed_usage(gateway, pool) == []


async def test_unknown_alias_raises_not_found_naming_the_aliases(
    client: anthropic.AsyncAnthropic, gateway: TestServer, upstream: FakeUpstream, pool: asyncpg.Pool
) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        await client.messages.create(model="claude-fastt", max_tokens=64, messages=HI)

    assert caught.value.status_code == 404
    assert "claude-fastt" in str(caught.value) and "claude-fast" in str(caught.value)
    assert upstream.requests == []
    assert await flushed_usage(gateway, pool) == []


# --- extended thinking: blocks and signatures reach the SDK intact ------------------------------------


async def test_thinking_block_and_signature_intact(
    client: anthropic.AsyncAnthropic, gateway: TestServer, upstream: FakeUpstream, pool: asyncpg.Pool
) -> None:
    upstream.enqueue(body=thinking_message("claude-sonnet-4-5"))
    message = await client.messages.create(
        model="claude-quality",
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=HI,
    )

    thinking, text = message.content
    assert thinking.type == "thinking" and thinking.signature == SIGNATURE
    assert thinking.thinking == "The user wants a greeting. Keep it short."
    assert text.type == "text" and text.text == "Hi there!"
    sent = upstream.requests[-1].json
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024} and sent["model"] == "claude-sonnet-4-5"
    [row] = await flushed_usage(gateway, pool)
    assert (row["alias"], row["input_tokens"], row["output_tokens"]) == ("claude-quality", 30, 12)


async def test_streamed_thinking_block_and_signature_intact(
    client: anthropic.AsyncAnthropic, gateway: TestServer, upstream: FakeUpstream, pool: asyncpg.Pool
) -> None:
    upstream.enqueue(events=anthropic_events_for(thinking_message("claude-sonnet-4-5")))
    async with client.messages.stream(
        model="claude-quality",
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=HI,
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()

    assert "thinking" in kinds and "signature" in kinds and "text" in kinds
    thinking, text = final.content
    assert thinking.type == "thinking" and thinking.signature == SIGNATURE
    assert thinking.thinking == "The user wants a greeting. Keep it short."
    assert text.type == "text" and text.text == "Hi there!"
    [row] = await flushed_usage(gateway, pool)
    assert (row["streamed"], row["input_tokens"], row["output_tokens"]) == (True, 30, 12)


# --- tools: a tool_use answer and the tool_result sent back -------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
async def test_tool_use_round_trip(
    client: anthropic.AsyncAnthropic, gateway: TestServer, upstream: FakeUpstream, pool: asyncpg.Pool, stream: bool
) -> None:
    ask: list[MessageParam] = [{"role": "user", "content": "please use_tool to look up 'gateway'"}]
    first: Message
    if stream:
        async with client.messages.stream(model="claude-fast", max_tokens=256, tools=TOOLS, messages=ask) as s:
            first = await s.get_final_message()
    else:
        first = await client.messages.create(model="claude-fast", max_tokens=256, tools=TOOLS, messages=ask)

    assert first.stop_reason == "tool_use"
    [call] = [block for block in first.content if block.type == "tool_use"]
    assert call.name == "lookup" and call.input == {"q": "fake"}
    assert upstream.requests[-1].json["tools"] == TOOLS

    result: ToolResultBlockParam = {
        "type": "tool_result",
        "tool_use_id": call.id,
        "content": "a place between callers and a provider",
    }
    follow_up: list[MessageParam] = [
        *ask,
        {"role": "assistant", "content": first.content},  # the SDK takes its reply's blocks back as they are
        {"role": "user", "content": [result]},
    ]
    second = await client.messages.create(model="claude-fast", max_tokens=256, tools=TOOLS, messages=follow_up)

    assert second.stop_reason == "end_turn" and second.content[0].type == "text"
    sent = upstream.requests[-1].json
    assert sent["messages"][1]["content"][-1] == {
        "type": "tool_use",
        "id": call.id,
        "name": "lookup",
        "input": {"q": "fake"},
    }
    assert sent["messages"][2]["content"] == [result]
    rows = await flushed_usage(gateway, pool)
    assert [(r["status"], r["streamed"]) for r in rows] == [(200, stream), (200, False)]
