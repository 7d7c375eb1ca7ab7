"""Which strings of a request body the caller wrote, and where they are, for all three request shapes.

    Messages   system (string or text blocks); messages[i].content: string, text blocks, tool_result content,
               tool_use input (every string in it), document blocks with a text source
    Chat       messages[i].content: string or parts of type text; assistant tool_calls[j].function name and
               arguments, the older function_call's, refusal
    Responses  instructions; input: string, message items (input_text / output_text parts), function_call
               arguments, function_call_output output, custom tool calls' input and output
    any other  every string of a part of any other type (search results, server and MCP tool calls and their
               results, documents' titles and other sources, refusals, reasoning summaries, a type not yet
               invented), bar the keys in NOT_WORDS: what is not known to be safe to skip is scanned
    settings   metadata, stop_sequences / stop, user (sent on as written)

Never scanned: image, audio and file bytes, thinking and redacted_thinking blocks (signed: a changed byte makes
Anthropic refuse the request), ids the provider pairs up, tool definitions (59 KB in a Claude Code turn: scanning
them would double the stage's cost). One walker serves every route: the shapes do not collide, and Cursor posts
Responses-shaped bodies to /v1/chat/completions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
# A tool input's key names appear in a location only when they read as a plain name: the caller chose them, and
# a location is stored and shown, so a key that is itself a secret must not end up there.
PLAIN_NAME = re.compile(r"[A-Za-z_]{1,32}")
# A key name no detector can match (each value has a digit, a sign, or 20 characters or more); other key names of a
# tool input are scanned too: a tool call's input is free-form JSON, so a value written as a key reaches the model.
SHORT_NAME = re.compile(r"[A-Za-z_]{1,19}")
# Settings the provider receives as written (Chat's `user` becomes Anthropic's metadata.user_id): any string fits.
SETTINGS_WITH_TEXT = ("metadata", "stop_sequences", "stop", "user")
# Parts that hold no words: bytes (images, audio, generated images) or a signature over the text (thinking).
OPAQUE_PARTS = frozenset(
    {"image", "image_url", "input_image", "input_audio", "thinking", "redacted_thinking", "image_generation_call"}
)
# Keys of other parts that are never words: ids the provider pairs up (a changed one breaks the pairing),
# signatures, opaque state and bytes (a `data` beside `"type": "base64"` is skipped as well).
NOT_WORDS = frozenset(
    {
        "type",
        "id",
        "tool_use_id",
        "call_id",
        "signature",
        "encrypted_content",
        "cache_control",
        "media_type",
        "file_id",
        "file_data",
        "image_url",
    }
)


@dataclass(slots=True)
class Field:
    """One string the caller wrote: `parent[key]` in the parsed body, at `location` (e.g. messages[3].content[1]);
    or, when `is_key`, the key name `key` of the object `parent` (its `text`)."""

    location: str
    parent: Any  # dict or list
    key: Any  # str or int
    text: str
    is_key: bool = False


def prompt_fields(body: dict[str, Any]) -> list[Field]:
    """Every caller-written string of `body`, in body order (so placeholders number the same turn after turn)."""
    out: list[Field] = []
    _content(out, body, "system", "system")
    _content(out, body, "instructions", "instructions")
    for i, message in _items(body.get("messages")):
        where = f"messages[{i}]"
        _content(out, message, "content", f"{where}.content")
        for j, call in _items(message.get("tool_calls")):
            function = call.get("function")
            if isinstance(function, dict):
                _string(out, function, "name", f"{where}.tool_calls[{j}].function.name")
                _string(out, function, "arguments", f"{where}.tool_calls[{j}].function.arguments")
        if isinstance(function_call := message.get("function_call"), dict):  # Chat's older single call
            _string(out, function_call, "name", f"{where}.function_call.name")
            _string(out, function_call, "arguments", f"{where}.function_call.arguments")
        _string(out, message, "refusal", f"{where}.refusal")
    _content(out, body, "input", "input")
    for key in SETTINGS_WITH_TEXT:
        if key in body:
            _nested(out, body, key, key)
    return out


def _items(value: Any) -> list[tuple[int, dict[str, Any]]]:
    return [(i, v) for i, v in enumerate(value) if isinstance(v, dict)] if isinstance(value, list) else []


def _string(out: list[Field], parent: Any, key: Any, where: str) -> None:
    value = parent.get(key) if isinstance(parent, dict) else None
    if isinstance(value, str) and value:
        out.append(Field(where, parent, key, value))


def _content(out: list[Field], parent: dict[str, Any], key: str, where: str) -> None:
    """A content value: a string, or a list of blocks / parts / Responses input items."""
    value = parent.get(key)
    if isinstance(value, str):
        _string(out, parent, key, where)
        return
    for j, block in _items(value):
        _block(out, block, f"{where}[{j}]")


def _block(out: list[Field], block: dict[str, Any], where: str) -> None:
    kind = block.get("type")
    if kind in TEXT_PARTS:
        _string(out, block, "text", where)
    elif kind == "tool_result":
        _content(out, block, "content", f"{where}.content")
    elif kind in ("tool_use", "custom_tool_call"):  # a call's name too: an id-shaped key passes the API's name rule
        _string(out, block, "name", f"{where}.name")
        _nested(out, block, "input", f"{where}.input")
    elif kind == "function_call":
        _string(out, block, "name", f"{where}.name")
        _string(out, block, "arguments", f"{where}.arguments")
    elif kind in ("function_call_output", "custom_tool_call_output"):
        _content(out, block, "output", f"{where}.output")
    elif kind in (None, "message") and "content" in block:  # a Responses input message item
        _content(out, block, "content", f"{where}.content")
    elif kind not in OPAQUE_PARTS:  # a part of another type: all its words (documents' text sources among them)
        for name in block:
            if name not in NOT_WORDS:
                _nested(out, block, name, f"{where}.{_shown(name)}", NOT_WORDS)


def _nested(out: list[Field], parent: dict[str, Any], key: str, where: str, skip: frozenset[str] = frozenset()) -> None:
    """Every string inside a JSON value (a tool call's input) but under `skip` keys, walked with a stack: depth
    costs no recursion."""
    stack: list[tuple[Any, Any, str]] = [(parent, key, where)]
    while stack:
        container, k, at = stack.pop()
        value = container[k]
        if isinstance(value, str):
            if value:
                out.append(Field(at, container, k, value))
        elif isinstance(value, dict):
            out.extend(Field(f"{at}.*", value, name, name, True) for name in value if not SHORT_NAME.fullmatch(name))
            left_out = skip | {"data"} if skip and value.get("type") == "base64" else skip
            stack.extend(
                (value, name, f"{at}.{_shown(name)}") for name in reversed(list(value)) if name not in left_out
            )
        elif isinstance(value, list):
            stack.extend((value, i, f"{at}[{i}]") for i in reversed(range(len(value))))


def _shown(name: str) -> str:
    return name if PLAIN_NAME.fullmatch(name) else "*"
