"""Translate OpenAI Chat Completions replies, stream chunks and errors into Anthropic Messages shapes.

The mirror of anthropic_to_openai.py, for an Anthropic caller (Claude Code, the anthropic SDK) served by an
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

from .anthropic_to_openai import STATUS_ERROR_TYPES

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
        tool_id = call.get("id") or _tool_id(message_id, i)
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


def _tool_id(message_id: str, ordinal: int) -> str:
    """An id for a tool call a server sent without one (older Ollama); stable for the same message."""
    return f"toolu_{message_id}_{ordinal}"


def error_to_anthropic(status: int, body: bytes) -> tuple[int, dict[str, Any]]:
    """The status and Anthropic error object to send a caller for an upstream OpenAI-compatible error response.

    Reads OpenAI's `{"error": {"message": ...}}`, Ollama's `{"error": "..."}` and FastAPI's `{"detail": "..."}`;
    anything else gets a message naming the status. The status is kept, so the SDKs raise the matching class.
    """
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    message = _error_message(parsed) or f"upstream returned HTTP {status} with an unreadable error body"
    default_type = "api_error" if status >= 500 else "invalid_request_error"
    error_type = STATUS_ERROR_TYPES.get(status, default_type)
    return status, {"type": "error", "error": {"type": error_type, "message": message}}


def _error_message(parsed: object) -> str | None:
    if not isinstance(parsed, Mapping):
        return None
    error = parsed.get("error")
    if isinstance(error, Mapping) and isinstance(error.get("message"), str):
        return str(error["message"])
    for candidate in (error, parsed.get("detail"), parsed.get("message")):
        if isinstance(candidate, str) and candidate:
            return candidate
    return None


class AnthropicStreamTranslator:
    """Turns OpenAI chat.completion.chunk dicts into Anthropic stream events, one call per chunk.

    Feed every chunk (`feed`), then call `finish` at `[DONE]`: message_delta and message_stop wait for it,
    because the usage chunk (stream_options.include_usage) comes after the one carrying finish_reason.

    >>> t = AnthropicStreamTranslator(message_id="msg_1", model="m")
    >>> [name for name, _ in t.feed({"choices": [{"index": 0, "delta": {"content": "Hi"}}]})]
    ['message_start', 'content_block_start', 'content_block_delta']
    >>> [name for name, _ in t.finish()]
    ['content_block_stop', 'message_delta', 'message_stop']
    """

    def __init__(self, *, message_id: str, model: str) -> None:
        self._message_id, self._model = message_id, model
        self._started = False
        self._finished = False
        self._open: str | tuple[str, str] | None = None  # the open block: "text", ("tool", tool_use id), or None
        self._next_index = 0  # the Anthropic index the next block gets
        self._tool_ids: dict[object, str] = {}  # OpenAI tool_calls index -> the id of the latest call at it
        self._tools_called = 0
        self._stop_reason: str | None = None
        self._usage = usage_to_anthropic(None)

    @property
    def finished(self) -> bool:
        """True once message_stop or an error event has been produced: nothing more will follow."""
        return self._finished

    @property
    def saw_finish_reason(self) -> bool:
        """True once a chunk carried finish_reason: the reply is whole even if `[DONE]` never comes."""
        return self._stop_reason is not None

    @property
    def usage(self) -> dict[str, int]:
        """Anthropic-shaped token counts from the latest usage the stream carried."""
        return dict(self._usage)

    def feed(self, chunk: Mapping[str, Any]) -> list[Event]:
        """The events (possibly none) to send for one chunk."""
        if self._finished:
            return []
        if isinstance(chunk.get("error"), Mapping):  # an in-stream error (OpenAI, vLLM and LiteLLM send them)
            self._finished = True
            message = _error_message(chunk) or "upstream stream error"
            return [_event("error", error={"type": "api_error", "message": message})]
        events = self._start()
        if isinstance(chunk.get("usage"), Mapping):
            self._usage = usage_to_anthropic(chunk["usage"])
        for choice in chunk.get("choices") or []:
            if isinstance(choice, Mapping) and choice.get("index", 0) == 0:
                events += self._choice(choice)
        return events

    def finish(self) -> list[Event]:
        """The closing events: the open block's stop, message_delta with stop reason and usage, message_stop."""
        if self._finished:
            return []
        self._finished = True
        events = self._start() + self._close_block()
        stop = self._stop_reason or DEFAULT_STOP_REASON
        if self._tools_called and stop == DEFAULT_STOP_REASON:  # finish_reason "stop" after a tool call
            stop = "tool_use"
        delta = {"stop_reason": stop, "stop_sequence": None}
        events.append(_event("message_delta", delta=delta, usage=self.usage))
        events.append(_event("message_stop"))
        return events

    def _start(self) -> list[Event]:
        if self._started:
            return []
        self._started = True
        message: dict[str, Any] = {
            "id": self._message_id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},  # known only at the end: message_delta carries it
        }
        return [_event("message_start", message=message)]

    def _choice(self, choice: Mapping[str, Any]) -> list[Event]:
        events: list[Event] = []
        delta = choice.get("delta") or {}
        if isinstance(delta.get("content"), str) and delta["content"]:
            events += self._text(delta["content"])
        for call in delta.get("tool_calls") or []:
            if isinstance(call, Mapping):
                events += self._tool_call(call)
        if choice.get("finish_reason"):
            self._stop_reason = STOP_REASONS.get(choice["finish_reason"], DEFAULT_STOP_REASON)
        return events

    def _text(self, text: str) -> list[Event]:
        events = [] if self._open == "text" else self._open_block("text", {"type": "text", "text": ""})
        delta = {"type": "text_delta", "text": text}
        return [*events, _event("content_block_delta", index=self._next_index - 1, delta=delta)]

    def _tool_call(self, call: Mapping[str, Any]) -> list[Event]:
        ordinal = call.get("index", 0)
        function = call.get("function") or {}
        call_id = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else None
        events: list[Event] = []
        current = self._tool_ids.get(ordinal)
        if current is None or (call_id is not None and call_id != current):  # a new call: new index, or new id
            tool_id = self._tool_ids[ordinal] = call_id or _tool_id(self._message_id, self._tools_called)
            self._tools_called += 1
            block: dict[str, Any] = {"type": "tool_use", "id": tool_id, "name": function.get("name") or "", "input": {}}
            events += self._open_block(("tool", tool_id), block)
        elif self._open != ("tool", current):
            return []  # a fragment for a call already closed: servers stream calls one after another
        arguments = function.get("arguments")
        if isinstance(arguments, Mapping):  # a whole JSON object instead of JSON text (Ollama, some vLLM parsers)
            arguments = orjson.dumps(arguments).decode()
        if isinstance(arguments, str) and arguments:
            delta = {"type": "input_json_delta", "partial_json": arguments}
            events.append(_event("content_block_delta", index=self._next_index - 1, delta=delta))
        return events

    def _open_block(self, kind: str | tuple[str, str], block: dict[str, Any]) -> list[Event]:
        events = self._close_block()
        self._open = kind
        events.append(_event("content_block_start", index=self._next_index, content_block=block))
        self._next_index += 1
        return events

    def _close_block(self) -> list[Event]:
        if self._open is None:
            return []
        self._open = None
        return [_event("content_block_stop", index=self._next_index - 1)]


def _event(name: str, **data: Any) -> Event:
    return name, {"type": name, **data}
