"""Add Anthropic prompt-cache breakpoints to a Messages request that has none (or too few) of its own.

OpenAI-dialect clients (Cursor, Codex, the `openai` SDK) never send `cache_control`: OpenAI caches prefixes on its
own, Anthropic only where a request marks a breakpoint. For an alias with `auto_cache: true` the gateway marks
them, so a long, repeated prefix (system prompt, tools, the conversation so far) is read from the cache at a tenth
of the input price instead of being paid in full on every turn.

Pure: the input is never modified; a new request dict comes back.

    >>> body = {"system": "Be brief.", "messages": [{"role": "user", "content": "hi"}]}
    >>> with_cache_breakpoints(body)["messages"][0]["content"]
    [{'type': 'text', 'text': 'hi', 'cache_control': {'type': 'ephemeral'}}]
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

MAX_BREAKPOINTS = 4  # Anthropic refuses a request with more than four cache_control marks
CACHE_CONTROL: dict[str, str] = {"type": "ephemeral"}  # the default five-minute cache
# Content blocks that may carry cache_control; thinking blocks may not, and empty text blocks are refused anyway.
CACHEABLE_BLOCKS: frozenset[str] = frozenset(
    {"text", "image", "document", "tool_use", "tool_result", "search_result", "server_tool_use"}
)


def with_cache_breakpoints(body: Mapping[str, Any]) -> dict[str, Any]:
    """`body` with up to four cache breakpoints, most valuable first, never more than Anthropic allows.

    In order: the last message (the whole prefix, read back by the next turn), the user message before it (what
    the previous turn wrote, read now), the last system block and the last tool (both survive an edited history).
    Blocks that already carry cache_control (the caller's, ttl and all) are left alone and count against the four.
    A mark added before a caller's one-hour mark gets the one-hour ttl too: the API refuses a longer-lived
    breakpoint after a shorter one (https://platform.claude.com/docs/en/build-with-claude/prompt-caching,
    "Mixing different TTLs").
    """
    out = copy.deepcopy(dict(body))
    budget = MAX_BREAKPOINTS - sum(1 for _ in _marked_blocks(out))
    if budget <= 0:
        return out
    candidates = _candidates(out)  # first: it turns string system/content into blocks, which get positions below
    order = {id(block): position for position, block in enumerate(_in_prompt_order(out))}
    long_lived = [
        order.get(id(b), -1) for b in _marked_blocks(out) if (b.get("cache_control") or {}).get("ttl") == "1h"
    ]
    last_long = max(long_lived, default=-1)
    for block in candidates:
        if budget <= 0:
            break
        if block is not None and "cache_control" not in block:
            before_long = order.get(id(block), last_long) < last_long
            block["cache_control"] = {**CACHE_CONTROL, "ttl": "1h"} if before_long else dict(CACHE_CONTROL)
            budget -= 1
    return out


def _in_prompt_order(out: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every block in the order the API reads the prompt: tools, system, then each message's content."""
    system = out.get("system")
    yield from (b for b in [*(out.get("tools") or []), *(system if isinstance(system, list) else [])])
    for message in out.get("messages") or []:
        content = message.get("content") if isinstance(message, Mapping) else None
        for block in content if isinstance(content, list) else []:
            if isinstance(block, Mapping):
                yield block
                nested = block.get("content")
                yield from (b for b in (nested if isinstance(nested, list) else []) if isinstance(b, Mapping))


def _candidates(out: dict[str, Any]) -> list[dict[str, Any] | None]:
    messages = [m for m in out.get("messages") or [] if isinstance(m, dict)]
    earlier_users = [m for m in messages[:-1] if m.get("role") == "user"]
    return [
        _last_cacheable(messages[-1]) if messages else None,
        _last_cacheable(earlier_users[-1]) if earlier_users else None,
        _last_system_block(out),
        _last_tool(out),
    ]


def _last_cacheable(message: dict[str, Any] | None) -> dict[str, Any] | None:
    if message is None:
        return None
    content = message.get("content")
    if isinstance(content, str):
        if not content:
            return None
        content = message["content"] = [{"type": "text", "text": content}]
    if not isinstance(content, list):
        return None
    for block in reversed(content):
        if isinstance(block, dict) and block.get("type") in CACHEABLE_BLOCKS and block.get("text", True) != "":
            return block
    return None


def _last_system_block(out: dict[str, Any]) -> dict[str, Any] | None:
    system = out.get("system")
    if isinstance(system, str):
        if not system:
            return None
        system = out["system"] = [{"type": "text", "text": system}]
    if isinstance(system, list) and system and isinstance(system[-1], dict):
        return system[-1]
    return None


def _last_tool(out: dict[str, Any]) -> dict[str, Any] | None:
    tools = out.get("tools")
    if isinstance(tools, list) and tools and isinstance(tools[-1], dict):
        return tools[-1]
    return None


def _marked_blocks(out: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every block that already carries cache_control: tools, system, message content and tool_result content."""
    system = out.get("system")
    for block in [*(out.get("tools") or []), *(system if isinstance(system, list) else [])]:
        if isinstance(block, Mapping) and "cache_control" in block:
            yield block
    for message in out.get("messages") or []:
        content = message.get("content") if isinstance(message, Mapping) else None
        for block in content if isinstance(content, list) else []:
            if not isinstance(block, Mapping):
                continue
            if "cache_control" in block:
                yield block
            nested = block.get("content")
            for inner in nested if isinstance(nested, list) else []:
                if isinstance(inner, Mapping) and "cache_control" in inner:
                    yield inner
