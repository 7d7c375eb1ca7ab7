"""POST /v1/responses over Anthropic, Responses-shaped bodies on /v1/chat/completions, and automatic prompt caching.

Driven by the official `openai` SDK (`responses.create`, streaming or not) against a real gateway, a fake
Anthropic upstream and real PostgreSQL; each test checks what the SDK made of the answer and what the upstream
was sent.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import openai
import pytest
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI

from tests.conftest import GatewayFactory, flushed_usage
from tests.fakes.upstream import WORDS, FakeUpstream, anthropic_error, anthropic_events_for

REPLY = " ".join(WORDS[:5])  # the fake's default reply: its first five words
LOOKUP = {
    "type": "function",
    "name": "lookup",
    "description": "Look something up.",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
}
LOOKUP_ANTHROPIC = {"name": "lookup", "description": "Look something up.", "input_schema": LOOKUP["parameters"]}
PATCH = {"type": "custom", "name": "apply_patch", "description": "Edit files with a patch."}


@pytest.fixture
async def client(gateway: TestServer, key: str) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key=key, max_retries=0) as sdk:
        yield sdk


def sent(upstream: FakeUpstream, n: int = 0) -> dict[str, Any]:
    request = upstream.requests[n]
    assert request.path == "/v1/messages"
    return request.json  # type: ignore[no-any-return]


def anthropic_message(*content: dict[str, Any], stop_reason: str = "end_turn") -> dict[str, Any]:
    return {
        "id": "msg_scripted",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": list(content),
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 20, "output_tokens": 7},
    }


async def post(server: TestServer, path: str, key: str, body: dict[str, Any]) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as s, s.post(str(server.make_url(path)), json=body, headers=headers) as r:
        return r.status, (await r.read()).decode()


def sse_payloads(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]


# --- /v1/responses ------------------------------------------------------------------------------------


async def test_create_translates_both_ways_and_logs_usage(
    client: AsyncOpenAI, gateway: TestServer, upstream: FakeUpstream, pool: asyncpg.Pool
) -> None:
    upstream.usage(input_tokens=100, output_tokens=20, cache_read_input_tokens=1000, cache_creation_input_tokens=10)
    response = await client.responses.create(
        model="claude-fast", instructions="Be brief.", input="hi", max_output_tokens=64, temperature=0.2
    )
    assert (response.object, response.status, response.model) == ("response", "completed", "claude-fast")
    assert response.output_text == REPLY
    [message] = response.output
    assert message.type == "message" and message.role == "assistant"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (1110, 20, 1130)
    assert response.usage.input_tokens_details.cached_tokens == 1000
    assert (response.instructions, response.max_output_tokens, response.store) == ("Be brief.", 64, False)

    assert sent(upstream) == {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "system": [{"type": "text", "text": "Be brief."}],
        "temperature": 0.2,
    }
    [row] = await flushed_usage(gateway, pool)
    assert (row["route"], row["alias"], row["status"], row["streamed"]) == ("responses", "claude-fast", 200, False)
    assert (row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"]) == (100, 1000, 10)
    assert row["cost_usd"] == Decimal("0.00031250")  # 100*1 + 20*5 + 1000*0.10 + 10*1.25 per million


async def test_stream_event_sequence_and_usage(
    client: AsyncOpenAI, gateway: TestServer, upstream: FakeUpstream, pool: asyncpg.Pool
) -> None:
    upstream.usage(input_tokens=40, cache_read_input_tokens=2)
    stream = await client.responses.create(model="claude-fast", input="hi", stream=True)
    events = [event async for event in stream]
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == REPLY
    completed = events[-1].response  # type: ignore[union-attr]
    assert completed.output_text == REPLY and completed.usage is not None
    assert (completed.usage.input_tokens, completed.usage.output_tokens) == (42, 5)
    assert sent(upstream)["stream"] is True
    [row] = await flushed_usage(gateway, pool)
    assert (row["route"], row["streamed"], row["input_tokens"], row["output_tokens"]) == ("responses", True, 40, 5)


async def test_sdk_stream_helper_gets_the_final_response(client: AsyncOpenAI) -> None:
    async with client.responses.stream(model="claude-fast", input="hi") as stream:
        final = await stream.get_final_response()
    assert final.output_text == REPLY and final.status == "completed"


@pytest.mark.parametrize("streamed", [pytest.param(False, id="create"), pytest.param(True, id="stream")])
async def test_function_tool_round_trip(client: AsyncOpenAI, upstream: FakeUpstream, streamed: bool) -> None:
    question = {"role": "user", "content": "use_tool to look up the answer"}
    if streamed:
        events = [
            e
            async for e in await client.responses.create(
                model="claude-fast", input=[question], tools=[LOOKUP], stream=True
            )
        ]  # type: ignore[list-item]
        types = [e.type for e in events]
        assert "response.function_call_arguments.delta" in types and "response.function_call_arguments.done" in types
        first = events[-1].response  # type: ignore[union-attr]
    else:
        first = await client.responses.create(model="claude-fast", input=[question], tools=[LOOKUP])  # type: ignore[list-item]
    text, call = first.output
    assert text.type == "message" and first.output_text == REPLY  # the fake says something, then calls the tool
    assert call.type == "function_call" and call.call_id.startswith("toolu_fake_")
    assert (call.name, json.loads(call.arguments)) == ("lookup", {"q": "fake"})
    assert sent(upstream)["tools"] == [LOOKUP_ANTHROPIC]

    history = [question, *(item.model_dump(exclude_none=True) for item in first.output)]
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "42"}
    second = await client.responses.create(model="claude-fast", input=[*history, output], tools=[LOOKUP])  # type: ignore[list-item]
    assert second.output_text == REPLY and second.status == "completed"
    assert sent(upstream, 1)["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": REPLY},
                {"type": "tool_use", "id": call.call_id, "name": "lookup", "input": {"q": "fake"}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.call_id, "content": "42"}]},
    ]


async def test_custom_tool_call_comes_back_as_custom(client: AsyncOpenAI, upstream: FakeUpstream) -> None:
    block = {"type": "tool_use", "id": "toolu_p", "name": "apply_patch", "input": {"input": "*** Begin Patch"}}
    upstream.enqueue(events=anthropic_events_for(anthropic_message(block, stop_reason="tool_use")))
    events = [
        e async for e in await client.responses.create(model="claude-fast", input="patch", tools=[PATCH], stream=True)
    ]  # type: ignore[list-item]
    [item] = events[-1].response.output  # type: ignore[union-attr]
    assert (item.type, item.name, item.input, item.call_id) == (
        "custom_tool_call",
        "apply_patch",
        "*** Begin Patch",
        "toolu_p",
    )
    assert sent(upstream)["tools"][0]["input_schema"]["required"] == ["input"]


async def test_reasoning_round_trips_as_encrypted_content(client: AsyncOpenAI, upstream: FakeUpstream) -> None:
    thinking = {"type": "thinking", "thinking": "Look it up.", "signature": "c2ln"}
    call = {"type": "tool_use", "id": "toolu_t", "name": "lookup", "input": {"q": "x"}}
    upstream.enqueue(body=anthropic_message(thinking, call, stop_reason="tool_use"))
    first = await client.responses.create(
        model="claude-quality",
        input="use_tool",
        tools=[LOOKUP],  # type: ignore[list-item]
        reasoning={"effort": "low"},
        include=["reasoning.encrypted_content"],
    )
    assert sent(upstream)["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    reasoning, function_call = first.output
    assert reasoning.type == "reasoning" and reasoning.encrypted_content
    assert [s.text for s in reasoning.summary] == ["Look it up."]

    history = [item.model_dump(exclude_none=True) for item in first.output]
    output = {"type": "function_call_output", "call_id": function_call.call_id, "output": "42"}  # type: ignore[union-attr]
    await client.responses.create(
        model="claude-quality",
        input=[{"role": "user", "content": "use_tool"}, *history, output],
        tools=[LOOKUP],
        reasoning={"effort": "low"},  # type: ignore[list-item]
    )
    assert sent(upstream, 1)["messages"][1] == {"role": "assistant", "content": [thinking, call]}  # signature intact


@pytest.mark.parametrize(
    ("params", "param"),
    [
        pytest.param({"previous_response_id": "resp_123"}, "previous_response_id", id="previous_response_id"),
        pytest.param({"store": True}, "store", id="store"),
    ],
)
async def test_stateful_requests_are_refused(
    client: AsyncOpenAI, upstream: FakeUpstream, params: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model="claude-fast", input="hi", **params)
    assert caught.value.status_code == 400 and caught.value.param == param
    assert "keeps no responses" in caught.value.message
    assert upstream.requests == []


@pytest.mark.parametrize("stream", [pytest.param(False, id="create"), pytest.param(True, id="stream")])
async def test_upstream_errors_reach_the_sdk(client: AsyncOpenAI, upstream: FakeUpstream, stream: bool) -> None:
    upstream.enqueue(status=429, body=anthropic_error("rate_limit_error", "slow down"), headers={"retry-after": "7"})
    with pytest.raises(openai.RateLimitError) as caught:
        await client.responses.create(model="claude-fast", input="hi", stream=stream)
    assert caught.value.status_code == 429 and caught.value.response.headers["retry-after"] == "7"


async def test_stream_cut_short_fails_the_response(
    client: AsyncOpenAI, gateway: TestServer, upstream: FakeUpstream, pool: asyncpg.Pool
) -> None:
    upstream.enqueue(reset_after_events=4)
    events = [e async for e in await client.responses.create(model="claude-fast", input="hi", stream=True)]
    assert events[-1].type == "response.failed"
    assert events[-1].response.status == "failed" and events[-1].response.error is not None  # type: ignore[union-attr]
    [row] = await flushed_usage(gateway, pool)
    assert row["status"] >= 500


# --- Responses-shaped bodies on /v1/chat/completions (Cursor) -------------------------------------------

CURSOR_BODY: dict[str, Any] = {
    "model": "claude-fast",
    "instructions": "You are a coding assistant.",
    "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
    "include": ["reasoning.encrypted_content"],
    "reasoning": {"summary": "auto"},
    "text": {"verbosity": "medium"},
    "store": True,  # /chat/completions stores nothing and ignores `store`, in either shape
    "tools": [{**LOOKUP, "strict": False}, PATCH],
}


async def test_chat_completions_accepts_a_responses_body(gateway: TestServer, upstream: FakeUpstream, key: str) -> None:
    status, text = await post(gateway, "/v1/chat/completions", key, CURSOR_BODY)
    assert status == 200
    completion = json.loads(text)
    assert completion["object"] == "chat.completion" and completion["choices"][0]["message"]["content"] == REPLY
    body = sent(upstream)
    assert body["system"] == [{"type": "text", "text": "You are a coding assistant."}]
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert [t["name"] for t in body["tools"]] == ["lookup", "apply_patch"]


async def test_chat_completions_streams_a_responses_body_with_usage(
    gateway: TestServer, upstream: FakeUpstream, key: str
) -> None:
    body = {**CURSOR_BODY, "stream": True, "stream_options": {"include_usage": True}}
    status, text = await post(gateway, "/v1/chat/completions", key, body)
    assert status == 200
    payloads = sse_payloads(text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == REPLY
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize("stream", [pytest.param(False, id="create"), pytest.param(True, id="stream")])
async def test_chat_completions_answers_tool_calls_of_a_responses_body(
    gateway: TestServer, upstream: FakeUpstream, key: str, stream: bool
) -> None:
    patch = {"type": "tool_use", "id": "toolu_p", "name": "apply_patch", "input": {"input": "*** Begin Patch"}}
    lookup = {"type": "tool_use", "id": "toolu_l", "name": "lookup", "input": {"q": "x"}}
    upstream.enqueue(events=anthropic_events_for(anthropic_message(lookup, patch, stop_reason="tool_use")))
    upstream.enqueue(body=anthropic_message(lookup, patch, stop_reason="tool_use"))
    body = {**CURSOR_BODY, "input": "use_tool"}
    status, text = await post(gateway, "/v1/chat/completions", key, {**body, "stream": True})
    assert status == 200
    chunks = [json.loads(p) for p in sse_payloads(text)[:-1]]
    calls = [c for chunk in chunks if chunk["choices"] for c in chunk["choices"][0]["delta"].get("tool_calls") or []]
    assert calls[0]["type"] == "function" and calls[0]["function"]["name"] == "lookup"
    assert calls[-1] == {
        "index": 1,
        "id": "toolu_p",
        "type": "custom",
        "custom": {"name": "apply_patch", "input": "*** Begin Patch"},
    }
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    status, text = await post(gateway, "/v1/chat/completions", key, body)
    assert status == 200
    [function, custom] = json.loads(text)["choices"][0]["message"]["tool_calls"]
    assert function == {"id": "toolu_l", "type": "function", "function": {"name": "lookup", "arguments": '{"q":"x"}'}}
    assert custom == {"id": "toolu_p", "type": "custom", "custom": {"name": "apply_patch", "input": "*** Begin Patch"}}


async def test_chat_completions_refuses_a_responses_body_it_cannot_serve(gateway: TestServer, key: str) -> None:
    status, text = await post(gateway, "/v1/chat/completions", key, {**CURSOR_BODY, "tools": [{"type": "file_search"}]})
    assert status == 400 and json.loads(text)["error"]["param"] == "tools[0].type"


# --- automatic prompt caching --------------------------------------------------------------------------

LONG_PREFIX = "You are Cursor's agent. " + "Follow the project's conventions closely. " * 400


def marks(value: object) -> list[str]:
    """Where cache_control sits in a request: "tools", "system" or "messages[i]"."""
    found = []
    for name in ("tools", "system"):
        found += [name for block in value.get(name) or [] if "cache_control" in block]  # type: ignore[union-attr]
    for i, message in enumerate(value.get("messages") or []):  # type: ignore[union-attr]
        found += [f"messages[{i}]" for block in message["content"] if "cache_control" in block]
    return found


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/responses"])
async def test_auto_cache_marks_the_prefix_and_cache_reads_are_priced(
    make_gateway: GatewayFactory, make_key: Any, upstream: FakeUpstream, pool: asyncpg.Pool, route: str
) -> None:
    cached_alias = {"provider": "anthropic", "model": "claude-haiku-4-5", "auto_cache": True}
    server = await make_gateway(models={"claude-cached": cached_alias})
    key, _ = await make_key()
    tools: list[dict[str, Any]]
    if route == "/v1/responses":
        turn1 = {"instructions": LONG_PREFIX, "input": [{"role": "user", "content": "first"}]}
        answer = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]}
        turn2 = {"instructions": LONG_PREFIX, "input": [*turn1["input"], answer, {"role": "user", "content": "second"}]}  # type: ignore[list-item]
        tools = [LOOKUP]
    else:
        system = {"role": "system", "content": LONG_PREFIX}
        turn1 = {"messages": [system, {"role": "user", "content": "first"}]}
        turn2 = {
            "messages": [
                *turn1["messages"],
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "second"},
            ]
        }  # type: ignore[list-item]
        tools = [{"type": "function", "function": {k: v for k, v in LOOKUP.items() if k != "type"}}]

    upstream.usage(input_tokens=20, cache_creation_input_tokens=4000, cache_read_input_tokens=0, output_tokens=5)
    status, _ = await post(server, route, key, {"model": "claude-cached", "tools": tools, **turn1})
    assert status == 200
    upstream.usage(input_tokens=30, cache_creation_input_tokens=10, cache_read_input_tokens=4000)
    status, text = await post(server, route, key, {"model": "claude-cached", "tools": tools, **turn2})
    assert status == 200

    first, second = sent(upstream, 0), sent(upstream, 1)
    assert marks(first) == ["tools", "system", "messages[0]"]
    assert marks(second) == ["tools", "system", "messages[0]", "messages[2]"]  # turn 1's breakpoint is read back
    assert first["messages"][0] == second["messages"][0]  # the same prefix, marked the same way
    answer_usage = json.loads(text)["usage"]
    cached = answer_usage.get("prompt_tokens_details") or answer_usage.get("input_tokens_details")
    assert cached["cached_tokens"] == 4000

    rows = sorted(await flushed_usage(server, pool), key=lambda r: r["cache_read_tokens"])
    assert [(r["cache_write_tokens"], r["cache_read_tokens"]) for r in rows] == [(4000, 0), (10, 4000)]
    assert rows[1]["cost_usd"] == Decimal("0.00046750")  # 30*1 + 5*5 + 4000*0.10 + 10*1.25 per million
    assert rows[1]["cost_usd"] < rows[0]["cost_usd"]  # reading the prefix costs a tenth of writing it


async def test_without_auto_cache_nothing_is_marked(client: AsyncOpenAI, upstream: FakeUpstream) -> None:
    await client.responses.create(model="claude-fast", instructions=LONG_PREFIX, input="hi")
    assert marks(sent(upstream)) == []


@pytest.mark.parametrize("body", [b"<html>proxy login</html>", [1, 2], {"type": "message", "content": None}])
async def test_unreadable_upstream_reply_is_502(client: AsyncOpenAI, upstream: FakeUpstream, body: Any) -> None:
    """A 200 that is no Messages reply was answered as a completed, empty response."""
    upstream.enqueue(body=body)
    with pytest.raises(openai.APIStatusError) as caught:
        await client.responses.create(model="claude-fast", input="hi")
    assert caught.value.status_code == 502
