"""Stable typed placeholders, put in place of found values in the parsed body and in the raw bytes.

`[REDACTED:aws_access_key:1]`: the detector, then the value's number among that detector's distinct values in
body order. The same value gets the same placeholder everywhere in a request, and, because Claude Code
resends the whole conversation each turn, the same placeholder on every later turn (the prompt cache prefix
stays the same).

The raw body is redacted by replacing each value's JSON spelling in the bytes, so every other byte (key
order, spacing, escapes, cache_control) stays the caller's. The result is parsed and compared with the
redacted parsed body; should they differ (a value written with escapes, or also present in a part that is
not scanned, such as a signed thinking block), the parsed body is sent re-serialised instead: equal JSON,
never a half-redacted one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from gateway.dlp.fields import Field
from gateway.dlp.scanner import Hit


def placeholders(hits: Sequence[Hit]) -> dict[str, str]:
    """value -> placeholder, numbered per detector in the order the values first appear."""
    numbers: dict[str, int] = {}
    mapping: dict[str, str] = {}
    for hit in sorted(hits, key=lambda h: h.text):  # stable: within a text, the scanner's order (by position)
        if hit.value not in mapping:
            numbers[hit.detector] = n = numbers.get(hit.detector, 0) + 1
            mapping[hit.value] = f"[REDACTED:{hit.detector}:{n}]"
    return mapping


def redact_fields(fields: Sequence[Field], mapping: dict[str, str]) -> None:
    """Replace every value in every scanned string of the parsed body (longest values first)."""
    ordered = sorted(mapping, key=len, reverse=True)
    for field in sorted(fields, key=lambda f: f.is_key):  # key names last: the value fields still name the old keys
        text = field.text
        for value in ordered:
            if value in text:
                text = text.replace(value, mapping[value])
        if text is not field.text and field.is_key:
            _rename(field.parent, field.key, text)
            field.key = field.text = text
        elif text is not field.text:
            field.parent[field.key] = field.text = text


def _rename(obj: dict[str, Any], old: str, new: str) -> None:
    """Rename a key of `obj` in place, keeping the key order (the raw body's replacement keeps it too)."""
    items = [(new if k == old else k, v) for k, v in obj.items()]
    obj.clear()
    obj.update(items)


def redact_raw(raw: bytes, mapping: dict[str, str], redacted_body: dict[str, Any]) -> bytes:
    """`raw` with each value's JSON spelling replaced; the re-serialised body when that is not the same JSON."""
    out = raw
    for value in sorted(mapping, key=len, reverse=True):
        out = out.replace(orjson.dumps(value)[1:-1], mapping[value].encode())
    try:
        if orjson.loads(out) == redacted_body:
            return out
    except orjson.JSONDecodeError:
        pass
    return orjson.dumps(redacted_body)
