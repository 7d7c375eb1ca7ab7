"""A provider of `type: openai` (OpenAI, vLLM, Ollama, LiteLLM) behind the gateway, against the fake's OpenAI endpoint.

Both SDKs drive a running gateway whose alias `gpt-fast` is served by the fake upstream's `/v1/chat/completions`:
the anthropic SDK through the translating relay (create, stream, tools, count_tokens, errors), the openai SDK
through the passthrough (create, stream with and without `include_usage`). Usage rows, prices and budgets are
checked in the real database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import aiohttp
import anthropic
import asyncpg
import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer
from anthropic.types import Message, MessageParam, ToolParam

from gateway import db
from tests.conftest import GatewayFactory, flushed_usage
from tests.fakes.upstream import REPLY_TEXT, FakeUpstream, openai_error

MakeKey = Callable[..., Awaitable[tuple[str, db.KeyRow]]]
MakeUser = Callable[..., Awaitable[tuple[str, db.KeyRow]]]

OPENAI_KEY = "sk-openai-upstream-secret"
ALIAS, PROVIDER_MODEL = "gpt-fast", "gpt-4o-mini"
PRICE = {"input": 0.15, "output": 0.60, "cache_write": 0.0, "cache_read": 0.075}  # USD per million tokens
FIVE_WORDS = " ".join(REPLY_TEXT.split()[:5])
HI: list[MessageParam] = [{"role": "user", "content": "say hi"}]
CHAT_HI = [{"role": "user", "content": "say hi"}]
TOOLS: list[ToolParam] = [
    {
        "name": "lookup",
        "description": "Look a word up in the dictionary.",
        "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    }
]


def openai_overrides(upstream_url: str) -> dict[str, Any]:
    """The gateway.yaml additions: an OpenAI-compatible provider (base_url with /v1), an alias on it and a price."""
    provider = {"type": "openai", "base_url": f"{upstream_url}/v1", "api_key": OPENAI_KEY, "retries": {"attempts": 1}}
    return {
        "providers": {"openai": provider},
        "models": {ALIAS: {"provider": "openai", "model": PROVIDER_MODEL}},
        "pricing": {PROVIDER_MODEL: PRICE},
    }


@pytest.fixture
async def gateway(make_gateway: GatewayFactory, upstream: FakeUpstream) -> TestServer:
    return await make_gateway(**openai_overrides(upstream.url))


@pytest.fixture
async def principal(make_key: MakeKey) -> tuple[str, int]:
    plaintext, row = await make_key("openai-provider-user")
    return plaintext, row.id


@pytest.fixture
async def claude(gateway: TestServer, principal: tuple[str, int]) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=str(gateway.make_url("")), api_key=principal[0], max_retries=0) as sdk:
        yield sdk


@pytest.fixture
async def gpt(gateway: TestServer, principal: tuple[str, int]) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key=principal[0], max_retries=0) as sdk:
        yield sdk


def sent(upstream: FakeUpstream) -> dict[str, Any]:
    last = upstream.requests[-1]
    assert (last.method, last.path) == ("POST", "/v1/chat/completions")
    assert last.headers["authorization"] == f"Bearer {OPENAI_KEY}"  # ours; the caller's key never leaves
    assert "x-api-key" not in last.headers
    return dict(last.json)


def cost(input_tokens: int, output_tokens: int, cache_read: int = 0) -> Decimal:
    total = input_tokens * PRICE["input"] + output_tokens * PRICE["output"] + cache_read * PRICE["cache_read"]
    return Decimal(str(round(total / 1_000_000, 8)))


# --- the anthropic SDK, translated ----------------------------------------------------------------------


async def test_anthropic_create_is_translated_and_billed(
    claude: anthropic.AsyncAnthropic,
    gateway: TestServer,
    upstream: FakeUpstream,
    principal: tuple[str, int],
    pool: asyncpg.Pool,
) -> None:
    upstream.usage(input_tokens=1000, cache_read_input_tokens=400)
    message = await claude.messages.create(model=ALIAS, max_tokens=64, system="Be brief.", messages=HI)

    assert message.type == "message" and message.role == "assistant" and message.model == ALIAS
    assert message.stop_reason == "end_turn"
    assert message.content[0].type == "text" and message.content[0].text == FIVE_WORDS
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (
        600,
        400,
        5,
    )
    assert sent(upstream) == {
        "model": PROVIDER_MODEL,
        "messages": [{"role": "system", "content": "Be brief."}, *CHAT_HI],
        "max_tokens": 64,
    }
    [row] = await flushed_usage(gateway, pool)
    assert (row["key_id"], row["alias"], row["provider"], row["provider_model"], row["status"], row["streamed"]) == (
        principal[1],
        ALIAS,
        "openai",
        PROVIDER_MODEL,
        200,
        False,
    )
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (600, 400, 5)
    assert row["cost_usd"] == cost(600, 5, cache_read=400)


async def test_anthropic_stream_is_translated_and_billed_from_the_usage_chunk(
    claude: anthropic.AsyncAnthropic, gateway: TestServer, upstream: FakeUpstream, pool: asyncpg.Pool
) -> None:
    upstream.usage(input_tokens=23)
    async with claude.messages.stream(model=ALIAS, max_tokens=64, messages=HI) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()

    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and kinds.count("text") == 5
    assert final.content[0].type == "text" and final.content[0].text == FIVE_WORDS
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (23, 5)
    body = sent(upstream)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    [row] = await flushed_usage(gateway, pool)
    assert (row["streamed"], row["status"], row["input_tokens"], row["output_tokens"]) == (True, 200, 23, 5)
    assert row["cost_usd"] == cost(23, 5)


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
async def test_anthropic_tool_round_trip(
    claude: anthropic.AsyncAnthropic, gateway: TestServer, upstream: FakeUpstream, pool: asyncpg.Pool, stream: bool
) -> None:
    ask: list[MessageParam] = [{"role": "user", "content": "please use_tool to look up 'gateway'"}]
    first: Message
    if stream:
        async with claude.messages.stream(model=ALIAS, max_tokens=256, tools=TOOLS, messages=ask) as s:
            first = await s.get_final_message()
    else:
        first = await claude.messages.create(model=ALIAS, max_tokens=256, tools=TOOLS, messages=ask)

    assert first.stop_reason == "tool_use"
    [call] = first.content
    assert call.type == "tool_use" and call.name == "lookup" and call.input == {"q": "fake"}
    assert call.id.startswith("call_fake_")  # the provider's id, so its tool message matches on the way back
    assert sent(upstream)["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look a word up in the dictionary.",
                "parameters": TOOLS[0]["input_schema"],
            },
        }
    ]

    follow_up: list[MessageParam] = [
        *ask,
        {"role": "assistant", "content": first.content},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": "a proxy"},
                {"type": "text", "text": "thanks"},  # else the fake takes the first question as the last one
            ],
        },
    ]
    second = await claude.messages.create(model=ALIAS, max_tokens=256, tools=TOOLS, messages=follow_up)

    assert second.stop_reason == "end_turn" and second.content[0].type == "text"
    assert sent(upstream)["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call.id, "type": "function", "function": {"name": "lookup", "arguments": '{"q":"fake"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": "a proxy"},  # right after the call, as OpenAI wants
        {"role": "user", "content": "thanks"},
    ]
    rows = await flushed_usage(gateway, pool)
    assert [(r["status"], r["streamed"]) for r in rows] == [(200, stream), (200, False)]


async def test_count_tokens_is_an_estimate_that_never_reaches_the_provider(
    claude: anthropic.AsyncAnthropic, gateway: TestServer, upstream: FakeUpstream, pool: asyncpg.Pool
) -> None:
    short = await claude.messages.count_tokens(model=ALIAS, messages=HI)
    long = await claude.messages.with_raw_response.count_tokens(
        model=ALIAS, messages=[{"role": "user", "content": "word " * 400}], tools=TOOLS
    )

    assert 1 <= short.input_tokens < 20
    assert long.headers["x-gateway-token-estimate"] == "true"
    assert 450 < (await long.parse()).input_tokens < 700
    assert upstream.requests == []
    assert await flushed_usage(gateway, pool) == []


# --- the openai SDK, passed through ---------------------------------------------------------------------


async def test_openai_create_passes_through_with_only_the_model_patched(
    gpt: openai.AsyncOpenAI, gateway: TestServer, upstream: FakeUpstream, pool: asyncpg.Pool
) -> None:
    upstream.usage(input_tokens=11)
    completion = await gpt.chat.completions.create(model=ALIAS, messages=CHAT_HI, temperature=0.3, seed=7)  # type: ignore[arg-type]

    assert completion.id.startswith("chatcmpl-fake") and completion.model == PROVIDER_MODEL  # the provider's reply
    assert completion.choices[0].message.content == FIVE_WORDS
    assert completion.usage is not None and completion.usage.prompt_tokens == 11
    body = sent(upstream)
    assert body == {"messages": CHAT_HI, "model": PROVIDER_MODEL, "temperature": 0.3, "seed": 7}
    [row] = await flushed_usage(gateway, pool)
    assert (row["route"], row["alias"], row["provider_model"], row["input_tokens"], row["output_tokens"]) == (
        "chat_completions",
        ALIAS,
        PROVIDER_MODEL,
        11,
        5,
    )
    assert row["cost_usd"] == cost(11, 5)


async def raw_stream(gateway: TestServer, key: str, body: dict[str, Any]) -> list[bytes]:
    """The `data:` payloads of a streamed answer, as the caller receives them."""
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        aiohttp.ClientSession() as s,
        s.post(gateway.make_url("/v1/chat/completions"), json=body, headers=headers) as r,
    ):
        assert r.status == 200, await r.text()
        raw = await r.read()
    return [frame.removeprefix(b"data: ") for frame in raw.split(b"\n\n") if frame]


@pytest.mark.parametrize("caller_wants_usage", [False, True], ids=["without-usage", "with-usage"])
async def test_openai_stream_always_asks_for_usage_and_hides_it_unless_asked(
    gateway: TestServer,
    upstream: FakeUpstream,
    principal: tuple[str, int],
    pool: asyncpg.Pool,
    caller_wants_usage: bool,
) -> None:
    upstream.usage(input_tokens=31)
    body: dict[str, Any] = {"model": ALIAS, "messages": CHAT_HI, "stream": True}
    if caller_wants_usage:
        body["stream_options"] = {"include_usage": True}
    payloads = await raw_stream(gateway, principal[0], body)

    assert payloads[-1] == b"[DONE]"
    chunks = [orjson.loads(p) for p in payloads[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == FIVE_WORDS
    usage_chunks = [c for c in chunks if not c["choices"]]
    if caller_wants_usage:
        [usage_chunk] = usage_chunks
        assert usage_chunk["usage"]["prompt_tokens"] == 31
    else:
        assert usage_chunks == []
    assert sent(upstream)["stream_options"] == {"include_usage": True}
    [row] = await flushed_usage(gateway, pool)
    assert (row["streamed"], row["status"], row["input_tokens"], row["output_tokens"]) == (True, 200, 31, 5)


async def test_openai_sdk_stream_with_tool_calls(gpt: openai.AsyncOpenAI, upstream: FakeUpstream) -> None:
    tool = {"type": "function", "function": {"name": "lookup", "parameters": TOOLS[0]["input_schema"]}}
    stream = await gpt.chat.completions.create(
        model=ALIAS,
        messages=[{"role": "user", "content": "use_tool please"}],
        tools=[tool],  # type: ignore[list-item]
        stream=True,
        stream_options={"include_usage": True},
    )
    arguments, finish, usage = "", None, None
    async for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                arguments += (call.function.arguments or "") if call.function else ""
            finish = choice.finish_reason or finish
        usage = chunk.usage or usage

    assert orjson.loads(arguments) == {"q": "fake"} and finish == "tool_calls"
    assert usage is not None and usage.completion_tokens == 5


# --- budgets -------------------------------------------------------------------------------------------


async def test_budget_refuses_an_alias_served_by_the_openai_provider(
    gateway: TestServer, upstream: FakeUpstream, make_user: MakeUser, pool: asyncpg.Pool
) -> None:
    upstream.usage(input_tokens=40)  # 45 tokens a request (5 words)
    key, _ = await make_user("budget@example.com", limit_tokens=100)
    async with anthropic.AsyncAnthropic(base_url=str(gateway.make_url("")), api_key=key, max_retries=0) as claude:
        for _ in range(3):  # 0, 45, 90 < 100
            await claude.messages.create(model=ALIAS, max_tokens=64, messages=HI)
        await flushed_usage(gateway, pool)
        with pytest.raises(anthropic.RateLimitError) as refused:
            await claude.messages.create(model=ALIAS, max_tokens=64, messages=HI)
    assert refused.value.body["tokensUsed"] == 135  # type: ignore[index]
    async with openai.AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key=key, max_retries=0) as gpt:
        with pytest.raises(openai.RateLimitError) as refused_openai:
            await gpt.chat.completions.create(model=ALIAS, messages=CHAT_HI)  # type: ignore[arg-type]
    assert refused_openai.value.code == "monthly_token_limit"
    assert len(upstream.requests) == 3  # the refused calls never reached the provider


# --- upstream errors -----------------------------------------------------------------------------------


async def test_upstream_429_reaches_the_anthropic_caller_in_anthropic_shape(
    claude: anthropic.AsyncAnthropic, gateway: TestServer, upstream: FakeUpstream, pool: asyncpg.Pool
) -> None:
    upstream.enqueue(
        status=429, body=openai_error(429, "Rate limit reached for gpt-4o-mini"), headers={"retry-after": "7"}
    )
    with pytest.raises(anthropic.RateLimitError) as caught:
        await claude.messages.create(model=ALIAS, max_tokens=64, messages=HI)

    assert caught.value.status_code == 429
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Rate limit reached for gpt-4o-mini"},
    }
    assert caught.value.response.headers["retry-after"] == "7"
    [row] = await flushed_usage(gateway, pool)
    assert row["status"] == 429 and row["output_tokens"] == 0


async def test_upstream_error_reaches_the_openai_caller_unchanged(
    gpt: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    upstream.enqueue(status=429, body=openai_error(429, "slow down"), headers={"retry-after": "3"})
    with pytest.raises(openai.RateLimitError) as caught:
        await gpt.chat.completions.create(model=ALIAS, messages=CHAT_HI)  # type: ignore[arg-type]
    assert caught.value.body == openai_error(429, "slow down")["error"]
    assert caught.value.response.headers["retry-after"] == "3"


@pytest.mark.parametrize("status", [400, 401, 404, 500, 503])
async def test_upstream_error_statuses_raise_the_matching_anthropic_class(
    claude: anthropic.AsyncAnthropic, upstream: FakeUpstream, status: int
) -> None:
    upstream.enqueue(status=status)  # the fake answers in OpenAI's error shape
    with pytest.raises(anthropic.APIStatusError) as caught:
        await claude.messages.create(model=ALIAS, max_tokens=64, messages=HI)
    # a 401 refuses the gateway's own provider key: a 502 naming the provider (tests/test_first_hour.py)
    assert caught.value.status_code == (502 if status == 401 else status)
    assert f"fake upstream error {status}" in str(caught.value)


async def test_stream_refused_raises_before_any_event(claude: anthropic.AsyncAnthropic, upstream: FakeUpstream) -> None:
    upstream.enqueue(status=503)
    with pytest.raises(anthropic.InternalServerError):
        async with claude.messages.stream(model=ALIAS, max_tokens=64, messages=HI) as stream:
            await stream.get_final_message()


async def test_connection_reset_mid_stream_ends_in_an_anthropic_error_event(
    gateway: TestServer, upstream: FakeUpstream, principal: tuple[str, int], pool: asyncpg.Pool
) -> None:
    upstream.enqueue(reset_after_events=3)  # role chunk and two words, then the connection drops
    body = {"model": ALIAS, "max_tokens": 64, "messages": HI, "stream": True}
    async with (
        aiohttp.ClientSession() as s,
        s.post(gateway.make_url("/v1/messages"), json=body, headers={"x-api-key": principal[0]}) as r,
    ):
        text = (await r.read()).decode()
    lines = text.rstrip().splitlines()
    assert lines[0] == "event: message_start" and lines[-2] == "event: error"
    assert orjson.loads(lines[-1].removeprefix("data: "))["error"]["type"] == "api_error"
    assert "message_stop" not in text
    [row] = await flushed_usage(gateway, pool)
    assert (row["status"], row["streamed"]) == (502, True)


async def test_connection_reset_mid_passthrough_stream_raises_in_the_openai_sdk(
    gpt: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    upstream.enqueue(reset_after_events=3)
    stream = await gpt.chat.completions.create(model=ALIAS, messages=CHAT_HI, stream=True)  # type: ignore[arg-type]
    with pytest.raises(openai.APIError, match="broke off"):
        async for _ in stream:
            pass


async def test_unreachable_provider_is_a_502_in_the_callers_dialect(
    make_gateway: GatewayFactory, upstream: FakeUpstream, key: str
) -> None:
    overrides = openai_overrides(upstream.url)
    overrides["providers"]["openai"]["base_url"] = "http://127.0.0.1:9/v1"  # nothing listens on the discard port
    server = await make_gateway(**overrides)
    async with anthropic.AsyncAnthropic(base_url=str(server.make_url("")), api_key=key, max_retries=0) as claude:
        with pytest.raises(anthropic.APIStatusError) as caught:
            await claude.messages.create(model=ALIAS, max_tokens=64, messages=HI)
    assert caught.value.status_code == 502
    assert caught.value.body["type"] == "error"  # type: ignore[index]


async def test_untranslatable_request_is_a_400_naming_the_block(
    claude: anthropic.AsyncAnthropic, upstream: FakeUpstream
) -> None:
    document = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}
    with pytest.raises(anthropic.BadRequestError) as caught:
        await claude.messages.create(model=ALIAS, max_tokens=64, messages=[{"role": "user", "content": [document]}])  # type: ignore[list-item]
    assert "messages[0].content[0].type" in str(caught.value) and "document" in str(caught.value)
    assert upstream.requests == []
