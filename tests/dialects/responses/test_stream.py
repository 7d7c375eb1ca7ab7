"""gateway/dialects/responses/stream.py: Anthropic streams as Responses events; custom calls in Chat answers."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.dialects.responses.reply import ResponseContext, event_frame, message_to_response
from gateway.dialects.responses.request import ResponsesTranslation, responses_request_to_anthropic
from gateway.dialects.responses.stream import (
    ChatCustomCalls,
    ResponsesStreamTranslator,
    chat_completion_with_custom_calls,
)
from gateway.dialects.responses.tools import ToolOrigin
from gateway.dialects.translation import TranslationOptions
from tests.fakes.upstream import anthropic_events_for

CALL = {"type": "tool_use", "id": "toolu_9", "name": "lookup", "input": {"q": "x"}}


LOOKUP = {
    "type": "function",
    "name": "lookup",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
}


OPTS = TranslationOptions(provider_model="claude-x", default_max_tokens=1000, thinking_budgets={"low": 1024})


THINKING = {"type": "thinking", "thinking": "Let me see.", "signature": "sig=="}


def assistant(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": list(blocks)}


def context(include_reasoning: bool = False, tools: dict[str, ToolOrigin] | None = None) -> ResponseContext:
    translation = ResponsesTranslation(
        request={}, tools=tools or {}, include_reasoning=include_reasoning, echo={"tools": [], "tool_choice": "auto"}
    )
    return ResponseContext(response_id="resp_r1", created_at=7, model="claude-fast", translation=translation)


def reply(*content: dict[str, Any], stop_reason: str = "end_turn") -> dict[str, Any]:
    usage = {"input_tokens": 10, "output_tokens": 4, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 5}
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": list(content),
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


# --- streams ---------------------------------------------------------------------------------------


def stream(message: dict[str, Any], ctx: ResponseContext) -> list[dict[str, Any]]:
    translator = ResponsesStreamTranslator(ctx)
    events = [e for name, data in anthropic_events_for(message) for e in translator.feed(name, data)]  # type: ignore[arg-type]
    assert translator.finished
    return events


def test_stream_event_sequence() -> None:
    events = stream(reply(text("Hi there"), CALL, stop_reason="tool_use"), context())
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * 3,
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "Hi there"
    added = events[9]["item"]
    assert (added["type"], added["call_id"], added["arguments"], added["status"]) == (
        "function_call",
        "toolu_9",
        "",
        "in_progress",
    )
    assert "".join(e["delta"] for e in events if e["type"].endswith("arguments.delta")) == '{"q":"x"}'
    assert events[-1]["response"]["usage"]["output_tokens"] == 4


@pytest.mark.parametrize(
    ("content", "ctx"),
    [
        pytest.param([text("Hi there"), CALL], context(), id="text-and-call"),
        pytest.param([THINKING, text("x")], context(include_reasoning=True), id="thinking"),
        pytest.param(
            [{"type": "tool_use", "id": "toolu_1", "name": "apply_patch", "input": {"input": "*** Begin"}}],
            context(tools={"apply_patch": ToolOrigin("apply_patch", custom=True)}),
            id="custom",
        ),
    ],
)
def test_streamed_response_equals_the_whole_one(content: list[dict[str, Any]], ctx: ResponseContext) -> None:
    message = reply(*content, stop_reason="end_turn")
    events = stream(message, ctx)
    whole = message_to_response(message, ctx)
    assert events[-1]["response"] == whole
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert done == whole["output"]


def test_stream_custom_tool_input_sent_whole() -> None:
    ctx = context(tools={"apply_patch": ToolOrigin("apply_patch", custom=True)})
    block = {"type": "tool_use", "id": "toolu_1", "name": "apply_patch", "input": {"input": "*** Begin Patch"}}
    events = stream(reply(block), ctx)
    inputs = [(e["type"], e.get("delta", e.get("input"))) for e in events if "custom_tool_call_input" in e["type"]]
    assert inputs == [
        ("response.custom_tool_call_input.delta", "*** Begin Patch"),
        ("response.custom_tool_call_input.done", "*** Begin Patch"),
    ]


def test_stream_error_fails_the_response() -> None:
    translator = ResponsesStreamTranslator(context())
    translator.feed("message_start", {"message": {"usage": {"input_tokens": 3}}})
    [failed] = translator.feed("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert failed["type"] == "response.failed" and translator.finished
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {"code": "server_error", "message": "Overloaded", "type": "server_error"}


def test_event_frame() -> None:
    frame = event_frame({"type": "response.output_text.delta", "sequence_number": 3, "delta": "Hi"})
    data = b'{"type":"response.output_text.delta","sequence_number":3,"delta":"Hi"}'
    assert frame == b"event: response.output_text.delta\ndata: " + data + b"\n\n"


# --- custom tool calls in Chat Completions answers -------------------------------------------------


def function_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_chat_completion_custom_calls() -> None:
    message = {"role": "assistant", "content": None}
    message["tool_calls"] = [function_call("t1", "apply_patch", '{"input":"P"}'), function_call("t2", "lookup", "{}")]
    completion = {"choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]}
    [choice] = chat_completion_with_custom_calls(completion, frozenset({"apply_patch"}))["choices"]
    assert choice["message"]["tool_calls"] == [
        {"id": "t1", "type": "custom", "custom": {"name": "apply_patch", "input": "P"}},
        function_call("t2", "lookup", "{}"),
    ]


def test_chat_stream_custom_calls_held_until_the_finish() -> None:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    opening = {"index": 0, "id": "t1", "type": "function", "function": {"name": "apply_patch", "arguments": ""}}
    held = ChatCustomCalls(frozenset({"apply_patch"}))
    out = held.feed([chunk({"content": "ok"}), chunk({"tool_calls": [opening]})])
    out += held.feed([chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"input":'}}]})])
    out += held.feed(
        [chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"P"}'}}]}), chunk({}, "tool_calls")]
    )
    assert out == [
        chunk({"content": "ok"}),
        chunk(
            {
                "tool_calls": [
                    {"index": 0, "id": "t1", "type": "custom", "custom": {"name": "apply_patch", "input": "P"}}
                ]
            }
        ),
        chunk({}, "tool_calls"),
    ]


def test_frames_are_json() -> None:
    events = stream(reply(text("x")), context())
    for event in events:
        assert orjson.loads(event_frame(event).split(b"data: ", 1)[1]) == event


def test_foreign_call_ids_are_rewritten_and_the_prefill_trimmed() -> None:
    call = {"type": "function_call", "call_id": "functions.lookup:0", "name": "lookup", "arguments": "{}"}
    output = {"type": "function_call_output", "call_id": "functions.lookup:0", "output": "42"}
    prefill = {"role": "assistant", "content": "The answer is "}
    body = {"model": "a", "input": ["hi", call, output, prefill], "tools": [LOOKUP]}
    body["input"][0] = {"role": "user", "content": "hi"}
    messages = responses_request_to_anthropic(body, OPTS).request["messages"]
    use_id = messages[1]["content"][0]["id"]
    assert use_id.startswith("functions_lookup_0_") and messages[2]["content"][0]["tool_use_id"] == use_id
    assert messages[3] == assistant(text("The answer is"))
