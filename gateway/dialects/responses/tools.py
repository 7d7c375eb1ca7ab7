"""The Responses request's tools (function, custom, namespaces of them) as Anthropic tools, and where each came from.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..chat.request import (
    input_schema,
    tool_name,
)
from ..translation import TranslationError

# Hosted tools OpenAI runs itself: dropped from the tool list (Codex always offers web_search); the model answers
# without them. Any other non-function tool type is refused.
DROPPED_TOOLS: frozenset[str] = frozenset({"web_search", "web_search_preview", "web_search_2025_08_26"})
NAMESPACE_SEPARATOR = "__"  # a namespace's tools become Anthropic tools named <namespace>__<tool>
CUSTOM_TOOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"input": {"type": "string", "description": "The whole input for the tool, as plain text."}},
    "required": ["input"],
}


@dataclass(frozen=True, slots=True)
class ToolOrigin:
    """The Responses tool an Anthropic tool stands for."""

    name: str
    custom: bool = False  # a "custom" (free-form text) tool: its call is a custom_tool_call with an `input` string
    namespace: str | None = None


class Tools:
    """The request's tools as Anthropic tools, with where each came from."""

    def __init__(self) -> None:
        self.anthropic: list[dict[str, Any]] = []
        self.origins: dict[str, ToolOrigin] = {}

    @property
    def anthropic_names(self) -> Mapping[str, ToolOrigin]:
        return self.origins

    @classmethod
    def translate(cls, raw: object) -> Tools:
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
        if str_or_none(kind) in DROPPED_TOOLS:
            return
        if kind == "namespace" and namespace is None:
            inner_tools = tool.get("tools")
            if not isinstance(inner_tools, list):
                raise TranslationError(f"{where}.tools: a namespace's tools must be a list", f"{where}.tools")
            for j, inner in enumerate(inner_tools):
                self.add(inner, f"{where}.tools[{j}]", namespace=required_name(tool, where))
            return
        if kind not in ("function", "custom"):
            message = f"{where}.type: {kind!r} tools are not supported; function and custom tools are"
            raise TranslationError(message, f"{where}.type")
        name = required_name(tool, where)
        anthropic_name = tool_name(f"{namespace}{NAMESPACE_SEPARATOR}{name}" if namespace else name, f"{where}.name")
        if anthropic_name in self.origins:
            message = f"{where}.name: tool name {anthropic_name!r} is used twice; names must be unique"
            raise TranslationError(message, f"{where}.name")
        self.origins[anthropic_name] = ToolOrigin(name=name, custom=kind == "custom", namespace=namespace)
        description = tool.get("description")
        if description is not None and not isinstance(description, str):
            raise TranslationError(f"{where}.description: must be a string", f"{where}.description")
        if kind == "custom":
            description = _custom_description(description, tool.get("format"))
        spec: dict[str, Any] = {"name": anthropic_name}
        if description:
            spec["description"] = description
        parameters = tool.get("parameters") if kind == "function" else CUSTOM_TOOL_SCHEMA
        spec["input_schema"] = input_schema(parameters, f"{where}.parameters")
        self.anthropic.append(spec)


def required_name(tool: Mapping[str, Any], where: str) -> str:
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


def str_or_none(value: object) -> str | None:
    """`value` when it is a string, else None: caller-sent "types" are looked up in tables, and a list is unhashable."""
    return value if isinstance(value, str) else None
