"""OpenAI structured outputs (`response_format`, Responses `text.format`) as Anthropic structured outputs.

Pure: no I/O. Two ways to the same answer, chosen per alias (`structured_outputs:` in gateway.yaml):

- native: the Messages API's `output_config.format` ({"type": "json_schema", "schema": ...}), which constrains
  the reply's text to the schema (https://platform.claude.com/docs/en/build-with-claude/structured-outputs;
  anthropic SDK `OutputConfigParam` / `JSONOutputFormatParam`). The API wants `additionalProperties: false` on
  every object, so it is added where a schema leaves it out (OpenAI's non-strict schemas, LangChain's default).
- tool: for a model without structured outputs, or a schema the API cannot take (an object that allows extra
  properties; `json_object`, which has no schema), a tool named `STRUCTURED_OUTPUT_TOOL` whose input schema is
  the caller's, called by force. The reply translators turn that call back into plain message text, so the caller
  sees JSON content and `finish_reason: "stop"`, exactly as from OpenAI.

    >>> fmt = {"type": "json_schema", "json_schema": {"name": "A", "schema": {"type": "object"}, "strict": True}}
    >>> structured_output(fmt, native=True, where="response_format")
    {'output_config': {'format': {'type': 'json_schema', 'schema': {'type': 'object', 'additionalProperties': False}}}}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

# Reserved: a caller tool by this name is refused, so a tool_use block with it is always the gateway's own.
STRUCTURED_OUTPUT_TOOL = "structured_output"
ANY_OBJECT: dict[str, Any] = {"type": "object"}
MAX_SCHEMA_DEPTH = 64  # nesting a schema may have; deeper ones are refused (and would exhaust Python's stack)
# Said to the model when thinking is on: the API allows only tool_choice auto/none then, so the call is asked for.
THINKING_TOOL_NOTE = f"Give your final answer by calling the {STRUCTURED_OUTPUT_TOOL} tool, and only that way."


class StructuredOutputError(ValueError):
    """The format cannot be expressed; `param` names the field (e.g. "response_format.json_schema.schema")."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def structured_output(fmt: object, *, native: bool, where: str) -> dict[str, Any]:
    """The Messages request fields for one OpenAI format object: {} for text, `output_config` or a forced tool.

    `fmt` is a Chat `response_format` ({"type": "json_schema", "json_schema": {"schema": ...}}) or a Responses
    `text.format` ({"type": "json_schema", "schema": ...}); `where` names it in errors.
    """
    if fmt is None:
        return {}
    kind = fmt.get("type") if isinstance(fmt, Mapping) else fmt
    if kind == "text":
        return {}
    if kind == "json_object":
        return _forced_tool(ANY_OBJECT, "a JSON object")
    if kind != "json_schema" or not isinstance(fmt, Mapping):
        raise StructuredOutputError(
            f"{where}.type: {kind!r} is not supported; use text, json_object or json_schema", f"{where}.type"
        )
    nested = fmt.get("json_schema") if "json_schema" in fmt else fmt  # Chat nests it; Responses does not
    spec: Mapping[str, Any] = nested if isinstance(nested, Mapping) else {}
    schema = spec.get("schema")
    param = f"{where}.json_schema.schema" if where == "response_format" else f"{where}.schema"
    if not isinstance(schema, Mapping):
        raise StructuredOutputError(f"{param}: a JSON schema object is required", param)
    description = spec.get("description") if isinstance(spec.get("description"), str) else None
    try:
        closed = closed_schema(schema)
    except RecursionError:
        raise StructuredOutputError(f"{param}: nested deeper than {MAX_SCHEMA_DEPTH} levels", param) from None
    if native and closed is not None:
        return {"output_config": {"format": {"type": "json_schema", "schema": closed}}}
    return _forced_tool(dict(schema), description or f"the answer, as the {spec.get('name') or 'required'} object")


def closed_schema(schema: Mapping[str, Any], depth: int = 0) -> dict[str, Any] | None:
    """`schema` with `additionalProperties: false` on every object that leaves it out; None if one allows extras.

    Only the places a schema nests schemas are walked (properties, items, anyOf/allOf, $defs/definitions).
    Raises RecursionError past MAX_SCHEMA_DEPTH levels.
    """
    if depth > MAX_SCHEMA_DEPTH:
        raise RecursionError
    depth += 1
    out: dict[str, Any] = dict(schema)
    if out.get("type") == "object" or "properties" in out:
        extra = out.setdefault("additionalProperties", False)
        if extra is not False:
            return None
    for key in ("properties", "$defs", "definitions"):
        if isinstance(out.get(key), Mapping):
            inner = {
                name: closed_schema(sub, depth) if isinstance(sub, Mapping) else sub for name, sub in out[key].items()
            }
            if any(sub is None for sub in inner.values()):
                return None
            out[key] = inner
    for key in ("anyOf", "allOf"):
        if isinstance(out.get(key), list):
            subs = [closed_schema(sub, depth) if isinstance(sub, Mapping) else sub for sub in out[key]]
            if any(sub is None for sub in subs):
                return None
            out[key] = subs
    if isinstance(out.get("items"), Mapping):
        if (items := closed_schema(out["items"], depth)) is None:
            return None
        out["items"] = items
    return out


def _forced_tool(schema: Mapping[str, Any], what: str) -> dict[str, Any]:
    tool = {"name": STRUCTURED_OUTPUT_TOOL, "description": f"Return {what}.", "input_schema": dict(schema)}
    return {"tools": [tool], "tool_choice": {"type": "tool", "name": STRUCTURED_OUTPUT_TOOL}}


def apply_structured_output(out: dict[str, Any], fields: Mapping[str, Any], where: str) -> None:
    """Merge `structured_output()`'s fields into a Messages request that may already carry tools.

    With the caller's own tools beside it, the choice becomes "any" (the model may still call theirs; a tool the
    caller named stays forced; "none" forces ours); with thinking on it must stay "auto" (the API refuses forced
    tool use while thinking), so the model is asked in the system prompt instead.
    """
    if "output_config" in fields:
        out["output_config"] = {**out.get("output_config", {}), **fields["output_config"]}
        return
    if not fields:
        return
    tools = out.get("tools") or []
    if any(tool.get("name") == STRUCTURED_OUTPUT_TOOL for tool in tools):
        message = f"tools: {STRUCTURED_OUTPUT_TOOL!r} is reserved for {where}; rename the tool"
        raise StructuredOutputError(message, "tools")
    out["tools"] = [*tools, *fields["tools"]]
    caller_choice = out.get("tool_choice") or {}
    if "thinking" in out:
        out["tool_choice"] = {"type": "auto"}
        system = out.get("system") or []
        out["system"] = [*system, {"type": "text", "text": THINKING_TOOL_NOTE}]
    elif not tools or caller_choice.get("type") == "none":  # no tool of theirs may be called: force ours
        out["tool_choice"] = fields["tool_choice"]
    elif caller_choice.get("type") != "tool":  # auto or required: some tool, theirs or ours; a named one stays
        out["tool_choice"] = {**caller_choice, "type": "any"}


# --- replies: the forced call back into text ----------------------------------------------------------------


def unwrap_message(message: Mapping[str, Any]) -> Mapping[str, Any]:
    """The Anthropic message with a `STRUCTURED_OUTPUT_TOOL` call as a text block of its input, stop end_turn."""
    content = message.get("content") or []
    if not any(_is_ours(block) for block in content):
        return message
    # The call's input is the whole answer: text the model wrote beside it (possible only with thinking on, where the
    # call is asked for rather than forced) would make the content invalid JSON.
    blocks = [_as_text(block) if _is_ours(block) else block for block in content if block.get("type") != "text"]
    others = any(block.get("type") == "tool_use" for block in blocks)
    stop = message.get("stop_reason")
    return {**message, "content": blocks, "stop_reason": "end_turn" if stop == "tool_use" and not others else stop}


def _is_ours(block: object) -> bool:
    if not isinstance(block, Mapping):
        return False
    return block.get("type") == "tool_use" and block.get("name") == STRUCTURED_OUTPUT_TOOL


def _as_text(block: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "text", "text": orjson.dumps(block.get("input") or {}).decode()}


class StreamUnwrapper:
    """Rewrites Anthropic stream events so a `STRUCTURED_OUTPUT_TOOL` call streams as text (input_json -> text)."""

    def __init__(self) -> None:
        self._ours: set[int] = set()  # content block indexes of our tool's calls
        self._other_tools = False

    def feed(self, event: str, data: Mapping[str, Any]) -> Mapping[str, Any]:
        """The event data to translate instead of `data`."""
        if event == "content_block_start":
            block = data.get("content_block") or {}
            if _is_ours(block):
                self._ours.add(int(data.get("index", -1)))
                return {**data, "content_block": {"type": "text", "text": ""}}
            self._other_tools |= block.get("type") == "tool_use"
        elif event == "content_block_delta" and int(data.get("index", -1)) in self._ours:
            delta = data.get("delta") or {}
            return {**data, "delta": {"type": "text_delta", "text": delta.get("partial_json") or ""}}
        elif event == "message_delta" and self._ours and not self._other_tools:
            delta = data.get("delta") or {}
            if delta.get("stop_reason") == "tool_use":
                return {**data, "delta": {**delta, "stop_reason": "end_turn"}}
        return data
