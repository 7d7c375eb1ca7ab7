"""Translate the OpenAI Responses API to Anthropic Messages and back: requests, replies, streams and errors.

Pure: no I/O, no clock, no randomness. The response id and `created_at` come in through `ResponseContext`, so
tests compare whole objects. The gateway keeps no state: a request that points at stored state
(`previous_response_id`, `conversation`, `store: true`, ...) is refused, and the caller sends the whole
conversation as `input` items every time, as Codex does (`store: false`).

What the model thought travels back to the caller as an opaque `encrypted_content` on reasoning items whenever
reasoning is on (OpenAI sends it only when `include` asks for "reasoning.encrypted_content", but a stateless
gateway has no other way to get it back): it is the Anthropic thinking block itself, so a later request can hand
it back, as Anthropic requires when thinking and tool use meet.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson

from . import sse
from .anthropic_to_openai import ANTHROPIC_ERROR_TYPES_TO_OPENAI, error_to_openai
from .openai_to_anthropic import (
    TOOL_CHOICES,
    TranslationError,
    TranslationOptions,
    _add_response_format,
    _add_sampling,
    _add_thinking,
    _arguments,
    _image_block,
    has_text,
    stream_flag,
)
from .structured_output import unwrap_message

# Fields that only make sense with state kept between requests: refused (the gateway is stateless).
STATEFUL_FIELDS: dict[str, str] = {
    "previous_response_id": "previous_response_id: the gateway keeps no responses; send the whole conversation "
    "as input items (and store: false)",
    "conversation": "conversation: the gateway keeps no conversations; send the whole conversation as input items",
    "prompt": "prompt: stored prompt templates are not available; send instructions and input instead",
}
# Fields refused unless they hold their no-op value, with what to do instead.
REFUSED_VALUES: dict[str, tuple[object, str]] = {
    "store": (True, "store: the gateway keeps no responses; send store: false (or omit it)"),
    "background": (True, "background: background responses need stored state; omit background"),
}
# Accepted and dropped: no Anthropic counterpart, no effect on what the model says.
IGNORED_FIELDS: frozenset[str] = frozenset(
    {
        "store",  # false: nothing is kept anyway
        "stream_options",
        "metadata",
        "prompt_cache_key",  # Anthropic caches by prefix and cache_control (see auto_cache), not by key
        "prompt_cache_retention",
        "service_tier",
        "client_metadata",  # Codex's turn metadata
        "truncation",
        "max_tool_calls",  # limits OpenAI's hosted tools, which are not offered here
        "include",  # only "reasoning.encrypted_content" changes anything
        "parallel_tool_calls",  # true is Anthropic's default; false is honoured
        "user",  # -> metadata.user_id
        "safety_identifier",  # -> metadata.user_id
    }
)
# Hosted tools OpenAI runs itself: dropped from the tool list (Codex always offers web_search); the model answers
# without them. Any other non-function tool type is refused.
DROPPED_TOOLS: frozenset[str] = frozenset({"web_search", "web_search_preview", "web_search_2025_08_26"})
SYSTEM_ROLES: frozenset[str] = frozenset({"system", "developer"})
# Responses content part type -> the field holding its text. input_image is handled on its own.
TEXT_PARTS: dict[str, str] = {"input_text": "text", "output_text": "text", "text": "text", "refusal": "refusal"}
NAMESPACE_SEPARATOR = "__"  # a namespace's tools become Anthropic tools named <namespace>__<tool>
ENCRYPTED_PREFIX = "gw-anthropic-thinking:"  # marks encrypted_content the gateway made (base64 of the block)
INCLUDE_REASONING = "reasoning.encrypted_content"
CUSTOM_TOOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"input": {"type": "string", "description": "The whole input for the tool, as plain text."}},
    "required": ["input"],
}
# Anthropic stop_reason -> (Response status, incomplete_details.reason); anything else is "completed".
STOP_STATUSES: dict[str, tuple[str, str | None]] = {
    "max_tokens": ("incomplete", "max_output_tokens"),
    "model_context_window_exceeded": ("incomplete", "max_output_tokens"),
    "refusal": ("incomplete", "content_filter"),
}
# Anthropic error.type -> Response error.code (response.failed); others are "server_error".
FAILED_CODES: dict[str, str] = {"rate_limit_error": "rate_limit_exceeded", "invalid_request_error": "invalid_prompt"}
# Request fields a Response object repeats back, with their value when the request has none.
ECHOED_FIELDS: dict[str, Any] = {
    "instructions": None,
    "max_output_tokens": None,
    "parallel_tool_calls": True,
    "temperature": None,
    "top_p": None,
    "tool_choice": "auto",
    "tools": [],
    "metadata": {},
    "reasoning": None,
    "text": {"format": {"type": "text"}},
    "truncation": "disabled",
    "user": None,
}


@dataclass(frozen=True, slots=True)
class ToolOrigin:
    """The Responses tool an Anthropic tool stands for."""

    name: str
    custom: bool = False  # a "custom" (free-form text) tool: its call is a custom_tool_call with an `input` string
    namespace: str | None = None


@dataclass(frozen=True, slots=True)
class ResponsesTranslation:
    """The Anthropic request for a Responses request, and what the reply translation needs to know about it."""

    request: dict[str, Any]
    tools: Mapping[str, ToolOrigin] = field(default_factory=dict)  # Anthropic tool name -> Responses tool
    include_reasoning: bool = False  # thinking goes back as encrypted_content
    echo: Mapping[str, Any] = field(default_factory=dict)  # request fields the Response object repeats

    @property
    def custom_tools(self) -> frozenset[str]:
        return frozenset(name for name, origin in self.tools.items() if origin.custom)


def is_responses_body(body: Mapping[str, Any]) -> bool:
    """A Responses-shaped body (Cursor posts some to /chat/completions): `input`/`instructions`, no `messages`."""
    return "messages" not in body and ("input" in body or "instructions" in body)


def responses_request_to_anthropic(body: Mapping[str, Any], opts: TranslationOptions) -> ResponsesTranslation:
    """Build the Anthropic Messages request for a Responses API request body."""
    _reject_unsupported(body)
    tools = _Tools.translate(body.get("tools"))
    system, messages = _Items.translate(body.get("input"), tools.anthropic_names)
    instructions = body.get("instructions")
    if isinstance(instructions, str) and has_text(instructions):
        system.insert(0, {"type": "text", "text": instructions})
    elif instructions is not None and not isinstance(instructions, str):
        raise TranslationError("instructions: must be a string", "instructions")
    out: dict[str, Any] = {"model": opts.provider_model, "max_tokens": _max_tokens(body, opts), "messages": messages}
    if system:
        out["system"] = system
    _add_sampling(out, {k: body[k] for k in ("temperature", "top_p") if k in body})
    if tools.anthropic:
        out["tools"] = tools.anthropic
        _add_tool_choice(out, body, tools)
    _add_reasoning(out, body, opts)
    text = body.get("text")
    _add_response_format(out, text.get("format") if isinstance(text, Mapping) else None, opts, "text.format")
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    if (stream := stream_flag(body)) is not None:
        out["stream"] = stream
    include = _include(body)
    echo = {name: body.get(name, default) for name, default in ECHOED_FIELDS.items()}
    include_reasoning = INCLUDE_REASONING in include or "thinking" in out
    return ResponsesTranslation(out, tools.origins, include_reasoning, echo)


def _reject_unsupported(body: Mapping[str, Any]) -> None:
    for name, message in STATEFUL_FIELDS.items():
        if body.get(name) is not None:
            raise TranslationError(message, name)
    for name, (refused, message) in REFUSED_VALUES.items():
        if body.get(name) == refused:
            raise TranslationError(message, name)
    if body.get("top_logprobs"):
        raise TranslationError(
            "top_logprobs: log probabilities are not available from Anthropic models", "top_logprobs"
        )
    if "message.output_text.logprobs" in _include(body):
        raise TranslationError("include: log probabilities are not available from Anthropic models", "include")


def _max_tokens(body: Mapping[str, Any], opts: TranslationOptions) -> int:
    value = body.get("max_output_tokens")
    if value is None:
        return opts.default_max_tokens
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TranslationError(f"max_output_tokens: must be a positive integer, got {value!r}", "max_output_tokens")
    return value


def _add_reasoning(out: dict[str, Any], body: Mapping[str, Any], opts: TranslationOptions) -> None:
    reasoning = body.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, Mapping) else None
    if effort is not None and not isinstance(effort, str):
        raise TranslationError(f"reasoning.effort: must be a string, got {effort!r}", "reasoning.effort")
    try:  # the Chat Completions rules for reasoning_effort, reported under this API's name for it
        _add_thinking(out, {"reasoning_effort": effort}, opts)
    except TranslationError as exc:
        message = str(exc).replace("reasoning_effort", "reasoning.effort")
        raise TranslationError(message, "reasoning.effort" if exc.param == "reasoning_effort" else exc.param) from None


def _add_tool_choice(out: dict[str, Any], body: Mapping[str, Any], tools: _Tools) -> None:
    choice = body.get("tool_choice")
    translated: dict[str, Any] | None = None
    if isinstance(choice, str) and choice in TOOL_CHOICES:
        translated = dict(TOOL_CHOICES[choice])
    elif isinstance(choice, Mapping) and choice.get("type") in ("function", "custom") and _text(choice.get("name")):
        name = str(choice["name"])
        if choice.get("namespace"):
            name = f"{choice['namespace']}{NAMESPACE_SEPARATOR}{name}"
        translated = {"type": "tool", "name": name}
    elif choice is not None:
        message = f'tool_choice: expected "auto", "none", "required" or a named function or custom tool, got {choice!r}'
        raise TranslationError(message, "tool_choice")
    if body.get("parallel_tool_calls") is False:
        translated = translated or {"type": "auto"}
        if translated["type"] != "none":
            translated["disable_parallel_tool_use"] = True
    if translated is not None:
        out["tool_choice"] = translated


class _Tools:
    """The request's tools as Anthropic tools, with where each came from."""

    def __init__(self) -> None:
        self.anthropic: list[dict[str, Any]] = []
        self.origins: dict[str, ToolOrigin] = {}

    @property
    def anthropic_names(self) -> Mapping[str, ToolOrigin]:
        return self.origins

    @classmethod
    def translate(cls, raw: object) -> _Tools:
        tools = cls()
        if raw is None:
            return tools
        if not isinstance(raw, list):
            raise TranslationError("tools: must be a list", "tools")
        for i, tool in enumerate(raw):
            tools.add(tool, f"tools[{i}]", namespace=None)
        return tools

    def add(self, tool: object, where: str, namespace: str | None) -> None:
        if not isinstance(tool, Mapping):
            raise TranslationError(f"{where}: each tool must be an object", where)
        kind = tool.get("type")
        if _text(kind) in DROPPED_TOOLS:
            return
        if kind == "namespace" and namespace is None:
            inner_tools = tool.get("tools")
            if not isinstance(inner_tools, list):
                raise TranslationError(f"{where}.tools: a namespace's tools must be a list", f"{where}.tools")
            for j, inner in enumerate(inner_tools):
                self.add(inner, f"{where}.tools[{j}]", namespace=_name(tool, where))
            return
        if kind not in ("function", "custom"):
            message = f"{where}.type: {kind!r} tools are not supported; function and custom tools are"
            raise TranslationError(message, f"{where}.type")
        name = _name(tool, where)
        anthropic_name = f"{namespace}{NAMESPACE_SEPARATOR}{name}" if namespace else name
        self.origins[anthropic_name] = ToolOrigin(name=name, custom=kind == "custom", namespace=namespace)
        description = tool.get("description")
        if kind == "custom":
            description = _custom_description(description, tool.get("format"))
        spec: dict[str, Any] = {"name": anthropic_name}
        if description:
            spec["description"] = description
        parameters = tool.get("parameters") if kind == "function" else CUSTOM_TOOL_SCHEMA
        spec["input_schema"] = parameters or {"type": "object", "properties": {}}
        self.anthropic.append(spec)


def _name(tool: Mapping[str, Any], where: str) -> str:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise TranslationError(f"{where}.name: a tool name is required", f"{where}.name")
    return name


def _custom_description(description: object, fmt: object) -> str:
    """A custom tool's description, with its input grammar spelt out (Anthropic has no grammar-constrained tools)."""
    text = description if isinstance(description, str) else ""
    if isinstance(fmt, Mapping) and fmt.get("type") == "grammar" and fmt.get("definition"):
        syntax = fmt.get("syntax", "lark")
        text += f"\n\nPut the whole input in `input`; it must follow this {syntax} grammar:\n{fmt['definition']}"
    else:
        text += "\n\nPut the whole input for the tool, as free-form text, in `input`."
    return text.strip()


class _Items:
    """Collects Anthropic turns from Responses input items, merging consecutive ones of the same role."""

    def __init__(self, tools: Mapping[str, ToolOrigin]) -> None:
        self.system: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        self._namespaced: dict[tuple[object, str], str] = {(o.namespace, o.name): n for n, o in tools.items()}

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
        for message in items.messages:
            if message["role"] == "user":  # Anthropic wants tool_result blocks before any other user content
                message["content"].sort(key=lambda block: block["type"] != "tool_result")
        return items.system, items.messages

    def add(self, item: Mapping[str, Any], where: str) -> None:
        kind = item.get("type", "message")
        handler = self._handlers.get(_text(kind) or "")
        if handler is None:
            known = ", ".join(self._handlers)
            message = f"{where}.type: {kind!r} input items are not supported; supported: {known}"
            raise TranslationError(message, f"{where}.type")
        handler(self, item, where)

    def _message(self, item: Mapping[str, Any], where: str) -> None:
        role = item.get("role")
        blocks = _content_blocks(item.get("content"), role == "user", where)
        if _text(role) in SYSTEM_ROLES:
            self.system.extend(blocks)
        elif role in ("user", "assistant"):
            self._append(str(role), blocks)
        else:
            message = f"{where}.role: unknown role {role!r}; expected user, assistant, system or developer"
            raise TranslationError(message, f"{where}.role")

    def _function_call(self, item: Mapping[str, Any], where: str) -> None:
        name = _name(item, where)
        name = self._namespaced.get((_text(item.get("namespace")), name), name)
        block: dict[str, Any] = {"type": "tool_use", "id": _call_id(item, where), "name": name}
        block["input"] = _arguments(item.get("arguments"), f"{where}.arguments")
        self._append("assistant", [block])

    def _custom_tool_call(self, item: Mapping[str, Any], where: str) -> None:
        text = item.get("input")
        block: dict[str, Any] = {"type": "tool_use", "id": _call_id(item, where), "name": _name(item, where)}
        block["input"] = {"input": text if isinstance(text, str) else ""}
        self._append("assistant", [block])

    def _call_output(self, item: Mapping[str, Any], where: str) -> None:
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": _call_id(item, where)}
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

    _handlers: ClassVar[dict[str, Callable[[_Items, Mapping[str, Any], str], None]]] = {
        "message": _message,
        "function_call": _function_call,
        "function_call_output": _call_output,
        "custom_tool_call": _custom_tool_call,
        "custom_tool_call_output": _call_output,
        "reasoning": _reasoning,
    }


def _text(value: object) -> str | None:
    """`value` when it is a string, else None: caller-sent "types" are looked up in tables, and a list is unhashable."""
    return value if isinstance(value, str) else None


def _include(body: Mapping[str, Any]) -> list[Any]:
    include = body.get("include")
    return include if isinstance(include, list) else []


def _call_id(item: Mapping[str, Any], where: str) -> str:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise TranslationError(f"{where}.call_id: is required", f"{where}.call_id")
    return call_id


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
        elif (field_name := TEXT_PARTS.get(_text(kind) or "")) and isinstance(part, Mapping):
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


def error_to_responses(status: int, body: bytes) -> tuple[int, dict[str, Any]]:
    """The status and error body for an upstream Anthropic error: the same shape as Chat Completions errors."""
    return error_to_openai(status, body)


def failed_error(anthropic_type: str, message: str) -> dict[str, Any]:
    """The `error` of a failed Response for an Anthropic error type."""
    code = FAILED_CODES.get(anthropic_type, "server_error")
    return {"code": code, "message": message, "type": ANTHROPIC_ERROR_TYPES_TO_OPENAI.get(anthropic_type)}


def event_frame(event: Mapping[str, Any]) -> bytes:
    """One Responses SSE frame: b"event: response.output_text.delta\\ndata: {...}\\n\\n"."""
    return sse.frame(orjson.dumps(event), str(event["type"]))
