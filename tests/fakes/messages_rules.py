"""The Messages API's own request validation, as the fake upstream enforces it.

A translation the real API would refuse must fail a test here, so each rule below is one the API applies, with
its source. `problems(body, verify)` returns the first refusal as (message) or None; messages follow the API's
wording ("messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found `tool_use`...").

Sources:
- [params] anthropic SDK `MessageCreateParamsBase` (anthropic/types/message_create_params.py and
  anthropic/types/beta/message_create_params.py, v2.14): the top-level fields the API knows; others are refused
  ("Extra inputs are not permitted").
- [thinking] https://platform.claude.com/docs/en/build-with-claude/extended-thinking ("Preserving thinking blocks",
  "Extended thinking with tool use"): with thinking on, the last assistant turn with tool_use must start with its
  thinking or redacted_thinking block; blocks must come back unmodified (the signature is checked);
  budget_tokens >= 1024 and < max_tokens; tool_choice may only be auto or none; temperature/top_k are not allowed.
- [tools] https://platform.claude.com/docs/en/agents-and-tools/tool-use/implement-tool-use ("tool_result blocks
  must immediately follow their tool_use blocks"): every tool_result id names a tool_use of the assistant turn
  just before it, and every tool_use of a turn followed by another turn is answered.
- [text] the API refuses empty text blocks ("text content blocks must be non-empty") and whitespace-only ones
  ("text content blocks must contain non-whitespace text"), in system and in messages alike.
- [stop] stop_sequences: each must contain non-whitespace ("stop_sequences: each stop sequence must contain
  non-whitespace").
- [cache] https://platform.claude.com/docs/en/build-with-claude/prompt-caching: at most 4 cache_control marks, each
  {"type": "ephemeral"} with an optional ttl of "5m" or "1h".
  (The docs' "Mixing different TTLs" order, 1h marks before 5m ones, is not enforced: tests/test_conformance.py
  models a Claude Code body with a 5m tool mark before a 1h system mark, and no capture settles which is right.)
- [format] https://platform.claude.com/docs/en/build-with-claude/structured-outputs and anthropic SDK
  `OutputConfigParam` / `JSONOutputFormatParam`: output_config.format is {"type": "json_schema", "schema": {...}},
  and every object in the schema sets additionalProperties to false.
- [types] anthropic SDK `MessageCreateParamsBase`, `ToolParam`, `MetadataParam`: `stream` is a boolean,
  `metadata.user_id` a string, temperature and top_p lie in 0..1, a custom tool's input_schema has
  "type": "object"; tool names match ^[a-zA-Z0-9_-]{1,128}$ and are unique ("Tool names must be unique").
- [ids] the API refuses a tool_use id outside ^[a-zA-Z0-9_-]+$ ("messages.1.content.0.tool_use.id: String should
  match pattern") and a turn with two tool_use blocks of one id ("`tool_use` ids must be unique").
- [images] an image's base64 media_type is image/jpeg, image/png, image/gif or image/webp
  (https://platform.claude.com/docs/en/build-with-claude/vision).
- [prefill] a final assistant turn is a prefill, whose text may not end in whitespace ("messages: final assistant
  content cannot end with trailing whitespace").
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

# [params] MessageCreateParamsBase (+ beta) field names, plus `stream` and the sampling fields of the API reference.
KNOWN_FIELDS: frozenset[str] = frozenset(
    {
        "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream", "temperature",
        "top_k", "top_p", "tools", "tool_choice", "thinking", "service_tier", "container", "mcp_servers",
        "context_management", "output_config", "output_format", "inference_geo", "cache_control", "speed",
        "diagnostics", "compaction", "fallbacks", "thread", "user_profile_id", "workspace_id",
    }
)  # fmt: skip
THINKING_BLOCKS = ("thinking", "redacted_thinking")
MAX_CACHE_MARKS = 4
MIN_THINKING_BUDGET = 1024
_SECRET = b"fake-upstream-signing-key"
SIGNATURE_PREFIX = "fakesig_"
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,128}")  # [types]
TOOL_USE_ID = re.compile(r"[a-zA-Z0-9_-]+")  # [ids]
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")  # [images]


def sign(thinking: str) -> str:
    """The signature the fake issues for a thinking text: it verifies only that exact text."""
    return SIGNATURE_PREFIX + hmac.new(_SECRET, thinking.encode(), hashlib.sha256).hexdigest()


def problem(body: Mapping[str, Any], accepted: Callable[[Mapping[str, Any]], bool]) -> str | None:
    """The API's refusal for `body`, or None. `accepted(block)` says whether a thinking block's signature is one
    the fake issued (or a test declared issued)."""
    for check in (_fields, _types, _tools, _stop_sequences, _system, _thinking_config, _output_config, _cache_marks):
        if found := check(body):
            return found
    return _messages(body, accepted)


def _fields(body: Mapping[str, Any]) -> str | None:
    extra = sorted(set(body) - KNOWN_FIELDS)
    return f"{extra[0]}: Extra inputs are not permitted" if extra else None


def _types(body: Mapping[str, Any]) -> str | None:
    if "stream" in body and not isinstance(body["stream"], bool):
        return "stream: Input should be a valid boolean"
    user_id = (body.get("metadata") or {}).get("user_id")
    if user_id is not None and not isinstance(user_id, str):
        return "metadata.user_id: Input should be a valid string"
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int | float) or not 0 <= value <= 1):
            return f"{name}: Input should be less than or equal to 1 and greater than or equal to 0"
    return None


def _tools(body: Mapping[str, Any]) -> str | None:
    seen: set[str] = set()
    for i, tool in enumerate(body.get("tools") or []):
        name = tool.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            return f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
        if name in seen:
            return "tools: Tool names must be unique."
        seen.add(name)
        if tool.get("type", "custom") == "custom":  # server tools (web_search_...) have no input_schema
            schema = tool.get("input_schema")
            if not isinstance(schema, Mapping) or schema.get("type") != "object":
                return f"tools.{i}.custom.input_schema.type: Input should be 'object'"
        if tool.get("description") is not None and not isinstance(tool["description"], str):
            return f"tools.{i}.custom.description: Input should be a valid string"
    return None


def _stop_sequences(body: Mapping[str, Any]) -> str | None:
    for stop in body.get("stop_sequences") or []:
        if not isinstance(stop, str) or not stop.strip():
            return "stop_sequences: each stop sequence must contain non-whitespace"
    return None


def _text_problem(block: Mapping[str, Any]) -> str | None:
    if block.get("type") != "text":
        return None
    text = block.get("text")
    if not isinstance(text, str) or not text:
        return "text content blocks must be non-empty"
    return None if text.strip() else "text content blocks must contain non-whitespace text"


def _system(body: Mapping[str, Any]) -> str | None:
    system = body.get("system")
    for i, block in enumerate(system if isinstance(system, list) else []):
        if found := _text_problem(block):
            return f"system.{i}: {found}"
    return None


def _thinking_config(body: Mapping[str, Any]) -> str | None:
    thinking = body.get("thinking") or {}
    if thinking.get("type") != "enabled":
        return None
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or budget < MIN_THINKING_BUDGET:
        return f"thinking.enabled.budget_tokens: Input should be greater than or equal to {MIN_THINKING_BUDGET}"
    if budget >= body.get("max_tokens", 0):
        return "`max_tokens` must be greater than `thinking.budget_tokens`"
    if (body.get("tool_choice") or {}).get("type") in ("any", "tool"):
        return "Thinking may not be enabled when tool_choice forces tool use."
    if body.get("temperature") not in (None, 1) or body.get("top_k") is not None:
        return "`temperature` may only be set to 1 when thinking is enabled"
    return None


def _output_config(body: Mapping[str, Any]) -> str | None:
    fmt = (body.get("output_config") or {}).get("format")
    if fmt is None:
        return None
    if fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), Mapping):
        return "output_config.format: expected {'type': 'json_schema', 'schema': {...}}"
    for where, schema in _schemas(fmt["schema"], "output_config.format.schema"):
        if schema.get("type") == "object" and schema.get("additionalProperties") is not False:
            return f"{where}: For 'object' type, 'additionalProperties' must be explicitly set to false"
    return None


def _schemas(schema: Mapping[str, Any], where: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    yield where, schema
    for key in ("properties", "$defs", "definitions"):
        for name, sub in (schema.get(key) or {}).items():
            if isinstance(sub, Mapping):
                yield from _schemas(sub, f"{where}.{key}.{name}")
    for key in ("anyOf", "allOf"):
        for i, sub in enumerate(schema.get(key) or []):
            if isinstance(sub, Mapping):
                yield from _schemas(sub, f"{where}.{key}.{i}")
    if isinstance(schema.get("items"), Mapping):
        yield from _schemas(schema["items"], f"{where}.items")


def _cache_marks(body: Mapping[str, Any]) -> str | None:
    system = body.get("system")
    blocks = [*(body.get("tools") or []), *(system if isinstance(system, list) else [])]
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, Mapping) else None
        for block in content if isinstance(content, list) else []:
            blocks.append(block)
            nested = block.get("content") if isinstance(block, Mapping) else None
            blocks.extend(nested if isinstance(nested, list) else [])
    marks = [b["cache_control"] for b in blocks if isinstance(b, Mapping) and "cache_control" in b]
    for mark in marks:
        if (
            not isinstance(mark, Mapping)
            or mark.get("type") != "ephemeral"
            or mark.get("ttl", "5m") not in ("5m", "1h")
        ):
            return f"cache_control: expected {{'type': 'ephemeral', 'ttl': '5m' | '1h'}}, got {mark!r}"
    if len(marks) > MAX_CACHE_MARKS:
        return f"A maximum of {MAX_CACHE_MARKS} blocks with cache_control may be provided. Found {len(marks)}."
    return None


def _messages(body: Mapping[str, Any], accepted: Callable[[Mapping[str, Any]], bool]) -> str | None:
    messages = [m for m in body.get("messages") or [] if isinstance(m, Mapping)]
    thinking_on = (body.get("thinking") or {}).get("type") == "enabled"
    pending: set[str] = set()  # tool_use ids of the previous assistant turn, to be answered in the next turn
    for i, message in enumerate(messages):
        content = message.get("content")
        blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
        if found := _blocks(i, blocks, accepted):
            return found
        if message.get("role") == "user":
            answered = {b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"}
            if unexpected := sorted(str(x) for x in answered - pending):
                return (
                    f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks: {unexpected[0]}. "
                    "Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                )
            if missing := sorted(pending - answered):
                return (
                    f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                    f"{missing[0]}. Each `tool_use` block must have a corresponding `tool_result` block in the "
                    "next message."
                )
            pending = set()
        else:
            pending = {str(b.get("id")) for b in blocks if b.get("type") == "tool_use"}
    if messages and messages[-1].get("role") == "assistant" and (found := _prefill(messages[-1])):
        return found
    if thinking_on:
        return _last_tool_turn_thinks(messages)
    return None


def _prefill(message: Mapping[str, Any]) -> str | None:
    content = message.get("content")
    last = content[-1] if isinstance(content, list) and content else {"type": "text", "text": content}
    text = last.get("text") if isinstance(last, Mapping) and last.get("type") == "text" else None
    if isinstance(text, str) and text != text.rstrip():
        return "messages: final assistant content cannot end with trailing whitespace"
    return None


def _blocks(i: int, blocks: list[Any], accepted: Callable[[Mapping[str, Any]], bool]) -> str | None:
    use_ids: set[object] = set()
    for j, block in enumerate(blocks):
        if not isinstance(block, Mapping):
            return f"messages.{i}.content.{j}: Input should be an object"
        source = block.get("source") if block.get("type") == "image" else None
        if (
            isinstance(source, Mapping)
            and source.get("type") == "base64"
            and source.get("media_type") not in IMAGE_MEDIA_TYPES
        ):
            return (
                f"messages.{i}.content.{j}.image.source.base64.media_type: Input should be one of {IMAGE_MEDIA_TYPES}"
            )
        if block.get("type") == "tool_use":
            if not isinstance(block.get("id"), str) or not TOOL_USE_ID.fullmatch(block["id"]):
                return f"messages.{i}.content.{j}.tool_use.id: String should match pattern '^[a-zA-Z0-9_-]+$'"
            if block["id"] in use_ids:
                return f"messages.{i}.content.{j}: `tool_use` ids must be unique"
            use_ids.add(block["id"])
        inner = block.get("content") if block.get("type") == "tool_result" else None
        for k, nested in enumerate(inner if isinstance(inner, list) else []):
            if isinstance(nested, Mapping) and (found := _text_problem(nested)):
                return f"messages.{i}.content.{j}.content.{k}: {found}"
        if found := _text_problem(block):
            return f"messages.{i}.content.{j}: {found}"
        if block.get("type") in THINKING_BLOCKS and not accepted(block):
            return f"messages.{i}.content.{j}: Invalid `signature` in `{block.get('type')}` block"
    return None


def _last_tool_turn_thinks(messages: list[Mapping[str, Any]]) -> str | None:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") != "assistant":
            continue
        content = messages[i].get("content")
        blocks = content if isinstance(content, list) else []
        if any(b.get("type") == "tool_use" for b in blocks) and blocks[0].get("type") not in THINKING_BLOCKS:
            return (
                f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                f"`{blocks[0].get('type')}`. When `thinking` is enabled, a final `assistant` message must start "
                "with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks)."
            )
        return None
    return None


def example(schema: object) -> Any:
    """`instance(schema)`, or "fake" for a schema too odd to fill (fuzzed requests must not crash the fake)."""
    try:
        return instance(schema) if isinstance(schema, Mapping) else "fake"
    except (TypeError, IndexError, AttributeError, KeyError, ValueError, RecursionError):
        return "fake"


def instance(schema: Mapping[str, Any], root: Mapping[str, Any] | None = None) -> Any:
    """A small value that satisfies `schema` (types, required properties, enums, local $refs, first anyOf)."""
    root = schema if root is None else root
    if isinstance(ref := schema.get("$ref"), str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, Mapping) else {}
        return instance(target, root)
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    if schema.get("anyOf"):
        return instance(schema["anyOf"][0], root)
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {name: instance(props.get(name) or {}, root) for name in schema.get("required") or props}
    scalars = {"string": "fake", "integer": 1, "number": 1.5, "boolean": True, "array": [], "null": None}
    return scalars.get(str(kind), "fake")
