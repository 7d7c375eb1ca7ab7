"""How far the stream estimate (gateway.relays.stream.CHARS_PER_TOKEN) is from a Claude tokenizer, on the repo's
own fixtures: the prose (system prompt, tool descriptions, user text) and the JSON (tool input schemas) of the
captured Claude Code requests in tests/fixtures/.

    pip install tokenizers
    pip download --no-deps anthropic==0.37.1 -d /tmp/tok
    unzip -o /tmp/tok/anthropic-*.whl anthropic/tokenizer.json -d /tmp/tok
    python -m bench.output_estimate /tmp/tok/anthropic/tokenizer.json

The reference is the tokenizer the anthropic SDK shipped until 0.38 (Claude 2's; Anthropic counts Claude 3 and
later with tokenizers it does not publish), so the figures bound the rule's error, they do not certify it.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer

from gateway.relays.stream import CHARS_PER_TOKEN, estimate_tokens

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "claude_code_requests.jsonl"


def samples() -> Iterator[tuple[str, str]]:
    """(kind, text) from the fixture's request bodies: prose and JSON, as a model's output would contain."""
    for line in FIXTURES.read_text().splitlines():
        body = json.loads(line).get("body")
        if not isinstance(body, dict):
            continue
        for block in body.get("system", []):
            yield "prose", block["text"]
        for message in body["messages"]:
            for block in message["content"] if isinstance(message["content"], list) else []:
                if block.get("type") == "text" and len(block["text"]) > 40:
                    yield "prose", block["text"]
        for tool in body.get("tools", []):
            yield "prose", tool.get("description", "")
            yield "json", json.dumps(tool.get("input_schema", {}))


def main(tokenizer_json: str) -> None:
    tokenizer = Tokenizer.from_file(tokenizer_json)
    for kind in ("prose", "json"):
        texts = [t for k, t in samples() if k == kind and t]
        actual = [len(tokenizer.encode(t).ids) for t in texts]
        estimated = [estimate_tokens(len(t)) for t in texts]
        errors = [(e - a) / a for e, a in zip(estimated, actual, strict=True)]
        chars = sum(len(t) for t in texts)
        print(
            f"{kind}: {len(texts)} samples, {chars} chars, {sum(actual)} tokens"
            f" ({chars / sum(actual):.2f} chars/token);"
            f" rule {CHARS_PER_TOKEN} chars/token: total {sum(estimated) / sum(actual) - 1:+.1%},"
            f" per sample median {statistics.median(errors):+.1%}, range {min(errors):+.1%} .. {max(errors):+.1%}"
        )


if __name__ == "__main__":
    main(sys.argv[1])
