from __future__ import annotations

from typing import Any

import pytest

from gateway.dialects.chat.stream import ChatStreamTranslator

MODEL, ID, CREATED = "claude-fast", "chatcmpl-abc", 1_700_000_000


def anthropic_message(content: list[dict[str, Any]], stop_reason: str | None = "end_turn") -> dict[str, Any]:
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": USAGE,
    }


def openai_error(message: str, error_type: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


USAGE = {"input_tokens": 12, "output_tokens": 7}


# --- streaming ------------------------------------------------------------------------------------------------


def message_start(usage: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    message = {**anthropic_message([], None), "usage": usage}
    return "message_start", {"type": "message_start", "message": message}


def block_start(index: int, block: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}


def delta(index: int, **fields: Any) -> tuple[str, dict[str, Any]]:
    return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": fields}


def block_stop(index: int) -> tuple[str, dict[str, Any]]:
    return "content_block_stop", {"type": "content_block_stop", "index": index}


def message_delta(stop_reason: str, usage: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    payload = {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None}, "usage": usage}
    return "message_delta", payload


PING = ("ping", {"type": "ping"})
MESSAGE_STOP = ("message_stop", {"type": "message_stop"})
START_USAGE = {"input_tokens": 25, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 0, "output_tokens": 1}

TEXT_STREAM = [
    message_start(START_USAGE),
    block_start(0, {"type": "text", "text": ""}),
    PING,
    delta(0, type="text_delta", text="Hello"),
    delta(0, type="text_delta", text=", world"),
    block_stop(0),
    message_delta("end_turn", {"output_tokens": 15}),
    MESSAGE_STOP,
]
TOOL_STREAM = [
    message_start(START_USAGE),
    block_start(0, {"type": "text", "text": ""}),
    delta(0, type="text_delta", text="Let me check."),
    block_stop(0),
    block_start(1, {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}}),
    delta(1, type="input_json_delta", partial_json=""),
    delta(1, type="input_json_delta", partial_json='{"city": "Pa'),
    delta(1, type="input_json_delta", partial_json='ris"}'),
    block_stop(1),
    block_start(2, {"type": "tool_use", "id": "toolu_02", "name": "now", "input": {}}),
    delta(2, type="input_json_delta", partial_json="{}"),
    block_stop(2),
    message_delta("tool_use", {"input_tokens": 30, "output_tokens": 60}),
    MESSAGE_STOP,
]
SIG = "EqQBCgIYAhIM"
THINKING_STREAM = [
    message_start(START_USAGE),
    block_start(0, {"type": "thinking", "thinking": ""}),
    delta(0, type="thinking_delta", thinking="Two plus two "),
    delta(0, type="thinking_delta", thinking="is four."),
    delta(0, type="signature_delta", signature=SIG),
    block_stop(0),
    block_start(1, {"type": "text", "text": "4"}),
    block_stop(1),
    message_delta("max_tokens", {"output_tokens": 40}),
    MESSAGE_STOP,
]
ERROR_STREAM = [
    message_start(START_USAGE),
    block_start(0, {"type": "text", "text": ""}),
    delta(0, type="text_delta", text="Hel"),
    ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
]


def chunk(delta: dict[str, Any], finish_reason: str | None = None, *, usage_key: bool = False) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    out: dict[str, Any] = {"id": ID, "object": "chat.completion.chunk", "created": CREATED, "model": MODEL}
    out["choices"] = [choice]
    if usage_key:
        out["usage"] = None
    return out


def usage_chunk(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }
    return {
        "id": ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [],
        "usage": usage,
    }


def tool_call(index: int, **fields: Any) -> dict[str, Any]:
    return {"tool_calls": [{"index": index, **fields}]}


ROLE = {"role": "assistant", "content": ""}
STREAM_CASES = [
    pytest.param(
        TEXT_STREAM,
        [chunk(ROLE), chunk({"content": "Hello"}), chunk({"content": ", world"}), chunk({}, "stop")],
        usage_chunk(125, 15, 100),
        id="text",
    ),
    pytest.param(
        TOOL_STREAM,
        [
            chunk(ROLE),
            chunk({"content": "Let me check."}),
            chunk(tool_call(0, id="toolu_01", type="function", function={"name": "get_weather", "arguments": ""})),
            chunk(tool_call(0, function={"arguments": '{"city": "Pa'})),
            chunk(tool_call(0, function={"arguments": 'ris"}'})),
            chunk(tool_call(1, id="toolu_02", type="function", function={"name": "now", "arguments": ""})),
            chunk(tool_call(1, function={"arguments": "{}"})),
            chunk({}, "tool_calls"),
        ],
        usage_chunk(130, 60, 100),
        id="tool-use",
    ),
    pytest.param(
        THINKING_STREAM,
        [
            chunk(ROLE),
            chunk({"reasoning_content": "Two plus two "}),
            chunk({"reasoning_content": "is four."}),
            chunk(
                {
                    "thinking_blocks": [
                        {"index": 0, "type": "thinking", "thinking": "Two plus two is four.", "signature": SIG}
                    ]
                }
            ),
            chunk({"content": "4"}),
            chunk({}, "length"),
        ],
        usage_chunk(125, 40, 100),
        id="thinking",
    ),
]


def run_stream(events: list[tuple[str, dict[str, Any]]], *, include_usage: bool) -> list[dict[str, Any]]:
    translator = ChatStreamTranslator(model=MODEL, completion_id=ID, created=CREATED, include_usage=include_usage)
    chunks = []
    for event, data in events:
        assert not translator.finished
        chunks.extend(translator.feed(event, data))
    assert translator.finished
    return chunks


@pytest.mark.parametrize(("events", "expected", "_usage"), STREAM_CASES)
def test_stream_without_usage(
    events: list[tuple[str, dict[str, Any]]], expected: list[dict[str, Any]], _usage: dict[str, Any]
) -> None:
    assert run_stream(events, include_usage=False) == expected


@pytest.mark.parametrize(("events", "expected", "usage"), STREAM_CASES)
def test_stream_with_usage(
    events: list[tuple[str, dict[str, Any]]], expected: list[dict[str, Any]], usage: dict[str, Any]
) -> None:
    with_usage_key = [{**c, "usage": None} for c in expected]
    assert run_stream(events, include_usage=True) == [*with_usage_key, usage]


@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_error_event(include_usage: bool) -> None:
    expected = [
        chunk(ROLE, usage_key=include_usage),
        chunk({"content": "Hel"}, usage_key=include_usage),
        {"error": {"message": "Overloaded", "type": "server_error", "param": None, "code": "overloaded_error"}},
    ]
    assert run_stream(ERROR_STREAM, include_usage=include_usage) == expected


def test_stream_usage_takes_latest_non_null_counts() -> None:
    translator = ChatStreamTranslator(model=MODEL, completion_id=ID, created=CREATED, include_usage=True)
    for event, data in TOOL_STREAM[:-1]:
        translator.feed(event, data)
    translator.feed(*message_delta("tool_use", {"input_tokens": None, "output_tokens": 61}))
    assert translator.usage == {
        "input_tokens": 30,
        "output_tokens": 61,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 0,
    }


@pytest.mark.parametrize(
    ("event", "data", "expected"),
    [
        pytest.param(*PING, [], id="ping"),
        pytest.param(*block_stop(0), [], id="content_block_stop"),
        pytest.param(*delta(0, type="signature_delta", signature="abc"), [], id="signature_delta"),
        pytest.param(*delta(0, type="citations_delta", citation={}), [], id="citations_delta"),
        pytest.param(*delta(0, type="text_delta", text=""), [], id="empty-text_delta"),
        pytest.param(*delta(5, type="input_json_delta", partial_json="{}"), [], id="json-for-unknown-block"),
        pytest.param(
            *block_start(0, {"type": "redacted_thinking", "data": "x"}),
            [chunk({"thinking_blocks": [{"index": 0, "type": "redacted_thinking", "data": "x"}]})],
            id="redacted_thinking-start",
        ),
        pytest.param("future_event", {"type": "future_event"}, [], id="unknown-event"),
        pytest.param(
            "error",
            {"type": "error", "error": {}},
            [openai_error("upstream stream error: api_error", "server_error", "api_error")],
            id="error-without-details",
        ),
    ],
)
def test_single_events(event: str, data: dict[str, Any], expected: list[dict[str, Any]]) -> None:
    translator = ChatStreamTranslator(model=MODEL, completion_id=ID, created=CREATED, include_usage=False)
    assert translator.feed(event, data) == expected
