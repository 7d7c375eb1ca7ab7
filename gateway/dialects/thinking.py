"""Extended thinking for OpenAI-dialect callers: effort -> budget, and signed thinking carried across turns.

Pure: no I/O. Anthropic checks two things when thinking is on and tools are in play
(https://platform.claude.com/docs/en/build-with-claude/extended-thinking#preserving-thinking-blocks):
the last assistant turn that used a tool must start with its thinking (or redacted_thinking) block, and each
block must come back exactly as it was issued (its `signature` proves it). OpenAI's wire formats have no field
for that, so the gateway uses the one OpenAI-compatible gateways and clients already round-trip, LiteLLM's
`thinking_blocks` on the assistant message (https://docs.litellm.ai/docs/reasoning_content):

    {"role": "assistant", "content": null, "reasoning_content": "Let me check.",
     "thinking_blocks": [{"type": "thinking", "thinking": "Let me check.", "signature": "EqoB..."},
                         {"type": "redacted_thinking", "data": "EmwK..."}],
     "tool_calls": [...]}

OpenRouter's `reasoning_details` ({"type": "reasoning.text", "text", "signature"} / {"type":
"reasoning.encrypted", "data"}) is accepted back too. A history whose last tool-use turn has no thinking to
replay (a client that drops unknown fields, as LangChain's ChatOpenAI does) is sent without thinking rather than
refused; the relay says so in the `X-Gateway-Thinking` response header.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# OpenAI reasoning effort values, least to most (openai SDK `ReasoningEffort`: none, minimal, low, medium, high,
# xhigh, max). "none" turns thinking off; any other value takes the configured budget of the nearest configured
# effort, the smaller one on a tie (minimal -> low when only low/medium/high are configured; max -> high).
EFFORTS: tuple[str, ...] = ("minimal", "low", "medium", "high", "xhigh", "max")
NO_THINKING_EFFORTS: frozenset[str] = frozenset({"none"})
THINKING_BLOCKS: frozenset[str] = frozenset({"thinking", "redacted_thinking"})
THINKING_HEADER = "X-Gateway-Thinking"
THINKING_SKIPPED = "off; the last tool-use turn has no thinking_blocks to replay (send them back to keep reasoning)"


def effort_budget(effort: str, budgets: Mapping[str, int]) -> int | None:
    """The thinking budget for `effort`: its own, else the nearest configured one; None if `effort` is unknown.

    >>> effort_budget("xhigh", {"low": 2048, "medium": 8192, "high": 24576})
    24576
    >>> effort_budget("minimal", {"low": 2048, "high": 24576})
    2048
    """
    if effort in budgets:
        return budgets[effort]
    if effort not in EFFORTS:
        return None
    rank = EFFORTS.index(effort)
    known = sorted((abs(EFFORTS.index(e) - rank), EFFORTS.index(e), budgets[e]) for e in budgets if e in EFFORTS)
    return known[0][2] if known else None


def thinking_blocks_in(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Anthropic thinking blocks a chat assistant message carries back (`thinking_blocks` or
    `reasoning_details`), in order and unchanged; blocks without a signature or data are left out (unverifiable).
    """
    blocks: list[dict[str, Any]] = []
    for raw in _list(message.get("thinking_blocks")):
        if isinstance(raw, Mapping) and raw.get("type") == "thinking" and _text(raw.get("signature")):
            thinking = str(raw.get("thinking") or "")
            blocks.append({"type": "thinking", "thinking": thinking, "signature": raw["signature"]})
        elif isinstance(raw, Mapping) and raw.get("type") == "redacted_thinking" and _text(raw.get("data")):
            blocks.append({"type": "redacted_thinking", "data": raw["data"]})
    if blocks:
        return blocks
    for raw in _list(message.get("reasoning_details")):  # OpenRouter's spelling of the same blocks
        if not isinstance(raw, Mapping):
            continue
        if raw.get("type") == "reasoning.text" and _text(raw.get("signature")):
            blocks.append({"type": "thinking", "thinking": str(raw.get("text") or ""), "signature": raw["signature"]})
        elif raw.get("type") == "reasoning.encrypted" and _text(raw.get("data")):
            blocks.append({"type": "redacted_thinking", "data": raw["data"]})
    return blocks


def thinking_blocks_out(content: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The `thinking_blocks` to hand a chat caller for an Anthropic reply's content (empty: none)."""
    out: list[dict[str, Any]] = []
    for block in content:
        if block.get("type") == "thinking":
            out.append({"type": "thinking", "thinking": block.get("thinking", ""), "signature": block.get("signature")})
        elif block.get("type") == "redacted_thinking":
            out.append({"type": "redacted_thinking", "data": block.get("data")})
    return out


def replay_missing(messages: list[dict[str, Any]]) -> bool:
    """True when the last assistant turn calls a tool but does not open with thinking: the API refuses that with
    thinking on ("Expected `thinking` or `redacted_thinking`, but found `tool_use`")."""
    for message in reversed(messages):
        if message.get("role") != "assistant":
            continue
        content = message.get("content")
        blocks = content if isinstance(content, list) else []
        uses_tool = any(isinstance(b, Mapping) and b.get("type") == "tool_use" for b in blocks)
        return uses_tool and not (blocks and blocks[0].get("type") in THINKING_BLOCKS)
    return False


def without_thinking(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`messages` with thinking blocks taken out of assistant turns (a request with thinking off); an assistant
    turn left empty is dropped and the turns around it are merged."""
    if not any(_has_thinking(m) for m in messages):  # the common case: nothing to copy
        return messages
    out: list[dict[str, Any]] = []
    for message in messages:
        content = message.get("content")
        if message.get("role") == "assistant" and isinstance(content, list):
            kept = [b for b in content if not (isinstance(b, Mapping) and b.get("type") in THINKING_BLOCKS)]
            if not kept:
                continue
            message = {**message, "content": kept}
        if out and out[-1]["role"] == message["role"] and isinstance(out[-1]["content"], list):
            out[-1] = {**out[-1], "content": [*out[-1]["content"], *_blocks(message.get("content"))]}
        else:
            out.append(message)
    return out


def _has_thinking(message: Mapping[str, Any]) -> bool:
    content = message.get("content")
    blocks = content if message.get("role") == "assistant" and isinstance(content, list) else []
    return any(isinstance(b, Mapping) and b.get("type") in THINKING_BLOCKS for b in blocks)


def _blocks(content: object) -> list[Any]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content and not content.isspace() else []
    return list(content) if isinstance(content, list) else []


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def thinking_headers(body: Mapping[str, Any], request: Mapping[str, Any]) -> dict[str, str]:
    """The response headers that tell a caller its reasoning request was sent without thinking ({} otherwise).

    `body` is the caller's (Chat `reasoning_effort` or Responses `reasoning.effort`), `request` the Messages request.
    """
    effort = body.get("reasoning_effort")
    reasoning = body.get("reasoning")
    if effort is None and isinstance(reasoning, Mapping):
        effort = reasoning.get("effort")
    if isinstance(effort, str) and effort not in NO_THINKING_EFFORTS and "thinking" not in request:
        return {THINKING_HEADER: THINKING_SKIPPED}
    return {}
