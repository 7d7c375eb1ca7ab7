"""gateway/dialects/responses/request.py, tools.py, items.py: Responses requests as Anthropic requests."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from gateway.dialects.responses.items import decode_thinking, encode_thinking
from gateway.dialects.responses.request import is_responses_body, responses_request_to_anthropic
from gateway.dialects.translation import TranslationError, TranslationOptions

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
