"""Translate an OpenAI Chat Completions request body into an Anthropic Messages request body.

Pure: no I/O, no clock, no randomness. Every id the output needs is derived from the input, so the same
request always translates to the same dict. What cannot be expressed for Anthropic raises
`TranslationError`, whose message names the field, e.g.
"messages[2].content[0].type: 'input_audio' content parts are not supported in user messages; ...".
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import orjson

from ..structured_output import StructuredOutputError, apply_structured_output, structured_output
from ..thinking import NO_THINKING_EFFORTS, effort_budget, replay_missing, thinking_blocks_in, without_thinking
from ..translation import TranslationError, TranslationOptions

# Accepted and dropped: they have no Anthropic counterpart and no effect on the answer's content.
IGNORED_FIELDS: frozenset[str] = frozenset(
    {
        "stream_options",  # read by the caller of ChatStreamTranslator, not sent upstream
        "seed",
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "service_tier",
        "store",
        "metadata",  # OpenAI's stored-completion tags; Anthropic's metadata.user_id comes from `user`
    }
)
# Refused with TranslationError unless set to their no-op value (n: 1, logprobs: false, top_logprobs: 0).
# response_format becomes Anthropic structured outputs (gateway/dialects/structured_output.py).
REJECTED_FIELDS: frozenset[str] = frozenset({"n", "logprobs", "top_logprobs"})

SYSTEM_ROLES: frozenset[str] = frozenset({"system", "developer"})  # hoisted into the top-level `system`
# OpenAI role -> the Anthropic turn it joins; tool results travel in user turns.
ROLES: dict[str, str] = {"user": "user", "assistant": "assistant", "tool": "user", "function": "user"}
# Content part types each role may carry. "refusal" parts are text the assistant said.
CONTENT_PART_TYPES: dict[str, frozenset[str]] = {
    "system": frozenset({"text"}),
    "developer": frozenset({"text"}),
    "user": frozenset({"text", "image_url"}),
    "assistant": frozenset({"text", "refusal"}),
    "tool": frozenset({"text"}),
    "function": frozenset({"text"}),
}
IMAGE_MEDIA_TYPES: frozenset[str] = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
MEDIA_TYPE_ALIASES: dict[str, str] = {"image/jpg": "image/jpeg"}  # a common misspelling OpenAI takes
TOOL_CHOICES: dict[str, dict[str, str]] = {
    "auto": {"type": "auto"},
    "none": {"type": "none"},
    "required": {"type": "any"},
}
# Content part keys kept on the Anthropic block as the caller sent them (prompt caching, with its ttl).
KEPT_PART_FIELDS: tuple[str, ...] = ("cache_control",)
CACHE_TTLS: frozenset[str] = frozenset({"5m", "1h"})  # Anthropic CacheControlEphemeralParam.ttl
# Anthropic's patterns (anthropic SDK ToolParam.name, ToolUseBlockParam.id; the API refuses anything else).
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,128}")
TOOL_USE_ID = re.compile(r"[a-zA-Z0-9_-]+")
_NOT_ID_CHARS = re.compile(r"[^a-zA-Z0-9_-]")


def chat_request_to_anthropic(body: Mapping[str, Any], opts: TranslationOptions) -> dict[str, Any]:
    """Build the Anthropic Messages request for an OpenAI Chat Completions request body."""
    _reject_unsupported(body)
    system, messages = _Conversation.translate(body.get("messages"))
    out: dict[str, Any] = {"model": opts.provider_model, "max_tokens": _max_tokens(body, opts), "messages": messages}
    if system:
        out["system"] = system
    _add_sampling(out, body)
    _add_tools(out, body)
    _add_thinking(out, body, opts)
    _add_response_format(out, body.get("response_format"), opts, "response_format")
    if body.get("user") is not None:
        if not isinstance(body["user"], str):
            raise TranslationError(f"user: must be a string, got {body['user']!r}", "user")
        out["metadata"] = {"user_id": body["user"]}
    if body.get("stream") is not None:
        out["stream"] = stream_flag(body["stream"])
    return out


def stream_flag(value: object) -> bool:
    """`stream` as sent, when a boolean. A truthy "true" or 1 would have the upstream stream an answer the relay
    then reads as one JSON body (an empty 200 with its usage lost), so anything else is refused."""
    if not isinstance(value, bool):
        raise TranslationError(f"stream: must be true or false, got {value!r}", "stream")
    return value


def _reject_unsupported(body: Mapping[str, Any]) -> None:
    if body.get("n") not in (None, 1):
        raise TranslationError("n: only one choice per request is supported; send n=1 or omit it", "n")
    if body.get("logprobs"):
        raise TranslationError("logprobs: log probabilities are not available from Anthropic models", "logprobs")
    if body.get("top_logprobs"):
        raise TranslationError(
            "top_logprobs: log probabilities are not available from Anthropic models", "top_logprobs"
        )


def _max_tokens(body: Mapping[str, Any], opts: TranslationOptions) -> int:
    for field in ("max_completion_tokens", "max_tokens"):  # the newer name wins when both are sent
        if body.get(field) is not None:
            value = body[field]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise TranslationError(f"{field}: must be a positive integer, got {value!r}", field)
            return value
    return opts.default_max_tokens


def _add_sampling(out: dict[str, Any], body: Mapping[str, Any]) -> None:
    if body.get("temperature") is not None:
        out["temperature"] = min(max(_number(body, "temperature"), 0), 1)  # OpenAI allows 0..2, Anthropic 0..1
    if body.get("top_p") is not None:
        if not 0 <= (top_p := _number(body, "top_p")) <= 1:  # the same range for OpenAI and Anthropic
            raise TranslationError(f"top_p: must be between 0 and 1, got {top_p!r}", "top_p")
        out["top_p"] = top_p
    stop = body.get("stop")
    if stop is None:
        return
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise TranslationError(f"stop: must be a string or a list of strings, got {stop!r}", "stop")
    # Anthropic refuses a stop sequence without non-whitespace ("\n" is a common OpenAI one): dropped.
    if kept := [s for s in stops if has_text(s)]:
        out["stop_sequences"] = kept
    elif stops:
        message = f"stop: {stop!r} has only empty or whitespace stop sequences, which Anthropic does not accept"
        raise TranslationError(message, "stop")


def _number(body: Mapping[str, Any], field: str) -> float:
    value = body[field]
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TranslationError(f"{field}: must be a number, got {value!r}", field)
    return value


def _add_tools(out: dict[str, Any], body: Mapping[str, Any]) -> None:
    tools = _tools(body)
    choice = _tool_choice(body)
    check_tool_choice(choice, tools, "tool_choice" if body.get("tool_choice") is not None else "function_call")
    if not tools:  # Anthropic wants no tool_choice without tools; OpenAI clients often send "auto" with tools: []
        return
    out["tools"] = tools
    if body.get("parallel_tool_calls") is False:
        choice = choice or {"type": "auto"}
        if choice["type"] != "none":  # the flag does not exist on {"type": "none"}
            choice["disable_parallel_tool_use"] = True
    if choice is not None:
        out["tool_choice"] = choice


def _tools(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    if body.get("tools") is not None:
        tools = _expect_list(body["tools"], "tools")
        for i, tool in enumerate(tools):
            if not isinstance(tool, Mapping) or tool.get("type") != "function":
                kind = tool.get("type") if isinstance(tool, Mapping) else tool
                message = f"tools[{i}].type: {kind!r} tools are not supported; only function tools are"
                raise TranslationError(message, f"tools[{i}].type")
        translated = [_function_to_tool(tool.get("function"), f"tools[{i}].function") for i, tool in enumerate(tools)]
        return unique_tools(translated, [f"tools[{i}].function.name" for i in range(len(tools))])
    functions = _expect_list(body.get("functions") or [], "functions")  # legacy name for function tools
    translated = [_function_to_tool(fn, f"functions[{i}]") for i, fn in enumerate(functions)]
    return unique_tools(translated, [f"functions[{i}].name" for i in range(len(functions))])


def _function_to_tool(fn: object, where: str) -> dict[str, Any]:
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
        raise TranslationError(f"{where}.name: a function name is required", f"{where}.name")
    tool: dict[str, Any] = {"name": tool_name(fn["name"], f"{where}.name")}
    if fn.get("description") is not None:
        if not isinstance(fn["description"], str):
            raise TranslationError(f"{where}.description: must be a string", f"{where}.description")
        tool["description"] = fn["description"]
    tool["input_schema"] = input_schema(fn.get("parameters"), f"{where}.parameters")
    return tool


def tool_name(name: str, where: str) -> str:
    """`name` when Anthropic takes it as a tool name (1 to 128 of a-z, A-Z, 0-9, _ and -, as OpenAI's 64)."""
    if not TOOL_NAME.fullmatch(name):
        message = f"{where}: {name!r} is not a valid tool name; use 1 to 128 letters, digits, '_' or '-'"
        raise TranslationError(message, where)
    return name


def input_schema(parameters: object, where: str) -> dict[str, Any]:
    """A tool's JSON schema as Anthropic's input_schema, which must be an object schema with "type": "object"
    (anthropic SDK `InputSchema`); a schema that omits "type" gets it, as OpenAI assumes it."""
    if parameters is None or parameters == {}:
        return {"type": "object", "properties": {}}
    if not isinstance(parameters, Mapping):
        raise TranslationError(f"{where}: must be a JSON schema object", where)
    if parameters.get("type", "object") != "object":
        message = f"{where}.type: tool parameters must be an object schema, got type {parameters['type']!r}"
        raise TranslationError(message, f"{where}.type")
    return {"type": "object", **parameters}


def unique_tools(tools: list[dict[str, Any]], wheres: list[str]) -> list[dict[str, Any]]:
    """`tools`, refused when two share a name (Anthropic: "Tool names must be unique"); wheres[i] names tool i."""
    seen: set[str] = set()
    for tool, where in zip(tools, wheres, strict=True):
        if tool["name"] in seen:
            raise TranslationError(f"{where}: tool name {tool['name']!r} is used twice; names must be unique", where)
        seen.add(tool["name"])
    return tools


def check_tool_choice(choice: Mapping[str, Any] | None, tools: list[dict[str, Any]], where: str) -> None:
    """Refuse a forced tool call with nothing to call: a named tool not among `tools`, or "required" without tools.
    Dropped, the answer would come back as text the caller did not ask for (OpenAI refuses both too)."""
    if choice is not None and choice.get("type") == "tool" and choice["name"] not in {t["name"] for t in tools}:
        raise TranslationError(f"{where}: {choice['name']!r} is not the name of a tool in tools", where)
    if choice is not None and choice.get("type") == "any" and not tools:
        raise TranslationError(f'{where}: "required" needs tools to call; none were sent', where)


def tool_use_id(call_id: str) -> str:
    """`call_id` as Anthropic takes a tool_use id (^[a-zA-Z0-9_-]+$). Other providers' ids ("functions.lookup:0")
    are rewritten the same way wherever they occur, so a call and its result still pair; the hash of the
    original keeps two ids that differ only in such characters apart."""
    if TOOL_USE_ID.fullmatch(call_id):
        return call_id
    return f"{_NOT_ID_CHARS.sub('_', call_id)}_{hashlib.sha256(call_id.encode()).hexdigest()[:12]}"


def _tool_choice(body: Mapping[str, Any]) -> dict[str, Any] | None:
    for field in ("tool_choice", "function_call"):  # function_call is the legacy name
        choice = body.get(field)
        if isinstance(choice, str) and choice in TOOL_CHOICES:
            return dict(TOOL_CHOICES[choice])
        if isinstance(choice, Mapping):
            # {"type": "function", "function": {"name": X}}; legacy function_call is {"name": X}
            fn = choice.get("function") if field == "tool_choice" and choice.get("type") == "function" else choice
            if isinstance(fn, Mapping) and isinstance(fn.get("name"), str):
                return {"type": "tool", "name": fn["name"]}
        if choice is not None:
            message = f'{field}: expected "auto", "none", "required" or a named function, got {choice!r}'
            raise TranslationError(message, field)
    return None


def _add_response_format(out: dict[str, Any], fmt: object, opts: TranslationOptions, where: str) -> None:
    try:
        apply_structured_output(out, structured_output(fmt, native=opts.structured_outputs, where=where), where)
    except StructuredOutputError as exc:
        raise TranslationError(str(exc), exc.param) from None


def _add_thinking(out: dict[str, Any], body: Mapping[str, Any], opts: TranslationOptions) -> None:
    effort = body.get("reasoning_effort")
    if effort is not None and not isinstance(effort, str):
        raise TranslationError(f"reasoning_effort: expected a string, got {effort!r}", "reasoning_effort")
    if effort is None or effort in NO_THINKING_EFFORTS:
        out["messages"] = without_thinking(out["messages"])  # the API wants no thinking blocks without thinking
        return
    if not opts.thinking_budgets:
        message = "reasoning_effort: this model does not support reasoning (no thinking budgets); omit reasoning_effort"
        raise TranslationError(message, "reasoning_effort")
    budget = effort_budget(effort, opts.thinking_budgets)
    if budget is None:
        known = ", ".join(["none", *opts.thinking_budgets])
        raise TranslationError(f"reasoning_effort: {effort!r} is not supported; use one of {known}", "reasoning_effort")
    if replay_missing(out["messages"]):  # the last tool-use turn came back without its signed thinking: the API
        out["messages"] = without_thinking(out["messages"])  # would refuse it with thinking on, so think not
        return
    if out.get("tool_choice", {}).get("type") in ("any", "tool"):
        message = "tool_choice: with reasoning_effort set only auto or none are supported (Anthropic extended thinking)"
        raise TranslationError(message, "tool_choice")
    out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    if out["max_tokens"] <= budget:  # Anthropic requires budget_tokens < max_tokens
        out["max_tokens"] = budget + opts.default_max_tokens
    # Anthropic rejects temperature and (most) top_p values while thinking is on. Dropping them keeps
    # the request working; the client asked for reasoning, which matters more than sampling knobs.
    out.pop("temperature", None)
    out.pop("top_p", None)


def has_text(text: str) -> bool:
    """True when `text` has a non-whitespace character (Anthropic refuses empty and whitespace-only text).

    `isspace` stops at the first such character and copies nothing, unlike `strip` (tool results can be MBs).
    """
    return bool(text) and not text.isspace()


def check_tool_pairs(messages: list[dict[str, Any]], sources: Mapping[int, tuple[str, str]]) -> None:
    """Refuse a history whose tool calls and results do not pair up as Anthropic requires: each result answers a
    call of the assistant turn just before it, and each call is answered in the turn after it
    (https://platform.claude.com/docs/en/agents-and-tools/tool-use/implement-tool-use). The API would refuse it
    too, naming its own renumbered message; this names the caller's field. `sources` maps id() of a block to
    (caller's field, caller's id). OpenAI refuses both cases alike."""
    pending: dict[str, dict[str, Any]] = {}  # tool_use id -> block, of the assistant turn just before
    for message in messages:
        if message["role"] == "assistant":  # consecutive assistant turns were merged, so nothing is pending here
            pending = {b["id"]: b for b in message["content"] if b["type"] == "tool_use"}
            continue
        answered = {b["tool_use_id"] for b in message["content"] if b["type"] == "tool_result"}
        for block in message["content"]:
            if block["type"] == "tool_result" and block["tool_use_id"] not in pending:
                where, call_id = sources.get(id(block), ("messages", block["tool_use_id"]))
                message_text = f"{where}: {call_id!r} answers no tool call of the assistant message just before it"
                raise TranslationError(message_text, where)
        for call_id, block in pending.items():
            if call_id not in answered:
                where, caller_id = sources.get(id(block), ("messages", call_id))
                message_text = f"{where}: tool call {caller_id!r} has no result; answer every call before the next turn"
                raise TranslationError(message_text, where)
        pending = {}


def trim_prefill(messages: list[dict[str, Any]]) -> None:
    """Strip the trailing whitespace off the last text of a final assistant turn (a prefill, which the model
    continues): Anthropic refuses it ("final assistant content cannot end with trailing whitespace")."""
    if messages and messages[-1]["role"] == "assistant" and (last := messages[-1]["content"][-1])["type"] == "text":
        last["text"] = last["text"].rstrip()  # has_text kept only blocks with non-whitespace: never emptied


def settle_history(
    messages: list[dict[str, Any]], sources: Mapping[int, tuple[str, str]], *, field: str, what: str
) -> None:
    """The last steps of every caller's history on its way to a Messages request, in place: tool_result blocks
    first in each user turn (Anthropic wants them before any other user content), at least one turn with content,
    calls and results paired (check_tool_pairs), no trailing whitespace on a prefill (trim_prefill).

    Raises TranslationError naming `field` ("messages", "input") when no `what` ("message", "input item") has
    any non-whitespace content, which Anthropic refuses.
    """
    for message in messages:
        if message["role"] == "user":
            message["content"].sort(key=lambda block: block["type"] != "tool_result")
    if not messages:
        raise TranslationError(f"{field}: no {what} has any non-whitespace content", field)
    check_tool_pairs(messages, sources)
    trim_prefill(messages)


def _expect_list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise TranslationError(f"{where}: must be a list", where)
    return value


class _Conversation:
    """Collects Anthropic turns, merging consecutive ones of the same role."""

    def __init__(self) -> None:
        self.system: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        self._legacy_call_ids: dict[str, str] = {}  # function name -> id of its latest assistant function_call
        self.sources: dict[int, tuple[str, str]] = {}  # id() of a tool_use/tool_result block -> (field, caller's id)

    @classmethod
    def translate(cls, raw: object) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        if not isinstance(raw, list) or not raw:
            raise TranslationError("messages: must be a non-empty list of messages", "messages")
        conversation = cls()
        for i, message in enumerate(raw):
            if not isinstance(message, Mapping):
                raise TranslationError(f"messages[{i}]: each message must be an object", f"messages[{i}]")
            conversation.add(i, message)
        settle_history(conversation.messages, conversation.sources, field="messages", what="message")
        return conversation.system, conversation.messages

    def add(self, i: int, message: Mapping[str, Any]) -> None:
        where, role = f"messages[{i}]", message.get("role")
        if not isinstance(role, str):
            raise TranslationError(f"{where}.role: expected a string, got {role!r}", f"{where}.role")
        if role in SYSTEM_ROLES:
            self.system.extend(_content_blocks(message.get("content"), role, where))
        elif role == "user":
            self._append("user", _content_blocks(message.get("content"), role, where))
        elif role == "assistant":
            self._append("assistant", self._assistant_blocks(i, message, where))
        elif role == "tool":
            if not isinstance(message.get("tool_call_id"), str):
                raise TranslationError(f"{where}.tool_call_id: is required", f"{where}.tool_call_id")
            block = _tool_result(message["tool_call_id"], message, where)
            self.sources[id(block)] = (f"{where}.tool_call_id", message["tool_call_id"])
            self._append("user", [block])
        elif role == "function":
            if not isinstance(name := message.get("name"), str):
                raise TranslationError(f"{where}.name: is required for function messages", f"{where}.name")
            call_id = self._legacy_call_ids.get(name, f"call_{name}_{i}")
            block = _tool_result(call_id, message, where)
            self.sources[id(block)] = (f"{where}.name", name)
            self._append("user", [block])
        else:
            known = ", ".join([*sorted(SYSTEM_ROLES), *ROLES])
            raise TranslationError(f"{where}.role: unknown role {role!r}; expected one of {known}", f"{where}.role")

    def _assistant_blocks(self, i: int, message: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
        # Signed thinking first (as the API requires), then text, then tool calls.
        blocks = [*thinking_blocks_in(message), *_content_blocks(message.get("content"), "assistant", where)]
        for j, call in enumerate(_expect_list(message.get("tool_calls") or [], f"{where}.tool_calls")):
            call_where = f"{where}.tool_calls[{j}]"
            if not isinstance(call, Mapping) or call.get("type", "function") != "function":
                raise TranslationError(
                    f"{call_where}.type: only function tool calls are supported", f"{call_where}.type"
                )
            call_id = call.get("id") or f"call_{i}_{j}"
            if not isinstance(call_id, str):
                raise TranslationError(f"{call_where}.id: must be a string, got {call_id!r}", f"{call_where}.id")
            blocks.append(_tool_use(call_id, call.get("function"), f"{call_where}.function"))
            self.sources[id(blocks[-1])] = (f"{call_where}.id", call_id)
            if any(b["type"] == "tool_use" and b["id"] == blocks[-1]["id"] for b in blocks[:-1]):
                twice = f"{call_where}.id: {call_id!r} is used twice in this message; tool call ids must be unique"
                raise TranslationError(twice, f"{call_where}.id")
        if message.get("function_call") is not None:  # legacy: one call, no id; synthesise a stable one
            block = _tool_use("", message["function_call"], f"{where}.function_call")
            block["id"] = self._legacy_call_ids[block["name"]] = tool_use_id(f"call_{block['name']}_{i}")
            blocks.append(block)
            self.sources[id(block)] = (f"{where}.function_call", block["name"])
        return blocks

    def _append(self, role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:  # Anthropic rejects empty turns and empty text blocks
            return
        if self.messages and self.messages[-1]["role"] == role:
            self.messages[-1]["content"].extend(blocks)
        else:
            self.messages.append({"role": role, "content": blocks})


def _content_blocks(content: object, role: str, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if has_text(content) else []  # whitespace-only text is refused
    if not isinstance(content, list):
        message = f"{where}.content: must be a string or a list of content parts"
        raise TranslationError(message, f"{where}.content")
    blocks = (_content_block(part, role, f"{where}.content[{j}]") for j, part in enumerate(content))
    return [block for block in blocks if block is not None]


def _content_block(part: object, role: str, where: str) -> dict[str, Any] | None:
    if not isinstance(part, Mapping):
        raise TranslationError(f"{where}: content parts must be objects, got {part!r}", where)
    kind, allowed = part.get("type"), CONTENT_PART_TYPES[role]
    if not isinstance(kind, str) or kind not in allowed:
        supported = ", ".join(sorted(allowed))
        message = f"{where}.type: {kind!r} content parts are not supported in {role} messages; supported: {supported}"
        raise TranslationError(message, f"{where}.type")
    if kind == "image_url":
        block = _image_block(part.get("image_url"), f"{where}.image_url")
    else:
        text = part.get(kind)  # {"type": "text", "text": ...} and {"type": "refusal", "refusal": ...}
        if not isinstance(text, str):
            raise TranslationError(f"{where}.{kind}: must be a string", f"{where}.{kind}")
        if not has_text(text):  # Anthropic refuses empty and whitespace-only text blocks
            return None
        block = {"type": "text", "text": text}
    for name in KEPT_PART_FIELDS:  # the caller's cache breakpoints (and their ttl) stay on their block
        if part.get(name) is not None:
            block[name] = cache_control(part[name], f"{where}.{name}")
    return block


def cache_control(value: object, where: str) -> dict[str, Any]:
    """A caller's cache breakpoint, checked as Anthropic checks it: {"type": "ephemeral"} and an optional ttl of
    "5m" or "1h" (https://platform.claude.com/docs/en/build-with-claude/prompt-caching)."""
    if (
        not isinstance(value, Mapping)
        or value.get("type") != "ephemeral"
        or value.get("ttl", "5m") not in CACHE_TTLS
        or not set(value) <= {"type", "ttl"}
    ):
        message = f'{where}: expected {{"type": "ephemeral"}} with an optional ttl of "5m" or "1h", got {value!r}'
        raise TranslationError(message, where)
    return dict(value)


def _image_block(image_url: object, where: str) -> dict[str, Any]:
    url = image_url.get("url") if isinstance(image_url, Mapping) else image_url
    if not isinstance(url, str):
        raise TranslationError(f"{where}.url: an image URL is required", f"{where}.url")
    scheme = url.partition(":")[0].lower()
    if scheme in ("http", "https"):
        return {"type": "image", "source": {"type": "url", "url": url}}
    if scheme != "data":
        message = f"{where}.url: {scheme!r} image URLs are not supported; use https: or a base64 data: URL"
        raise TranslationError(message, f"{where}.url")
    header, comma, data = url[5:].partition(",")
    media_type, *params = header.split(";")
    media_type = MEDIA_TYPE_ALIASES.get(media_type.lower(), media_type.lower())  # MIME types are case-insensitive
    if not comma or params[-1:] != ["base64"]:
        raise TranslationError(f"{where}.url: data URLs must look like data:<mime>;base64,<data>", f"{where}.url")
    if media_type not in IMAGE_MEDIA_TYPES:
        supported = ", ".join(sorted(IMAGE_MEDIA_TYPES))
        message = f"{where}.url: image type {media_type!r} is not supported; supported: {supported}"
        raise TranslationError(message, f"{where}.url")
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _tool_use(call_id: str, fn: object, where: str) -> dict[str, Any]:
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
        raise TranslationError(f"{where}.name: a function name is required", f"{where}.name")
    arguments = _arguments(fn.get("arguments"), f"{where}.arguments")
    return {"type": "tool_use", "id": tool_use_id(call_id), "name": fn["name"], "input": arguments}


def _arguments(raw: object, where: str) -> dict[str, Any]:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    try:
        parsed = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
    except orjson.JSONDecodeError as exc:
        raise TranslationError(f"{where}: not valid JSON ({exc})", where) from exc
    if not isinstance(parsed, dict):
        raise TranslationError(f"{where}: must be a JSON object, got {type(parsed).__name__}", where)
    return parsed


def _tool_result(call_id: str, message: Mapping[str, Any], where: str) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id(call_id)}
    content = message.get("content")
    if isinstance(content, str):
        if has_text(content):
            block["content"] = content
    elif content is not None and (parts := _content_blocks(content, message["role"], where)):
        block["content"] = parts
    return block
