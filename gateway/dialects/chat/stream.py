"""Translate an Anthropic Messages stream into OpenAI chat.completion.chunk objects, one upstream event at a time.

Pure: no I/O. The completion id and `created` are passed in, so tests compare whole chunk lists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from ..structured_output import StreamUnwrapper
from ..thinking import thinking_blocks_out
from .reply import ANTHROPIC_ERROR_TYPES_TO_OPENAI, FINISH_REASONS, usage_to_openai

# Streamed text-like deltas: Anthropic delta type -> (its text field, the OpenAI delta field).
TEXT_DELTAS: dict[str, tuple[str, str]] = {
    "text_delta": ("text", "content"),
    "thinking_delta": ("thinking", "reasoning_content"),
}
# Content blocks that may open with text already in them: block type -> (text field, OpenAI delta field).
TEXT_BLOCKS: dict[str, tuple[str, str]] = {"text": ("text", "content"), "thinking": ("thinking", "reasoning_content")}
_USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")

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
        return [openai_error(anthropic_type, message, code=anthropic_type)]

    _handlers: ClassVar[dict[str, Callable[[ChatStreamTranslator, Mapping[str, Any]], list[Chunk]]]] = {
        "message_start": _on_message_start,
        "content_block_start": _on_content_block_start,
        "content_block_delta": _on_content_block_delta,
        "content_block_stop": _on_content_block_stop,
        "message_delta": _on_message_delta,
        "message_stop": _on_message_stop,
        "error": _on_error,
    }  # ping carries nothing an OpenAI client needs


def openai_error(anthropic_type: str, message: str, *, code: str | None) -> dict[str, Any]:
    """An Anthropic stream's `error` event as the chunk an OpenAI stream carries (the provider's error, translated)."""
    openai_type = ANTHROPIC_ERROR_TYPES_TO_OPENAI.get(anthropic_type, "server_error")
    return {"error": {"message": message, "type": openai_type, "param": None, "code": code}}
