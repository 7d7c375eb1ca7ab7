from __future__ import annotations

from typing import Any

import pytest

from gateway.dialects.chat.request import (
    IGNORED_FIELDS,
    REJECTED_FIELDS,
    TOOL_CHOICES,
    chat_request_to_anthropic,
)
from gateway.dialects.translation import TranslationError, TranslationOptions

OPTS = TranslationOptions(
    provider_model="claude-sonnet-4-5",
    default_max_tokens=4096,
    thinking_budgets={"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384},
)
HI = [{"role": "user", "content": "hi"}]
HI_BLOCKS = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
BASE = {"model": "claude-sonnet-4-5", "max_tokens": 4096, "messages": HI_BLOCKS}
WEATHER_FN = {
    "name": "get_weather",
    "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
PNG = "iVBORw0KGgo="


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def translate(body: dict[str, Any]) -> dict[str, Any]:
    return chat_request_to_anthropic(body, OPTS)


@pytest.mark.parametrize(
    ("messages", "expected_system", "expected_messages"),
    [
        pytest.param(HI, None, HI_BLOCKS, id="string-content"),
        pytest.param(
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"},
                {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
                {"role": "assistant", "content": "Hello!"},
            ],
            [text("Be brief."), text("Use metric units.")],
            [{"role": "user", "content": [text("hi")]}, {"role": "assistant", "content": [text("Hello!")]}],
            id="system-and-developer-hoisted-in-order",
        ),
        pytest.param(
            [
                {"role": "user", "content": "one"},
                {"role": "user", "content": [{"type": "text", "text": "two"}, {"type": "text", "text": "three"}]},
                {"role": "assistant", "content": "a"},
                {"role": "system", "content": "mid-conversation system message"},
                {"role": "assistant", "content": "b"},
            ],
            [text("mid-conversation system message")],
            [
                {"role": "user", "content": [text("one"), text("two"), text("three")]},
                {"role": "assistant", "content": [text("a"), text("b")]},
            ],
            id="consecutive-same-role-merged",
        ),
        pytest.param(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in these?"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                        {"type": "image_url", "image_url": {"url": "HTTP://example.com/dog.gif"}},
                    ],
                }
            ],
            None,
            [
                {
                    "role": "user",
                    "content": [
                        text("What is in these?"),
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                        {"type": "image", "source": {"type": "url", "url": "HTTP://example.com/dog.gif"}},
                    ],
                }
            ],
            id="images-data-and-https",
        ),
        pytest.param(
            [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;x=1;base64,AA"}}],
                }
            ],
            None,
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AA"}}
                    ],
                }
            ],
            id="data-url-with-extra-parameter",
        ),
        pytest.param(
            [
                {"role": "user", "content": "Weather in Paris and Oslo?"},
                {
                    "role": "assistant",
                    "content": "Checking both.",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        },
                        {
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "4C"}]},
                {"role": "user", "content": "Thanks, and tomorrow?"},
            ],
            None,
            [
                {"role": "user", "content": [text("Weather in Paris and Oslo?")]},
                {
                    "role": "assistant",
                    "content": [
                        text("Checking both."),
                        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                        {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Oslo"}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                        {"type": "tool_result", "tool_use_id": "call_2", "content": [text("4C")]},
                        text("Thanks, and tomorrow?"),
                    ],
                },
            ],
            id="tool-round-trip-results-merged-into-one-user-turn",
        ),
        pytest.param(
            [
                {"role": "user", "content": "go"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "now", "arguments": ""}}],
                },
                {"role": "user", "content": "note: clock may drift"},
                {"role": "tool", "tool_call_id": "call_9", "content": ""},
            ],
            None,
            [
                {"role": "user", "content": [text("go")]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "call_9", "name": "now", "input": {}}]},
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "call_9"}, text("note: clock may drift")],
                },
            ],
            id="empty-text-dropped-empty-arguments-tool-results-first",
        ),
        pytest.param(
            [
                {"role": "user", "content": "go"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"function": {"name": "now", "arguments": None}}],
                },
            ],
            None,
            [
                {"role": "user", "content": [text("go")]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1_0", "name": "now", "input": {}}]},
            ],
            id="tool-call-without-id-gets-stable-id",
        ),
        pytest.param(
            [
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't help with that."}]},
                {"role": "user", "content": "ok"},
            ],
            None,
            [
                {"role": "assistant", "content": [text("I can't help with that.")]},
                {"role": "user", "content": [text("ok")]},
            ],
            id="refusal-part-and-assistant-first",
        ),
        pytest.param(
            [
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "content": None,
                    "function_call": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                },
                {"role": "function", "name": "get_weather", "content": "25C"},
            ],
            None,
            [
                {"role": "user", "content": [text("Weather?")]},
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": "call_get_weather_1",
                            "name": "get_weather",
                            "input": {"city": "Rome"},
                        }
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "call_get_weather_1", "content": "25C"},
                    ],
                },
            ],
            id="legacy-function-call-and-function-messages",
        ),
    ],
)
def test_messages(
    messages: list[dict[str, Any]],
    expected_system: list[dict[str, Any]] | None,
    expected_messages: list[dict[str, Any]],
) -> None:
    expected = {**BASE, "messages": expected_messages}
    if expected_system is not None:
        expected["system"] = expected_system
    assert translate({"model": "alias", "messages": messages}) == expected


@pytest.mark.parametrize(
    ("fields", "expected_fields"),
    [
        pytest.param({"max_tokens": 100}, {"max_tokens": 100}, id="max_tokens"),
        pytest.param({"max_completion_tokens": 200}, {"max_tokens": 200}, id="max_completion_tokens"),
        pytest.param(
            {"max_tokens": 100, "max_completion_tokens": 200}, {"max_tokens": 200}, id="max_completion_tokens-wins"
        ),
        pytest.param({"max_tokens": None}, {}, id="null-max_tokens-uses-default"),
        pytest.param({"temperature": 0.7}, {"temperature": 0.7}, id="temperature"),
        pytest.param({"temperature": 1.6}, {"temperature": 1}, id="temperature-clamped-high"),
        pytest.param({"temperature": -1}, {"temperature": 0}, id="temperature-clamped-low"),
        pytest.param({"top_p": 0.9}, {"top_p": 0.9}, id="top_p"),
        pytest.param({"stop": "END"}, {"stop_sequences": ["END"]}, id="stop-string"),
        pytest.param({"stop": ["END", "###"]}, {"stop_sequences": ["END", "###"]}, id="stop-list"),
        pytest.param({"stop": []}, {}, id="stop-empty-list"),
        pytest.param({"stop": None}, {}, id="stop-null"),
        pytest.param({"user": "alice@example.com"}, {"metadata": {"user_id": "alice@example.com"}}, id="user"),
        pytest.param({"stream": True}, {"stream": True}, id="stream-true"),
        pytest.param({"stream": False}, {"stream": False}, id="stream-false"),
        pytest.param({"n": 1, "logprobs": False, "top_logprobs": 0}, {}, id="no-op-values-of-rejected-fields"),
        pytest.param({"response_format": {"type": "text"}}, {}, id="response_format-text"),
        pytest.param({"reasoning_effort": "none"}, {}, id="reasoning_effort-none"),
        pytest.param({"some_future_field": {"x": 1}}, {}, id="unknown-field-ignored"),
        pytest.param(
            {"tools": [], "tool_choice": "auto", "parallel_tool_calls": False}, {}, id="tool_choice-without-tools"
        ),
    ],
)
def test_fields(fields: dict[str, Any], expected_fields: dict[str, Any]) -> None:
    assert translate({"model": "alias", "messages": HI, **fields}) == {**BASE, **expected_fields}


@pytest.mark.parametrize("field", sorted(IGNORED_FIELDS))
def test_ignored_fields(field: str) -> None:
    value = {"include_usage": True} if field in ("stream_options", "metadata", "logit_bias") else 1
    assert translate({"model": "alias", "messages": HI, field: value}) == BASE


@pytest.mark.parametrize(
    ("effort", "fields", "expected_fields"),
    [
        pytest.param("low", {}, {"max_tokens": 4096, "thinking": {"type": "enabled", "budget_tokens": 2048}}, id="low"),
        pytest.param(
            "high",
            {"max_tokens": 1000, "temperature": 0.2, "top_p": 0.5},
            {"max_tokens": 16384 + 4096, "thinking": {"type": "enabled", "budget_tokens": 16384}},
            id="max_tokens-raised-above-budget-sampling-dropped",
        ),
        pytest.param(
            "minimal",
            {"max_tokens": 1024},
            {"max_tokens": 1024 + 4096, "thinking": {"type": "enabled", "budget_tokens": 1024}},
            id="max_tokens-equal-to-budget-is-raised",
        ),
        pytest.param(
            "medium",
            {"max_completion_tokens": 20000},
            {"max_tokens": 20000, "thinking": {"type": "enabled", "budget_tokens": 8192}},
            id="max_tokens-above-budget-kept",
        ),
    ],
)
def test_reasoning_effort(effort: str, fields: dict[str, Any], expected_fields: dict[str, Any]) -> None:
    body = {"model": "alias", "messages": HI, "reasoning_effort": effort, **fields}
    assert translate(body) == {**BASE, **expected_fields}


@pytest.mark.parametrize(
    ("tool_fields", "expected_tools", "expected_choice"),
    [
        pytest.param({"tools": [{"type": "function", "function": WEATHER_FN}]}, [WEATHER_TOOL], None, id="tool"),
        pytest.param(
            {"tools": [{"type": "function", "function": {"name": "now"}}]},
            [{"name": "now", "input_schema": {"type": "object", "properties": {}}}],
            None,
            id="tool-without-description-or-parameters",
        ),
        *(
            pytest.param(
                {"tools": [{"type": "function", "function": WEATHER_FN}], "tool_choice": choice},
                [WEATHER_TOOL],
                expected,
                id=f"tool_choice-{choice}",
            )
            for choice, expected in TOOL_CHOICES.items()
        ),
        pytest.param(
            {
                "tools": [{"type": "function", "function": WEATHER_FN}],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            },
            [WEATHER_TOOL],
            {"type": "tool", "name": "get_weather"},
            id="tool_choice-named",
        ),
        pytest.param(
            {"tools": [{"type": "function", "function": WEATHER_FN}], "parallel_tool_calls": False},
            [WEATHER_TOOL],
            {"type": "auto", "disable_parallel_tool_use": True},
            id="parallel_tool_calls-false-without-choice",
        ),
        pytest.param(
            {
                "tools": [{"type": "function", "function": WEATHER_FN}],
                "parallel_tool_calls": False,
                "tool_choice": "required",
            },
            [WEATHER_TOOL],
            {"type": "any", "disable_parallel_tool_use": True},
            id="parallel_tool_calls-false-with-required",
        ),
        pytest.param(
            {
                "tools": [{"type": "function", "function": WEATHER_FN}],
                "parallel_tool_calls": False,
                "tool_choice": "none",
            },
            [WEATHER_TOOL],
            {"type": "none"},
            id="parallel_tool_calls-false-with-none",
        ),
        pytest.param(
            {"tools": [{"type": "function", "function": WEATHER_FN}], "parallel_tool_calls": True},
            [WEATHER_TOOL],
            None,
            id="parallel_tool_calls-true",
        ),
        pytest.param({"functions": [WEATHER_FN]}, [WEATHER_TOOL], None, id="legacy-functions"),
        pytest.param(
            {"functions": [WEATHER_FN], "function_call": {"name": "get_weather"}},
            [WEATHER_TOOL],
            {"type": "tool", "name": "get_weather"},
            id="legacy-function_call-named",
        ),
        pytest.param(
            {"functions": [WEATHER_FN], "function_call": "none"},
            [WEATHER_TOOL],
            {"type": "none"},
            id="legacy-function_call-none",
        ),
        pytest.param(
            {"tools": [{"type": "function", "function": WEATHER_FN}], "reasoning_effort": "low", "tool_choice": "auto"},
            [WEATHER_TOOL],
            {"type": "auto"},
            id="thinking-with-auto-choice",
        ),
    ],
)
def test_tools(
    tool_fields: dict[str, Any], expected_tools: list[dict[str, Any]], expected_choice: dict[str, Any] | None
) -> None:
    got = translate({"model": "alias", "messages": HI, **tool_fields})
    got.pop("thinking", None)
    expected: dict[str, Any] = {**BASE, "tools": expected_tools}
    if expected_choice is not None:
        expected["tool_choice"] = expected_choice
    assert got == expected


def user_parts(*parts: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(parts)}]


def image(url: Any) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


LOOKUP_TOOL = {"type": "function", "function": WEATHER_FN}
CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def assistant_call(arguments: Any) -> list[dict[str, Any]]:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    return [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [call]}]


ERROR_CASES = [
    pytest.param({}, "messages: must be a non-empty list of messages", "messages", id="messages-missing"),
    pytest.param({"messages": []}, "messages: must be a non-empty list of messages", "messages", id="messages-empty"),
    pytest.param(
        {"messages": "hi"}, "messages: must be a non-empty list of messages", "messages", id="messages-not-list"
    ),
    pytest.param(
        {"messages": ["hi"]}, "messages[0]: each message must be an object", "messages[0]", id="message-not-object"
    ),
    pytest.param(
        {"messages": [*HI, {"role": "robot", "content": "beep"}]},
        "messages[1].role: unknown role 'robot'; expected one of developer, system, user, assistant, tool, function",
        "messages[1].role",
        id="unknown-role",
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": 42}]},
        "messages[0].content: must be a string or a list of content parts",
        "messages[0].content",
        id="content-not-string-or-list",
    ),
    pytest.param(
        {"messages": user_parts("hi")},
        "messages[0].content[0]: content parts must be objects, got 'hi'",
        "messages[0].content[0]",
        id="part-not-object",
    ),
    pytest.param(
        {"messages": [*HI, *HI, *user_parts({"type": "input_audio", "input_audio": {"data": "", "format": "wav"}})]},
        "messages[2].content[0].type: 'input_audio' content parts are not supported in user messages; "
        "supported: image_url, text",
        "messages[2].content[0].type",
        id="input_audio-part",
    ),
    pytest.param(
        {"messages": user_parts({"type": "text", "text": "see file"}, {"type": "file", "file": {"file_id": "f"}})},
        "messages[0].content[1].type: 'file' content parts are not supported in user messages; "
        "supported: image_url, text",
        "messages[0].content[1].type",
        id="file-part",
    ),
    pytest.param(
        {"messages": user_parts({"text": "no type"})},
        "messages[0].content[0].type: None content parts are not supported in user messages; "
        "supported: image_url, text",
        "messages[0].content[0].type",
        id="part-without-type",
    ),
    pytest.param(
        {"messages": [*HI, {"role": "assistant", "content": [image("https://example.com/a.png")]}]},
        "messages[1].content[0].type: 'image_url' content parts are not supported in assistant messages; "
        "supported: refusal, text",
        "messages[1].content[0].type",
        id="image-in-assistant-message",
    ),
    pytest.param(
        {"messages": [{"role": "system", "content": [image("https://example.com/a.png")]}, *HI]},
        "messages[0].content[0].type: 'image_url' content parts are not supported in system messages; supported: text",
        "messages[0].content[0].type",
        id="image-in-system-message",
    ),
    pytest.param(
        {"messages": user_parts({"type": "text", "text": 5})},
        "messages[0].content[0].text: must be a string",
        "messages[0].content[0].text",
        id="text-part-not-string",
    ),
    pytest.param(
        {"messages": user_parts(image("ftp://example.com/a.png"))},
        "messages[0].content[0].image_url.url: 'ftp' image URLs are not supported; use https: or a base64 data: URL",
        "messages[0].content[0].image_url.url",
        id="image-ftp-url",
    ),
    pytest.param(
        {"messages": user_parts(image("data:image/png,rawbytes"))},
        "messages[0].content[0].image_url.url: data URLs must look like data:<mime>;base64,<data>",
        "messages[0].content[0].image_url.url",
        id="image-data-url-not-base64",
    ),
    pytest.param(
        {"messages": user_parts(image("data:image/tiff;base64,AA"))},
        "messages[0].content[0].image_url.url: image type 'image/tiff' is not supported; "
        "supported: image/gif, image/jpeg, image/png, image/webp",
        "messages[0].content[0].image_url.url",
        id="image-unsupported-media-type",
    ),
    pytest.param(
        {"messages": user_parts({"type": "image_url", "image_url": {"detail": "high"}})},
        "messages[0].content[0].image_url.url: an image URL is required",
        "messages[0].content[0].image_url.url",
        id="image-without-url",
    ),
    pytest.param(
        {"messages": assistant_call("[1, 2]")},
        "messages[1].tool_calls[0].function.arguments: must be a JSON object, got list",
        "messages[1].tool_calls[0].function.arguments",
        id="tool-arguments-not-object",
    ),
    pytest.param(
        {"messages": [*HI, {"role": "assistant", "tool_calls": [{"id": "c", "type": "custom", "custom": {}}]}]},
        "messages[1].tool_calls[0].type: only function tool calls are supported",
        "messages[1].tool_calls[0].type",
        id="custom-tool-call",
    ),
    pytest.param(
        {"messages": [*HI, {"role": "assistant", "tool_calls": [{"id": "c", "function": {"arguments": "{}"}}]}]},
        "messages[1].tool_calls[0].function.name: a function name is required",
        "messages[1].tool_calls[0].function.name",
        id="tool-call-without-name",
    ),
    pytest.param(
        {"messages": [*HI, {"role": "tool", "content": "18C"}]},
        "messages[1].tool_call_id: is required",
        "messages[1].tool_call_id",
        id="tool-message-without-tool_call_id",
    ),
    pytest.param(
        {"messages": [*HI, {"role": "function", "content": "18C"}]},
        "messages[1].name: is required for function messages",
        "messages[1].name",
        id="function-message-without-name",
    ),
    pytest.param(
        {"messages": [*HI, {"role": "tool", "tool_call_id": "c", "content": [image("https://example.com/a.png")]}]},
        "messages[1].content[0].type: 'image_url' content parts are not supported in tool messages; supported: text",
        "messages[1].content[0].type",
        id="image-in-tool-message",
    ),
    pytest.param(
        {"messages": HI, "tools": [{"type": "function", "function": WEATHER_FN}, {"type": "custom", "custom": {}}]},
        "tools[1].type: 'custom' tools are not supported; only function tools are",
        "tools[1].type",
        id="non-function-tool",
    ),
    pytest.param(
        {"messages": HI, "tools": [{"type": "function", "function": {"description": "no name"}}]},
        "tools[0].function.name: a function name is required",
        "tools[0].function.name",
        id="tool-without-name",
    ),
    pytest.param({"messages": HI, "tools": {"a": 1}}, "tools: must be a list", "tools", id="tools-not-list"),
    pytest.param(
        {"messages": HI, "functions": [{"parameters": {}}]},
        "functions[0].name: a function name is required",
        "functions[0].name",
        id="legacy-function-without-name",
    ),
    pytest.param(
        {"messages": HI, "tools": [{"type": "function", "function": WEATHER_FN}], "tool_choice": "sometimes"},
        'tool_choice: expected "auto", "none", "required" or a named function, got \'sometimes\'',
        "tool_choice",
        id="tool_choice-unknown-string",
    ),
    pytest.param(
        {
            "messages": HI,
            "tools": [{"type": "function", "function": WEATHER_FN}],
            "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}},
        },
        'tool_choice: expected "auto", "none", "required" or a named function, '
        "got {'type': 'allowed_tools', 'allowed_tools': {'mode': 'auto', 'tools': []}}",
        "tool_choice",
        id="tool_choice-allowed_tools",
    ),
    pytest.param(
        {"messages": HI, "n": 2}, "n: only one choice per request is supported; send n=1 or omit it", "n", id="n-2"
    ),
    pytest.param(
        {"messages": HI, "logprobs": True},
        "logprobs: log probabilities are not available from Anthropic models",
        "logprobs",
        id="logprobs",
    ),
    pytest.param(
        {"messages": HI, "top_logprobs": 3},
        "top_logprobs: log probabilities are not available from Anthropic models",
        "top_logprobs",
        id="top_logprobs",
    ),
    pytest.param(
        {"messages": HI, "response_format": {"type": "grammar"}},
        "response_format.type: 'grammar' is not supported; use text, json_object or json_schema",
        "response_format.type",
        id="response_format-unknown-type",
    ),
    pytest.param(
        {"messages": HI, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
        "response_format.json_schema.schema: a JSON schema object is required",
        "response_format.json_schema.schema",
        id="response_format-json_schema-without-schema",
    ),
    pytest.param(
        {"messages": HI, "reasoning_effort": "ultra"},
        "reasoning_effort: 'ultra' is not supported; use one of none, minimal, low, medium, high",
        "reasoning_effort",
        id="reasoning_effort-without-budget",
    ),
    pytest.param(
        {
            "messages": HI,
            "reasoning_effort": "low",
            "tools": [{"type": "function", "function": WEATHER_FN}],
            "tool_choice": "required",
        },
        "tool_choice: with reasoning_effort set only auto or none are supported (Anthropic extended thinking)",
        "tool_choice",
        id="reasoning_effort-with-forced-tool",
    ),
    pytest.param(
        {"messages": HI, "max_tokens": 0},
        "max_tokens: must be a positive integer, got 0",
        "max_tokens",
        id="max_tokens-0",
    ),
    pytest.param(
        {"messages": HI, "max_completion_tokens": "100"},
        "max_completion_tokens: must be a positive integer, got '100'",
        "max_completion_tokens",
        id="max_completion_tokens-string",
    ),
    pytest.param(
        {"messages": HI, "temperature": "hot"},
        "temperature: must be a number, got 'hot'",
        "temperature",
        id="temperature",
    ),
    pytest.param({"messages": HI, "top_p": True}, "top_p: must be a number, got True", "top_p", id="top_p-bool"),
    pytest.param(
        {"messages": HI, "stop": 7}, "stop: must be a string or a list of strings, got 7", "stop", id="stop-int"
    ),
    pytest.param(
        {"messages": HI, "stream": "true"}, "stream: must be true or false, got 'true'", "stream", id="stream-str"
    ),
    pytest.param({"messages": HI, "stream": 1}, "stream: must be true or false, got 1", "stream", id="stream-int"),
    pytest.param(
        {
            "messages": [
                {"role": "user", "content": [{**text("x"), "cache_control": {"type": "ephemeral", "ttl": "2h"}}]}
            ]
        },
        'messages[0].content[0].cache_control: expected {"type": "ephemeral"} with an optional ttl of "5m" or "1h", '
        "got {'type': 'ephemeral', 'ttl': '2h'}",
        "messages[0].content[0].cache_control",
        id="cache_control-ttl-2h",
    ),
    pytest.param(
        {"messages": [{"role": "system", "content": [{**text("x"), "cache_control": "ephemeral"}]}]},
        'messages[0].content[0].cache_control: expected {"type": "ephemeral"} with an optional ttl of "5m" or "1h", '
        "got 'ephemeral'",
        "messages[0].content[0].cache_control",
        id="cache_control-string",
    ),
    pytest.param({"messages": HI, "user": 5}, "user: must be a string, got 5", "user", id="user-int"),
    pytest.param(
        {"messages": [*HI, {"role": "tool", "tool_call_id": "call_9", "content": "42"}]},
        "messages[1].tool_call_id: 'call_9' answers no tool call of the assistant message just before it",
        "messages[1].tool_call_id",
        id="tool-message-without-call",
    ),
    pytest.param(
        {"messages": [*HI, {"role": "function", "name": "orphan", "content": "?"}]},
        "messages[1].name: 'orphan' answers no tool call of the assistant message just before it",
        "messages[1].name",
        id="legacy-function-message-without-call",
    ),
    pytest.param(
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                *assistant_call("{}"),
                {"role": "tool", "tool_call_id": "c1", "content": "1"},
                {"role": "assistant", "tool_calls": [{**CALL, "id": "c2"}]},
                {"role": "tool", "tool_call_id": "c1", "content": "again"},
            ]
        },
        "messages[5].tool_call_id: 'c1' answers no tool call of the assistant message just before it",
        "messages[5].tool_call_id",
        id="tool-message-answers-an-older-call",
    ),
    pytest.param(
        {"messages": [*assistant_call("{}"), {"role": "user", "content": "never mind"}]},
        "messages[1].tool_calls[0].id: tool call 'c1' has no result; answer every call before the next turn",
        "messages[1].tool_calls[0].id",
        id="tool-call-unanswered",
    ),
    pytest.param(
        {
            "messages": [
                *assistant_call("{}")[:1],
                {"role": "assistant", "tool_calls": [CALL, {**CALL, "id": "c2"}]},
                {"role": "tool", "tool_call_id": "c1", "content": "1"},
                {"role": "user", "content": "and?"},
            ]
        },
        "messages[1].tool_calls[1].id: tool call 'c2' has no result; answer every call before the next turn",
        "messages[1].tool_calls[1].id",
        id="one-of-two-calls-unanswered",
    ),
    pytest.param({"messages": HI, "top_p": 5}, "top_p: must be between 0 and 1, got 5", "top_p", id="top_p-over-1"),
    pytest.param(
        {"messages": HI, "tools": [{"type": "function", "function": {"name": "my tool"}}]},
        "tools[0].function.name: 'my tool' is not a valid tool name; use 1 to 128 letters, digits, '_' or '-'",
        "tools[0].function.name",
        id="tool-name-with-space",
    ),
    pytest.param(
        {"messages": HI, "tools": [{"type": "function", "function": {"name": ""}}]},
        "tools[0].function.name: '' is not a valid tool name; use 1 to 128 letters, digits, '_' or '-'",
        "tools[0].function.name",
        id="tool-name-empty",
    ),
    pytest.param(
        {"messages": HI, "functions": [{"name": "a" * 129}]},
        f"functions[0].name: {'a' * 129!r} is not a valid tool name; use 1 to 128 letters, digits, '_' or '-'",
        "functions[0].name",
        id="legacy-function-name-too-long",
    ),
    pytest.param(
        {"messages": HI, "tools": [LOOKUP_TOOL, LOOKUP_TOOL]},
        "tools[1].function.name: tool name 'get_weather' is used twice; names must be unique",
        "tools[1].function.name",
        id="duplicate-tool-names",
    ),
    pytest.param(
        {"messages": HI, "tools": [{"type": "function", "function": {"name": "f", "parameters": [1]}}]},
        "tools[0].function.parameters: must be a JSON schema object",
        "tools[0].function.parameters",
        id="parameters-list",
    ),
    pytest.param(
        {"messages": HI, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
        "tools[0].function.parameters.type: tool parameters must be an object schema, got type 'string'",
        "tools[0].function.parameters.type",
        id="parameters-not-object-schema",
    ),
    pytest.param(
        {"messages": HI, "tools": [{"type": "function", "function": {"name": "f", "description": 5}}]},
        "tools[0].function.description: must be a string",
        "tools[0].function.description",
        id="description-int",
    ),
    pytest.param(
        {"messages": HI, "tools": [LOOKUP_TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        "tool_choice: 'nope' is not the name of a tool in tools",
        "tool_choice",
        id="tool_choice-unknown-tool",
    ),
    pytest.param(
        {"messages": HI, "tool_choice": "required"},
        'tool_choice: "required" needs tools to call; none were sent',
        "tool_choice",
        id="tool_choice-required-without-tools",
    ),
    pytest.param(
        {"messages": HI, "tools": [], "tool_choice": {"type": "function", "function": {"name": "f"}}},
        "tool_choice: 'f' is not the name of a tool in tools",
        "tool_choice",
        id="named-tool_choice-with-empty-tools",
    ),
    pytest.param(
        {"messages": HI, "functions": [WEATHER_FN], "function_call": {"name": "nope"}},
        "function_call: 'nope' is not the name of a tool in tools",
        "function_call",
        id="legacy-function_call-unknown-function",
    ),
    pytest.param(
        {"messages": [*assistant_call("{}")[:1], {"role": "assistant", "tool_calls": [{**CALL, "id": 5}]}]},
        "messages[1].tool_calls[0].id: must be a string, got 5",
        "messages[1].tool_calls[0].id",
        id="tool-call-id-int",
    ),
    pytest.param(
        {"messages": [*assistant_call("{}")[:1], {"role": "assistant", "tool_calls": [CALL, CALL]}]},
        "messages[1].tool_calls[1].id: 'c1' is used twice in this message; tool call ids must be unique",
        "messages[1].tool_calls[1].id",
        id="tool-call-id-twice",
    ),
]


@pytest.mark.parametrize(("body", "message", "param"), ERROR_CASES)
def test_errors(body: dict[str, Any], message: str, param: str) -> None:
    with pytest.raises(TranslationError) as info:
        translate({"model": "alias", **body})
    assert (str(info.value), info.value.param) == (message, param)


def test_broken_tool_arguments_name_the_field() -> None:
    with pytest.raises(TranslationError) as info:
        translate({"model": "alias", "messages": assistant_call('{"city": "Par')})
    assert info.value.param == "messages[1].tool_calls[0].function.arguments"
    assert str(info.value).startswith("messages[1].tool_calls[0].function.arguments: not valid JSON (")
    assert isinstance(info.value, ValueError)


def test_every_rejected_field_has_an_error_case() -> None:
    params = {str(case.values[2]).split(".")[0] for case in ERROR_CASES}
    assert params >= REJECTED_FIELDS
    assert not IGNORED_FIELDS & REJECTED_FIELDS


def test_input_is_not_mutated() -> None:
    body = {
        "model": "alias",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}, {"role": "user", "content": "b"}],
        "tools": [{"type": "function", "function": WEATHER_FN}],
        "parallel_tool_calls": False,
    }
    snapshot = repr(body)
    translate(body)
    assert repr(body) == snapshot


@pytest.mark.parametrize(
    ("messages", "expected_messages"),
    [
        pytest.param(
            [
                {"role": "user", "content": "x"},
                {"role": "assistant", "tool_calls": [{**CALL, "id": "functions.f:0"}, {**CALL, "id": "functions.f_0"}]},
                {"role": "tool", "tool_call_id": "functions.f:0", "content": "a"},
                {"role": "tool", "tool_call_id": "functions.f_0", "content": "b"},
            ],
            [
                {"role": "user", "content": [text("x")]},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": "functions_f_0_d6bdd4de328a", "name": "f", "input": {}},
                        {"type": "tool_use", "id": "functions_f_0_20c31c8fd4e8", "name": "f", "input": {}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "functions_f_0_d6bdd4de328a", "content": "a"},
                        {"type": "tool_result", "tool_use_id": "functions_f_0_20c31c8fd4e8", "content": "b"},
                    ],
                },
            ],
            id="foreign-call-ids-rewritten-alike-and-kept-apart",
        ),
        pytest.param(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": "Sure, here it is:\n "}],
            [{"role": "user", "content": [text("x")]}, {"role": "assistant", "content": [text("Sure, here it is:")]}],
            id="prefill-trailing-whitespace-trimmed",
        ),
        pytest.param(
            [{"role": "assistant", "content": "a "}, {"role": "user", "content": "x"}],
            [{"role": "assistant", "content": [text("a ")]}, {"role": "user", "content": [text("x")]}],
            id="earlier-assistant-turn-kept-as-sent",
        ),
    ],
)
def test_anthropic_shape_rules(messages: list[dict[str, Any]], expected_messages: list[dict[str, Any]]) -> None:
    assert translate({"model": "alias", "messages": messages})["messages"] == expected_messages


def test_parameters_without_type_become_an_object_schema() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"properties": {"a": {"type": "string"}}}}}]
    [tool] = translate({"model": "alias", "messages": HI, "tools": tools})["tools"]
    assert tool["input_schema"] == {"type": "object", "properties": {"a": {"type": "string"}}}


@pytest.mark.parametrize(
    ("url", "media_type"),
    [
        pytest.param(f"data:image/jpg;base64,{PNG}", "image/jpeg", id="jpg-is-jpeg"),
        pytest.param(f"data:IMAGE/PNG;base64,{PNG}", "image/png", id="upper-case"),
    ],
)
def test_image_media_type_spellings(url: str, media_type: str) -> None:
    """Anthropic knows only image/jpeg (not "jpg") and lower case; OpenAI takes both spellings."""
    body = {"model": "alias", "messages": user_parts(image(url))}
    [block] = translate(body)["messages"][0]["content"]
    assert block["source"] == {"type": "base64", "media_type": media_type, "data": PNG}
