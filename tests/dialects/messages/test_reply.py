"""gateway/dialects/messages/reply.py: whole replies translated, table by table."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.dialects.messages.reply import (
    STOP_REASONS,
    chat_completion_to_message,
    usage_to_anthropic,
)

MSG_ID, MODEL = "msg_abc", "gpt-fast"
OPENAI_USAGE = {"prompt_tokens": 120, "completion_tokens": 7, "total_tokens": 127}
ANTHROPIC_USAGE = {
    "input_tokens": 120,
    "output_tokens": 7,
    "cache_read_input_tokens": 0,
    "cache_creation_input_tokens": 0,
}
CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "gateway"}'}}


def completion(message: dict[str, Any], finish_reason: str | None = "stop") -> dict[str, Any]:
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini",
        "choices": [choice],
        "usage": OPENAI_USAGE,
    }


def anthropic_message(content: list[dict[str, Any]], stop_reason: str) -> dict[str, Any]:
    return {
        "id": MSG_ID,
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": ANTHROPIC_USAGE,
    }


def translate(reply: dict[str, Any]) -> dict[str, Any]:
    return chat_completion_to_message(reply, message_id=MSG_ID, model=MODEL)


# --- whole replies ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"), [*STOP_REASONS.items(), (None, "end_turn"), ("new_one", "end_turn")]
)
def test_stop_reason(finish_reason: str | None, stop_reason: str) -> None:
    reply = translate(completion({"role": "assistant", "content": "hi"}, finish_reason))
    assert reply["stop_reason"] == stop_reason


@pytest.mark.parametrize(
    ("message", "finish_reason", "content", "stop_reason"),
    [
        pytest.param(
            {"role": "assistant", "content": "Hello"},
            "stop",
            [{"type": "text", "text": "Hello"}],
            "end_turn",
            id="text",
        ),
        pytest.param(
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            "tool_calls",
            [{"type": "tool_use", "id": "call_1", "name": "lookup", "input": {"q": "gateway"}}],
            "tool_use",
            id="tool-call",
        ),
        pytest.param(
            {"role": "assistant", "content": "Checking.", "tool_calls": [CALL, {**CALL, "id": "call_2"}]},
            "tool_calls",
            [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "call_1", "name": "lookup", "input": {"q": "gateway"}},
                {"type": "tool_use", "id": "call_2", "name": "lookup", "input": {"q": "gateway"}},
            ],
            "tool_use",
            id="text-and-two-calls",
        ),
        pytest.param(
            {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "now", "arguments": ""}}]},
            "tool_calls",
            [{"type": "tool_use", "id": f"toolu_{MSG_ID}_0", "name": "now", "input": {}}],
            "tool_use",
            id="call-without-id-or-arguments",
        ),
        pytest.param(
            {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "lookup", "arguments": "{not json"}}]},
            "tool_calls",
            [{"type": "tool_use", "id": "call_1", "name": "lookup", "input": {}}],
            "tool_use",
            id="unparseable-arguments",
        ),
        pytest.param(
            {"role": "assistant", "content": None, "refusal": "I can't help with that."},
            "content_filter",
            [{"type": "text", "text": "I can't help with that."}],
            "refusal",
            id="refusal",
        ),
        pytest.param(
            {"role": "assistant", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]},
            "stop",
            [{"type": "text", "text": "Hello"}],
            "end_turn",
            id="content-parts",
        ),
        pytest.param({"role": "assistant", "content": ""}, "length", [], "max_tokens", id="empty"),
    ],
)
def test_whole_reply(
    message: dict[str, Any], finish_reason: str, content: list[dict[str, Any]], stop_reason: str
) -> None:
    assert translate(completion(message, finish_reason)) == anthropic_message(content, stop_reason)


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        pytest.param(OPENAI_USAGE, ANTHROPIC_USAGE, id="plain"),
        pytest.param(
            {"prompt_tokens": 1000, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 900}},
            {"input_tokens": 100, "output_tokens": 3, "cache_read_input_tokens": 900, "cache_creation_input_tokens": 0},
            id="cached",
        ),
        pytest.param(
            {"prompt_tokens": 10, "completion_tokens": 3, "prompt_tokens_details": None},
            {"input_tokens": 10, "output_tokens": 3, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0},
            id="null-details",
        ),
        pytest.param(
            None,
            {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0},
            id="none",
        ),
    ],
)
def test_usage(usage: dict[str, Any] | None, expected: dict[str, int]) -> None:
    assert usage_to_anthropic(usage) == expected
