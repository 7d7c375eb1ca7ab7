"""Anthropic stream events -> OpenAI Responses stream events; and custom tool calls in Chat Completions answers.

Pure: no I/O. One Anthropic event in, the Responses events it stands for out, each numbered
(`sequence_number`) as OpenAI numbers them. The sequence for a reply that says something, then calls a tool:

    response.created, response.in_progress,
    response.output_item.added (message), response.content_part.added, response.output_text.delta ...,
    response.output_text.done, response.content_part.done, response.output_item.done,
    response.output_item.added (function_call), response.function_call_arguments.delta ...,
    response.function_call_arguments.done, response.output_item.done,
    response.completed (the whole Response, usage included)

`gateway.dialects.sse.frame` (or `reply.event_frame`) writes each as `event: <type>\\ndata: {...}`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..structured_output import StreamUnwrapper
from .reply import ResponseContext, custom_input, failed_error, finished_response, output_item, response_object
from .tools import ToolOrigin

Event = dict[str, Any]
_USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
# Anthropic delta type -> (the field of the delta, the field of the block it extends).
DELTA_FIELDS: dict[str, tuple[str, str]] = {
    "text_delta": ("text", "text"),
    "thinking_delta": ("thinking", "thinking"),
    "signature_delta": ("signature", "signature"),
    "input_json_delta": ("partial_json", "input"),
}
# Block type -> the Responses delta event its growth is streamed as (signatures and custom input are held back).
DELTA_EVENTS: dict[str, str] = {
    "text": "response.output_text.delta",
    "thinking": "response.reasoning_summary_text.delta",
    "function": "response.function_call_arguments.delta",
}
_PART_INDEX = {"text": {"content_index": 0}, "thinking": {"summary_index": 0}}


@dataclass(slots=True)
class _OpenBlock:
    output_index: int
    item_id: str
    kind: str  # text | thinking | redacted_thinking | function | custom
    block: dict[str, Any] = field(default_factory=dict)  # the Anthropic block, grown by its deltas


class ResponsesStreamTranslator:
    """Turns Anthropic stream events into Responses stream events, one `feed` call per Anthropic event.

    >>> from gateway.dialects.responses.request import ResponsesTranslation
    >>> t = ResponsesStreamTranslator(ResponseContext("resp_1", 0, "m", ResponsesTranslation({})))
    >>> [e["type"] for e in t.feed("message_start", {"message": {"usage": {"input_tokens": 3}}})]
    ['response.created', 'response.in_progress']
    """

    def __init__(self, ctx: ResponseContext) -> None:
        self._ctx = ctx
        self._sequence = 0
        self._open: dict[int, _OpenBlock] = {}  # Anthropic content block index -> the item it streams into
        self._output: list[dict[str, Any] | None] = []  # finished items, by output_index
        self._usage = dict.fromkeys(_USAGE_FIELDS, 0)
        self._stop_reason: str | None = None
        self._finished = False
        self._unwrap = StreamUnwrapper()  # the structured-output fallback's tool call streams as text

    @property
    def finished(self) -> bool:
        """True once message_stop or an error has been fed: nothing more will follow."""
        return self._finished

    @property
    def usage(self) -> dict[str, int]:
        return dict(self._usage)

    def feed(self, event: str, data: Mapping[str, Any]) -> list[Event]:
        """The events (possibly none) to send for one Anthropic event; unknown events give none."""
        handler = self._handlers.get(event)
        return handler(self, self._unwrap.feed(event, data)) if handler else []

    def fail(self, anthropic_type: str, message: str) -> list[Event]:
        """response.failed, for an error the stream carried or the gateway met (the upstream broke off)."""
        self._finished = True
        response = response_object(self._ctx, self._items(), status="failed", usage=self._usage)
        response["error"] = failed_error(anthropic_type, message)
        return [self._event("response.failed", response=response)]

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def _items(self) -> list[dict[str, Any]]:
        return [item for item in self._output if item is not None]

    def _record_usage(self, usage: Mapping[str, Any]) -> None:
        for name in _USAGE_FIELDS:  # counts are cumulative: the latest non-null value is the total
            if usage.get(name) is not None:
                self._usage[name] = usage[name]

    def _on_message_start(self, data: Mapping[str, Any]) -> list[Event]:
        self._record_usage((data.get("message") or {}).get("usage") or {})
        response = response_object(self._ctx, [], status="in_progress")
        return [
            self._event("response.created", response=response),
            self._event("response.in_progress", response=response),
        ]

    def _on_content_block_start(self, data: Mapping[str, Any]) -> list[Event]:
        block = dict(data.get("content_block") or {})
        kind = self._kind(block)
        if kind is None:
            return []  # server tool blocks and the like: nothing a Responses caller can use
        index = int(data.get("index", len(self._open)))
        if kind in ("function", "custom"):
            block["input"] = ""  # grown from input_json_delta text
        started = dict(block)
        item = output_item(started, index, self._ctx)
        assert item is not None
        opened = self._open[index] = _OpenBlock(len(self._output), item["id"], kind, block)
        self._output.append(None)
        item = _in_progress(item, kind)
        events = [self._event("response.output_item.added", output_index=opened.output_index, item=item)]
        if kind == "text":
            part = {"type": "output_text", "text": "", "annotations": []}
            events.append(self._part_event("response.content_part.added", opened, part=part))
        elif kind == "thinking":
            part = {"type": "summary_text", "text": ""}
            events.append(self._part_event("response.reasoning_summary_part.added", opened, part=part))
        return events

    def _kind(self, block: Mapping[str, Any]) -> str | None:
        kind = block.get("type")
        if kind == "tool_use":
            name = str(block.get("name"))
            return "custom" if self._ctx.translation.tools.get(name, ToolOrigin(name)).custom else "function"
        return str(kind) if kind in ("text", "thinking", "redacted_thinking") else None

    def _part_event(self, kind: str, opened: _OpenBlock, **fields: Any) -> Event:
        where = {"item_id": opened.item_id, "output_index": opened.output_index, **_PART_INDEX[opened.kind]}
        return self._event(kind, **where, **fields)

    def _on_content_block_delta(self, data: Mapping[str, Any]) -> list[Event]:
        opened = self._open.get(int(data.get("index", -1)))
        delta = data.get("delta") or {}
        source, target = DELTA_FIELDS.get(str(delta.get("type")), ("", ""))
        if opened is None or not source or not isinstance(text := delta.get(source), str) or not text:
            return []
        opened.block[target] = opened.block.get(target, "") + text
        kind = DELTA_EVENTS.get(opened.kind) if target != "signature" else None
        if kind is None:
            return []
        if opened.kind == "function":
            return [self._event(kind, item_id=opened.item_id, output_index=opened.output_index, delta=text)]
        extra: dict[str, Any] = {"logprobs": []} if opened.kind == "text" else {}
        return [self._part_event(kind, opened, delta=text, **extra)]

    def _on_content_block_stop(self, data: Mapping[str, Any]) -> list[Event]:
        index = int(data.get("index", -1))
        opened = self._open.pop(index, None)
        if opened is None:
            return []
        block = opened.block
        if opened.kind in ("function", "custom") and not block.get("input"):
            block["input"] = "{}"
        item = output_item(block, index, self._ctx)
        assert item is not None
        self._output[opened.output_index] = item
        events = self._closing_events(opened, item)
        events.append(self._event("response.output_item.done", output_index=opened.output_index, item=item))
        return events

    def _closing_events(self, opened: _OpenBlock, item: Mapping[str, Any]) -> list[Event]:
        where = {"item_id": opened.item_id, "output_index": opened.output_index}
        if opened.kind == "text":
            part = item["content"][0]
            done = self._part_event("response.output_text.done", opened, text=part["text"], logprobs=[])
            return [done, self._part_event("response.content_part.done", opened, part=part)]
        if opened.kind == "thinking":
            text = str(opened.block.get("thinking", ""))
            part = {"type": "summary_text", "text": text}
            done = self._part_event("response.reasoning_summary_text.done", opened, text=text)
            return [done, self._part_event("response.reasoning_summary_part.done", opened, part=part)]
        if opened.kind == "function":
            arguments, name = item["arguments"], item["name"]
            return [self._event("response.function_call_arguments.done", **where, arguments=arguments, name=name)]
        if opened.kind == "custom":  # the input arrives as JSON text of {"input": ...}: sent whole once it is complete
            text = custom_input(opened.block.get("input"))
            delta = [self._event("response.custom_tool_call_input.delta", **where, delta=text)] if text else []
            return [*delta, self._event("response.custom_tool_call_input.done", **where, input=text)]
        return []

    def _on_message_delta(self, data: Mapping[str, Any]) -> list[Event]:
        self._record_usage(data.get("usage") or {})
        self._stop_reason = (data.get("delta") or {}).get("stop_reason") or self._stop_reason
        return []

    def _on_message_stop(self, data: Mapping[str, Any]) -> list[Event]:
        self._finished = True
        response = finished_response(self._ctx, self._items(), self._stop_reason, self._usage)
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        return [self._event(kind, response=response)]

    def _on_error(self, data: Mapping[str, Any]) -> list[Event]:
        error = data.get("error") or {}
        anthropic_type = str(error.get("type") or "api_error")
        return self.fail(anthropic_type, str(error.get("message") or f"upstream stream error: {anthropic_type}"))

    _handlers: ClassVar[dict[str, Callable[[ResponsesStreamTranslator, Mapping[str, Any]], list[Event]]]] = {
        "message_start": _on_message_start,
        "content_block_start": _on_content_block_start,
        "content_block_delta": _on_content_block_delta,
        "content_block_stop": _on_content_block_stop,
        "message_delta": _on_message_delta,
        "message_stop": _on_message_stop,
        "error": _on_error,
    }  # ping carries nothing


def _in_progress(item: dict[str, Any], kind: str) -> dict[str, Any]:
    """The item as output_item.added shows it: empty, and in progress where the item type has a status."""
    if kind == "text":
        return {**item, "status": "in_progress", "content": []}
    if kind in ("function", "custom"):
        return {**item, "status": "in_progress"}
    return {**{k: v for k, v in item.items() if k != "encrypted_content"}, "summary": []}


# --- custom tools in Chat Completions answers (Cursor's Responses-shaped requests on /chat/completions) ----------


def chat_completion_with_custom_calls(completion: dict[str, Any], custom: frozenset[str]) -> dict[str, Any]:
    """The chat.completion with each call of a custom tool as OpenAI shapes one: {"type": "custom", "custom": ...}."""
    for choice in completion.get("choices") or []:
        calls = choice.get("message", {}).get("tool_calls") or []
        choice["message"]["tool_calls"] = [_custom_call(c) if _is_custom(c, custom) else c for c in calls] or None
        if not choice["message"]["tool_calls"]:
            del choice["message"]["tool_calls"]
    return completion


def _is_custom(call: Mapping[str, Any], custom: frozenset[str]) -> bool:
    return (call.get("function") or {}).get("name") in custom


def _custom_call(call: Mapping[str, Any], index: int | None = None) -> dict[str, Any]:
    fn = call.get("function") or {}
    out: dict[str, Any] = {} if index is None else {"index": index}
    custom = {"name": fn.get("name"), "input": custom_input(fn.get("arguments") or "")}
    return {**out, "id": call.get("id"), "type": "custom", "custom": custom}


class ChatCustomCalls:
    """Holds back the streamed chunks of custom tool calls and sends each call whole, before the finish chunk.

    Custom tool input is free text that Anthropic streams as JSON ({"input": "..."}), so it cannot be passed on
    piece by piece; OpenAI's chunk format has no documented custom-call deltas either.
    """

    def __init__(self, custom: frozenset[str]) -> None:
        self._custom = custom
        self._held: dict[int, dict[str, Any]] = {}  # tool_calls index -> {"id", "function": {"name", "arguments"}}

    def feed(self, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The chunks to send instead of `chunks`."""
        out = []
        for chunk in chunks:
            choices = chunk.get("choices") or []
            delta = choices[0].get("delta") or {} if choices else {}
            if calls := delta.get("tool_calls"):
                kept = [call for call in calls if not self._hold(call)]
                if not kept:
                    continue
                chunk = {**chunk, "choices": [{**choices[0], "delta": {**delta, "tool_calls": kept}}]}
            if choices and choices[0].get("finish_reason") and self._held:
                out.append(self._release(chunk))
            out.append(chunk)
        return out

    def _hold(self, call: Mapping[str, Any]) -> bool:
        index = int(call.get("index", -1))
        fn = call.get("function") or {}
        if call.get("id") and fn.get("name") in self._custom:
            self._held[index] = {"id": call["id"], "function": {"name": fn["name"], "arguments": ""}}
            return True
        if index in self._held:
            self._held[index]["function"]["arguments"] += fn.get("arguments") or ""
            return True
        return False

    def _release(self, template: Mapping[str, Any]) -> dict[str, Any]:
        calls = [_custom_call(call, index) for index, call in sorted(self._held.items())]
        self._held.clear()
        choice = {**template["choices"][0], "delta": {"tool_calls": calls}, "finish_reason": None}
        return {**template, "choices": [choice]}
