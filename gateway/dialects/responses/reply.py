"""Anthropic Messages replies and errors as OpenAI Responses objects: a whole Response, its items, response.failed.

Pure: no I/O, no clock. The response id and `created_at` come in through `ResponseContext`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from .. import sse
from ..chat.reply import ANTHROPIC_ERROR_TYPES_TO_OPENAI
from ..structured_output import unwrap_message
from .items import encode_thinking
from .request import ResponsesTranslation
from .tools import ToolOrigin

# Anthropic stop_reason -> (Response status, incomplete_details.reason); anything else is "completed".
STOP_STATUSES: dict[str, tuple[str, str | None]] = {
    "max_tokens": ("incomplete", "max_output_tokens"),
    "model_context_window_exceeded": ("incomplete", "max_output_tokens"),
    "refusal": ("incomplete", "content_filter"),
}
# Anthropic error.type -> Response error.code (response.failed); others are "server_error".
FAILED_CODES: dict[str, str] = {"rate_limit_error": "rate_limit_exceeded", "invalid_request_error": "invalid_prompt"}


@dataclass(frozen=True, slots=True)
class ResponseContext:
    """What a Response object needs besides the Anthropic reply: its id and time, the alias, the request's shape."""

    response_id: str
    created_at: int
    model: str
    translation: ResponsesTranslation


def usage_to_responses(usage: Mapping[str, Any]) -> dict[str, Any]:
    """Responses `usage` for Anthropic usage: cache reads and writes count as input tokens, as OpenAI counts them.

    >>> usage_to_responses({"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 90})["input_tokens"]
    100
    """
    cache_read = usage.get("cache_read_input_tokens") or 0
    cache_write = usage.get("cache_creation_input_tokens") or 0
    prompt = (usage.get("input_tokens") or 0) + cache_read + cache_write
    completion = usage.get("output_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cache_read, "cache_write_tokens": cache_write},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},  # Anthropic does not count thinking apart
        "total_tokens": prompt + completion,
    }


def response_object(
    ctx: ResponseContext, output: list[dict[str, Any]], *, status: str, usage: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A Response object: `status` in_progress (no usage yet), completed, incomplete or failed."""
    response: dict[str, Any] = {
        "id": ctx.response_id,
        "object": "response",
        "created_at": ctx.created_at,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "model": ctx.model,
        "output": output,
        "previous_response_id": None,
        "store": False,
        **ctx.translation.echo,
        "usage": usage_to_responses(usage) if usage is not None else None,
    }
    return response


def finished_response(
    ctx: ResponseContext, output: list[dict[str, Any]], stop_reason: str | None, usage: Mapping[str, Any]
) -> dict[str, Any]:
    status, reason = STOP_STATUSES.get(stop_reason or "", ("completed", None))
    response = response_object(ctx, output, status=status, usage=usage)
    if reason is not None:
        response["incomplete_details"] = {"reason": reason}
    return response


def message_to_response(message: Mapping[str, Any], ctx: ResponseContext) -> dict[str, Any]:
    """The Response object for a complete (non-streamed) Anthropic message."""
    output = []
    message = unwrap_message(message)  # the structured-output fallback's tool call is the answer's text
    for index, block in enumerate(message.get("content") or []):
        if (item := output_item(block, index, ctx)) is not None:
            output.append(item)
    return finished_response(ctx, output, message.get("stop_reason"), message.get("usage") or {})


def output_item(block: Mapping[str, Any], index: int, ctx: ResponseContext) -> dict[str, Any] | None:
    """The finished output item for one Anthropic content block; None for blocks a Responses caller has no use for."""
    kind = block.get("type")
    item_id = _item_id(block, index, ctx)
    if kind == "text":
        part = {"type": "output_text", "text": block.get("text", ""), "annotations": []}
        return {"type": "message", "id": item_id, "status": "completed", "role": "assistant", "content": [part]}
    if kind in ("thinking", "redacted_thinking"):
        item: dict[str, Any] = {"type": "reasoning", "id": item_id, "summary": []}
        if block.get("thinking"):
            item["summary"] = [{"type": "summary_text", "text": block["thinking"]}]
        if ctx.translation.include_reasoning:
            item["encrypted_content"] = encode_thinking(block)
        return item
    if kind == "tool_use":
        return _tool_item(block, item_id, ctx, status="completed")
    return None


def _item_id(block: Mapping[str, Any], index: int, ctx: ResponseContext) -> str:
    suffix = ctx.response_id.removeprefix("resp_")
    if block.get("type") == "tool_use":
        return f"fc_{block.get('id')}"
    return f"{'msg' if block.get('type') == 'text' else 'rs'}_{suffix}_{index}"


def _tool_item(block: Mapping[str, Any], item_id: str, ctx: ResponseContext, *, status: str) -> dict[str, Any]:
    """A function_call item, or a custom_tool_call for a custom tool; `input` may be the raw JSON text so far."""
    name = str(block.get("name"))
    origin = ctx.translation.tools.get(name, ToolOrigin(name=name))
    raw = block.get("input")
    if origin.custom:
        item = {"type": "custom_tool_call", "id": item_id, "call_id": block.get("id"), "name": origin.name}
        return {**item, "input": custom_input(raw), "status": status}
    arguments = raw if isinstance(raw, str) else orjson.dumps(raw or {}).decode()
    item = {"type": "function_call", "id": item_id, "call_id": block.get("id"), "name": origin.name}
    if origin.namespace:
        item["namespace"] = origin.namespace
    return {**item, "arguments": arguments, "status": status}


def custom_input(raw: object) -> str:
    """The text a custom tool gets: the `input` field the model filled (raw JSON text or an object)."""
    if isinstance(raw, str):
        try:
            parsed = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError:
            return raw
    else:
        parsed = raw
    value = parsed.get("input") if isinstance(parsed, Mapping) else None
    return value if isinstance(value, str) else ""


def failed_error(anthropic_type: str, message: str) -> dict[str, Any]:
    """The `error` of a failed Response for an Anthropic error type."""
    code = FAILED_CODES.get(anthropic_type, "server_error")
    return {"code": code, "message": message, "type": ANTHROPIC_ERROR_TYPES_TO_OPENAI.get(anthropic_type)}


def event_frame(event: Mapping[str, Any]) -> bytes:
    """One Responses SSE frame: b"event: response.output_text.delta\\ndata: {...}\\n\\n"."""
    return sse.frame(orjson.dumps(event), str(event["type"]))
