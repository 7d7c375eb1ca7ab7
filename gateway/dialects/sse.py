"""Server-sent events: an incremental parser for upstream streams and frame builders for downstream ones.

The parser runs on every streamed byte, so it works on whole buffers with `bytes.find` and never loops per
byte. Only the fields a gateway needs are kept: `event` and `data` (`id` and `retry` are ignored).
"""

from __future__ import annotations

import orjson

DONE_FRAME = b"data: [DONE]\n\n"  # OpenAI's end-of-stream marker


class SSEParser:
    """Incremental parser of a text/event-stream: feed byte chunks as they arrive, get complete events.

    >>> parser = SSEParser()
    >>> parser.feed(b"event: ping\\ndata: {}\\n\\nevent: message_st")
    [('ping', b'{}')]
    >>> parser.feed(b'op\\ndata: {"type":"message_stop"}\\n\\n')
    [('message_stop', b'{"type":"message_stop"}')]
    """

    def __init__(self) -> None:
        self._buffer = bytearray()  # "\n"-normalised bytes of the event still being received
        self._skip_lf = False  # the last chunk ended in "\r": a "\n" opening the next one ends no further line

    @property
    def pending(self) -> bool:
        """Whether part of an event is buffered (the next chunk completes it)."""
        return bool(self._buffer) or self._skip_lf

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        """Complete events in arrival order: (event name, or "message" if unnamed; data lines joined by "\\n")."""
        if not chunk:
            return []
        if self._skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._skip_lf = chunk.endswith(b"\r")
        if b"\r" in chunk:  # the spec allows \r\n and bare \r line ends; Anthropic sends \n, so this is rare
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer
        # The buffered bytes hold no blank line (it would have ended an event), so only search from their end.
        search_from = max(len(buffer) - 1, 0)
        buffer += chunk
        events: list[tuple[str, bytes]] = []
        start = 0
        while (end := buffer.find(b"\n\n", search_from)) != -1:
            event = _parse_event(buffer[start:end])
            if event is not None:
                events.append(event)
            start = search_from = end + 2
        if start:
            del buffer[:start]
        return events


class UsageEventScanner:
    """The events that carry usage (message_start, message_delta, error) from a stream that is only relayed.

    A relay that forwards bytes untouched need not parse the text deltas between them: a chunk that holds
    whole events and none of these names is skipped with two substring searches.
    """

    def __init__(self) -> None:
        self._parser = SSEParser()

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        if not self._parser.pending and chunk.endswith(b"\n\n") and b"message_" not in chunk and b"error" not in chunk:
            return []
        return self._parser.feed(chunk)


def _parse_event(block: bytes | bytearray) -> tuple[str, bytes] | None:
    """One event from its lines, or None when it carries no data (only comments, or only an event name)."""
    name = "message"
    data: list[bytes | bytearray] = []
    for line in block.split(b"\n"):
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value.decode(errors="replace")
        # "" (a ": comment" line), "id", "retry" and unknown fields are skipped, as the spec says.
    return (name, b"\n".join(data)) if data else None


def frame(data: bytes, event: str | None = None) -> bytes:
    """One SSE frame: b"event: X\\ndata: ...\\n\\n"; data containing newlines becomes several data lines."""
    body = b"data: " + data.replace(b"\n", b"\ndata: ") + b"\n\n"
    return b"event: " + event.encode() + b"\n" + body if event is not None else body


def data_frame(obj: object) -> bytes:
    """An unnamed frame carrying `obj` as compact JSON, as OpenAI streams do: b'data: {"id":...}\\n\\n'."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"
