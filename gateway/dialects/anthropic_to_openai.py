"""Translate Anthropic Messages replies, stream events and errors into OpenAI Chat Completions shapes.

Pure: no I/O. The completion id and the `created` timestamp are passed in, so tests compare whole objects.
Thinking reaches the caller twice: as `reasoning_content` text, and whole and signed in `thinking_blocks`
(LiteLLM's field, see gateway/dialects/thinking.py), which the caller sends back on the assistant message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import orjson

from .structured_output import StreamUnwrapper, unwrap_message
from .thinking import thinking_blocks_out

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
# Streamed text-like deltas: Anthropic delta type -> (its text field, the OpenAI delta field).
TEXT_DELTAS: dict[str, tuple[str, str]] = {
    "text_delta": ("text", "content"),
    "thinking_delta": ("thinking", "reasoning_content"),
}
# Content blocks that may open with text already in them: block type -> (text field, OpenAI delta field).
TEXT_BLOCKS: dict[str, tuple[str, str]] = {"text": ("text", "content"), "thinking": ("thinking", "reasoning_content")}
_USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


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


def error_to_openai(status: int, body: bytes) -> tuple[int, dict[str, Any]]:
    """The status and OpenAI error object to send a client for an upstream Anthropic error response.

    A body that is not an Anthropic error (an HTML page from a proxy, say) gets a generic message naming the status.
    """
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    client_status = CLIENT_STATUSES.get(status, status)
    if isinstance(error, Mapping) and isinstance(error.get("message"), str):
        anthropic_type = str(error.get("type") or STATUS_ERROR_TYPES.get(status, "api_error"))
        return client_status, _openai_error(anthropic_type, error["message"], code=anthropic_type)
    anthropic_type = STATUS_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    message = f"upstream returned HTTP {status} with an unreadable error body"
    return client_status, _openai_error(anthropic_type, message, code=None)


def _openai_error(anthropic_type: str, message: str, *, code: str | None) -> dict[str, Any]:
    openai_type = ANTHROPIC_ERROR_TYPES_TO_OPENAI.get(anthropic_type, "server_error")
    return {"error": {"message": message, "type": openai_type, "param": None, "code": code}}


Chunk = dict[str, Any]


class ChatStreamTranslator:
    """Turns Anthropic stream events into OpenAI chat.completion.chunk dicts, one call per event.

    >>> t = ChatStreamTranslator(model="m", completion_id="c", created=0, include_usage=False)
    >>> t.feed("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Hi"}})[0]["choices"]
    [{'index': 0, 'delta': {'content': 'Hi'}, 'logprobs': None, 'finish_reason': None}]
    """

    def __init__(self, *, model: str, completion_id: str, created: int, include_usage: bool) -> None:
        self._model, self._completion_id, self._created = model, completion_id, created
        self._include_usage = include_usage
        self._tool_ordinals: dict[int, int] = {}  # Anthropic content block index -> OpenAI tool_calls index
        self._usage = dict.fromkeys(_USAGE_FIELDS, 0)
        self._finished = False
        self._thinking: dict[int, dict[str, Any]] = {}  # open thinking blocks by index, grown by their deltas
        self._thinking_sent = 0  # thinking_blocks entries sent so far: the next one's "index"
        self._unwrap = StreamUnwrapper()  # the structured-output fallback's tool call streams as text

    @property
    def finished(self) -> bool:
        """True once message_stop or an error event has been fed: nothing more will follow."""
        return self._finished

    @property
    def usage(self) -> dict[str, int]:
        """Anthropic-shaped token counts seen so far (input, output, cache read, cache creation)."""
        return dict(self._usage)

    def feed(self, event: str, data: Mapping[str, Any]) -> list[Chunk]:
        """The chunks (possibly none) to send for one Anthropic event; unknown events give none."""
        handler = self._handlers.get(event)
        return handler(self, self._unwrap.feed(event, data)) if handler else []

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> Chunk:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        chunk: Chunk = {
            "id": self._completion_id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [choice],
        }
        if self._include_usage:  # OpenAI sends "usage": null on every chunk but the last when usage is asked for
            chunk["usage"] = None
        return chunk

    def _record_usage(self, usage: Mapping[str, Any]) -> None:
        for field in _USAGE_FIELDS:  # counts are cumulative, so the latest non-null value is the total
            if usage.get(field) is not None:
                self._usage[field] = usage[field]

    def _on_message_start(self, data: Mapping[str, Any]) -> list[Chunk]:
        self._record_usage(data.get("message", {}).get("usage") or {})
        return [self._chunk({"role": "assistant", "content": ""})]

    def _on_content_block_start(self, data: Mapping[str, Any]) -> list[Chunk]:
        block = data.get("content_block") or {}
        if block.get("type") == "tool_use":
            ordinal = self._tool_ordinals[data["index"]] = len(self._tool_ordinals)
            call = {"index": ordinal, "id": block["id"], "type": "function"}
            call["function"] = {"name": block["name"], "arguments": ""}
            return [self._chunk({"tool_calls": [call]})]
        if block.get("type") == "redacted_thinking":  # arrives whole: handed on whole, to be sent back
            return [self._thinking_chunk(block)]
        if block.get("type") == "thinking":
            self._thinking[int(data.get("index", -1))] = {**block}
        source, target = TEXT_BLOCKS.get(str(block.get("type")), ("", ""))
        return [self._chunk({target: block[source]})] if block.get(source) else []

    def _on_content_block_delta(self, data: Mapping[str, Any]) -> list[Chunk]:
        delta = data.get("delta") or {}
        if delta.get("type") == "input_json_delta":
            ordinal = self._tool_ordinals.get(data.get("index", -1))
            if ordinal is None or not delta.get("partial_json"):
                return []
            call = {"index": ordinal, "function": {"arguments": delta["partial_json"]}}
            return [self._chunk({"tool_calls": [call]})]
        if (thinking := self._thinking.get(int(data.get("index", -1)))) is not None:
            for field in ("thinking", "signature"):  # thinking_delta and signature_delta
                if isinstance(delta.get(field), str):
                    thinking[field] = thinking.get(field, "") + delta[field]
        source, target = TEXT_DELTAS.get(str(delta.get("type")), ("", ""))  # signature and citation deltas: nothing
        return [self._chunk({target: delta[source]})] if delta.get(source) else []

    def _on_content_block_stop(self, data: Mapping[str, Any]) -> list[Chunk]:
        # A thinking block goes out whole and signed once complete, as one thinking_blocks entry per chunk.
        thinking = self._thinking.pop(int(data.get("index", -1)), None)
        return [self._thinking_chunk(thinking)] if thinking else []

    def _thinking_chunk(self, block: Mapping[str, Any]) -> Chunk:
        # Each entry carries its place, as tool_calls entries do: the openai SDK's stream helpers merge list deltas
        # by "index" (and refuse entries without one).
        [entry] = thinking_blocks_out([block])
        entry = {"index": self._thinking_sent, **entry}
        self._thinking_sent += 1
        return self._chunk({"thinking_blocks": [entry]})

    def _on_message_delta(self, data: Mapping[str, Any]) -> list[Chunk]:
        self._record_usage(data.get("usage") or {})
        stop_reason = (data.get("delta") or {}).get("stop_reason")
        return [self._chunk({}, FINISH_REASONS.get(stop_reason or "", "stop"))]

    def _on_message_stop(self, data: Mapping[str, Any]) -> list[Chunk]:
        self._finished = True
        if not self._include_usage:
            return []
        usage = usage_to_openai(self._usage)
        base = {"id": self._completion_id, "object": "chat.completion.chunk", "created": self._created}
        return [{**base, "model": self._model, "choices": [], "usage": usage}]

    def _on_error(self, data: Mapping[str, Any]) -> list[Chunk]:
        self._finished = True
        error = data.get("error") or {}
        anthropic_type = str(error.get("type") or "api_error")
        message = str(error.get("message") or f"upstream stream error: {anthropic_type}")
        return [_openai_error(anthropic_type, message, code=anthropic_type)]

    _handlers: ClassVar[dict[str, Callable[[ChatStreamTranslator, Mapping[str, Any]], list[Chunk]]]] = {
        "message_start": _on_message_start,
        "content_block_start": _on_content_block_start,
        "content_block_delta": _on_content_block_delta,
        "content_block_stop": _on_content_block_stop,
        "message_delta": _on_message_delta,
        "message_stop": _on_message_stop,
        "error": _on_error,
    }  # ping carries nothing an OpenAI client needs
