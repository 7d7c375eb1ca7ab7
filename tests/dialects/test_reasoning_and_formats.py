"""Table tests of the OpenAI -> Anthropic request rules of issue 17: signed thinking carried back, effort budgets,
structured outputs, caller cache marks, whitespace. Each table row is (caller body, what Anthropic must get)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest
from openai.types.shared import ReasoningEffort

from gateway.config import load_config
from gateway.dialects.chat.request import (
    chat_request_to_anthropic,
)
from gateway.dialects.responses.request import responses_request_to_anthropic
from gateway.dialects.structured_output import STRUCTURED_OUTPUT_TOOL, closed_schema
from gateway.dialects.thinking import THINKING_HEADER, effort_budget, thinking_headers
from gateway.dialects.translation import TranslationError, TranslationOptions
from tests.fakes import messages_rules

BUDGETS = {"low": 2048, "medium": 8192, "high": 16384}
OPTS = TranslationOptions(provider_model="claude-x", default_max_tokens=4096, thinking_budgets=BUDGETS)
NO_NATIVE = TranslationOptions(
    provider_model="claude-x", default_max_tokens=4096, thinking_budgets=BUDGETS, structured_outputs=False
)
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
SIGNED = {"type": "thinking", "thinking": "I should look it up.", "signature": "EqQBsig"}
REDACTED = {"type": "redacted_thinking", "data": "EmwKredacted"}
CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
USE = {"type": "tool_use", "id": "call_1", "name": "lookup", "input": {}}
RESULT = {"type": "tool_result", "tool_use_id": "call_1", "content": "42"}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "object", "properties": {}}},
    },
    "required": ["name", "tags"],
}
CLOSED_PERSON = {
    **PERSON,
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "object", "properties": {}, "additionalProperties": False}},
    },
}


def chat(**fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "hi"}], **fields}


def tool_loop(assistant: dict[str, Any]) -> list[dict[str, Any]]:
    """user -> assistant (tool call) -> tool result: the history of a tool loop's second turn."""
    return [
        {"role": "user", "content": "look it up"},
        {"role": "assistant", "content": None, "tool_calls": [CALL], **assistant},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ]


# --- thinking across turns ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("assistant", "effort", "expected_assistant", "thinking"),
    [
        pytest.param({"thinking_blocks": [SIGNED]}, "low", [SIGNED, USE], True, id="thinking_blocks-replayed"),
        pytest.param(
            {"thinking_blocks": [SIGNED, REDACTED], "reasoning_content": "I should look it up."},
            "low",
            [SIGNED, REDACTED, USE],
            True,
            id="thinking-and-redacted-in-order",
        ),
        pytest.param(
            {"reasoning_details": [{"type": "reasoning.text", "text": SIGNED["thinking"], "signature": "EqQBsig"}]},
            "low",
            [SIGNED, USE],
            True,
            id="openrouter-reasoning_details",
        ),
        pytest.param({}, "low", [USE], False, id="nothing-to-replay-thinking-off"),
        pytest.param(
            {"thinking_blocks": [{"type": "thinking", "thinking": "unsigned"}]},
            "low",
            [USE],
            False,
            id="unsigned-block-dropped-thinking-off",
        ),
        pytest.param({"thinking_blocks": [SIGNED]}, None, [USE], False, id="no-effort-blocks-dropped"),
        pytest.param({"thinking_blocks": [SIGNED]}, "none", [USE], False, id="effort-none-blocks-dropped"),
    ],
)
def test_thinking_replay(
    assistant: dict[str, Any], effort: str | None, expected_assistant: list[dict[str, Any]], thinking: bool
) -> None:
    body = {"messages": tool_loop(assistant), "tools": [TOOL], "reasoning_effort": effort}
    out = chat_request_to_anthropic(body, OPTS)
    assert out["messages"][1] == {"role": "assistant", "content": expected_assistant}
    assert ("thinking" in out) is thinking
    assert thinking_headers(body, out) == ({} if thinking or effort in (None, "none") else {THINKING_HEADER: ANY})
    assert messages_rules.problem({"model": "m", "max_tokens": 9999, **out}, lambda _: True) is None


class _Any:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other)


ANY = _Any()


def test_no_budgets_is_still_a_400_when_there_is_nothing_to_replay() -> None:
    body = {"messages": tool_loop({}), "tools": [TOOL], "reasoning_effort": "low"}
    no_budgets = TranslationOptions(provider_model="claude-x", default_max_tokens=4096, thinking_budgets={})
    with pytest.raises(TranslationError) as caught:
        chat_request_to_anthropic(body, no_budgets)
    assert caught.value.param == "reasoning_effort"


def test_responses_reasoning_items_and_encrypted_content_whenever_reasoning_is_on() -> None:
    body = {"input": "hi", "reasoning": {"effort": "low"}}
    assert responses_request_to_anthropic(body, OPTS).include_reasoning is True
    assert responses_request_to_anthropic({"input": "hi"}, OPTS).include_reasoning is False


def test_responses_function_call_without_reasoning_item_is_sent_without_thinking() -> None:
    items = [
        {"role": "user", "content": "look it up"},
        {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "42"},
    ]
    body = {"input": items, "reasoning": {"effort": "high"}, "tools": [{"type": "function", "name": "lookup"}]}
    out = responses_request_to_anthropic(body, OPTS).request
    assert "thinking" not in out
    assert thinking_headers(body, out) == {THINKING_HEADER: ANY}


# --- effort -> budget ---------------------------------------------------------------------------------------

OPENAI_EFFORTS = [e for e in get_args(get_args(ReasoningEffort)[0]) if e != "none"]  # the installed SDK's literal


@pytest.mark.parametrize(
    ("effort", "budget"),
    [
        ("minimal", 2048),  # nearest: low
        ("low", 2048),
        ("medium", 8192),
        ("high", 16384),
        ("xhigh", 16384),  # nearest: high
        ("max", 16384),
        ("ultra", None),  # not an OpenAI effort at all
    ],
)
def test_effort_budget_is_the_nearest_configured(effort: str, budget: int | None) -> None:
    assert effort_budget(effort, BUDGETS) == budget


def test_nearest_tie_takes_the_smaller_budget() -> None:
    assert effort_budget("medium", {"low": 1024, "high": 8192}) == 1024


@pytest.mark.parametrize("alias", ["claude-fast", "claude-quality", "claude-premium"])
@pytest.mark.parametrize("effort", OPENAI_EFFORTS)
def test_every_sdk_effort_maps_to_a_budget_in_the_stock_config(alias: str, effort: str) -> None:
    cfg = load_config(Path(__file__).parents[2] / "gateway.yaml", environ={})
    model = cfg.models[alias]
    opts = TranslationOptions(model.model, model.default_max_tokens, model.thinking_budgets)
    out = chat_request_to_anthropic(chat(reasoning_effort=effort), opts)
    assert out["thinking"]["budget_tokens"] >= messages_rules.MIN_THINKING_BUDGET
    assert out["max_tokens"] > out["thinking"]["budget_tokens"]


def test_effort_none_means_no_thinking() -> None:
    assert "thinking" not in chat_request_to_anthropic(chat(reasoning_effort="none"), OPTS)


# --- structured outputs --------------------------------------------------------------------------------------


def schema_format(schema: dict[str, Any], strict: bool | None = True) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": strict}}


FORCED = {"type": "tool", "name": STRUCTURED_OUTPUT_TOOL}


@pytest.mark.parametrize(
    ("fields", "opts", "expected"),
    [
        pytest.param(
            {"response_format": schema_format(PERSON)},
            OPTS,
            {"output_config": {"format": {"type": "json_schema", "schema": CLOSED_PERSON}}},
            id="json_schema-native-closed",
        ),
        pytest.param(
            {"response_format": schema_format(CLOSED_PERSON, strict=None)},
            OPTS,
            {"output_config": {"format": {"type": "json_schema", "schema": CLOSED_PERSON}}},
            id="json_schema-non-strict",
        ),
        pytest.param(
            {"response_format": schema_format(PERSON)},
            NO_NATIVE,
            {
                "tools": [
                    {
                        "name": STRUCTURED_OUTPUT_TOOL,
                        "description": "Return the answer, as the person object.",
                        "input_schema": PERSON,
                    }
                ],
                "tool_choice": FORCED,
            },
            id="json_schema-forced-tool",
        ),
        pytest.param(
            {"response_format": schema_format({"type": "object", "additionalProperties": True})},
            OPTS,
            {
                "tools": [
                    {
                        "name": STRUCTURED_OUTPUT_TOOL,
                        "description": "Return the answer, as the person object.",
                        "input_schema": {"type": "object", "additionalProperties": True},
                    }
                ],
                "tool_choice": FORCED,
            },
            id="open-object-forced-tool",
        ),
        pytest.param(
            {"response_format": {"type": "json_object"}},
            OPTS,
            {
                "tools": [
                    {
                        "name": STRUCTURED_OUTPUT_TOOL,
                        "description": "Return a JSON object.",
                        "input_schema": {"type": "object"},
                    }
                ],
                "tool_choice": FORCED,
            },
            id="json_object-forced-tool",
        ),
        pytest.param({"response_format": {"type": "text"}}, OPTS, {}, id="text"),
    ],
)
def test_response_format(fields: dict[str, Any], opts: TranslationOptions, expected: dict[str, Any]) -> None:
    out = chat_request_to_anthropic(chat(**fields), opts)
    assert {k: out[k] for k in ("output_config", "tools", "tool_choice") if k in out} == expected
    assert messages_rules.problem({"model": "m", **out}, lambda _: True) is None


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "expected"),
    [
        pytest.param(None, None, {"type": "any"}, id="unset-any"),
        pytest.param("auto", False, {"type": "any", "disable_parallel_tool_use": True}, id="auto-any-no-parallel"),
        pytest.param("required", None, {"type": "any"}, id="required-any"),
        pytest.param("none", None, FORCED, id="none-forces-ours"),
        pytest.param(
            {"type": "function", "function": {"name": "lookup"}},
            None,
            {"type": "tool", "name": "lookup"},
            id="named-stays",
        ),
    ],
)
def test_forced_tool_beside_caller_tools(tool_choice: Any, parallel: bool | None, expected: dict[str, Any]) -> None:
    fields = {"response_format": {"type": "json_object"}, "tools": [TOOL], "tool_choice": tool_choice}
    out = chat_request_to_anthropic(chat(**fields, parallel_tool_calls=parallel), OPTS)
    assert [t["name"] for t in out["tools"]] == ["lookup", STRUCTURED_OUTPUT_TOOL]
    assert out["tool_choice"] == expected


def test_forced_tool_with_thinking_is_asked_for_not_forced() -> None:
    out = chat_request_to_anthropic(chat(response_format={"type": "json_object"}, reasoning_effort="low"), OPTS)
    assert out["tool_choice"] == {"type": "auto"}
    assert STRUCTURED_OUTPUT_TOOL in out["system"][-1]["text"]
    assert messages_rules.problem({"model": "m", **out}, lambda _: True) is None


def test_reserved_tool_name_is_refused() -> None:
    tool = {"type": "function", "function": {"name": STRUCTURED_OUTPUT_TOOL}}
    with pytest.raises(TranslationError) as caught:
        chat_request_to_anthropic(chat(response_format={"type": "json_object"}, tools=[tool]), OPTS)
    assert caught.value.param == "tools"


@pytest.mark.parametrize(
    ("text_format", "expected"),
    [
        pytest.param(
            {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True},
            {"format": {"type": "json_schema", "schema": CLOSED_PERSON}},
            id="json_schema",
        ),
        pytest.param({"type": "text"}, None, id="text"),
    ],
)
def test_responses_text_format(text_format: dict[str, Any], expected: dict[str, Any] | None) -> None:
    out = responses_request_to_anthropic({"input": "hi", "text": {"format": text_format}}, OPTS).request
    assert out.get("output_config") == expected


def test_closed_schema_follows_refs_and_anyof() -> None:
    schema = {"$defs": {"A": {"type": "object", "properties": {}}}, "anyOf": [{"$ref": "#/$defs/A"}, {"type": "null"}]}
    closed = closed_schema(schema)
    assert closed is not None and closed["$defs"]["A"]["additionalProperties"] is False


# --- caller cache_control and whitespace ---------------------------------------------------------------------


def test_caller_cache_control_with_ttl_is_kept_on_its_block() -> None:
    mark = {"type": "ephemeral", "ttl": "1h"}
    system = {"role": "system", "content": [{"type": "text", "text": "Long rules.", "cache_control": mark}]}
    user = {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}
    out = chat_request_to_anthropic({"messages": [system, user]}, OPTS)
    assert out["system"] == [{"type": "text", "text": "Long rules.", "cache_control": mark}]
    assert out["messages"][0]["content"] == [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]


@pytest.mark.parametrize(
    ("stop", "expected"),
    [
        pytest.param("\n", TranslationError, id="newline-alone-refused"),
        pytest.param(["\n", "", " "], TranslationError, id="all-whitespace-refused"),
        pytest.param(["\n", "END", " "], ["END"], id="whitespace-dropped"),
        pytest.param(" END ", [" END "], id="padded-kept-whole"),
        pytest.param([], None, id="empty-list"),
    ],
)
def test_stop_sequences(stop: Any, expected: Any) -> None:
    if expected is TranslationError:
        with pytest.raises(TranslationError) as caught:
            chat_request_to_anthropic(chat(stop=stop), OPTS)
        assert caught.value.param == "stop"
        return
    assert chat_request_to_anthropic(chat(stop=stop), OPTS).get("stop_sequences") == expected


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        pytest.param(
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "\n\n"},
                {"role": "user", "content": "go"},
            ],
            [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "go"}]}],
            id="whitespace-assistant-turn-dropped",
        ),
        pytest.param(
            [*tool_loop({"content": " "})],
            [
                {"role": "user", "content": [{"type": "text", "text": "look it up"}]},
                {"role": "assistant", "content": [USE]},
                {"role": "user", "content": [RESULT]},
            ],
            id="space-beside-tool-calls-dropped",
        ),
        pytest.param(
            [
                {"role": "system", "content": "  "},
                {"role": "user", "content": [{"type": "text", "text": "\t"}, {"type": "text", "text": "x"}]},
            ],
            [{"role": "user", "content": [{"type": "text", "text": "x"}]}],
            id="whitespace-parts-dropped",
        ),
    ],
)
def test_whitespace_text_is_dropped(messages: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    out = chat_request_to_anthropic({"messages": messages}, OPTS)
    assert out["messages"] == expected
    assert "system" not in out
    assert messages_rules.problem({"model": "m", "max_tokens": 1, **out}, lambda _: True) is None


def test_nothing_but_whitespace_is_a_400_naming_messages() -> None:
    with pytest.raises(TranslationError) as caught:
        chat_request_to_anthropic({"messages": [{"role": "user", "content": " \n"}]}, OPTS)
    assert caught.value.param == "messages"
