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

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..chat.request import (
    TOOL_CHOICES,
    _add_response_format,
    _add_sampling,
    _add_thinking,
    check_tool_choice,
    has_text,
    stream_flag,
)
from ..translation import TranslationError, TranslationOptions
from .items import Items
from .tools import NAMESPACE_SEPARATOR, ToolOrigin, Tools, str_or_none

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
INCLUDE_REASONING = "reasoning.encrypted_content"
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
    tools = Tools.translate(body.get("tools"))
    system, messages = Items.translate(body.get("input"), tools.anthropic_names)
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
    if body.get("stream") is not None:
        out["stream"] = stream_flag(body["stream"])
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


def _add_tool_choice(out: dict[str, Any], body: Mapping[str, Any], tools: Tools) -> None:
    choice = body.get("tool_choice")
    translated: dict[str, Any] | None = None
    if isinstance(choice, str) and choice in TOOL_CHOICES:
        translated = dict(TOOL_CHOICES[choice])
    elif (
        isinstance(choice, Mapping) and choice.get("type") in ("function", "custom") and str_or_none(choice.get("name"))
    ):
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
    check_tool_choice(translated, out.get("tools", []), "tool_choice")
    if translated is not None and "tools" in out:  # Anthropic wants no tool_choice without tools
        out["tool_choice"] = translated


def _include(body: Mapping[str, Any]) -> list[Any]:
    include = body.get("include")
    return include if isinstance(include, list) else []
