"""gateway/dialects/responses/: the Responses API over Anthropic (request, tools, items, reply, stream)."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
import pytest

from gateway.dialects.chat.request import TranslationError, TranslationOptions
from gateway.dialects.responses.items import decode_thinking, encode_thinking
from gateway.dialects.responses.reply import ResponseContext, event_frame, message_to_response, usage_to_responses
from gateway.dialects.responses.request import ResponsesTranslation, is_responses_body, responses_request_to_anthropic
from gateway.dialects.responses.stream import (
    ChatCustomCalls,
    ResponsesStreamTranslator,
    chat_completion_with_custom_calls,
)
from gateway.dialects.responses.tools import ToolOrigin
from tests.fakes.upstream import anthropic_events_for

OPTS = TranslationOptions(provider_model="claude-x", default_max_tokens=1000, thinking_budgets={"low": 1024})
PIXEL = "data:image/png;base64,iVBORw0KGgo="
LOOKUP = {
    "type": "function",
    "name": "lookup",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
}
LOOKUP_TOOL = {"name": "lookup", "input_schema": LOOKUP["parameters"]}
PATCH = {"type": "custom", "name": "apply_patch", "description": "Edit files."}
THINKING = {"type": "thinking", "thinking": "Let me see.", "signature": "sig=="}


def user(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(blocks)}


def assistant(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": list(blocks)}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def anthropic(messages: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"model": "claude-x", "max_tokens": 1000, "messages": messages, **fields}


# --- requests --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            {"model": "a", "input": "hi", "instructions": "Be brief.", "max_output_tokens": 50, "stream": True},
            {**anthropic([user(text("hi"))], max_tokens=50), "system": [text("Be brief.")], "stream": True},
            id="string-input",
        ),
        pytest.param(
            {
                "model": "a",
                "instructions": "First.",
                "input": [
                    {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Second."}]},
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "what?"},
                            {"type": "input_image", "image_url": PIXEL},
                        ],
                    },
                    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "this"}]},
                    {"role": "user", "content": "and?"},
                ],
            },
            {
                **anthropic(
                    [
                        user(
                            text("what?"),
                            {
                                "type": "image",
                                "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                            },
                        ),
                        assistant(text("this")),
                        user(text("and?")),
                    ]
                ),
                "system": [text("First."), text("Second.")],
            },
            id="messages",
        ),
        pytest.param(
            {
                "model": "a",
                "tools": [LOOKUP, {"type": "web_search", "external_web_access": False}],
                "input": [
                    {"role": "user", "content": "use_tool"},
                    {
                        "type": "message",
                        "role": "assistant",
                        "id": "msg_1",
                        "content": [{"type": "output_text", "text": "ok"}],
                    },
                    {
                        "type": "function_call",
                        "id": "fc_1",
                        "call_id": "toolu_1",
                        "name": "lookup",
                        "arguments": '{"q":"x"}',
                    },
                    {"type": "function_call_output", "call_id": "toolu_1", "output": "42"},
                ],
            },
            anthropic(
                [
                    user(text("use_tool")),
                    assistant(text("ok"), {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "x"}}),
                    user({"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"}),
                ],
                tools=[LOOKUP_TOOL],  # web_search is OpenAI's own: dropped
            ),
            id="function-round-trip",
        ),
        pytest.param(
            {
                "model": "a",
                "tools": [PATCH],
                "input": [
                    {"role": "user", "content": "patch it"},
                    {
                        "type": "custom_tool_call",
                        "call_id": "toolu_2",
                        "name": "apply_patch",
                        "input": "*** Begin Patch",
                    },
                    {
                        "type": "custom_tool_call_output",
                        "call_id": "toolu_2",
                        "output": [{"type": "input_text", "text": "done"}],
                    },
                ],
            },
            anthropic(
                [
                    user(text("patch it")),
                    assistant(
                        {
                            "type": "tool_use",
                            "id": "toolu_2",
                            "name": "apply_patch",
                            "input": {"input": "*** Begin Patch"},
                        }
                    ),
                    user({"type": "tool_result", "tool_use_id": "toolu_2", "content": [text("done")]}),
                ],
                tools=[
                    {
                        "name": "apply_patch",
                        "description": "Edit files.\n\n"
                        "Put the whole input for the tool, as free-form text, in `input`.",
                        "input_schema": {
                            "type": "object",
                            "properties": {
                                "input": {
                                    "type": "string",
                                    "description": "The whole input for the tool, as plain text.",
                                }
                            },
                            "required": ["input"],
                        },
                    }
                ],
            ),
            id="custom-tool",
        ),
        pytest.param(
            {
                "model": "a",
                "tools": [
                    {
                        "type": "namespace",
                        "name": "agents",
                        "description": "Sub-agents.",
                        "tools": [{**LOOKUP, "name": "spawn"}],
                    }
                ],
                "tool_choice": {"type": "function", "name": "spawn", "namespace": "agents"},
                "parallel_tool_calls": False,
                "input": [
                    {"role": "user", "content": "go"},
                    {
                        "type": "function_call",
                        "call_id": "toolu_3",
                        "name": "spawn",
                        "namespace": "agents",
                        "arguments": "{}",
                    },
                    {"type": "function_call_output", "call_id": "toolu_3", "output": ""},
                ],
            },
            anthropic(
                [
                    user(text("go")),
                    assistant({"type": "tool_use", "id": "toolu_3", "name": "agents__spawn", "input": {}}),
                    user({"type": "tool_result", "tool_use_id": "toolu_3"}),
                ],
                tools=[{**LOOKUP_TOOL, "name": "agents__spawn"}],
                tool_choice={"type": "tool", "name": "agents__spawn", "disable_parallel_tool_use": True},
            ),
            id="namespace-flattened",
        ),
        pytest.param(
            {
                "model": "a",
                "reasoning": {"effort": "low", "summary": "auto"},
                "temperature": 0.5,
                "user": "ada@example.com",
                "input": [
                    {"role": "user", "content": "think"},
                    {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": encode_thinking(THINKING)},
                    {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "gAAAA-openai-own"},
                    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "done"}]},
                ],
            },
            {
                **anthropic([user(text("think")), assistant(THINKING, text("done"))], max_tokens=2024),
                "thinking": {"type": "enabled", "budget_tokens": 1024},  # temperature dropped, as with thinking
                "metadata": {"user_id": "ada@example.com"},
            },
            id="reasoning",
        ),
        pytest.param(
            {
                "model": "a",
                "input": "hi",
                "store": False,
                "include": ["reasoning.encrypted_content"],
                "prompt_cache_key": "k",
                "client_metadata": {"x": "y"},
                "text": {"format": {"type": "text"}, "verbosity": "low"},
                "truncation": "auto",
                "service_tier": "auto",
                "reasoning": {"summary": "auto"},
                "tool_choice": "auto",
            },
            anthropic([user(text("hi"))]),
            id="ignored",
        ),
    ],
)
def test_request(body: dict[str, Any], expected: dict[str, Any]) -> None:
    assert responses_request_to_anthropic(body, OPTS).request == expected


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        pytest.param({"previous_response_id": "resp_1"}, "previous_response_id", "keeps no responses", id="previous"),
        pytest.param({"store": True}, "store", "send store: false", id="store"),
        pytest.param({"conversation": "conv_1"}, "conversation", "keeps no conversations", id="conversation"),
        pytest.param({"background": True}, "background", "background", id="background"),
        pytest.param({"top_logprobs": 2}, "top_logprobs", "log probabilities", id="top_logprobs"),
        pytest.param({"text": {"format": {"type": "json_schema"}}}, "text.format.schema", "schema", id="json-schema"),
        pytest.param({"tools": [{"type": "file_search"}]}, "tools[0].type", "'file_search' tools", id="hosted-tool"),
        pytest.param({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type", "'item_reference'", id="ref"),
        pytest.param(
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
            "'input_file'",
            id="input_file",
        ),
        pytest.param({"input": [{"role": "tool", "content": "x"}]}, "input[0].role", "unknown role", id="role"),
        pytest.param(
            {"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id", "required", id="call_id"
        ),
        pytest.param({"input": []}, "input", "non-empty", id="empty-input"),
        pytest.param({"input": "  \n"}, "input", "no input item has any non-whitespace", id="whitespace-input"),
        pytest.param(
            {
                "input": [
                    {"role": "user", "content": "hi"},
                    {"type": "function_call_output", "call_id": "c9", "output": "42"},
                ]
            },
            "input[1].call_id",
            "'c9' answers no tool call",
            id="output-without-call",
        ),
        pytest.param(
            {
                "input": [
                    {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
                    {"role": "user", "content": "next"},
                ]
            },
            "input[0].call_id",
            "tool call 'c1' has no result",
            id="call-without-output",
        ),
        pytest.param(
            {
                "input": [
                    {"role": "developer", "content": "x"},
                    {"role": "user", "content": [{"type": "input_text", "text": ""}]},
                ]
            },
            "input",
            "no input item has any non-whitespace",
            id="only-instructions",
        ),
        pytest.param({"reasoning": {"effort": "ultra"}}, "reasoning.effort", "'ultra' is not supported", id="effort"),
        pytest.param({"max_output_tokens": 0}, "max_output_tokens", "positive integer", id="max_output_tokens"),
        pytest.param({"tool_choice": {"type": "allowed_tools"}}, "tool_choice", "expected", id="allowed_tools"),
        pytest.param({"stream": "true"}, "stream", "must be true or false", id="stream-string"),
        pytest.param({"tools": [], "tool_choice": "required"}, "tool_choice", "needs tools", id="required-no-tools"),
        pytest.param({"tools": [{**LOOKUP, "name": "look up"}]}, "tools[0].name", "not a valid tool name", id="name"),
        pytest.param({"tools": [LOOKUP, LOOKUP]}, "tools[1].name", "'lookup' is used twice", id="duplicate-tool"),
        pytest.param(
            {"tools": [{**LOOKUP, "parameters": {"type": "array"}}]},
            "tools[0].parameters.type",
            "must be an object schema",
            id="array-parameters",
        ),
        pytest.param({"tools": [{**LOOKUP, "description": 5}]}, "tools[0].description", "string", id="description"),
        pytest.param(
            {"tool_choice": {"type": "function", "name": "nope"}}, "tool_choice", "'nope' is not the name", id="choice"
        ),
        pytest.param(
            {"input": [{"type": "function_call", "call_id": "c", "name": "lookup", "arguments": "{}"}] * 2},
            "input[1].call_id",
            "'c' is used twice",
            id="call-id-twice",
        ),
    ],
)
def test_request_refused(body: dict[str, Any], param: str, fragment: str) -> None:
    with pytest.raises(TranslationError) as caught:
        responses_request_to_anthropic({"model": "a", "input": "hi", "tools": [LOOKUP], **body}, OPTS)
    assert caught.value.param == param and fragment in str(caught.value)


JUNK: list[Any] = [None, True, 3, "x", [], [[]], {}, {"type": []}, [{"type": []}], [{"type": "function", "name": []}]]
JUNK += [[{"role": [], "content": [{"type": {}}]}], [{"role": "user", "content": [{"type": ["input_text"]}]}]]
JUNK += [[{"type": "namespace", "name": "n", "tools": 3}], [{"type": "function_call", "call_id": "c", "name": "f"}]]
JUNK += [
    {"effort": []},
    {"format": {"type": []}},
    [{"type": "function_call", "call_id": "c", "name": "f", "namespace": []}],
]
FIELDS = ["input", "instructions", "tools", "tool_choice", "reasoning", "text", "include", "max_output_tokens"]
FIELDS += ["temperature", "user", "store", "parallel_tool_calls", "previous_response_id", "stream"]


@pytest.mark.parametrize("name", FIELDS)
def test_malformed_fields_are_refused_cleanly(name: str) -> None:
    """Whatever a caller sends, the answer is a translation or a TranslationError (a 400), never a crash (a 500)."""
    for junk in JUNK:
        with contextlib.suppress(TranslationError):
            responses_request_to_anthropic({"model": "a", "input": "hi", name: junk}, OPTS)


@pytest.mark.parametrize(
    ("body", "shaped"),
    [
        ({"model": "a", "input": "hi"}, True),
        ({"model": "a", "instructions": "x", "input": []}, True),
        ({"model": "a", "messages": [], "input": "x"}, False),
        ({"model": "a", "messages": []}, False),
    ],
)
def test_is_responses_body(body: dict[str, Any], shaped: bool) -> None:
    assert is_responses_body(body) is shaped


def test_thinking_survives_encrypted_content() -> None:
    assert decode_thinking(encode_thinking(THINKING)) == THINKING
    assert decode_thinking("gw-anthropic-thinking:!!!") is None
    assert decode_thinking(encode_thinking({"type": "text", "text": "not thinking"})) is None


# --- replies ---------------------------------------------------------------------------------------


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


CALL = {"type": "tool_use", "id": "toolu_9", "name": "lookup", "input": {"q": "x"}}
EXPECTED_USAGE = {
    "input_tokens": 115,
    "input_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 5},
    "output_tokens": 4,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 119,
}


def test_message_to_response_whole_object() -> None:
    assert message_to_response(reply(text("Hi."), CALL, stop_reason="tool_use"), context()) == {
        "id": "resp_r1",
        "object": "response",
        "created_at": 7,
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "model": "claude-fast",
        "output": [
            {
                "type": "message",
                "id": "msg_r1_0",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hi.", "annotations": []}],
            },
            {
                "type": "function_call",
                "id": "fc_toolu_9",
                "call_id": "toolu_9",
                "name": "lookup",
                "arguments": '{"q":"x"}',
                "status": "completed",
            },
        ],
        "previous_response_id": None,
        "store": False,
        "tools": [],
        "tool_choice": "auto",
        "usage": EXPECTED_USAGE,
    }


@pytest.mark.parametrize(
    ("stop_reason", "status", "reason"),
    [
        ("end_turn", "completed", None),
        ("tool_use", "completed", None),
        ("stop_sequence", "completed", None),
        ("max_tokens", "incomplete", "max_output_tokens"),
        ("refusal", "incomplete", "content_filter"),
    ],
)
def test_status(stop_reason: str, status: str, reason: str | None) -> None:
    response = message_to_response(reply(text("x"), stop_reason=stop_reason), context())
    assert response["status"] == status
    assert response["incomplete_details"] == (None if reason is None else {"reason": reason})


@pytest.mark.parametrize(
    ("tools", "block", "item"),
    [
        pytest.param(
            {"apply_patch": ToolOrigin("apply_patch", custom=True)},
            {"type": "tool_use", "id": "toolu_1", "name": "apply_patch", "input": {"input": "*** Begin Patch"}},
            {
                "type": "custom_tool_call",
                "id": "fc_toolu_1",
                "call_id": "toolu_1",
                "name": "apply_patch",
                "input": "*** Begin Patch",
                "status": "completed",
            },
            id="custom",
        ),
        pytest.param(
            {"agents__spawn": ToolOrigin("spawn", namespace="agents")},
            {"type": "tool_use", "id": "toolu_1", "name": "agents__spawn", "input": {}},
            {
                "type": "function_call",
                "id": "fc_toolu_1",
                "call_id": "toolu_1",
                "name": "spawn",
                "namespace": "agents",
                "arguments": "{}",
                "status": "completed",
            },
            id="namespaced",
        ),
    ],
)
def test_tool_items(tools: dict[str, ToolOrigin], block: dict[str, Any], item: dict[str, Any]) -> None:
    assert message_to_response(reply(block), context(tools=tools))["output"] == [item]


@pytest.mark.parametrize("include", [True, False])
def test_thinking_becomes_a_reasoning_item(include: bool) -> None:
    [item, _] = message_to_response(reply(THINKING, text("x")), context(include_reasoning=include))["output"]
    expected = {"type": "reasoning", "id": "rs_r1_0", "summary": [{"type": "summary_text", "text": "Let me see."}]}
    assert item == ({**expected, "encrypted_content": encode_thinking(THINKING)} if include else expected)


def test_usage() -> None:
    assert usage_to_responses(reply()["usage"]) == EXPECTED_USAGE


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
