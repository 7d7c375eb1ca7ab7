"""Translate Anthropic Messages replies into OpenAI Chat Completions shapes; the error-type tables between the two.

Pure: no I/O. The completion id and the `created` timestamp are passed in, so tests compare whole objects.
The error tables also serve gateway/errors.py, which renders every error (an upstream's included).
Thinking reaches the caller twice: as `reasoning_content` text, and whole and signed in `thinking_blocks`
(LiteLLM's field, see gateway/dialects/thinking.py), which the caller sends back on the assistant message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ..structured_output import unwrap_message
from ..thinking import thinking_blocks_out

# Anthropic stop_reason -> OpenAI finish_reason; anything unknown finishes as "stop".
FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
}
# Anthropic error.type -> OpenAI error.type; unknown types become "server_error".
ANTHROPIC_ERROR_TYPES_TO_OPENAI: dict[str, str] = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "billing_error": "insufficient_quota",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "request_too_large": "invalid_request_error",
    "rate_limit_error": "rate_limit_exceeded",
    "timeout_error": "server_error",
    "api_error": "server_error",
    "overloaded_error": "server_error",
}
# Anthropic's documented HTTP status -> error.type, for error bodies that cannot be read.
STATUS_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
# 529 is Anthropic's own "overloaded"; OpenAI clients, proxies and retry policies know 503.
CLIENT_STATUSES: dict[int, int] = {529: 503}


def usage_to_openai(usage: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI `usage` for Anthropic usage: cache reads and writes count as prompt tokens, as OpenAI counts them.

    >>> usage_to_openai({"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 90})
    {'prompt_tokens': 100, 'completion_tokens': 5, 'total_tokens': 105, 'prompt_tokens_details': {'cached_tokens': 90}}
    """
    cache_read = usage.get("cache_read_input_tokens") or 0
    prompt = (usage.get("input_tokens") or 0) + cache_read + (usage.get("cache_creation_input_tokens") or 0)
    completion = usage.get("output_tokens") or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cache_read},
    }


def message_to_chat_completion(
    message: Mapping[str, Any], *, model: str, completion_id: str, created: int
) -> dict[str, Any]:
    """The OpenAI `chat.completion` object for a complete (non-streamed) Anthropic message."""
    message = unwrap_message(message)  # the structured-output fallback's tool call is the answer's text
    texts: list[str] = []
    thoughts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in message.get("content") or []:
        if block.get("type") == "text":
            texts.append(block["text"])
        elif block.get("type") == "thinking":
            thoughts.append(block["thinking"])
        elif block.get("type") == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            function = {"name": block["name"], "arguments": arguments}
            tool_calls.append({"id": block["id"], "type": "function", "function": function})
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not tool_calls else None}
    if tool_calls:
        reply["tool_calls"] = tool_calls
    if thoughts:
        reply["reasoning_content"] = "".join(thoughts)
    if signed := thinking_blocks_out(message.get("content") or []):
        reply["thinking_blocks"] = signed
    finish_reason = FINISH_REASONS.get(message.get("stop_reason") or "", "stop")
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": reply, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage_to_openai(message.get("usage") or {}),
    }
