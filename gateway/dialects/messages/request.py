"""Translate an Anthropic Messages request body into an OpenAI Chat Completions request body.

The mirror of gateway/dialects/chat/request.py, for a provider that speaks Chat Completions (OpenAI, vLLM, Ollama, a
LiteLLM proxy). Pure: no I/O, no clock, no randomness. What cannot be expressed raises `TranslationError`
(shared with the other direction), whose message names the field, e.g.
"messages[0].content[1].type: 'document' blocks are not supported by OpenAI-compatible providers; ...".

| Anthropic                                   | Chat Completions                                             |
| ------------------------------------------- | ------------------------------------------------------------ |
| `system` (string or text blocks)            | a leading `system` message (blocks joined by a blank line)   |
| a message with role `system`                | a `system` message in the same place                         |
| text blocks                                 | `content` (one string when text-only, else content parts)    |
| image blocks (base64 / url)                 | `image_url` parts (`data:` URL / the URL)                    |
| assistant `tool_use`                        | assistant `tool_calls` (input serialised as `arguments`)     |
| user `tool_result`                          | `tool` messages, before the rest of the user turn; their     |
|                                             | images follow in a user message; `is_error` prefixes "Error: "|
| `tools` (`input_schema`)                    | function tools (`parameters`)                                |
| `tool_choice` auto / any / tool / none      | "auto" / "required" / named function / "none"                |
| `disable_parallel_tool_use`                 | `parallel_tool_calls: false`                                 |
| `stop_sequences`, `max_tokens`              | `stop`, `max_tokens`                                         |
| `temperature`, `top_p`                      | the same                                                     |
| `metadata.user_id`                          | `user`                                                       |
| `stream`                                    | `stream` + `stream_options.include_usage` (usage is billed)  |
| `thinking`, thinking / redacted_thinking    | dropped: Chat Completions has no way to send them back       |
| `cache_control` (anywhere)                  | dropped: OpenAI-compatible servers cache prefixes on their own |
| `top_k`, `context_management`, `output_config`, `service_tier`, `container`, `mcp_servers` | dropped |
| tools with a `type` (web_search_*, bash_*, text_editor_*, ...) | dropped: server-side or Anthropic-defined tools |
| document, search_result, server tool blocks | **400** naming the block                                     |
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ..chat.request import (
    TOOL_CHOICES,
)
from ..translation import TranslationError

# Accepted and dropped: Anthropic features an OpenAI-compatible server has no counterpart for.
IGNORED_FIELDS: frozenset[str] = frozenset(
    {"thinking", "top_k", "context_management", "output_config", "service_tier", "container", "mcp_servers"}
)
# Content blocks dropped without a word: reasoning the other side cannot take back (no signatures there).
DROPPED_BLOCK_TYPES: frozenset[str] = frozenset({"thinking", "redacted_thinking"})
# Anthropic tool_choice type -> OpenAI tool_choice: TOOL_CHOICES read the other way round.
OPENAI_TOOL_CHOICES: dict[str, str] = {choice["type"]: name for name, choice in TOOL_CHOICES.items()}
# Tools without a `type` (or "custom") are the caller's own functions; any other type runs on Anthropic's side.
CLIENT_TOOL_TYPES: frozenset[str | None] = frozenset({None, "custom"})
TOOL_ERROR_PREFIX = "Error: "  # OpenAI tool messages have no is_error flag; the model reads it in the text
CHARS_PER_TOKEN = 4  # a count_tokens estimate: roughly four bytes of JSON per token


def messages_request_to_chat(body: Mapping[str, Any], *, provider_model: str) -> dict[str, Any]:
    """Build the Chat Completions request for an Anthropic Messages request body."""
    messages = _system_messages(body.get("system"))
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise TranslationError("messages: must be a non-empty list of messages", "messages")
    for i, message in enumerate(raw_messages):
        messages.extend(_message(message, f"messages[{i}]"))
    out: dict[str, Any] = {"model": provider_model, "messages": messages}
    if body.get("max_tokens") is not None:
        out["max_tokens"] = body["max_tokens"]
    for field in ("temperature", "top_p"):
        if body.get(field) is not None:
            out[field] = body[field]
    stop = body.get("stop_sequences")
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise TranslationError("stop_sequences: must be a list of strings", "stop_sequences")
    if stop:
        out["stop"] = stop
    _add_tools(out, body)
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}  # the only way to learn a stream's token counts
    return out


def estimate_input_tokens(chat_request: Mapping[str, Any]) -> int:
    """A rough input token count for a translated request (Chat Completions has no count_tokens endpoint).

    >>> estimate_input_tokens({"messages": [{"role": "user", "content": "hi"}]})
    12
    """
    counted = {key: chat_request[key] for key in ("messages", "tools") if key in chat_request}
    return max(1, -(-len(orjson.dumps(counted)) // CHARS_PER_TOKEN))


def _system_messages(system: object) -> list[dict[str, Any]]:
    text = _system_text(system, "system")
    return [{"role": "system", "content": text}] if text else []


def _system_text(system: object, where: str) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    if not isinstance(system, list):
        raise TranslationError(f"{where}: must be a string or a list of text blocks", where)
    texts = []
    for j, block in enumerate(system):
        if not isinstance(block, Mapping) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise TranslationError(f"{where}[{j}]: only text blocks are supported here", f"{where}[{j}]")
        texts.append(block["text"])
    return "\n\n".join(text for text in texts if text)


def _message(message: object, where: str) -> list[dict[str, Any]]:
    if not isinstance(message, Mapping):
        raise TranslationError(f"{where}: each message must be an object", where)
    role, content = message.get("role"), message.get("content")
    if role == "system":  # Claude Code sends one (a system reminder) among the turns
        return [{"role": "system", "content": _system_text(content, f"{where}.content")}]
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(blocks, list):
        raise TranslationError(f"{where}.content: must be a string or a list of content blocks", f"{where}.content")
    if role == "user":
        return _user_messages(blocks, where)
    if role == "assistant":
        return [_assistant_message(blocks, where)]
    raise TranslationError(f"{where}.role: unknown role {role!r}; expected user or assistant", f"{where}.role")


def _user_messages(blocks: list[Any], where: str) -> list[dict[str, Any]]:
    """Tool results first (OpenAI wants them right after the assistant's calls), then the rest of the turn."""
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        block_where = f"{where}.content[{j}]"
        kind = _block_type(block, block_where)
        if kind == "tool_result":
            tool_message, images = _tool_result(block, block_where)
            tool_messages.append(tool_message)
            parts.extend(images)
        elif kind in ("text", "image"):
            parts.extend(_part(block, block_where))
        elif kind not in DROPPED_BLOCK_TYPES:
            raise _unsupported_block(kind, block_where)
    if parts:
        tool_messages.append({"role": "user", "content": _content(parts)})
    return tool_messages


def _assistant_message(blocks: list[Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        block_where = f"{where}.content[{j}]"
        kind = _block_type(block, block_where)
        if kind == "text":
            texts.append(_text(block, block_where))
        elif kind == "tool_use":
            calls.append(_tool_call(block, block_where))
        elif kind not in DROPPED_BLOCK_TYPES:
            raise _unsupported_block(kind, block_where)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _block_type(block: object, where: str) -> str:
    if not isinstance(block, Mapping) or not isinstance(block.get("type"), str):
        raise TranslationError(f"{where}: content blocks must be objects with a type", where)
    return str(block["type"])


def _unsupported_block(kind: str, where: str) -> TranslationError:
    message = f"{where}.type: {kind!r} blocks are not supported by OpenAI-compatible providers; send text or images"
    return TranslationError(message, f"{where}.type")


def _text(block: Mapping[str, Any], where: str) -> str:
    if not isinstance(block.get("text"), str):
        raise TranslationError(f"{where}.text: must be a string", f"{where}.text")
    return str(block["text"])


def _part(block: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    """The content part for a text or image block; empty text gives none (Anthropic rejects it anyway)."""
    if block["type"] == "text":
        text = _text(block, where)
        return [{"type": "text", "text": text}] if text else []
    source = block.get("source")
    if isinstance(source, Mapping) and source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif isinstance(source, Mapping) and source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        kind = source.get("type") if isinstance(source, Mapping) else source
        raise TranslationError(f"{where}.source: {kind!r} image sources are not supported", f"{where}.source")
    return [{"type": "image_url", "image_url": {"url": url}}]


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Text-only content as one string: several OpenAI-compatible servers (llama.cpp, some templates) want that."""
    if all(part["type"] == "text" for part in parts):
        return "\n\n".join(part["text"] for part in parts)
    return parts


def _tool_call(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
        raise TranslationError(f"{where}: tool_use blocks need an id and a name", where)
    arguments = orjson.dumps(block.get("input") or {}).decode()
    return {"id": block["id"], "type": "function", "function": {"name": block["name"], "arguments": arguments}}


def _tool_result(block: Mapping[str, Any], where: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The tool message for a tool_result, and the image parts it carried (tool messages take text only)."""
    if not isinstance(block.get("tool_use_id"), str):
        raise TranslationError(f"{where}.tool_use_id: is required", f"{where}.tool_use_id")
    content = block.get("content")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for k, inner in enumerate(content):
            inner_where = f"{where}.content[{k}]"
            kind = _block_type(inner, inner_where)
            if kind == "text":
                texts.append(_text(inner, inner_where))
            elif kind == "image":
                images.extend(_part(inner, inner_where))
            else:
                raise _unsupported_block(kind, inner_where)
    text = "\n\n".join(texts)
    if block.get("is_error") is True:
        text = TOOL_ERROR_PREFIX + text
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}, images


def _add_tools(out: dict[str, Any], body: Mapping[str, Any]) -> None:
    raw = body.get("tools") or []
    if not isinstance(raw, list):
        raise TranslationError("tools: must be a list", "tools")
    tools = [_function_tool(tool, f"tools[{i}]") for i, tool in enumerate(raw)]
    tools = [tool for tool in tools if tool is not None]
    if not tools:  # an OpenAI server refuses tool_choice without tools
        return
    out["tools"] = tools
    choice = body.get("tool_choice")
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, Mapping) else None
    if kind == "tool" and isinstance(choice.get("name"), str):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif kind in OPENAI_TOOL_CHOICES:
        out["tool_choice"] = OPENAI_TOOL_CHOICES[kind]
    else:
        raise TranslationError(f"tool_choice: expected auto, any, tool or none, got {choice!r}", "tool_choice")
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False


def _function_tool(tool: object, where: str) -> dict[str, Any] | None:
    if not isinstance(tool, Mapping):
        raise TranslationError(f"{where}: each tool must be an object", where)
    if tool.get("type") not in CLIENT_TOOL_TYPES:
        return None  # web search, code execution, bash_2025...: nothing an OpenAI-compatible server can run
    if not isinstance(tool.get("name"), str):
        raise TranslationError(f"{where}.name: a tool name is required", f"{where}.name")
    function: dict[str, Any] = {"name": tool["name"]}
    if tool.get("description") is not None:
        function["description"] = tool["description"]
    function["parameters"] = tool.get("input_schema") or {"type": "object", "properties": {}}
    return {"type": "function", "function": function}
