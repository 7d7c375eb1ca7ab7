from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from gateway.dialects.sse import DONE_FRAME, SSEParser, data_frame, frame

# A realistic Anthropic stream, plus the spec's corner cases: a comment, an unnamed event, a multi-line
# data field, a field without a space after the colon, ignored id/retry fields and an event with no data.
SAMPLE = (
    b": keep-alive comment\n\n"
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":3,"output_tokens":1}}}\n\n'
    b'event: ping\ndata: {"type": "ping"}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"h\xc3\xa9"}}\n\n'
    b"id: 7\nretry: 1000\ndata:first line\ndata: second line\n\n"
    b"event: lonely\n\n"
    b"data\n\n"
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)
EXPECTED = [
    (
        "message_start",
        b'{"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":3,"output_tokens":1}}}',
    ),
    ("ping", b'{"type": "ping"}'),
    (
        "content_block_delta",
        b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"h\xc3\xa9"}}',
    ),
    ("message", b"first line\nsecond line"),
    ("message", b""),
    ("message_stop", b'{"type":"message_stop"}'),
]
LINE_ENDINGS = [pytest.param(b"\n", id="lf"), pytest.param(b"\r\n", id="crlf"), pytest.param(b"\r", id="cr")]


def sample(line_end: bytes) -> bytes:
    return SAMPLE.replace(b"\n", line_end)


def parse(*chunks: bytes) -> list[tuple[str, bytes]]:
    parser = SSEParser()
    return [event for chunk in chunks for event in parser.feed(chunk)]


@pytest.mark.parametrize("line_end", LINE_ENDINGS)
def test_whole_stream(line_end: bytes) -> None:
    assert parse(sample(line_end)) == EXPECTED


@pytest.mark.parametrize("line_end", LINE_ENDINGS)
def test_split_at_every_offset(line_end: bytes) -> None:
    stream = sample(line_end)
    for offset in range(len(stream) + 1):
        assert parse(stream[:offset], stream[offset:]) == EXPECTED, offset


@pytest.mark.parametrize("line_end", LINE_ENDINGS)
def test_split_at_every_pair_of_offsets(line_end: bytes) -> None:
    stream = sample(line_end)
    for first in range(0, len(stream) + 1, 7):
        for second in range(first, len(stream) + 1):
            assert parse(stream[:first], stream[first:second], stream[second:]) == EXPECTED, (first, second)


@pytest.mark.parametrize("line_end", LINE_ENDINGS)
def test_one_byte_at_a_time(line_end: bytes) -> None:
    stream = sample(line_end)
    assert parse(*(stream[i : i + 1] for i in range(len(stream)))) == EXPECTED


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        pytest.param([b""], [], id="empty-chunk"),
        pytest.param([b"data: x\n"], [], id="event-not-finished"),
        pytest.param([b"data: x\n", b"\n"], [("message", b"x")], id="blank-line-in-next-chunk"),
        pytest.param([b"\n\n\ndata: x\n\n\n\n"], [("message", b"x")], id="extra-blank-lines"),
        pytest.param([b"data:  two spaces\n\n"], [("message", b" two spaces")], id="only-one-space-stripped"),
        pytest.param([b"data: a: b\n\n"], [("message", b"a: b")], id="colon-in-value"),
        pytest.param([b"event: a\nevent: b\ndata: x\n\n"], [("b", b"x")], id="last-event-name-wins"),
        pytest.param([b": only a comment\n\n"], [], id="comment-only"),
        pytest.param([b"data: x\r", b"\n\r\n"], [("message", b"x")], id="crlf-split-between-cr-and-lf"),
        pytest.param([b"data: x\r", b"\r"], [("message", b"x")], id="bare-cr-at-chunk-end"),
        pytest.param([b"data: x\n\ndata: y"], [("message", b"x")], id="trailing-partial-event-kept"),
    ],
)
def test_corner_cases(chunks: list[bytes], expected: list[tuple[str, bytes]]) -> None:
    assert parse(*chunks) == expected


def test_large_event_in_many_chunks() -> None:
    payload = b"x" * 1_000_000
    chunks = [b"event: big\ndata: ", *(payload[i : i + 1000] for i in range(0, len(payload), 1000)), b"\n\n"]
    assert parse(*chunks) == [("big", payload)]


@pytest.mark.parametrize(
    ("data", "event", "expected"),
    [
        pytest.param(b'{"a":1}', None, b'data: {"a":1}\n\n', id="unnamed"),
        pytest.param(b'{"type":"ping"}', "ping", b'event: ping\ndata: {"type":"ping"}\n\n', id="named"),
        pytest.param(b"one\ntwo", "x", b"event: x\ndata: one\ndata: two\n\n", id="multi-line"),
        pytest.param(b"", None, b"data: \n\n", id="empty"),
    ],
)
def test_frame(data: bytes, event: str | None, expected: bytes) -> None:
    assert frame(data, event) == expected
    assert parse(expected) == [(event or "message", data)]


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        pytest.param({"id": "c", "choices": []}, b'data: {"id":"c","choices":[]}\n\n', id="object"),
        pytest.param({"text": "h\u00e9\n"}, b'data: {"text":"h\xc3\xa9\\n"}\n\n', id="unicode-and-newline"),
        pytest.param(None, b"data: null\n\n", id="null"),
    ],
)
def test_data_frame(obj: Any, expected: bytes) -> None:
    assert data_frame(obj) == expected


def test_done_frame() -> None:
    assert DONE_FRAME == b"data: [DONE]\n\n"
    assert parse(DONE_FRAME) == [("message", b"[DONE]")]


FORBIDDEN_IMPORTS = {"aiohttp", "asyncpg", "asyncio", "socket", "requests", "httpx", "gateway"}
DIALECTS = Path(__file__).parents[2] / "gateway" / "dialects"
DIALECT_MODULES = sorted(DIALECTS.rglob("*.py"))


@pytest.mark.parametrize("path", DIALECT_MODULES, ids=lambda p: str(p.relative_to(DIALECTS)))
def test_dialects_import_no_io(path: Path) -> None:
    """gateway/dialects is pure translation: stdlib and orjson only, no network, no database, no app code."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN_IMPORTS
