"""gateway/dialects/chat/reply.py: whole replies translated, table by table."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.dialects.chat.reply import (
    FINISH_REASONS,
    message_to_chat_completion,
    usage_to_openai,
)

MODEL, ID, CREATED = "claude-fast", "chatcmpl-abc", 1_700_000_000
USAGE = {"input_tokens": 12, "output_tokens": 7}
OPENAI_USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 7,
    "total_tokens": 19,
    "prompt_tokens_details": {"cached_tokens": 0},
}


def anthropic_message(content: list[dict[str, Any]], stop_reason: str | None = "end_turn") -> dict[str, Any]:
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": USAGE,
    }


def completion(message: dict[str, Any], finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": ID,
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": OPENAI_USAGE,
    }


def translate(message: dict[str, Any]) -> dict[str, Any]:
    return message_to_chat_completion(message, model=MODEL, completion_id=ID, created=CREATED)


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"), [*FINISH_REASONS.items(), (None, "stop"), ("new_one", "stop")]
)
def test_finish_reason(stop_reason: str | None, finish_reason: str) -> None:
    reply = translate(anthropic_message([{"type": "text", "text": "hi"}], stop_reason))
    assert reply["choices"][0]["finish_reason"] == finish_reason


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        pytest.param(USAGE, OPENAI_USAGE, id="plain"),
        pytest.param(
            {"input_tokens": 5, "output_tokens": 3, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20},
            {
                "prompt_tokens": 125,
                "completion_tokens": 3,
                "total_tokens": 128,
                "prompt_tokens_details": {"cached_tokens": 100},
            },
            id="with-cache",
        ),
        pytest.param(
            {
                "input_tokens": 5,
                "output_tokens": 3,
                "cache_read_input_tokens": None,
                "cache_creation_input_tokens": None,
            },
            {
                "prompt_tokens": 5,
                "completion_tokens": 3,
                "total_tokens": 8,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
            id="null-cache-fields",
        ),
        pytest.param(
            {},
            {
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "total_tokens": 0,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
            id="empty",
        ),
    ],
)
def test_usage(usage: dict[str, Any], expected: dict[str, Any]) -> None:
    assert usage_to_openai(usage) == expected


@pytest.mark.parametrize(
    ("content", "stop_reason", "expected_message", "finish_reason"),
    [
        pytest.param(
            [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}],
            "end_turn",
            {"role": "assistant", "content": "Hello there"},
            "stop",
            id="text",
        ),
        pytest.param(
            [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris", "days": 2}},
            ],
            "tool_use",
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris","days":2}'},
                    }
                ],
            },
            "tool_calls",
            id="text-and-tool-use",
        ),
        pytest.param(
            [
                {"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Oslo"}},
            ],
            "tool_use",
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "now", "arguments": "{}"}},
                    {
                        "id": "toolu_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                    },
                ],
            },
            "tool_calls",
            id="only-tool-calls",
        ),
        pytest.param(
            [
                {"type": "thinking", "thinking": "The user greets. ", "signature": "sig"},
                {"type": "redacted_thinking", "data": "xyz"},
                {"type": "thinking", "thinking": "Reply politely.", "signature": "sig"},
                {"type": "text", "text": "Hi!"},
            ],
            "end_turn",
            {
                "role": "assistant",
                "content": "Hi!",
                "reasoning_content": "The user greets. Reply politely.",
                "thinking_blocks": [  # whole and signed, in order, for the caller to send back
                    {"type": "thinking", "thinking": "The user greets. ", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "xyz"},
                    {"type": "thinking", "thinking": "Reply politely.", "signature": "sig"},
                ],
            },
            "stop",
            id="thinking",
        ),
        pytest.param([], "max_tokens", {"role": "assistant", "content": ""}, "length", id="empty"),
    ],
)
def test_message_to_chat_completion(
    content: list[dict[str, Any]], stop_reason: str, expected_message: dict[str, Any], finish_reason: str
) -> None:
    assert translate(anthropic_message(content, stop_reason)) == completion(expected_message, finish_reason)
