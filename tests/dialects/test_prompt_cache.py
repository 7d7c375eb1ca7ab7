"""gateway/dialects/prompt_cache.py: where the gateway puts cache breakpoints, and where it never does."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.dialects.prompt_cache import MAX_BREAKPOINTS, with_cache_breakpoints
from tests.fakes import messages_rules

CC = {"type": "ephemeral"}


def text(value: str, **extra: Any) -> dict[str, Any]:
    return {"type": "text", "text": value, **extra}


def cached(block: dict[str, Any]) -> dict[str, Any]:
    return {**block, "cache_control": CC}


TOOL = {"name": "lookup", "input_schema": {"type": "object"}}
CALL = {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}
RESULT = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"}
THINKING = {"type": "thinking", "thinking": "hmm", "signature": "sig"}


def request(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 10, **fields}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            request(
                tools=[TOOL, {**TOOL, "name": "other"}],
                system=[text("You are Cursor."), text("Be brief.")],
                messages=[
                    {"role": "user", "content": [text("first question")]},
                    {"role": "assistant", "content": [text("sure"), CALL]},
                    {"role": "user", "content": [RESULT, text("and now?")]},
                ],
            ),
            request(
                tools=[TOOL, cached({**TOOL, "name": "other"})],
                system=[text("You are Cursor."), cached(text("Be brief."))],
                messages=[
                    {"role": "user", "content": [cached(text("first question"))]},
                    {"role": "assistant", "content": [text("sure"), CALL]},
                    {"role": "user", "content": [RESULT, cached(text("and now?"))]},
                ],
            ),
            id="all-four",
        ),
        pytest.param(
            request(system="Be brief.", messages=[{"role": "user", "content": "hi"}]),
            request(system=[cached(text("Be brief."))], messages=[{"role": "user", "content": [cached(text("hi"))]}]),
            id="strings-become-blocks",
        ),
        pytest.param(
            request(messages=[{"role": "user", "content": [text("q")]}, {"role": "assistant", "content": [THINKING]}]),
            request(
                messages=[
                    {"role": "user", "content": [cached(text("q"))]},
                    {"role": "assistant", "content": [THINKING]},
                ]
            ),
            id="thinking-blocks-cannot-carry-one",
        ),
        pytest.param(
            request(
                system=[cached(text("mine"))],
                messages=[{"role": "user", "content": [text("a")]}, {"role": "user", "content": [cached(text("b"))]}],
            ),
            request(
                system=[cached(text("mine"))],
                messages=[
                    {"role": "user", "content": [cached(text("a"))]},
                    {"role": "user", "content": [cached(text("b"))]},
                ],
            ),
            id="never-duplicates",
        ),
        pytest.param(
            request(
                tools=[cached(TOOL)],
                system=[cached(text("s"))],
                messages=[
                    {"role": "user", "content": [cached(text("a"))]},
                    {"role": "assistant", "content": [text("b")]},
                    {"role": "user", "content": [{**RESULT, "content": [cached(text("42"))]}, text("c")]},
                ],
            ),
            request(
                tools=[cached(TOOL)],
                system=[cached(text("s"))],
                messages=[
                    {"role": "user", "content": [cached(text("a"))]},
                    {"role": "assistant", "content": [text("b")]},
                    {"role": "user", "content": [{**RESULT, "content": [cached(text("42"))]}, text("c")]},
                ],
            ),
            id="client-already-used-four",
        ),
        pytest.param(
            request(
                tools=[TOOL],
                system=[cached(text("s")), text("t")],
                messages=[
                    {"role": "user", "content": [cached(text("a"))]},
                    {"role": "user", "content": [text("b")]},
                ],
            ),
            request(
                tools=[TOOL],  # the fifth would be here: the client's two and three more reach the limit first
                system=[cached(text("s")), cached(text("t"))],
                messages=[
                    {"role": "user", "content": [cached(text("a"))]},
                    {"role": "user", "content": [cached(text("b"))]},
                ],
            ),
            id="client-used-two-most-valuable-first",
        ),
    ],
)
def test_breakpoints(body: dict[str, Any], expected: dict[str, Any]) -> None:
    before = copy.deepcopy(body)
    assert with_cache_breakpoints(body) == expected
    assert body == before  # pure: the caller's dict is untouched


def count_marks(value: object) -> int:
    if isinstance(value, dict):
        return int("cache_control" in value) + sum(count_marks(v) for v in value.values())
    if isinstance(value, list):
        return sum(count_marks(v) for v in value)
    return 0


@pytest.mark.parametrize("existing", range(MAX_BREAKPOINTS + 1))
def test_never_more_than_anthropic_allows(existing: int) -> None:
    messages = [
        {
            "role": "user" if i % 2 == 0 else "assistant",
            "content": [text(f"m{i}", **({"cache_control": CC} if i < existing else {}))],
        }
        for i in range(9)
    ]
    out = with_cache_breakpoints(request(tools=[TOOL], system="s", messages=messages))
    assert count_marks(out) == MAX_BREAKPOINTS


def test_nothing_to_mark() -> None:
    assert with_cache_breakpoints(request(messages=[])) == request(messages=[])


# --- caller marks with a ttl (issue 17) ------------------------------------------------------------------------


def test_caller_marks_are_kept_and_only_the_remaining_breakpoints_are_added() -> None:
    one_hour = {"type": "ephemeral", "ttl": "1h"}
    body = {
        "system": [{"type": "text", "text": "rules"}],
        "tools": [{"name": "t", "input_schema": {"type": "object"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "a", "cache_control": one_hour}]},
            {"role": "assistant", "content": [{"type": "text", "text": "b"}]},
            {"role": "user", "content": [{"type": "text", "text": "c", "cache_control": one_hour}]},
            {"role": "assistant", "content": [{"type": "text", "text": "d"}]},
            {"role": "user", "content": [{"type": "text", "text": "e"}]},
        ],
    }
    out = with_cache_breakpoints(body)
    marks = [
        b.get("cache_control") for b in [*out["tools"], *out["system"], *(m["content"][0] for m in out["messages"])]
    ]
    # The caller's two stay as they were; the last message gets the fifth-minute mark; the system block (before a
    # one-hour mark) gets a one-hour one; the tool would be a fifth mark and gets none.
    assert marks == [None, one_hour, one_hour, None, one_hour, None, {"type": "ephemeral"}]
    assert messages_rules.problem({"model": "m", "max_tokens": 1, **out}, lambda _: True) is None


def test_a_string_system_before_a_one_hour_mark_gets_one_hour() -> None:
    one_hour = {"type": "ephemeral", "ttl": "1h"}
    body = {
        "system": "rules",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "a", "cache_control": one_hour}]}],
    }
    out = with_cache_breakpoints(body)
    assert out["system"] == [{"type": "text", "text": "rules", "cache_control": one_hour}]
