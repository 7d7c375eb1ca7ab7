"""The Responses request's `input` items (messages, tool calls and outputs, reasoning) as Anthropic messages.

Pure: no I/O. Reasoning items the gateway made carry the Anthropic thinking block itself in `encrypted_content`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import orjson

from ..chat.request import (
    _arguments,
    _image_block,
    has_text,
    settle_history,
    tool_use_id,
)
from ..translation import TranslationError
from .tools import ToolOrigin, required_name, str_or_none

SYSTEM_ROLES: frozenset[str] = frozenset({"system", "developer"})
# Responses content part type -> the field holding its text. input_image is handled on its own.
TEXT_PARTS: dict[str, str] = {"input_text": "text", "output_text": "text", "text": "text", "refusal": "refusal"}
ENCRYPTED_PREFIX = "gw-anthropic-thinking:"  # marks encrypted_content the gateway made (base64 of the block)


class Items:
    """Collects Anthropic turns from Responses input items, merging consecutive ones of the same role."""

    def __init__(self, tools: Mapping[str, ToolOrigin]) -> None:
        self.system: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        self._namespaced: dict[tuple[object, str], str] = {(o.namespace, o.name): n for n, o in tools.items()}
        self.sources: dict[int, tuple[str, str]] = {}  # id() of a tool_use/tool_result block -> (field, caller's id)

    @classmethod
    def translate(
        cls, raw: object, tools: Mapping[str, ToolOrigin]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        items = cls(tools)
        if isinstance(raw, str):
            raw = [{"type": "message", "role": "user", "content": raw}]
        if not isinstance(raw, list) or not raw:
            raise TranslationError("input: must be a string or a non-empty list of input items", "input")
        for i, item in enumerate(raw):
            if not isinstance(item, Mapping):
                raise TranslationError(f"input[{i}]: each input item must be an object", f"input[{i}]")
            items.add(item, f"input[{i}]")
        settle_history(items.messages, items.sources, field="input", what="input item")
        return items.system, items.messages

    def add(self, item: Mapping[str, Any], where: str) -> None:
        kind = item.get("type", "message")
        handler = self._handlers.get(str_or_none(kind) or "")
        if handler is None:
            known = ", ".join(self._handlers)
            message = f"{where}.type: {kind!r} input items are not supported; supported: {known}"
            raise TranslationError(message, f"{where}.type")
        handler(self, item, where)

    def _message(self, item: Mapping[str, Any], where: str) -> None:
        role = item.get("role")
        blocks = _content_blocks(item.get("content"), role == "user", where)
        if str_or_none(role) in SYSTEM_ROLES:
            self.system.extend(blocks)
        elif role in ("user", "assistant"):
            self._append(str(role), blocks)
        else:
            message = f"{where}.role: unknown role {role!r}; expected user, assistant, system or developer"
            raise TranslationError(message, f"{where}.role")

    def _function_call(self, item: Mapping[str, Any], where: str) -> None:
        name = required_name(item, where)
        name = self._namespaced.get((str_or_none(item.get("namespace")), name), name)
        block: dict[str, Any] = {"type": "tool_use", "id": _call_id(item, where), "name": name}
        block["input"] = _arguments(item.get("arguments"), f"{where}.arguments")
        self._append_call(block, item, where)

    def _custom_tool_call(self, item: Mapping[str, Any], where: str) -> None:
        text = item.get("input")
        block: dict[str, Any] = {"type": "tool_use", "id": _call_id(item, where), "name": required_name(item, where)}
        block["input"] = {"input": text if isinstance(text, str) else ""}
        self._append_call(block, item, where)

    def _append_call(self, block: dict[str, Any], item: Mapping[str, Any], where: str) -> None:
        turn = self.messages[-1]["content"] if self.messages and self.messages[-1]["role"] == "assistant" else []
        if any(b["type"] == "tool_use" and b["id"] == block["id"] for b in turn):  # Anthropic: ids must be unique
            message = f"{where}.call_id: {block['id']!r} is used twice in one turn; call ids must be unique"
            raise TranslationError(message, f"{where}.call_id")
        self.sources[id(block)] = (f"{where}.call_id", str(item.get("call_id")))
        self._append("assistant", [block])

    def _call_output(self, item: Mapping[str, Any], where: str) -> None:
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": _call_id(item, where)}
        self.sources[id(block)] = (f"{where}.call_id", str(item.get("call_id")))
        output = item.get("output")
        if isinstance(output, str):
            if has_text(output):
                block["content"] = output
        elif output is not None and (parts := _content_blocks(output, True, f"{where}.output")):
            block["content"] = parts
        self._append("user", [block])

    def _reasoning(self, item: Mapping[str, Any], where: str) -> None:
        # Only thinking the gateway itself handed out can go back: Anthropic checks its signature.
        if (block := decode_thinking(item.get("encrypted_content"))) is not None:
            self._append("assistant", [block])

    def _append(self, role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:  # Anthropic rejects empty turns and empty text blocks
            return
        if self.messages and self.messages[-1]["role"] == role:
            self.messages[-1]["content"].extend(blocks)
        else:
            self.messages.append({"role": role, "content": blocks})

    _handlers: ClassVar[dict[str, Callable[[Items, Mapping[str, Any], str], None]]] = {
        "message": _message,
        "function_call": _function_call,
        "function_call_output": _call_output,
        "custom_tool_call": _custom_tool_call,
        "custom_tool_call_output": _call_output,
        "reasoning": _reasoning,
    }


def _call_id(item: Mapping[str, Any], where: str) -> str:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise TranslationError(f"{where}.call_id: is required", f"{where}.call_id")
    return tool_use_id(call_id)


def _content_blocks(content: object, images: bool, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):  # Anthropic refuses empty and whitespace-only text blocks
        return [{"type": "text", "text": content}] if has_text(content) else []
    if not isinstance(content, list):
        raise TranslationError(f"{where}.content: must be a string or a list of content parts", f"{where}.content")
    blocks = []
    for j, part in enumerate(content):
        part_where = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "input_image" and images and isinstance(part, Mapping):
            if part.get("image_url") is None:
                message = f"{part_where}.image_url: uploaded files (file_id) are not supported; send the image inline"
                raise TranslationError(message, f"{part_where}.image_url")
            blocks.append(_image_block(part["image_url"], f"{part_where}.image_url"))
        elif (field_name := TEXT_PARTS.get(str_or_none(kind) or "")) and isinstance(part, Mapping):
            text = part.get(field_name)
            if not isinstance(text, str):
                raise TranslationError(f"{part_where}.{field_name}: must be a string", part_where)
            if has_text(text):
                blocks.append({"type": "text", "text": text})
        else:
            supported = ", ".join([*TEXT_PARTS, *(["input_image"] if images else [])])
            message = f"{part_where}.type: {kind!r} content parts are not supported here; supported: {supported}"
            raise TranslationError(message, f"{part_where}.type")
    return blocks


# --- thinking as encrypted_content ------------------------------------------------------------------


def encode_thinking(block: Mapping[str, Any]) -> str:
    """An Anthropic thinking (or redacted_thinking) block as an opaque encrypted_content string."""
    return ENCRYPTED_PREFIX + base64.urlsafe_b64encode(orjson.dumps(block)).decode()


def decode_thinking(encrypted: object) -> dict[str, Any] | None:
    """The thinking block `encode_thinking` made, or None for anything else (OpenAI's own, say)."""
    if not isinstance(encrypted, str) or not encrypted.startswith(ENCRYPTED_PREFIX):
        return None
    try:
        block = orjson.loads(base64.urlsafe_b64decode(encrypted.removeprefix(ENCRYPTED_PREFIX)))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(block, dict) or block.get("type") not in ("thinking", "redacted_thinking"):
        return None
    return block


# --- replies ----------------------------------------------------------------------------------------
