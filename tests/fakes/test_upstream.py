"""Tests of the fake upstream itself: if it lies about the wire formats, every gateway test lies with it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from tests.fakes import messages_rules
from tests.fakes.upstream import FakeUpstream, anthropic_error, anthropic_events_for

TOOLS = [{"name": "lookup", "description": "look something up", "input_schema": {"type": "object"}}]
OPENAI_TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


def messages_request(**overrides: Any) -> dict[str, Any]:
    return {"model": "claude-fast", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]} | overrides


def chat_request(**overrides: Any) -> dict[str, Any]:
    return {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]} | overrides


def parse_sse(text: str) -> list[tuple[str, Any]]:
    """Frames as (event name or "", data): JSON data decoded, "[DONE]" kept as a string."""
    frames = []
    for frame in text.split("\n\n"):
        if not frame:
            continue
        fields = dict(line.split(": ", 1) for line in frame.split("\n"))
        data = fields["data"]
        frames.append((fields.get("event", ""), data if data == "[DONE]" else orjson.loads(data)))
    return frames


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream(chunks=3) as fake:
        yield fake


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def post_stream(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> list[tuple[str, Any]]:
    async with session.post(url, json=body) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        return parse_sse(await resp.text())


async def test_default_text_reply(upstream: FakeUpstream, session: aiohttp.ClientSession) -> None:
    async with session.post(f"{upstream.url}/v1/messages", json=messages_request(), headers={"x-api-key": "k"}) as resp:
        assert resp.status == 200
        assert resp.headers["request-id"].startswith("req_fake_")
        reply = await resp.json()
    assert reply["id"].startswith("msg_fake_")
    assert reply["model"] == "claude-fast"
    assert reply["content"] == [{"type": "text", "text": "Hello from the"}]
    assert reply["stop_reason"] == "end_turn"
    raw = upstream.requests[-1].raw_body
    assert reply["usage"] == {
        "input_tokens": len(raw) // 4,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 3,
    }
    recorded = upstream.requests[-1]
    assert (recorded.method, recorded.path, recorded.headers["X-Api-Key"]) == ("POST", "/v1/messages", "k")
    assert recorded.json == messages_request()


async def test_default_stream_event_order(upstream: FakeUpstream, session: aiohttp.ClientSession) -> None:
    upstream.usage(input_tokens=100, cache_read_input_tokens=80)
    frames = await post_stream(session, f"{upstream.url}/v1/messages", messages_request(stream=True))
    names = [name for name, _ in frames]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in frames)
    start_usage = frames[0][1]["message"]["usage"]
    assert start_usage == {
        "input_tokens": 100,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 80,
        "output_tokens": 1,
    }
    assert "".join(data["delta"]["text"] for name, data in frames if name == "content_block_delta") == "Hello from the"
    assert frames[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 3},
    }


async def test_tool_use_stream_sends_input_json_deltas(upstream: FakeUpstream, session: aiohttp.ClientSession) -> None:
    body = messages_request(stream=True, tools=TOOLS, messages=[{"role": "user", "content": "please use_tool"}])
    frames = await post_stream(session, f"{upstream.url}/v1/messages", body)
    tool_start = next(d for n, d in frames if n == "content_block_start" and d["content_block"]["type"] == "tool_use")
    assert tool_start["content_block"]["name"] == "lookup"
    assert tool_start["content_block"]["input"] == {}
    parts = [d["delta"]["partial_json"] for n, d in frames if n == "content_block_delta" and d["index"] == 1]
    assert len(parts) > 2
    assert orjson.loads("".join(parts)) == {"q": "fake"}
    assert frames[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_enqueued_529_is_sent_once_and_the_request_is_recorded(
    upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    upstream.enqueue(status=529, body=anthropic_error("overloaded_error", "Overloaded"))
    async with session.post(f"{upstream.url}/v1/messages", json=messages_request()) as resp:
        assert resp.status == 529
        assert await resp.json() == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    async with session.post(f"{upstream.url}/v1/messages", json=messages_request()) as resp:
        assert resp.status == 200
    assert len(upstream.requests) == 2


@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        pytest.param("/v1/messages", messages_request(model="fake-error-429"), "rate_limit_error", id="anthropic"),
        pytest.param("/v1/chat/completions", chat_request(model="fake-error-429"), "requests", id="openai"),
    ],
)
async def test_fake_error_model_answers_429_with_retry_after(
    upstream: FakeUpstream, session: aiohttp.ClientSession, path: str, body: dict[str, Any], error: str
) -> None:
    async with session.post(upstream.url + path, json=body) as resp:
        assert resp.status == 429
        assert resp.headers["retry-after"] == "1"
        assert (await resp.json())["error"]["type"] == error


async def test_missing_max_tokens_is_invalid_request(upstream: FakeUpstream, session: aiohttp.ClientSession) -> None:
    body = messages_request()
    del body["max_tokens"]
    async with session.post(f"{upstream.url}/v1/messages", json=body) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == {
            "type": "invalid_request_error",
            "message": "max_tokens: Field required",
        }


async def test_reset_after_events_truncates_the_stream(upstream: FakeUpstream, session: aiohttp.ClientSession) -> None:
    upstream.enqueue(reset_after_events=3)
    received = b""
    async with session.post(f"{upstream.url}/v1/messages", json=messages_request(stream=True)) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            async for chunk in resp.content.iter_any():
                received += chunk
    assert [name for name, _ in parse_sse(received.decode())] == ["message_start", "content_block_start", "ping"]


async def test_events_are_written_as_they_happen(session: aiohttp.ClientSession) -> None:
    async with FakeUpstream(chunks=4, chunk_delay_s=0.1) as fake:
        started = time.perf_counter()
        async with session.post(f"{fake.url}/v1/messages", json=messages_request(stream=True)) as resp:
            first = await resp.content.readuntil(b"\n\n")
            first_at = time.perf_counter() - started
            await resp.read()
            total = time.perf_counter() - started
    assert first.startswith(b"event: message_start\n")
    assert first_at < 0.3 < total  # 9 more events at 0.1 s each follow the first


def thinking_message() -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-20250514",
        "content": [
            {"type": "thinking", "thinking": "Let me think about it", "signature": "EqQBCgIYAhIM"},
            {"type": "text", "text": "Yes."},
        ],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 9},
    }


def test_thinking_block_events_end_with_signature_delta() -> None:
    events = anthropic_events_for(thinking_message())
    block0 = [data for _, data in events if isinstance(data, dict) and data.get("index") == 0]
    assert block0[0]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    deltas = [data["delta"] for data in block0[1:-1]]
    assert "".join(d["thinking"] for d in deltas[:-1]) == "Let me think about it"
    assert {d["type"] for d in deltas[:-1]} == {"thinking_delta"}
    assert deltas[-1] == {"type": "signature_delta", "signature": "EqQBCgIYAhIM"}
    assert block0[-1] == {"type": "content_block_stop", "index": 0}


async def test_scripted_events_are_sent_as_they_are(upstream: FakeUpstream, session: aiohttp.ClientSession) -> None:
    events = anthropic_events_for(thinking_message())
    upstream.enqueue(events=events)
    frames = await post_stream(session, f"{upstream.url}/v1/messages", messages_request(stream=True))
    assert frames == [(name, data) for name, data in events]
    assert frames[2][0] == "ping"


async def test_openai_json_and_stream(upstream: FakeUpstream, session: aiohttp.ClientSession) -> None:
    async with session.post(f"{upstream.url}/v1/chat/completions", json=chat_request()) as resp:
        reply = await resp.json()
    assert reply["object"] == "chat.completion"
    assert reply["choices"][0]["message"]["content"] == "Hello from the"
    assert reply["usage"]["completion_tokens"] == 3

    url = f"{upstream.url}/v1/chat/completions"
    plain = await post_stream(session, url, chat_request(stream=True))
    assert plain[-1] == ("", "[DONE]")
    assert all("usage" not in data for _, data in plain[:-1])
    counted = await post_stream(session, url, chat_request(stream=True, stream_options={"include_usage": True}))
    assert counted[-2][1]["choices"] == []
    assert counted[-2][1]["usage"]["completion_tokens"] == 3


async def test_openai_tool_call_stream(upstream: FakeUpstream, session: aiohttp.ClientSession) -> None:
    body = chat_request(stream=True, tools=OPENAI_TOOLS, messages=[{"role": "user", "content": "use_tool now"}])
    frames = await post_stream(session, f"{upstream.url}/v1/chat/completions", body)
    calls = [c for _, d in frames[:-1] for c in d["choices"][0]["delta"].get("tool_calls", [])]
    assert calls[0]["function"] == {"name": "lookup", "arguments": ""}
    assert orjson.loads("".join(c["function"]["arguments"] for c in calls)) == {"q": "fake"}
    assert frames[-2][1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_enqueued_delay_holds_the_first_byte(upstream: FakeUpstream, session: aiohttp.ClientSession) -> None:
    upstream.enqueue(delay_s=0.5)
    timeout = aiohttp.ClientTimeout(total=0.1)
    with pytest.raises(asyncio.TimeoutError):
        await session.post(f"{upstream.url}/v1/messages", json=messages_request(), timeout=timeout)


async def test_count_tokens_models_and_health(upstream: FakeUpstream, session: aiohttp.ClientSession) -> None:
    upstream.usage(input_tokens=42)
    body = {"model": "claude-fast", "messages": [{"role": "user", "content": "hi"}]}
    async with session.post(f"{upstream.url}/v1/messages/count_tokens", json=body) as resp:
        assert await resp.json() == {"input_tokens": 42}
    async with session.get(f"{upstream.url}/v1/models") as resp:
        assert "claude-fast" in [m["id"] for m in (await resp.json())["data"]]
    async with session.get(f"{upstream.url}/health") as resp:
        assert await resp.text() == "ok"


# --- the Messages API's validation rules (tests/fakes/messages_rules.py) -------------------------------------------

THINK = {"thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 2048}
USE = {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}
RESULT = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"}


def signed(text: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": text, "signature": messages_rules.sign(text)}


def loop(*assistant: dict[str, Any], result: dict[str, Any] = RESULT) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "look it up"},
        {"role": "assistant", "content": list(assistant)},
        {"role": "user", "content": [result]},
    ]


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        pytest.param({"response_format": {"type": "json_object"}}, "response_format: Extra inputs", id="unknown-field"),
        pytest.param({"stop_sequences": ["\n"]}, "must contain non-whitespace", id="whitespace-stop"),
        pytest.param(
            {"system": [{"type": "text", "text": " "}]}, "system.0: text content blocks must contain", id="ws-system"
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
            "must be non-empty",
            id="empty-text",
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\n\n"}]},
            "messages.1.content.0: text content blocks must contain non-whitespace text",
            id="whitespace-assistant",
        ),
        pytest.param(
            {"messages": loop(USE), **THINK},
            "Expected `thinking` or `redacted_thinking`, but found `tool_use`",
            id="tool-use-turn-without-thinking",
        ),
        pytest.param(
            {"messages": loop({**signed("a"), "thinking": "b"}, USE), **THINK},
            "Invalid `signature` in `thinking` block",
            id="altered-thinking",
        ),
        pytest.param(
            {"messages": loop({"type": "thinking", "thinking": "a", "signature": ""}, USE)},
            "Invalid `signature`",
            id="missing-signature",
        ),
        pytest.param(
            {"messages": loop(USE, result={**RESULT, "tool_use_id": "toolu_2"})},
            "unexpected `tool_use_id` found in `tool_result` blocks: toolu_2",
            id="tool-result-id-mismatch",
        ),
        pytest.param(
            {"messages": [*loop(USE)[:2], {"role": "user", "content": "next"}]},
            "`tool_use` ids were found without `tool_result` blocks immediately after: toolu_1",
            id="unanswered-tool-use",
        ),
        pytest.param(
            {"thinking": {"type": "enabled", "budget_tokens": 512}, "max_tokens": 2048},
            "greater than or equal to 1024",
            id="small-budget",
        ),
        pytest.param(
            {"thinking": {"type": "enabled", "budget_tokens": 1024}}, "must be greater than", id="budget-over-max"
        ),
        pytest.param(
            {**THINK, "tools": TOOLS, "tool_choice": {"type": "any"}}, "forces tool use", id="thinking-with-forced-tool"
        ),
        pytest.param(
            {**THINK, "temperature": 0.2}, "`temperature` may only be set to 1", id="thinking-with-temperature"
        ),
        pytest.param(
            {"output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}},
            "'additionalProperties' must be explicitly set to false",
            id="open-schema",
        ),
        pytest.param(
            {"system": [{"type": "text", "text": f"s{i}", "cache_control": {"type": "ephemeral"}} for i in range(5)]},
            "A maximum of 4 blocks with cache_control",
            id="five-cache-marks",
        ),
        pytest.param({"stream": "true"}, "stream: Input should be a valid boolean", id="stream-string"),
        pytest.param(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "source": {"type": "base64", "media_type": "image/jpg", "data": "AA"}}
                        ],
                    }
                ]
            },
            "messages.0.content.0.image.source.base64.media_type",
            id="image-jpg",
        ),
        pytest.param(
            {"system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral", "ttl": "2h"}}]},
            "cache_control: expected",
            id="cache-ttl-2h",
        ),
        pytest.param(
            {"metadata": {"user_id": 5}}, "metadata.user_id: Input should be a valid string", id="user-id-int"
        ),
        pytest.param({"top_p": 5}, "top_p: Input should be less than or equal to 1", id="top_p-over-1"),
        pytest.param({"temperature": -0.5}, "greater than or equal to 0", id="temperature-negative"),
        pytest.param(
            {"tools": [{**TOOLS[0], "name": "my tool"}]}, "tools.0.custom.name: String should", id="tool-name"
        ),
        pytest.param({"tools": [*TOOLS, *TOOLS]}, "Tool names must be unique", id="duplicate-tool-names"),
        pytest.param(
            {"tools": [{**TOOLS[0], "input_schema": {"type": "string"}}]}, "input_schema.type", id="tool-schema-type"
        ),
        pytest.param({"tools": [{**TOOLS[0], "input_schema": [1]}]}, "input_schema.type", id="tool-schema-list"),
        pytest.param({"tools": [{**TOOLS[0], "description": 5}]}, "description: Input should be", id="tool-desc-int"),
        pytest.param(
            {
                "messages": loop(
                    {**USE, "id": "functions.lookup:0"}, result={**RESULT, "tool_use_id": "functions.lookup:0"}
                )
            },
            "messages.1.content.0.tool_use.id: String should match pattern",
            id="tool-use-id-pattern",
        ),
        pytest.param(
            {"messages": loop(USE, USE)}, "messages.1.content.1: `tool_use` ids must be unique", id="dup-use-ids"
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure, "}]},
            "final assistant content cannot end with trailing whitespace",
            id="prefill-trailing-space",
        ),
    ],
)
async def test_requests_the_api_refuses_are_refused(
    upstream: FakeUpstream, session: aiohttp.ClientSession, overrides: dict[str, Any], fragment: str
) -> None:
    upstream.foreign_signatures = False
    upstream.enqueue(body={"scripted": True})  # refused requests never reach a scripted reply
    async with session.post(f"{upstream.url}/v1/messages", json=messages_request(**overrides)) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error" and fragment in error["message"]


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"messages": loop(signed("I should look."), USE), **THINK, "tools": TOOLS}, id="signed-replay"),
        pytest.param({"messages": loop(USE), "tools": TOOLS}, id="tool-loop-without-thinking"),
        pytest.param({"stop_sequences": [" END"], "context_management": {}}, id="known-fields"),
        pytest.param(
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure,"}]}, id="prefill"
        ),
        pytest.param({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, id="server-tool"),
    ],
)
async def test_requests_the_api_accepts_are_answered(
    upstream: FakeUpstream, session: aiohttp.ClientSession, overrides: dict[str, Any]
) -> None:
    upstream.foreign_signatures = False
    async with session.post(f"{upstream.url}/v1/messages", json=messages_request(**overrides)) as resp:
        assert resp.status == 200, await resp.text()


async def test_scripted_signatures_count_as_issued(upstream: FakeUpstream, session: aiohttp.ClientSession) -> None:
    upstream.foreign_signatures = False
    thinking = {"type": "thinking", "thinking": "hm", "signature": "EqQBscripted"}
    upstream.enqueue(body={"type": "message", "content": [thinking, USE]})
    upstream.enqueue(body={"type": "message", "content": []})
    await (await session.post(f"{upstream.url}/v1/messages", json=messages_request())).read()
    body = messages_request(messages=loop(thinking, USE), **THINK, tools=TOOLS)
    async with session.post(f"{upstream.url}/v1/messages", json=body) as resp:
        assert resp.status == 200


async def test_default_reply_thinks_and_fills_the_schema(
    upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
        "additionalProperties": False,
    }
    body = messages_request(**THINK, output_config={"format": {"type": "json_schema", "schema": schema}})
    async with session.post(f"{upstream.url}/v1/messages", json=body) as resp:
        reply = await resp.json()
    thinking, text = reply["content"]
    assert thinking["signature"] == messages_rules.sign(thinking["thinking"])
    assert orjson.loads(text["text"]) == {"n": 1}
