"""gateway/dialects/responses/reply.py: Anthropic replies as Response objects."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.dialects.responses.items import encode_thinking
from gateway.dialects.responses.reply import ResponseContext, message_to_response, usage_to_responses
from gateway.dialects.responses.request import ResponsesTranslation
from gateway.dialects.responses.tools import ToolOrigin

THINKING = {"type": "thinking", "thinking": "Let me see.", "signature": "sig=="}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


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
