from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.dialects.messages.request import (
    IGNORED_FIELDS,
    TOOL_ERROR_PREFIX,
    estimate_input_tokens,
    messages_request_to_chat,
)
from gateway.dialects.translation import TranslationError

MODEL = "gpt-4o-mini"
HI = [{"role": "user", "content": "hi"}]
LOOKUP = {
    "name": "lookup",
    "description": "Look a word up.",
    "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
}
LOOKUP_FUNCTION = {
    "type": "function",
    "function": {"name": "lookup", "description": "Look a word up.", "parameters": LOOKUP["input_schema"]},
}
CLAUDE_CODE_BODY = Path(__file__).resolve().parents[2] / "fixtures" / "claude_code_stream.json"


def translate(**body: Any) -> dict[str, Any]:
    return messages_request_to_chat({"model": "claude-fast", "max_tokens": 64, **body}, provider_model=MODEL)


def test_minimal_request() -> None:
    assert translate(messages=HI) == {"model": MODEL, "messages": HI, "max_tokens": 64}


@pytest.mark.parametrize(
    ("system", "expected"),
    [
        pytest.param("Be brief.", [{"role": "system", "content": "Be brief."}], id="string"),
        pytest.param(
            [
                {"type": "text", "text": "You are Claude Code."},
                {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
            ],
            [{"role": "system", "content": "You are Claude Code.\n\nBe brief."}],
            id="blocks-joined-cache-control-dropped",
        ),
        pytest.param("", [], id="empty"),
        pytest.param(None, [], id="none"),
    ],
)
def test_system(system: object, expected: list[dict[str, Any]]) -> None:
    assert translate(system=system, messages=HI)["messages"] == [*expected, *HI]


def test_system_role_message_stays_in_place() -> None:
    messages = [*HI, {"role": "system", "content": "A reminder."}]
    assert translate(messages=messages)["messages"] == [*HI, {"role": "system", "content": "A reminder."}]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param("hi", "hi", id="string"),
        pytest.param([{"type": "text", "text": "hi"}], "hi", id="one-text-block"),
        pytest.param(
            [{"type": "text", "text": "<system-reminder>x</system-reminder>"}, {"type": "text", "text": "hi"}],
            "<system-reminder>x</system-reminder>\n\nhi",
            id="text-blocks-joined",
        ),
        pytest.param(
            [
                {"type": "text", "text": "what is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
            ],
            [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ],
            id="images-as-parts",
        ),
    ],
)
def test_user_content(content: object, expected: object) -> None:
    assert translate(messages=[{"role": "user", "content": content}])["messages"] == [
        {"role": "user", "content": expected}
    ]


def test_tool_use_and_tool_result_round_trip() -> None:
    messages = [
        {"role": "user", "content": "look up 'gateway'"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "I should look it up.", "signature": "sig"},
                {"type": "text", "text": "Looking."},
                {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "gateway"}},
                {"type": "tool_use", "id": "toolu_2", "name": "lookup", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "and be quick"},
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a proxy"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "nothing"}]},
            ],
        },
    ]
    assert translate(messages=messages)["messages"] == [
        {"role": "user", "content": "look up 'gateway'"},
        {
            "role": "assistant",
            "content": "Looking.",
            "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q":"gateway"}'}},
                {"id": "toolu_2", "type": "function", "function": {"name": "lookup", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "a proxy"},  # tool messages first, then the text
        {"role": "tool", "tool_call_id": "toolu_2", "content": "nothing"},
        {"role": "user", "content": "and be quick"},
    ]


def test_assistant_with_only_tool_calls_has_null_content() -> None:
    call = {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "x"}}
    [_, assistant] = translate(messages=[*HI, {"role": "assistant", "content": [call]}])["messages"]
    assert assistant["content"] is None and len(assistant["tool_calls"]) == 1


def test_assistant_with_only_thinking_keeps_an_empty_turn() -> None:
    thinking = {"type": "redacted_thinking", "data": "xyz"}
    [_, assistant] = translate(messages=[*HI, {"role": "assistant", "content": [thinking]}])["messages"]
    assert assistant == {"role": "assistant", "content": ""}


@pytest.mark.parametrize(
    ("result", "expected_tool", "expected_user"),
    [
        pytest.param(
            {"type": "tool_result", "tool_use_id": "t1", "content": "No such file", "is_error": True},
            {"role": "tool", "tool_call_id": "t1", "content": TOOL_ERROR_PREFIX + "No such file"},
            None,
            id="is-error",
        ),
        pytest.param(
            {"type": "tool_result", "tool_use_id": "t1"},
            {"role": "tool", "tool_call_id": "t1", "content": ""},
            None,
            id="no-content",
        ),
        pytest.param(
            {
                "type": "tool_result",
                "tool_use_id": "t1",
                "content": [
                    {"type": "text", "text": "the screenshot:"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                ],
            },
            {"role": "tool", "tool_call_id": "t1", "content": "the screenshot:"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            id="images-follow-in-a-user-message",
        ),
    ],
)
def test_tool_result(
    result: dict[str, Any], expected_tool: dict[str, Any], expected_user: dict[str, Any] | None
) -> None:
    messages = translate(messages=[{"role": "user", "content": [result]}])["messages"]
    assert messages == [expected_tool] + ([expected_user] if expected_user else [])


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        pytest.param(None, {}, id="absent"),
        pytest.param({"type": "auto"}, {"tool_choice": "auto"}, id="auto"),
        pytest.param({"type": "any"}, {"tool_choice": "required"}, id="any"),
        pytest.param({"type": "none"}, {"tool_choice": "none"}, id="none"),
        pytest.param(
            {"type": "tool", "name": "lookup"},
            {"tool_choice": {"type": "function", "function": {"name": "lookup"}}},
            id="named",
        ),
        pytest.param(
            {"type": "auto", "disable_parallel_tool_use": True},
            {"tool_choice": "auto", "parallel_tool_calls": False},
            id="no-parallel",
        ),
    ],
)
def test_tools_and_tool_choice(tool_choice: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    extra = {"tool_choice": tool_choice} if tool_choice else {}
    out = translate(messages=HI, tools=[{**LOOKUP, "cache_control": {"type": "ephemeral"}}], **extra)
    assert out["tools"] == [LOOKUP_FUNCTION]
    assert {k: v for k, v in out.items() if k in ("tool_choice", "parallel_tool_calls")} == expected


def test_server_tools_are_dropped_and_without_tools_no_tool_choice() -> None:
    web_search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
    out = translate(messages=HI, tools=[web_search], tool_choice={"type": "auto"})
    assert "tools" not in out and "tool_choice" not in out


def test_tool_without_schema_gets_an_empty_object_schema() -> None:
    out = translate(messages=HI, tools=[{"name": "now"}])
    assert out["tools"] == [
        {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}
    ]


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("stop_sequences", ["\n\nHuman:", "END"], {"stop": ["\n\nHuman:", "END"]}),
        ("temperature", 0.2, {"temperature": 0.2}),
        ("top_p", 0.9, {"top_p": 0.9}),
        ("metadata", {"user_id": "user-42"}, {"user": "user-42"}),
        ("stream", True, {"stream": True, "stream_options": {"include_usage": True}}),
        ("stream", False, {}),
    ],
)
def test_sampling_and_metadata(field: str, value: object, expected: dict[str, Any]) -> None:
    out = translate(messages=HI, **{field: value})
    assert {k: v for k, v in out.items() if k not in ("model", "messages", "max_tokens")} == expected


@pytest.mark.parametrize("field", sorted(IGNORED_FIELDS))
def test_ignored_fields_are_dropped(field: str) -> None:
    out = translate(messages=HI, **{field: {"type": "enabled", "budget_tokens": 1024}})
    assert out == {"model": MODEL, "messages": HI, "max_tokens": 64}


def test_count_tokens_body_needs_no_max_tokens() -> None:
    out = messages_request_to_chat({"model": "claude-fast", "messages": HI}, provider_model=MODEL)
    assert out == {"model": MODEL, "messages": HI}


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        pytest.param([], "messages", id="no-messages"),
        pytest.param([{"role": "robot", "content": "hi"}], "messages[0].role", id="unknown-role"),
        pytest.param(
            [{"role": "user", "content": [{"type": "document", "source": {"type": "text", "data": "x"}}]}],
            "messages[0].content[0].type",
            id="document-block",
        ),
        pytest.param(
            [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f1"}}]}],
            "messages[0].content[0].source",
            id="file-image",
        ),
        pytest.param([{"role": "user", "content": 42}], "messages[0].content", id="content-not-a-list"),
    ],
)
def test_untranslatable_requests_name_the_field(messages: list[Any], param: str) -> None:
    with pytest.raises(TranslationError) as caught:
        translate(messages=messages)
    assert caught.value.param == param and param.split(".")[0] in str(caught.value)


def test_claude_code_capture_translates() -> None:
    body = orjson.loads(CLAUDE_CODE_BODY.read_bytes())
    out = messages_request_to_chat(body, provider_model=MODEL)

    assert out["model"] == MODEL and out["max_tokens"] == body["max_tokens"]
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}
    assert out["user"] == body["metadata"]["user_id"]
    assert [t["function"]["name"] for t in out["tools"]] == [t["name"] for t in body["tools"]]
    system, user, reminder = out["messages"]
    assert system["role"] == "system" and system["content"].startswith(body["system"][0]["text"])
    assert user["role"] == "user" and isinstance(user["content"], str)
    assert reminder == {"role": "system", "content": body["messages"][-1]["content"]}
    assert not {"thinking", "context_management", "output_config", "metadata"} & set(out)


def test_estimate_input_tokens_grows_with_the_request() -> None:
    small = estimate_input_tokens({"messages": HI})
    big = estimate_input_tokens({"messages": [{"role": "user", "content": "word " * 400}], "tools": [LOOKUP_FUNCTION]})
    assert small >= 1 and 450 < big < 600
    assert estimate_input_tokens({"model": "x" * 1000, "messages": HI}) == small  # only messages and tools count


@pytest.mark.parametrize(
    ("field", "value"),
    [("stop_sequences", "END"), ("tool_choice", {"type": "sometimes"}), ("tools", {"name": "x"})],
)
def test_malformed_fields_name_themselves(field: str, value: object) -> None:
    with pytest.raises(TranslationError) as caught:
        translate(messages=HI, **{"tools": [LOOKUP], field: value})
    assert caught.value.param == field
