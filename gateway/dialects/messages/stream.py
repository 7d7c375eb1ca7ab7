"""Translate an OpenAI-compatible chunk stream into Anthropic Messages stream events, one chunk at a time.

Pure: no I/O. The event order Claude Code needs, and the chunk quirks of OpenAI-compatible servers, are described
in gateway/dialects/messages/reply.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from .reply import DEFAULT_STOP_REASON, STOP_REASONS, Event, error_message, tool_id_for, usage_to_anthropic


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
        self.tool_id_fors: dict[object, str] = {}  # OpenAI tool_calls index -> the id of the latest call at it
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
            message = error_message(chunk) or "upstream stream error"
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
        current = self.tool_id_fors.get(ordinal)
        if current is None or (call_id is not None and call_id != current):  # a new call: new index, or new id
            tool_id = self.tool_id_fors[ordinal] = call_id or tool_id_for(self._message_id, self._tools_called)
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
