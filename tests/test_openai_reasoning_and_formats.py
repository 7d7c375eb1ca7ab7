"""Issue 17's acceptance clients against the validating fake upstream (tests/fakes/messages_rules.py).

The openai SDK's `parse()` helpers, LangChain's `with_structured_output`, and reasoning + tools loops of several
turns on /v1/chat/completions and /v1/responses. The fake refuses what the Messages API refuses (a tool-use turn
without its signed thinking, a schema object without additionalProperties: false, ...), so a translation that
would fail against Anthropic fails here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from openai import AsyncOpenAI
from pydantic import BaseModel

from gateway.dialects.structured_output import STRUCTURED_OUTPUT_TOOL
from gateway.dialects.thinking import THINKING_HEADER
from tests.conftest import GatewayFactory
from tests.fakes.messages_rules import SIGNATURE_PREFIX, sign
from tests.fakes.upstream import FakeUpstream, anthropic_events_for

LOOKUP = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look something up.",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    },
}
RESPONSES_LOOKUP = {"type": "function", **LOOKUP["function"]}
ROUNDS = 3  # tool rounds the fake asks for ("use_tools:3"), so each loop has ROUNDS + 1 turns
LEGACY = {"claude-legacy": {"provider": "anthropic", "model": "claude-3-5-haiku", "structured_outputs": False}}


class Person(BaseModel):
    name: str
    age: int


@pytest.fixture
async def server(make_gateway: GatewayFactory, upstream: FakeUpstream) -> TestServer:
    upstream.foreign_signatures = False  # only thinking the fake signed itself may come back
    return await make_gateway(models=LEGACY)


@pytest.fixture
async def client(server: TestServer, key: str) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=key, max_retries=0) as sdk:
        yield sdk


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """LangChain's HTTP client, closed at the end (its own would be left open)."""
    async with httpx.AsyncClient() as client:
        yield client


def assert_thinking_replayed(upstream: FakeUpstream, turns: int) -> None:
    """Every upstream request thought, and every one after the first handed back the signed thinking first."""
    bodies = [r.json for r in upstream.requests]
    assert len(bodies) == turns
    assert all(b["thinking"]["type"] == "enabled" for b in bodies)
    for body in bodies[1:]:
        last_assistant = [m for m in body["messages"] if m["role"] == "assistant"][-1]
        assert last_assistant["content"][0]["type"] == "thinking"
        assert last_assistant["content"][0]["signature"].startswith(SIGNATURE_PREFIX)


# --- reasoning + tools loops ---------------------------------------------------------------------------------


async def test_chat_reasoning_tool_loop_replays_thinking_blocks(client: AsyncOpenAI, upstream: FakeUpstream) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": f"use_tools:{ROUNDS} look three things up"}]
    for _ in range(ROUNDS + 2):
        raw = await client.chat.completions.with_raw_response.create(
            model="claude-quality",
            messages=messages,
            tools=[LOOKUP],
            reasoning_effort="high",  # type: ignore[list-item]
        )
        assert THINKING_HEADER not in raw.headers
        choice = raw.parse().choices[0]
        messages.append(choice.message.model_dump(exclude_none=True))  # extra fields (thinking_blocks) included
        if choice.finish_reason != "tool_calls":
            break
        assert choice.message.reasoning_content  # type: ignore[attr-defined]
        messages += [{"role": "tool", "tool_call_id": c.id, "content": "42"} for c in choice.message.tool_calls or []]
    assert choice.finish_reason == "stop"
    assert_thinking_replayed(upstream, ROUNDS + 1)


async def test_chat_stream_reasoning_tool_loop_replays_thinking_blocks(
    client: AsyncOpenAI, upstream: FakeUpstream
) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": f"use_tools:{ROUNDS} look three things up"}]
    for _ in range(ROUNDS + 2):
        stream = await client.chat.completions.create(
            model="claude-quality",
            messages=messages,
            tools=[LOOKUP],
            reasoning_effort="low",
            stream=True,  # type: ignore[list-item]
        )
        message: dict[str, Any] = {"role": "assistant", "content": "", "thinking_blocks": [], "tool_calls": []}
        finish = None
        async for chunk in stream:  # accumulated as a client does: text appended, lists extended, calls by index
            delta = chunk.choices[0].delta.model_dump(exclude_none=True)
            message["content"] += delta.get("content") or ""
            message["thinking_blocks"] += delta.get("thinking_blocks") or []
            for call in delta.get("tool_calls") or []:
                if call["index"] == len(message["tool_calls"]):
                    message["tool_calls"].append({"id": call["id"], "type": "function", "function": call["function"]})
                else:
                    message["tool_calls"][call["index"]]["function"]["arguments"] += call["function"]["arguments"]
            finish = chunk.choices[0].finish_reason or finish
        messages.append(message)
        if finish != "tool_calls":
            break
        messages += [{"role": "tool", "tool_call_id": c["id"], "content": "42"} for c in message["tool_calls"]]
    assert finish == "stop"
    assert_thinking_replayed(upstream, ROUNDS + 1)


async def test_sdk_stream_helper_keeps_thinking_and_redacted_thinking_in_order(
    client: AsyncOpenAI, upstream: FakeUpstream
) -> None:
    thought = "Two lookups: first this one."
    content = [
        {"type": "thinking", "thinking": thought, "signature": sign(thought)},
        {"type": "redacted_thinking", "data": "EmwKredacted"},
        {"type": "tool_use", "id": "toolu_s1", "name": "lookup", "input": {"q": "a"}},
    ]
    message = {"id": "msg_s", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": content}
    message |= {"stop_reason": "tool_use", "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 9}}
    upstream.enqueue(events=anthropic_events_for(message))
    messages: list[dict[str, Any]] = [{"role": "user", "content": "look it up"}]
    params: dict[str, Any] = {"model": "claude-quality", "tools": [LOOKUP], "reasoning_effort": "low"}
    async with client.chat.completions.stream(messages=messages, **params) as stream:  # type: ignore[arg-type]
        completion = await stream.get_final_completion()
    reply = completion.choices[0].message.model_dump(exclude_none=True)
    assert [b["type"] for b in reply["thinking_blocks"]] == ["thinking", "redacted_thinking"]
    messages += [reply, {"role": "tool", "tool_call_id": "toolu_s1", "content": "42"}]
    await client.chat.completions.create(messages=messages, **params)  # type: ignore[arg-type]
    replayed = upstream.requests[-1].json["messages"][1]["content"]
    assert replayed == [content[0], content[1], content[2]]


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
async def test_responses_reasoning_tool_loop_without_include(
    client: AsyncOpenAI, upstream: FakeUpstream, streamed: bool
) -> None:
    items: list[Any] = [{"role": "user", "content": f"use_tools:{ROUNDS} look three things up"}]
    for _ in range(ROUNDS + 2):
        params: dict[str, Any] = {"model": "claude-quality", "input": items, "tools": [RESPONSES_LOOKUP]}
        params |= {"reasoning": {"effort": "medium"}, "store": False}  # no include: encrypted_content comes anyway
        if streamed:
            async with client.responses.stream(**params) as stream:
                response = await stream.get_final_response()
        else:
            response = await client.responses.create(**params)
        reasoning = [o for o in response.output if o.type == "reasoning"]
        assert reasoning and all(r.encrypted_content for r in reasoning)
        items += [o.model_dump(exclude_none=True) for o in response.output]
        calls = [o for o in response.output if o.type == "function_call"]
        if not calls:
            break
        items += [{"type": "function_call_output", "call_id": c.call_id, "output": "42"} for c in calls]
    assert response.output_text
    assert_thinking_replayed(upstream, ROUNDS + 1)


async def test_history_without_thinking_is_sent_without_thinking_and_says_so(
    client: AsyncOpenAI, upstream: FakeUpstream
) -> None:
    call = {"id": "toolu_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}
    messages = [
        {"role": "user", "content": "look it up"},
        {"role": "assistant", "content": None, "tool_calls": [call]},  # a client that dropped thinking_blocks
        {"role": "tool", "tool_call_id": "toolu_1", "content": "42"},
    ]
    raw = await client.chat.completions.with_raw_response.create(
        model="claude-quality",
        messages=messages,
        tools=[LOOKUP],
        reasoning_effort="high",  # type: ignore[arg-type,list-item]
    )
    assert raw.parse().choices[0].message.content
    assert "no thinking_blocks to replay" in raw.headers[THINKING_HEADER]
    assert "thinking" not in upstream.requests[-1].json


async def test_langchain_reasoning_tool_loop(
    server: TestServer, key: str, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    """LangChain's ChatOpenAI keeps no thinking_blocks: later turns go without thinking instead of failing."""
    llm = ChatOpenAI(
        model="claude-quality",
        base_url=str(server.make_url("/v1")),
        api_key=key,
        reasoning_effort="low",
        max_retries=0,
        http_async_client=http,
    ).bind_tools([LOOKUP])
    history: list[Any] = [HumanMessage(f"use_tools:{ROUNDS} look three things up")]
    for _ in range(ROUNDS + 2):
        reply = await llm.ainvoke(history)
        history.append(reply)
        if not reply.tool_calls:
            break
        history += [ToolMessage("42", tool_call_id=c["id"]) for c in reply.tool_calls]
    assert reply.content and not reply.tool_calls
    assert len(upstream.requests) == ROUNDS + 1
    assert ["thinking" in r.json for r in upstream.requests] == [True] + [False] * ROUNDS


# --- structured outputs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["claude-fast", "claude-legacy"], ids=["native", "forced-tool"])
async def test_chat_completions_parse(client: AsyncOpenAI, upstream: FakeUpstream, alias: str) -> None:
    completion = await client.chat.completions.parse(
        model=alias, messages=[{"role": "user", "content": "Who is Ada?"}], response_format=Person
    )
    assert completion.choices[0].message.parsed == Person(name="fake", age=1)
    assert completion.choices[0].finish_reason == "stop"
    sent = upstream.requests[-1].json
    if alias == "claude-fast":
        assert sent["output_config"]["format"]["schema"]["additionalProperties"] is False
        assert "tools" not in sent
    else:
        assert "output_config" not in sent
        assert sent["tool_choice"] == {"type": "tool", "name": STRUCTURED_OUTPUT_TOOL}


async def test_chat_completions_stream_parse_over_forced_tool(client: AsyncOpenAI) -> None:
    async with client.chat.completions.stream(
        model="claude-legacy", messages=[{"role": "user", "content": "Who is Ada?"}], response_format=Person
    ) as stream:
        completion = await stream.get_final_completion()
    assert completion.choices[0].message.parsed == Person(name="fake", age=1)
    assert completion.choices[0].finish_reason == "stop"
    assert not completion.choices[0].message.tool_calls


async def test_json_object_answers_a_json_object(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="claude-fast",
        messages=[{"role": "user", "content": "JSON please"}],
        response_format={"type": "json_object"},
    )
    assert isinstance(orjson.loads(completion.choices[0].message.content or ""), dict)


@pytest.mark.parametrize("alias", ["claude-fast", "claude-legacy"], ids=["native", "forced-tool"])
async def test_responses_parse(client: AsyncOpenAI, alias: str) -> None:
    response = await client.responses.parse(model=alias, input="Who is Ada?", text_format=Person, store=False)
    assert response.output_parsed == Person(name="fake", age=1)
    assert [o.type for o in response.output] == ["message"]


@pytest.mark.parametrize("alias", ["claude-fast", "claude-legacy"], ids=["native", "forced-tool"])
async def test_responses_stream_parse(client: AsyncOpenAI, alias: str) -> None:
    async with client.responses.stream(model=alias, input="Who is Ada?", text_format=Person, store=False) as stream:
        response = await stream.get_final_response()
    assert response.output_parsed == Person(name="fake", age=1)
    assert [o.type for o in response.output] == ["message"]


@pytest.mark.parametrize("alias", ["claude-fast", "claude-legacy"], ids=["native", "forced-tool"])
async def test_langchain_with_structured_output(
    server: TestServer, key: str, alias: str, http: httpx.AsyncClient
) -> None:
    url = str(server.make_url("/v1"))
    llm = ChatOpenAI(model=alias, base_url=url, api_key=key, max_retries=0, http_async_client=http)
    assert await llm.with_structured_output(Person).ainvoke("Who is Ada?") == Person(name="fake", age=1)


# --- hostile and careless callers ------------------------------------------------------------------------------


def nested_schema(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


@pytest.mark.parametrize(
    ("fields", "param", "fragment"),
    [
        pytest.param(
            {"response_format": "json"}, "response_format.type", "'json' is not supported", id="string-format"
        ),
        pytest.param(
            {"response_format": {"type": "json_schema"}},
            "response_format.json_schema.schema",
            "schema object is required",
            id="schema-missing",
        ),
        pytest.param(
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": nested_schema(900)}}},
            "response_format.json_schema.schema",
            "nested deeper",
            id="schema-900-deep",
        ),
        pytest.param({"stop": ["", " ", "\n"]}, "stop", "whitespace", id="whitespace-stops"),
        pytest.param(
            {"messages": [{"role": "user", "content": "\u3000\n"}]},
            "messages",
            "non-whitespace",
            id="ideographic-space",
        ),
        pytest.param(
            {
                "response_format": {"type": "json_object"},
                "tools": [{"type": "function", "function": {"name": STRUCTURED_OUTPUT_TOOL}}],
            },
            "tools",
            "reserved",
            id="reserved-tool-name",
        ),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(
    client: AsyncOpenAI, upstream: FakeUpstream, fields: dict[str, Any], param: str, fragment: str
) -> None:
    body: dict[str, Any] = {"model": "claude-fast", "messages": [{"role": "user", "content": "hi"}], **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(**body)
    assert caught.value.param == param and fragment in caught.value.message
    assert upstream.requests == []


@pytest.mark.parametrize(
    "thinking_blocks",
    [
        pytest.param("not a list", id="string"),
        pytest.param([1, None, {"type": "thinking"}, {"type": "redacted_thinking", "data": ""}], id="junk-entries"),
        pytest.param([{"type": "thinking", "thinking": "\u202e\U0001f600", "signature": None}], id="unsigned-unicode"),
    ],
)
async def test_junk_thinking_blocks_are_ignored_not_fatal(
    client: AsyncOpenAI, upstream: FakeUpstream, thinking_blocks: Any
) -> None:
    call = {"id": "toolu_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [call], "thinking_blocks": thinking_blocks},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "42"},
    ]
    raw = await client.chat.completions.with_raw_response.create(
        model="claude-quality",
        messages=messages,
        tools=[LOOKUP],
        reasoning_effort="low",  # type: ignore[arg-type,list-item]
    )
    assert raw.http_response.status_code == 200 and THINKING_HEADER in raw.headers
    assert all(b["type"] != "thinking" for m in upstream.requests[-1].json["messages"] for b in m["content"])


async def test_forged_signature_is_the_upstreams_400(client: AsyncOpenAI, upstream: FakeUpstream) -> None:
    call = {"id": "toolu_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    forged = {"type": "thinking", "thinking": "I decided.", "signature": SIGNATURE_PREFIX + "0" * 64}
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [call], "thinking_blocks": [forged]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "42"},
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="claude-quality",
            messages=messages,
            tools=[LOOKUP],
            reasoning_effort="low",  # type: ignore[arg-type,list-item]
        )
    assert "Invalid `signature`" in caught.value.message
