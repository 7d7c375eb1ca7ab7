"""POST /v1/chat/completions and GET /v1/models, driven by the official `openai` SDK, over Anthropic upstream.

Each test speaks to a real gateway (fake Anthropic upstream, real PostgreSQL) exactly as an OpenAI client
would, then checks both sides: what the SDK made of the answer and what the upstream was sent.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI

from tests.conftest import UPSTREAM_KEY, flushed_usage
from tests.fakes.upstream import WORDS, FakeUpstream, anthropic_error, anthropic_events_for

REPLY = " ".join(WORDS[:5])  # the fake's default reply: its first five words
HI = [{"role": "user", "content": "hi"}]
LOOKUP_TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look something up.",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    },
}
PIXEL_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


@pytest.fixture
async def client(gateway: TestServer, key: str) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key=key, max_retries=0) as sdk:
        yield sdk


def sent_body(upstream: FakeUpstream) -> dict[str, Any]:
    [request] = upstream.requests
    assert request.path == "/v1/messages"
    return request.json  # type: ignore[no-any-return]


def thinking_message(thinking: str, text: str) -> dict[str, Any]:
    """A complete Anthropic reply that thought before it answered."""
    content = [{"type": "thinking", "thinking": thinking, "signature": "sig"}, {"type": "text", "text": text}]
    usage = {"input_tokens": 9, "output_tokens": 30, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
    return {
        "id": "msg_think",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": content,
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }


async def raw_post(server: TestServer, data: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(str(server.make_url("/v1/chat/completions")), data=data, headers=headers) as r,
    ):
        return r.status, await r.json()


async def raw_stream(server: TestServer, key: str, body: dict[str, Any]) -> list[str]:
    """The `data:` payloads of a streamed answer, in order, "[DONE]" included."""
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        aiohttp.ClientSession() as s,
        s.post(str(server.make_url("/v1/chat/completions")), json=body, headers=headers) as r,
    ):
        assert r.status == 200
        text = (await r.read()).decode()
    return [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]


# --- create --------------------------------------------------------------------------------------------


async def test_create_translates_both_ways_and_logs_usage(
    client: AsyncOpenAI, gateway: TestServer, upstream: FakeUpstream, pool: asyncpg.Pool
) -> None:
    upstream.usage(input_tokens=100, output_tokens=20, cache_read_input_tokens=1000, cache_creation_input_tokens=10)
    completion = await client.chat.completions.create(
        model="claude-fast",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
            {"role": "user", "content": "hi"},
        ],
        temperature=1.5,
    )
    assert completion.object == "chat.completion"
    assert completion.model == "claude-fast"
    [choice] = completion.choices
    assert (choice.message.role, choice.message.content, choice.finish_reason) == ("assistant", REPLY, "stop")
    assert choice.message.tool_calls is None
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (1110, 20)
    assert completion.usage.total_tokens == 1130
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 1000

    assert sent_body(upstream) == {
        "model": "claude-haiku-4-5",
        "max_tokens": 4096,  # the alias's default_max_tokens: Anthropic requires one, OpenAI clients may omit it
        "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Answer in English."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "temperature": 1,  # clamped from OpenAI's 0..2 to Anthropic's 0..1
    }
    sent_headers = upstream.requests[0].headers
    assert sent_headers["x-api-key"] == UPSTREAM_KEY and "authorization" not in sent_headers

    [row] = await flushed_usage(gateway, pool)
    assert (row["alias"], row["provider_model"], row["status"], row["streamed"]) == (
        "claude-fast",
        "claude-haiku-4-5",
        200,
        False,
    )
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"], row["cache_write_tokens"]) == (
        100,
        20,
        1000,
        10,
    )
    assert row["cost_usd"] == Decimal("0.00031250")  # 100*1 + 20*5 + 1000*0.10 + 10*1.25 per million


@pytest.mark.parametrize(
    ("params", "max_tokens"),
    [
        pytest.param({"max_tokens": 50}, 50, id="max_tokens"),
        pytest.param({"max_completion_tokens": 60}, 60, id="max_completion_tokens"),
        pytest.param({"max_tokens": 50, "max_completion_tokens": 60}, 60, id="newer-name-wins"),
    ],
)
async def test_create_passes_max_tokens(
    client: AsyncOpenAI, upstream: FakeUpstream, params: dict[str, Any], max_tokens: int
) -> None:
    await client.chat.completions.create(model="claude-fast", messages=HI, **params)
    assert sent_body(upstream)["max_tokens"] == max_tokens


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        pytest.param({"stop": "END"}, {"stop_sequences": ["END"]}, id="stop"),
        pytest.param({"stop": ["A", "B"]}, {"stop_sequences": ["A", "B"]}, id="stop-list"),
        pytest.param({"top_p": 0.5}, {"top_p": 0.5}, id="top_p"),
        pytest.param({"user": "alice@example.com"}, {"metadata": {"user_id": "alice@example.com"}}, id="user"),
        pytest.param(
            {"tools": [LOOKUP_TOOL], "tool_choice": {"type": "function", "function": {"name": "lookup"}}},
            {"tool_choice": {"type": "tool", "name": "lookup"}},
            id="named-tool",
        ),
        pytest.param(
            {"tools": [LOOKUP_TOOL], "tool_choice": "required", "parallel_tool_calls": False},
            {"tool_choice": {"type": "any", "disable_parallel_tool_use": True}},
            id="required-one-at-a-time",
        ),
        pytest.param({"tools": [], "tool_choice": "auto"}, {}, id="empty-tools"),
        pytest.param(
            {"seed": 7, "frequency_penalty": 0.5, "presence_penalty": 0.1, "store": False, "metadata": {"k": "v"}},
            {},
            id="ignored",
        ),
    ],
)
async def test_create_options_reach_upstream(
    client: AsyncOpenAI, upstream: FakeUpstream, params: dict[str, Any], expected: dict[str, Any]
) -> None:
    await client.chat.completions.create(model="claude-fast", messages=HI, **params)
    sent = sent_body(upstream)
    assert {k: v for k, v in sent.items() if k not in ("model", "max_tokens", "messages", "tools")} == expected


# --- stream --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("include_usage", [pytest.param(True, id="with-usage"), pytest.param(False, id="no-usage")])
async def test_stream_delivers_chunks_and_optional_usage(
    client: AsyncOpenAI, gateway: TestServer, upstream: FakeUpstream, pool: asyncpg.Pool, include_usage: bool
) -> None:
    upstream.usage(input_tokens=40, cache_read_input_tokens=2)
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = await client.chat.completions.create(model="claude-fast", messages=HI, stream=True, **options)
    chunks = [chunk async for chunk in stream]

    assert {c.model for c in chunks} == {"claude-fast"} and len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    with_choices = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in with_choices) == REPLY
    assert [c.choices[0].finish_reason for c in with_choices][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    if include_usage:
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (42, 5)
        assert all(c.usage is None for c in chunks[:-1])
    else:
        assert all(c.choices and c.usage is None for c in chunks)

    assert sent_body(upstream)["stream"] is True and "stream_options" not in sent_body(upstream)
    [row] = await flushed_usage(gateway, pool)
    assert (row["streamed"], row["status"], row["input_tokens"], row["output_tokens"]) == (True, 200, 40, 5)
    assert row["cache_read_tokens"] == 2


async def test_stream_ends_with_done(gateway: TestServer, upstream: FakeUpstream, key: str) -> None:
    payloads = await raw_stream(gateway, key, {"model": "claude-fast", "messages": HI, "stream": True})
    assert payloads[-1] == "[DONE]"
    assert all(json.loads(p)["object"] == "chat.completion.chunk" for p in payloads[:-1])


# --- tools ---------------------------------------------------------------------------------------------


async def test_tool_call_round_trip(client: AsyncOpenAI, upstream: FakeUpstream) -> None:
    question = {"role": "user", "content": "use_tool to look up the answer"}
    first = await client.chat.completions.create(
        model="claude-fast", messages=[question], tools=[LOOKUP_TOOL], tool_choice="auto"
    )
    [choice] = first.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == REPLY  # the fake says something before it calls the tool
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("toolu_fake_")
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"q": "fake"}
    sent = upstream.requests[0].json
    assert sent["tools"] == [
        {
            "name": "lookup",
            "description": "Look something up.",
            "input_schema": LOOKUP_TOOL["function"]["parameters"],  # type: ignore[index]
        }
    ]
    assert sent["tool_choice"] == {"type": "auto"}

    second = await client.chat.completions.create(
        model="claude-fast",
        messages=[
            question,
            choice.message.model_dump(exclude_none=True),  # the SDK's own message object, sent back as-is
            {"role": "tool", "tool_call_id": call.id, "content": "42"},
        ],
        tools=[LOOKUP_TOOL],
    )
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content == REPLY
    assert upstream.requests[1].json["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": REPLY},
                {"type": "tool_use", "id": call.id, "name": "lookup", "input": {"q": "fake"}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "42"}]},
    ]


async def test_streamed_tool_call_round_trip(client: AsyncOpenAI, upstream: FakeUpstream) -> None:
    question = {"role": "user", "content": "use_tool please"}
    stream = await client.chat.completions.create(
        model="claude-fast", messages=[question], tools=[LOOKUP_TOOL], stream=True
    )
    chunks = [chunk async for chunk in stream]
    calls = [call for c in chunks for call in c.choices[0].delta.tool_calls or []]
    opening, *fragments = calls
    assert opening.index == 0 and opening.id and opening.type == "function"
    assert opening.function is not None and opening.function.name == "lookup"
    assert fragments and all(f.index == 0 and f.id is None for f in fragments)
    arguments = (opening.function.arguments or "") + "".join(f.function.arguments or "" for f in fragments)
    assert json.loads(arguments) == {"q": "fake"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    stream = await client.chat.completions.create(
        model="claude-fast",
        messages=[
            question,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": opening.id, "type": "function", "function": {"name": "lookup", "arguments": arguments}}
                ],
            },
            {"role": "tool", "tool_call_id": opening.id, "content": [{"type": "text", "text": "42"}]},
        ],
        tools=[LOOKUP_TOOL],
        stream=True,
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == REPLY
    assert upstream.requests[1].json["messages"][1:] == [
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": opening.id, "name": "lookup", "input": {"q": "fake"}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": opening.id, "content": [{"type": "text", "text": "42"}]}
            ],
        },
    ]


async def test_sdk_stream_helper_rebuilds_the_same_completion(client: AsyncOpenAI) -> None:
    """The SDK's own chunk accumulator (`.stream()`) is a strict reader of tool-call deltas."""
    request: dict[str, Any] = {"model": "claude-fast", "messages": [{"role": "user", "content": "use_tool"}]}
    whole = await client.chat.completions.create(**request, tools=[LOOKUP_TOOL])
    async with client.chat.completions.stream(**request, tools=[LOOKUP_TOOL]) as stream:
        events = [event.type async for event in stream]
        streamed = await stream.get_final_completion()
    assert "content.done" in events and "tool_calls.function.arguments.done" in events
    [got], [want] = streamed.choices, whole.choices
    assert (got.finish_reason, got.message.content) == (want.finish_reason, want.message.content)
    [got_call], [want_call] = got.message.tool_calls or [], want.message.tool_calls or []
    assert (got_call.function.name, got_call.function.arguments) == ("lookup", want_call.function.arguments)


# --- images --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "source"),
    [
        pytest.param(
            f"data:image/png;base64,{PIXEL_PNG}",
            {"type": "base64", "media_type": "image/png", "data": PIXEL_PNG},
            id="data-url",
        ),
        pytest.param(
            "https://example.com/cat.jpg", {"type": "url", "url": "https://example.com/cat.jpg"}, id="https-url"
        ),
    ],
)
async def test_image_parts_become_image_blocks(
    client: AsyncOpenAI, upstream: FakeUpstream, url: str, source: dict[str, str]
) -> None:
    await client.chat.completions.create(
        model="claude-fast",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
                ],
            }
        ],
    )
    assert sent_body(upstream)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image", "source": source}]}
    ]


# --- upstream errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [pytest.param(False, id="create"), pytest.param(True, id="stream")])
@pytest.mark.parametrize(
    ("upstream_status", "error_type", "message", "error_cls", "status"),
    [
        pytest.param(429, "rate_limit_error", "slow down", openai.RateLimitError, 429, id="429"),
        pytest.param(529, "overloaded_error", "Overloaded", openai.InternalServerError, 503, id="529"),
        pytest.param(400, "invalid_request_error", "prompt is too long", openai.BadRequestError, 400, id="400"),
        pytest.param(500, "api_error", "Internal server error", openai.InternalServerError, 500, id="500"),
    ],
)
async def test_upstream_errors_reach_the_sdk_as_its_own_exceptions(
    client: AsyncOpenAI,
    gateway: TestServer,
    upstream: FakeUpstream,
    pool: asyncpg.Pool,
    stream: bool,
    upstream_status: int,
    error_type: str,
    message: str,
    error_cls: type[openai.APIStatusError],
    status: int,
) -> None:
    upstream.enqueue(status=upstream_status, body=anthropic_error(error_type, message), headers={"retry-after": "7"})
    with pytest.raises(error_cls) as caught:
        await client.chat.completions.create(model="claude-fast", messages=HI, stream=stream)
    assert caught.value.status_code == status
    assert isinstance(caught.value.body, dict) and caught.value.body["message"] == message
    assert caught.value.code == error_type
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.response.headers["request-id"].startswith("req_fake_")
    [row] = await flushed_usage(gateway, pool)
    assert row["status"] == status and row["output_tokens"] == 0


# --- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "param", "fragment"),
    [
        pytest.param({"n": 2}, "n", "only one choice", id="n-2"),
        pytest.param(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}
                ]
            },
            "messages[0].content[0].type",
            "'input_audio' content parts are not supported",
            id="input_audio",
        ),
        pytest.param(
            {
                "messages": [
                    *HI,
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": '}}
                        ],
                    },
                    {"role": "tool", "tool_call_id": "call_1", "content": "42"},
                ]
            },
            "messages[1].tool_calls[0].function.arguments",
            "not valid JSON",
            id="broken-tool-arguments",
        ),
        pytest.param({"response_format": {"type": "grammar"}}, "response_format.type", "not supported", id="format"),
        pytest.param(
            {"reasoning_effort": "ultra", "model": "claude-quality"}, "reasoning_effort", "none, low, high", id="effort"
        ),
        pytest.param({"reasoning_effort": "low"}, "reasoning_effort", "does not support", id="effort-no-thinking"),
        pytest.param(
            {"tools": [{"type": "function", "function": {"name": "look up"}}]},
            "tools[0].function.name",
            "not a valid tool name",
            id="tool-name-with-space",
        ),
        pytest.param(
            {"tools": [LOOKUP_TOOL], "tool_choice": {"type": "function", "function": {"name": "search"}}},
            "tool_choice",
            "'search' is not the name of a tool",
            id="tool_choice-names-no-tool",
        ),
        pytest.param({"user": 42}, "user", "must be a string", id="user-not-string"),
    ],
)
async def test_untranslatable_requests_are_400_naming_the_param(
    client: AsyncOpenAI, upstream: FakeUpstream, params: dict[str, Any], param: str, fragment: str
) -> None:
    request: dict[str, Any] = {"model": "claude-fast", "messages": HI, **params}
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(**request)
    assert caught.value.param == param and caught.value.type == "invalid_request_error"
    assert fragment in caught.value.message
    assert upstream.requests == []


async def test_unknown_alias_is_404_listing_the_aliases(client: AsyncOpenAI, upstream: FakeUpstream) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="gpt-4o", messages=HI)
    assert caught.value.code == "model_not_found"
    assert "configured aliases: claude-fast, claude-quality, claude-unpriced" in caught.value.message
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("api_key", "fragment"),
    [
        pytest.param("gw-0123456789abcdef_nope", "invalid or revoked", id="unknown-gateway-key"),
        pytest.param("sk-proj-an-openai-key", "neither a gateway key", id="foreign-key"),
    ],
)
async def test_bad_key_is_authentication_error(
    gateway: TestServer, upstream: FakeUpstream, api_key: str, fragment: str
) -> None:
    async with AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key=api_key, max_retries=0) as sdk:
        with pytest.raises(openai.AuthenticationError) as caught:
            await sdk.chat.completions.create(model="claude-fast", messages=HI)
        with pytest.raises(openai.AuthenticationError):
            await sdk.models.list()
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    assert fragment in caught.value.message
    assert upstream.requests == []


async def test_no_key_is_401_in_openai_shape(gateway: TestServer, upstream: FakeUpstream) -> None:
    # The SDK refuses to send a request without a key, so this one goes out by hand.
    status, body = await raw_post(
        gateway, orjson.dumps({"model": "claude-fast", "messages": HI}), {"Content-Type": "application/json"}
    )
    assert status == 401
    assert body["error"]["type"] == "authentication_error" and body["error"]["code"] == "invalid_api_key"
    assert "missing API key" in body["error"]["message"]
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("data", "status", "param", "fragment"),
    [
        pytest.param(b'{"model": "claude-fast", "messages": [', 400, None, "not valid JSON", id="malformed"),
        pytest.param(b'["claude-fast"]', 400, None, "must be a JSON object", id="array"),
        pytest.param(
            b'{"messages": [{"role": "user", "content": "hi"}]}', 400, "model", "'model' is required", id="no-model"
        ),
        pytest.param(b'{"model": "claude-fast"}', 400, "messages", "non-empty list", id="no-messages"),
        pytest.param(
            b'{"model": "claude-fast", "messages": [{"role": "robot", "content": "hi"}]}',
            400,
            "messages[0].role",
            "unknown role 'robot'",
            id="bad-role",
        ),
    ],
)
async def test_bad_bodies_get_openai_shaped_errors(
    gateway: TestServer, upstream: FakeUpstream, key: str, data: bytes, status: int, param: str | None, fragment: str
) -> None:
    got_status, body = await raw_post(
        gateway, data, {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    )
    assert got_status == status
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"] == param
    assert fragment in body["error"]["message"]
    assert upstream.requests == []


# --- reasoning -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("effort", "budget", "max_tokens"),
    [
        pytest.param("low", 1024, 4096, id="low"),
        pytest.param("high", 8192, 8192 + 4096, id="high-raises-max-tokens"),  # budget_tokens must be < max_tokens
    ],
)
async def test_reasoning_effort_sets_the_thinking_budget(
    client: AsyncOpenAI, upstream: FakeUpstream, effort: str, budget: int, max_tokens: int
) -> None:
    await client.chat.completions.create(
        model="claude-quality",
        messages=HI,
        reasoning_effort=effort,
        temperature=0.2,  # type: ignore[arg-type]
    )
    sent = sent_body(upstream)
    assert sent["model"] == "claude-sonnet-4-5"
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert sent["max_tokens"] == max_tokens and "temperature" not in sent  # Anthropic refuses it while thinking


async def test_thinking_reaches_the_sdk_as_reasoning_content(client: AsyncOpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(body=thinking_message("Let me think about it.", "42"))
    completion = await client.chat.completions.create(model="claude-quality", messages=HI, reasoning_effort="low")
    message = completion.choices[0].message
    assert message.content == "42"
    assert (message.model_extra or {})["reasoning_content"] == "Let me think about it."


async def test_streamed_thinking_arrives_as_reasoning_content_deltas(
    client: AsyncOpenAI, upstream: FakeUpstream
) -> None:
    upstream.enqueue(events=anthropic_events_for(thinking_message("Let me think about it.", "The answer is 42")))
    stream = await client.chat.completions.create(
        model="claude-quality", messages=HI, reasoning_effort="high", stream=True
    )
    deltas = [c.choices[0].delta async for c in stream if c.choices]
    reasoning = [(d.model_extra or {}).get("reasoning_content") for d in deltas]
    assert "".join(r for r in reasoning if r) == "Let me think about it."
    assert "".join(d.content or "" for d in deltas) == "The answer is 42"
    first_text = next(i for i, d in enumerate(deltas) if d.content)
    assert all(r is None for r in reasoning[first_text:])  # thinking comes first, as Anthropic sends it


# --- streams that break --------------------------------------------------------------------------------


def broken_stream(error_type: str, message: str) -> list[Any]:
    """A reply that starts normally, says two words, then gets an Anthropic `error` event instead of the rest."""
    events = anthropic_events_for(
        {
            "id": "msg_broken",
            "type": "message",
            "role": "assistant",
            "model": "claude-haiku-4-5",
            "content": [{"type": "text", "text": "Hello there, friend"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 11, "output_tokens": 3},
        }
    )
    cut = next(i for i, (name, _) in enumerate(events) if name == "content_block_delta") + 2
    return [*events[:cut], ("error", {"type": "error", "error": {"type": error_type, "message": message}})]


async def test_error_event_mid_stream_raises_in_the_sdk(
    client: AsyncOpenAI, gateway: TestServer, upstream: FakeUpstream, pool: asyncpg.Pool
) -> None:
    upstream.enqueue(events=broken_stream("overloaded_error", "Overloaded"))
    stream = await client.chat.completions.create(model="claude-fast", messages=HI, stream=True)
    text = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            text.append(chunk.choices[0].delta.content or "")
    assert "".join(text) == "Hello there,"
    assert caught.value.message == "Overloaded"
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "overloaded_error"
    [row] = await flushed_usage(gateway, pool)
    assert row["streamed"] is True and row["status"] == 503 and row["input_tokens"] == 11


async def test_error_event_mid_stream_is_an_openai_error_frame_then_done(
    gateway: TestServer, upstream: FakeUpstream, key: str
) -> None:
    upstream.enqueue(events=broken_stream("api_error", "Internal server error"))
    payloads = await raw_stream(gateway, key, {"model": "claude-fast", "messages": HI, "stream": True})
    assert payloads[-1] == "[DONE]"
    assert json.loads(payloads[-2]) == {
        "error": {"message": "Internal server error", "type": "server_error", "param": None, "code": "api_error"}
    }


async def test_connection_reset_mid_stream_ends_with_error_frame_and_done(
    gateway: TestServer, upstream: FakeUpstream, key: str, pool: asyncpg.Pool
) -> None:
    upstream.usage(input_tokens=7)
    upstream.enqueue(reset_after_events=5)  # message_start, block start, ping, two deltas
    payloads = await raw_stream(gateway, key, {"model": "claude-fast", "messages": HI, "stream": True})
    assert payloads[-1] == "[DONE]"
    error = json.loads(payloads[-2])["error"]
    assert error["type"] == "server_error" and error["code"] == "bad_gateway"
    text = "".join(json.loads(p)["choices"][0]["delta"].get("content") or "" for p in payloads[:-2])
    assert text == "Hello from"
    [row] = await flushed_usage(gateway, pool)
    assert (row["streamed"], row["status"], row["input_tokens"]) == (True, 502, 7)


async def test_connection_reset_mid_stream_raises_in_the_sdk(client: AsyncOpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(reset_after_events=5)
    stream = await client.chat.completions.create(model="claude-fast", messages=HI, stream=True)
    with pytest.raises(openai.APIError, match="broke off"):
        async for _ in stream:
            pass


async def test_stream_cut_short_without_error_still_ends_in_an_error(
    gateway: TestServer, upstream: FakeUpstream, key: str, pool: asyncpg.Pool
) -> None:
    events = broken_stream("api_error", "unused")[:-1]  # a clean end of the body, but no message_stop
    upstream.enqueue(events=events)
    payloads = await raw_stream(gateway, key, {"model": "claude-fast", "messages": HI, "stream": True})
    assert payloads[-1] == "[DONE]"
    assert json.loads(payloads[-2])["error"]["code"] == "bad_gateway"
    [row] = await flushed_usage(gateway, pool)
    assert row["status"] == 502


# --- models --------------------------------------------------------------------------------------------


async def test_models_list_and_retrieve(client: AsyncOpenAI) -> None:
    models = [m async for m in client.models.list()]
    assert [m.id for m in models] == ["claude-fast", "claude-quality", "claude-unpriced"]
    assert {m.object for m in models} == {"model"} and {m.owned_by for m in models} == {"gateway:anthropic"}
    model = await client.models.retrieve("claude-fast")
    assert (model.id, model.object) == ("claude-fast", "model")
    with pytest.raises(openai.NotFoundError) as caught:
        await client.models.retrieve("gpt-4o")
    assert caught.value.code == "model_not_found" and "claude-fast" in caught.value.message


async def test_chat_completions_is_post_only(gateway: TestServer, key: str) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.get(str(gateway.make_url("/v1/chat/completions")), headers={"Authorization": f"Bearer {key}"}) as r,
    ):
        assert r.status == 405
        body = orjson.loads(await r.read())
    assert body["error"]["type"] == "invalid_request_error" and "POST" in body["error"]["message"]


@pytest.mark.parametrize("stream", ["true", 1])
async def test_stream_must_be_a_boolean(gateway: TestServer, key: str, upstream: FakeUpstream, stream: Any) -> None:
    """A truthy non-boolean `stream` once went upstream as sent: the answer streamed, the relay read the SSE as one
    JSON body and the caller got an empty 200 with no usage recorded."""
    data = orjson.dumps({"model": "claude-fast", "messages": HI, "stream": stream})
    status, body = await raw_post(gateway, data, {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    assert status == 400
    assert body["error"]["param"] == "stream" and "must be true or false" in body["error"]["message"]
    assert upstream.requests == []


async def test_tool_loop_with_foreign_call_ids(client: AsyncOpenAI, upstream: FakeUpstream) -> None:
    """Call ids from other providers ("functions.lookup:0", Kimi's shape) go back to Anthropic in its id pattern."""
    call = {"id": "functions.lookup:0", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    messages: list[Any] = [
        {"role": "user", "content": "look it up"},
        {"role": "assistant", "content": "Looking it up.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "functions.lookup:0", "content": "42"},
    ]
    reply = await client.chat.completions.create(model="claude-fast", messages=messages, tools=[LOOKUP_TOOL])
    assert reply.choices[0].message.content == REPLY
    sent = sent_body(upstream)["messages"]
    assert sent[1]["content"][1]["id"] == sent[2]["content"][0]["tool_use_id"]
    assert sent[1]["content"][1]["id"].startswith("functions_lookup_0_")


UNREADABLE_REPLIES = [
    pytest.param({"body": b"<html>proxy login</html>"}, "not a Messages API reply", id="html-page"),
    pytest.param({"body": [1, 2]}, "not a Messages API reply", id="json-list"),
    pytest.param({"body": {"type": "message", "content": [{"type": "text"}]}}, "cannot read", id="text-missing"),
]
# A usage count that is no number is not unreadable: it is clamped and logged, the reply billed from its content
# (tests/test_billing_attacks.py).


@pytest.mark.parametrize(("script", "fragment"), UNREADABLE_REPLIES)
async def test_unreadable_upstream_reply_is_502(
    client: AsyncOpenAI, upstream: FakeUpstream, script: dict[str, Any], fragment: str
) -> None:
    """A 200 that is no Messages reply (a wrong base_url's HTML page) was an empty answer, or a 500 traceback."""
    upstream.enqueue(**script)
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(model="claude-fast", messages=HI)
    assert caught.value.status_code == 502 and fragment in caught.value.message


async def test_unreadable_stream_event_ends_the_stream_cleanly(
    gateway: TestServer, key: str, upstream: FakeUpstream
) -> None:
    """An event the translator cannot read once made aiohttp write a second status line into the chunked body."""
    start = {"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "content": []}}
    broken = {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use"}}  # no id, no name
    upstream.enqueue(events=[("message_start", start), ("content_block_start", broken)])
    payloads = await raw_stream(gateway, key, {"model": "claude-fast", "messages": HI, "stream": True})
    assert payloads[-1] == "[DONE]"
    error = json.loads(payloads[-2])["error"]
    assert error["code"] == "bad_gateway" and "cannot read" in error["message"]
