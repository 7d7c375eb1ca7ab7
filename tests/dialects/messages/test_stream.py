from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.dialects.messages.reply import (
    Event,
    chat_completion_to_message,
    usage_to_anthropic,
)
from gateway.dialects.messages.stream import AnthropicStreamTranslator
from tests.fakes.upstream import openai_events_for

MSG_ID, MODEL = "msg_abc", "gpt-fast"
ANTHROPIC_USAGE = {
    "input_tokens": 120,
    "output_tokens": 7,
    "cache_read_input_tokens": 0,
    "cache_creation_input_tokens": 0,
}


CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "gateway"}'}}


OPENAI_USAGE = {"prompt_tokens": 120, "completion_tokens": 7, "total_tokens": 127}


def completion(message: dict[str, Any], finish_reason: str | None = "stop") -> dict[str, Any]:
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini",
        "choices": [choice],
        "usage": OPENAI_USAGE,
    }


def translate(reply: dict[str, Any]) -> dict[str, Any]:
    return chat_completion_to_message(reply, message_id=MSG_ID, model=MODEL)


# --- streams ------------------------------------------------------------------------------------------


def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m", "choices": [choice], **extra}


def usage_chunk(usage: dict[str, Any]) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m", "choices": [], "usage": usage}


def run(chunks: list[dict[str, Any]], *, done: bool = True) -> list[Event]:
    translator = AnthropicStreamTranslator(message_id=MSG_ID, model=MODEL)
    events = [event for c in chunks for event in translator.feed(c)]
    return events + translator.finish() if done else events


def ev(name: str, **data: Any) -> Event:
    return name, {"type": name, **data}


MESSAGE_START = ev(
    "message_start",
    message={
        "id": MSG_ID,
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    },
)


def test_text_stream_exact_events() -> None:
    events = run(
        [
            chunk({"role": "assistant", "content": ""}, usage=None),
            chunk({"content": "Hel"}, usage=None),
            chunk({"content": "lo"}, usage=None),
            chunk({}, "stop", usage=None),
            usage_chunk(OPENAI_USAGE),
        ]
    )
    assert events == [
        MESSAGE_START,
        ev("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        ev("content_block_delta", index=0, delta={"type": "text_delta", "text": "Hel"}),
        ev("content_block_delta", index=0, delta={"type": "text_delta", "text": "lo"}),
        ev("content_block_stop", index=0),
        ev("message_delta", delta={"stop_reason": "end_turn", "stop_sequence": None}, usage=ANTHROPIC_USAGE),
        ev("message_stop"),
    ]


def test_text_then_two_tool_calls_exact_events() -> None:
    events = run(
        [
            chunk({"role": "assistant", "content": "Checking."}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "lookup", "arguments": ""},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"q": '}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"a"}'}}]}),
            chunk({"tool_calls": [{"index": 1, "id": "call_2", "function": {"name": "now", "arguments": "{}"}}]}),
            chunk({}, "tool_calls"),
        ]
    )
    assert events == [
        MESSAGE_START,
        ev("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        ev("content_block_delta", index=0, delta={"type": "text_delta", "text": "Checking."}),
        ev("content_block_stop", index=0),
        ev(
            "content_block_start",
            index=1,
            content_block={"type": "tool_use", "id": "call_1", "name": "lookup", "input": {}},
        ),
        ev("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": '{"q": '}),
        ev("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": '"a"}'}),
        ev("content_block_stop", index=1),
        ev(
            "content_block_start",
            index=2,
            content_block={"type": "tool_use", "id": "call_2", "name": "now", "input": {}},
        ),
        ev("content_block_delta", index=2, delta={"type": "input_json_delta", "partial_json": "{}"}),
        ev("content_block_stop", index=2),
        ev(
            "message_delta",
            delta={"stop_reason": "tool_use", "stop_sequence": None},
            usage=usage_to_anthropic(None),  # no usage chunk came
        ),
        ev("message_stop"),
    ]


def test_empty_stream_still_opens_and_closes_the_message() -> None:
    assert run([]) == [
        MESSAGE_START,
        ev("message_delta", delta={"stop_reason": "end_turn", "stop_sequence": None}, usage=usage_to_anthropic(None)),
        ev("message_stop"),
    ]


def test_in_stream_error_ends_the_stream() -> None:
    translator = AnthropicStreamTranslator(message_id=MSG_ID, model=MODEL)
    translator.feed(chunk({"content": "Hi"}))
    events = translator.feed({"error": {"message": "The server had an error", "type": "server_error"}})
    assert events == [ev("error", error={"type": "api_error", "message": "The server had an error"})]
    assert translator.finished and translator.finish() == [] and translator.feed(chunk({"content": "x"})) == []


def test_finish_reason_is_remembered_for_a_stream_without_done() -> None:
    translator = AnthropicStreamTranslator(message_id=MSG_ID, model=MODEL)
    translator.feed(chunk({"content": "Hi"}))
    assert not translator.saw_finish_reason
    translator.feed(chunk({}, "length"))
    assert translator.saw_finish_reason and not translator.finished
    assert translator.finish()[-2][1]["delta"]["stop_reason"] == "max_tokens"


def test_usage_on_the_finish_chunk_is_read_too() -> None:  # some servers put usage beside finish_reason
    events = run([chunk({"content": "Hi"}), chunk({}, "stop", usage=OPENAI_USAGE)])
    assert events[-2][1]["usage"] == ANTHROPIC_USAGE


def assemble(events: list[Event]) -> list[dict[str, Any]]:
    """The content blocks a strict Anthropic client builds from `events`, checking the order as it goes."""
    blocks: list[dict[str, Any]] = []
    json_parts: dict[int, str] = {}
    open_index = None
    for name, data in events:
        if name == "content_block_start":
            assert open_index is None and data["index"] == len(blocks)
            open_index = data["index"]
            blocks.append(dict(data["content_block"]))
        elif name == "content_block_delta":
            assert data["index"] == open_index
            delta = data["delta"]
            if delta["type"] == "text_delta":
                blocks[open_index]["text"] += delta["text"]
            else:
                json_parts[open_index] = json_parts.get(open_index, "") + delta["partial_json"]
        elif name == "content_block_stop":
            assert data["index"] == open_index
            if open_index in json_parts:
                blocks[open_index]["input"] = orjson.loads(json_parts[open_index])
            open_index = None
    assert open_index is None
    return blocks


@pytest.mark.parametrize("with_tool", [False, True], ids=["text", "tool"])
def test_stream_and_whole_reply_agree(with_tool: bool) -> None:
    """The fake upstream's stream for a completion assembles to what the non-stream translation gives."""
    message: dict[str, Any] = {"role": "assistant", "content": "Hello there, world"}
    if with_tool:
        message = {"role": "assistant", "content": None, "tool_calls": [CALL]}
    whole = completion(message, "tool_calls" if with_tool else "stop")
    translator = AnthropicStreamTranslator(message_id=MSG_ID, model=MODEL)
    events: list[Event] = []
    for _, data in openai_events_for(whole, include_usage=True):
        events += translator.finish() if data == "[DONE]" else translator.feed(data)  # type: ignore[arg-type]

    expected = translate(whole)
    assert assemble(events) == expected["content"]
    assert [name for name, _ in events][-2:] == ["message_delta", "message_stop"]
    assert events[-2][1]["delta"]["stop_reason"] == expected["stop_reason"]
    assert events[-2][1]["usage"] == expected["usage"] == translator.usage


# --- OpenAI-compatible servers that bend the chunk format (Ollama, vLLM, llama.cpp) -------------------------------


def whole_call(call_id: str, name: str, arguments: object, index: int = 0) -> dict[str, Any]:
    return {
        "tool_calls": [
            {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        ]
    }


@pytest.mark.parametrize(
    ("chunks", "blocks", "stop_reason"),
    [
        pytest.param(
            [
                chunk(whole_call("call_a", "read", '{"p": "a"}')),
                chunk(whole_call("call_b", "read", '{"p": "b"}')),
                chunk({}, "stop"),
            ],
            [
                {"type": "tool_use", "id": "call_a", "name": "read", "input": {"p": "a"}},
                {"type": "tool_use", "id": "call_b", "name": "read", "input": {"p": "b"}},
            ],
            "tool_use",
            id="two-whole-calls-same-index-finish-stop",
        ),
        pytest.param(
            [chunk(whole_call("call_a", "read", {"p": "a"})), chunk({}, "tool_calls")],
            [{"type": "tool_use", "id": "call_a", "name": "read", "input": {"p": "a"}}],
            "tool_use",
            id="object-arguments",
        ),
        pytest.param(
            [
                chunk(whole_call("call_a", "read", '{"p":')),
                chunk({"tool_calls": [{"index": 0, "id": "call_a", "function": {"arguments": ' "a"}'}}]}),
                chunk({}, "stop"),
            ],
            [{"type": "tool_use", "id": "call_a", "name": "read", "input": {"p": "a"}}],
            "tool_use",
            id="id-repeated-on-every-fragment",
        ),
        pytest.param(
            [chunk({"content": "Reading."}), chunk(whole_call("call_a", "read", "{}")), chunk({}, "length")],
            [{"type": "text", "text": "Reading."}, {"type": "tool_use", "id": "call_a", "name": "read", "input": {}}],
            "max_tokens",
            id="length-stays-max_tokens",
        ),
    ],
)
def test_bent_tool_call_streams(chunks: list[dict[str, Any]], blocks: list[dict[str, Any]], stop_reason: str) -> None:
    events = run(chunks)
    assert assemble(events) == blocks
    assert events[-2][1]["delta"]["stop_reason"] == stop_reason


@pytest.mark.parametrize(
    ("arguments", "finish_reason", "stop_reason"),
    [
        pytest.param({"p": "a"}, "stop", "tool_use", id="object-arguments-finish-stop"),
        pytest.param('{"p": "a"}', "tool_calls", "tool_use", id="string-arguments"),
    ],
)
def test_whole_reply_with_tool_calls_stops_for_tool_use(
    arguments: object, finish_reason: str, stop_reason: str
) -> None:
    call = {"id": "call_a", "type": "function", "function": {"name": "read", "arguments": arguments}}
    message = translate(completion({"role": "assistant", "content": None, "tool_calls": [call]}, finish_reason))
    assert message["content"] == [{"type": "tool_use", "id": "call_a", "name": "read", "input": {"p": "a"}}]
    assert message["stop_reason"] == stop_reason
