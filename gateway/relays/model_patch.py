"""The request body's top-level "model" value, replaced in place by the routed deployment's model id."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

# Only the bytes of the model's string value change: whitespace, key order, escapes and number spellings stay
# the caller's (a provider may cache on the exact prefix, and nothing else is ours to touch). Claude Code and
# the Anthropic SDKs put "model" first, and the edge's sketch has proved it is the only one, so an anchored
# pattern finds it at once; anywhere else, a scan over the body's strings and brackets finds every top-level
# "model" key (a few ms for megabytes of base64), so a second one can never slip through unpatched.
_STRING = rb'"[^"\\]*(?:\\.[^"\\]*)*"'
_MODEL_FIRST = re.compile(rb'\A\s*\{\s*"model"\s*:\s*(' + _STRING + rb")")
_TOKEN = re.compile(_STRING + rb"|[{}\[\]]")
_VALUE = re.compile(rb"\s*:\s*(" + _STRING + rb")")
_COLON = re.compile(rb"\s*:")


def with_model(raw: bytes, body: Callable[[], dict[str, Any]], model: str, *, unique: bool = False) -> bytes:
    """`raw` with the top-level "model" value replaced by `model`, every other byte as the caller sent it.

    The result holds one top-level "model", the routed one, whatever the caller sent: a body whose object has
    the key twice, spelled with \\u escapes, or with a value that is not a string is re-serialised from `body()`
    (parsed once, last key winning) with the routed value only. Nested "model" keys (a tool schema's property)
    are not the request's model and stay as sent. `unique`: the edge already proved the body has a single
    top-level "model" (a sketched body), so an anchored match at the front is enough.
    """
    match = _MODEL_FIRST.match(raw) if unique else None
    spans = [match.span(1)] if match else _top_level_model_values(raw)
    if spans is None or len(spans) != 1:
        return orjson.dumps({**body(), "model": model})
    start, end = spans[0]
    view = memoryview(raw)
    return b"".join((view[:start], orjson.dumps(model), view[end:]))  # one copy of the body, not one per slice


def _top_level_model_values(raw: bytes) -> list[tuple[int, int]] | None:
    """Where the string values of the object's own "model" keys are (nested "model" keys are not the model).

    None when a top-level "model" key cannot be patched in place: spelled with escapes (`"mod\\u0065l"` reads
    as "model" to every JSON parser) or holding something other than a string.
    """
    spans: list[tuple[int, int]] = []
    depth = 0
    for token in _TOKEN.finditer(raw):
        first = raw[token.start()]
        if first == 0x22:  # a string: a key of the top-level object when at depth 1 and followed by ':'
            if depth != 1 or not _COLON.match(raw, token.end()):
                continue
            text = token.group()
            if text == b'"model"':
                if (v := _VALUE.match(raw, token.end())) is None:
                    return None
                spans.append(v.span(1))
            elif b"\\" in text and orjson.loads(text) == "model":
                return None
        elif first in b"{[":
            depth += 1
        else:
            depth -= 1
    return spans
