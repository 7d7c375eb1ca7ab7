"""Translate OpenAI Chat Completions replies into Anthropic Messages shapes (and read their error bodies' message).

The mirror of gateway/dialects/chat/reply.py, for an Anthropic caller (Claude Code, the anthropic SDK) served by an
OpenAI-compatible provider. Pure: no I/O. The message id and model are passed in, so tests compare whole objects.
Claude Code parses the event sequence strictly, so the stream translator always sends, in order:

    message_start
    (content_block_start, content_block_delta*, content_block_stop)*   one text or tool_use block at a time
    message_delta (stop_reason, cumulative usage)
    message_stop

OpenAI-compatible servers bend the chunk format (Ollama, vLLM and llama.cpp among them): some send each tool
call whole, several at the same `index` but each with its own `id`; some send `arguments` as a JSON object rather
than a string; some end a turn that called tools with finish_reason "stop". So a call is keyed by its id as well
as its index, object arguments are serialised, and a turn that called a tool stops with "tool_use" (the stop
reason Claude Code and the anthropic SDK look for before running tools).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

# OpenAI finish_reason -> Anthropic stop_reason; anything unknown (or none) ends the turn.
STOP_REASONS: dict[str, str] = {
    "stop": "end_turn",  # OpenAI does not say whether a stop sequence matched
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
DEFAULT_STOP_REASON = "end_turn"

Event = tuple[str, dict[str, Any]]  # (SSE event name, data), as Anthropic streams them


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def usage_to_anthropic(usage: Mapping[str, Any] | None) -> dict[str, Any]:
    """Anthropic usage for OpenAI usage: cached prompt tokens move out of input into cache reads.

    >>> usage_to_anthropic({"prompt_tokens": 100, "completion_tokens": 5,
    ...     "prompt_tokens_details": {"cached_tokens": 90}})
    {'input_tokens': 10, 'output_tokens': 5, 'cache_read_input_tokens': 90, 'cache_creation_input_tokens': 0}
    """
    usage = usage or {}
    details = usage.get("prompt_tokens_details")
    cached = (details.get("cached_tokens") if isinstance(details, Mapping) else None) or 0
    prompt = usage.get("prompt_tokens") or 0
    if _number(prompt) and _number(cached):
        prompt = max(prompt - cached, 0)
    # else: an untrusted count that is no number goes on as it is, for the usage log to clamp (never a 500 here)
    return {
        "input_tokens": prompt,
        "output_tokens": usage.get("completion_tokens") or 0,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,  # OpenAI-compatible servers do not bill cache writes separately
    }


def chat_completion_to_message(completion: Mapping[str, Any], *, message_id: str, model: str) -> dict[str, Any]:
    """The Anthropic `message` for a complete (non-streamed) chat.completion."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], Mapping) else {}
    reply = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    text = _message_text(reply)
    if text:
        content.append({"type": "text", "text": text})
    for i, call in enumerate(reply.get("tool_calls") or []):
        function = call.get("function") or {}
        tool_id = call.get("id") or tool_id_for(message_id, i)
        tool_input = _parsed_arguments(function.get("arguments"))
        content.append({"type": "tool_use", "id": tool_id, "name": function.get("name", ""), "input": tool_input})
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _stop_reason(choice.get("finish_reason"), called_tools=bool(reply.get("tool_calls"))),
        "stop_sequence": None,
        "usage": usage_to_anthropic(completion.get("usage")),
    }


def _stop_reason(finish_reason: object, *, called_tools: bool) -> str:
    """The Anthropic stop_reason: "tool_use" whenever a tool was called and the turn did not run out of tokens."""
    stop = STOP_REASONS.get(finish_reason if isinstance(finish_reason, str) else "", DEFAULT_STOP_REASON)
    return "tool_use" if called_tools and stop == DEFAULT_STOP_REASON else stop


def _message_text(reply: Mapping[str, Any]) -> str:
    content = reply.get("content")
    if isinstance(content, list):  # a few servers answer with content parts
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    if isinstance(content, str) and content:
        return content
    refusal = reply.get("refusal")
    return refusal if isinstance(refusal, str) else ""


def _parsed_arguments(raw: object) -> dict[str, Any]:
    """Tool input for OpenAI's JSON-encoded arguments; anything but a JSON object becomes {} (the tool says why)."""
    if isinstance(raw, Mapping):
        return dict(raw)
    try:
        parsed = orjson.loads(raw) if isinstance(raw, str) and raw.strip() else {}
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def tool_id_for(message_id: str, ordinal: int) -> str:
    """An id for a tool call a server sent without one (older Ollama); stable for the same message."""
    return f"toolu_{message_id}_{ordinal}"


def error_message(parsed: object) -> str | None:
    if not isinstance(parsed, Mapping):
        return None
    error = parsed.get("error")
    if isinstance(error, Mapping) and isinstance(error.get("message"), str):
        return str(error["message"])
    for candidate in (error, parsed.get("detail"), parsed.get("message")):
        if isinstance(candidate, str) and candidate:
            return candidate
    return None
