"""One request body through one policy: its caller-written strings scanned, findings counted, values redacted."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.dlp.fields import Field, prompt_fields
from gateway.dlp.findings import Finding
from gateway.dlp.policy import Inspector
from gateway.dlp.redaction import placeholders, redact_fields, redact_raw
from gateway.dlp.scanner import Hit


@dataclass(slots=True)
class Verdict:
    """What a body held: findings (one per detector and location), the first blocked one, the redacted bytes."""

    findings: list[Finding] = field(default_factory=list)
    blocked: Finding | None = None
    raw_body: bytes | None = None  # set when something was redacted: the bytes to send instead


class TextTooLarge(Exception):
    """The body's scanned strings are longer than the caller's limit."""


def inspect(
    body: dict[str, Any], raw: bytes, inspector: Inspector, max_text: int | None = None, max_examined: int | None = None
) -> Verdict:
    """Scan `body` (parsed from `raw`); redact in both when the policy says so. `body` is changed in place.

    Raises TooManyCandidates (a flood of one detector's anchors), past `max_text` characters TextTooLarge, and
    past `max_examined` candidates TooBusyInline (before `body` is changed).
    """
    fields = prompt_fields(body)
    if max_text is not None and sum(len(f.text) for f in fields) > max_text:
        raise TextTooLarge
    hits = inspector.scanner.scan([f.text for f in fields], max_examined) if fields else []
    if not hits:
        return Verdict()
    findings = _findings(hits, fields, inspector.actions)
    blocked = next((f for f in findings if f.action == "block"), None)
    if blocked is not None:
        return Verdict(findings, blocked)
    redacted = [h for h in hits if inspector.actions[h.detector] == "redact"]
    if not redacted:
        return Verdict(findings)
    mapping = placeholders(redacted)
    redact_fields(fields, mapping)
    return Verdict(findings, None, redact_raw(raw, mapping, body))


def has_duplicate_keys(raw: bytes, body: dict[str, Any]) -> bool:
    """Whether `raw` holds an object key twice (the parsed body kept only the last one).

    Every key and string costs two quote bytes, and a quote inside a string is written `\\"` (one more) or
    `\\u0022` (none), so raw JSON without `\\u0022` never has more `"` bytes than its parse re-serialised unless
    keys (with their values) were dropped. With `\\u0022`, such quotes could make up for a dropped key's, so the
    quotes that open or close a string are counted exactly. A shadowed duplicate would reach a provider that reads
    the first one without having been scanned.
    """
    dumped = orjson.dumps(body)
    if raw.count(b'"') > dumped.count(b'"'):
        return True
    return b"\\u0022" in raw and _string_quotes(raw) > _string_quotes(dumped)


def _string_quotes(json: bytes) -> int:
    """The `"` bytes of `json` that open or close a string: all but those after an escaping backslash.

    Backslashes pair up left to right as bytes.replace takes them, so once the `\\\\` pairs are gone every `\\"`
    left is an escaped quote. Two C-speed passes (0.1 s for 8 MB of backslashes, so a big body is checked in a
    thread); only a body with `\\u0022` in it gets here.
    """
    return json.count(b'"') - json.replace(b"\\\\", b"").count(b'\\"')


def _findings(hits: Sequence[Hit], fields: Sequence[Field], actions: dict[str, str] | Any) -> list[Finding]:
    counts = Counter((h.detector, h.text) for h in hits)
    return [Finding(detector, actions[detector], fields[text].location, n) for (detector, text), n in counts.items()]
