"""The one stream loop every relay uses, and what it counts on the side to bill a stream that broke off.

    relay_stream(ex, reply, translator)

writes the 200 and the stream's headers, feeds each upstream chunk to the (route, provider dialect) pair's
StreamTranslator and writes what comes back, and owns every way a stream ends:

| how it ends                                   | status in the usage row              | output tokens         |
| --------------------------------------------- | ------------------------------------ | --------------------- |
| the provider's end, caller still there        | 200 (or the in-stream error's)       | the provider's count  |
| caller gone after the stream's final event    | 200 (or the in-stream error's)       | the provider's count  |
| caller gone before it                         | 499                                  | estimated if missing  |
| provider broke off, timed out or ended early  | the error's, written in-band         | estimated if missing  |

"Estimated": a stream that ends without the provider's final count is billed for what was relayed (text,
thinking and tool-input characters, CHARS_PER_TOKEN per token) and its row is marked `usage_estimated`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from typing import Any, Generic, Protocol, TypeVar

import orjson
import structlog
from aiohttp import web

from gateway.dialects import sse
from gateway.dialects.messages.reply import usage_to_anthropic
from gateway.errors import GatewayError, UpstreamUnreachable, json_object
from gateway.pipeline import CLIENT_CLOSED, Exchange, Usage
from gateway.providers.base import UpstreamReply
from gateway.relays.headers import EVENT_STREAM
from gateway.relays.replies import eof_quietly, start_stream, write_quietly

log = structlog.get_logger("gateway.relay")

# Characters of relayed text per output token, for a stream whose final count never came. Anthropic's guide
# puts a Claude token at about 3.5 English characters; code and JSON tool input run shorter per token. The
# lower figure bills a little more rather than less; its error is stated in the README (Reliability).
CHARS_PER_TOKEN = 3.5
ANTHROPIC_STREAM_ERROR_STATUS = {"overloaded_error": 529, "rate_limit_error": 429, "api_error": 500}
_DELTA_TEXT_FIELDS = ("text", "thinking", "partial_json")  # text_delta, thinking_delta, input_json_delta


class OutputMeter:
    """What a stream reported and relayed: usage as it arrives, relayed characters, an in-stream error status."""

    __slots__ = ("chars", "error_status", "final", "usage")

    def __init__(self, usage: Usage) -> None:
        self.usage = usage
        self.chars = 0  # text, thinking and tool-input characters relayed to the caller
        self.final = False  # the provider's final output count arrived
        self.error_status: int | None = None  # an error event inside the stream

    def anthropic_event(self, event: str, data: dict[str, Any]) -> None:
        """Read one Anthropic stream event: usage (message_start, message_delta), deltas, an error.

        The event's usage is replaced, in the parsed event only, by the clamped counts (the relayed bytes of a
        pass-through stay the provider's), so a translator that reads it next reports what is billed.
        """
        if event == "content_block_delta":
            self.delta(data.get("delta"))
        elif event == "message_start":
            message = data.get("message")
            if isinstance(message, dict):
                usage = message.get("usage")
                self.usage.update_from_anthropic(usage if isinstance(usage, Mapping) else {})
                message["usage"] = self.usage.as_anthropic()  # what a translator reads: the clamped counts
        elif event == "message_delta":
            usage = data.get("usage")
            if isinstance(usage, Mapping):
                self.usage.update_from_anthropic(usage)
                self.final = self.final or is_count(usage.get("output_tokens"))
            if usage is not None:
                data["usage"] = self.usage.as_anthropic()
        elif event == "error":
            error = data.get("error")
            kind = error.get("type") if isinstance(error, Mapping) else None
            self.error_status = ANTHROPIC_STREAM_ERROR_STATUS.get(kind if isinstance(kind, str) else "", 500)

    def delta(self, delta: Any) -> None:
        """Count one Anthropic content_block_delta's text (text, thinking or tool-input JSON)."""
        if isinstance(delta, Mapping):
            for name in _DELTA_TEXT_FIELDS:
                if isinstance(text := delta.get(name), str):
                    self.chars += len(text)
                    return

    def openai_delta(self, choices: Any) -> None:
        """Count one Chat Completions chunk's relayed text: content, reasoning and tool-call arguments."""
        for choice in choices if isinstance(choices, list) else ():
            delta = choice.get("delta") if isinstance(choice, Mapping) else None
            if not isinstance(delta, Mapping):
                continue
            for name in ("content", "reasoning_content", "reasoning"):
                if isinstance(text := delta.get(name), str):
                    self.chars += len(text)
            for call in delta.get("tool_calls") or ():
                function = call.get("function") if isinstance(call, Mapping) else None
                if isinstance(function, Mapping) and isinstance(args := function.get("arguments"), str):
                    self.chars += len(args)

    def content(self, blocks: Any) -> None:
        """Count a whole Anthropic reply's content: text, thinking and tool input (as JSON)."""
        for block in blocks if isinstance(blocks, list) else ():
            if not isinstance(block, Mapping):
                continue
            for name in ("text", "thinking"):
                if isinstance(text := block.get(name), str):
                    self.chars += len(text)
            if "input" in block:
                self.chars += len(orjson.dumps(block["input"], default=str))

    def settle(self) -> None:
        """The stream is over: without the provider's final count, bill at least what was relayed."""
        if self.final:
            return
        self.usage.estimated = True
        self.usage.output_tokens = max(self.usage.output_tokens, estimate_tokens(self.chars))


def bill_message(usage: Usage, message: dict[str, Any]) -> dict[str, Any]:
    """Take a whole Anthropic reply's usage; without a usable output count, bill its content as a broken stream's
    (CHARS_PER_TOKEN, the row marked estimated): a reply whose `output_tokens` is "lots" is not free.

    Returns the message with the clamped counts as its usage, for a translator to report.
    """
    counts = message.get("usage")
    counts = counts if isinstance(counts, Mapping) else {}  # a list or a string here is no usage (and no 500)
    usage.update_from_anthropic(counts)
    if not is_count(counts.get("output_tokens")):
        meter = OutputMeter(usage)
        meter.content(message.get("content"))
        meter.settle()
    return {**message, "usage": usage.as_anthropic()}


def bill_completion(usage: Usage, completion: Mapping[str, Any]) -> bool:
    """Take a whole Chat Completion's usage (False when it has none); without a usable completion count, bill
    its choices' text as a broken stream's."""
    counts = completion.get("usage")
    if isinstance(counts, Mapping):
        usage.update_from_anthropic(usage_to_anthropic(counts))
    if not (isinstance(counts, Mapping) and is_count(counts.get("completion_tokens"))):
        choices = completion.get("choices")
        meter = OutputMeter(usage)
        meter.openai_delta(
            [{"delta": c.get("message")} for c in choices if isinstance(c, Mapping)]
            if isinstance(choices, list)
            else None
        )
        meter.settle()
    return isinstance(counts, Mapping)


def is_count(value: Any) -> bool:
    """Whether an upstream's output count is a number at all: a string, boolean or negative one (clamped to 0 by
    usage_count) is no final count, so the stream is still billed for what it relayed."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def estimate_tokens(chars: int) -> int:
    """Output tokens for `chars` relayed characters (CHARS_PER_TOKEN, rounded up)."""
    return math.ceil(chars / CHARS_PER_TOKEN)


class StreamTranslator(Protocol):
    """One (route, provider dialect) pair's stream: upstream bytes in, the caller's bytes out.

    `feed` gets each upstream chunk as it arrives (a pass-through returns it unchanged) and tells `meter` what
    it carried. `finished` turns true once the caller has been sent the stream's final event (message_stop,
    [DONE], response.completed, or an error event). `end` is called when the upstream body ended cleanly and
    returns the bytes still owed (it raises UpstreamUnreachable when the stream stopped short); `error_frame`
    renders a failure in-band, since the status line is already gone.
    """

    meter: OutputMeter
    statuses: Mapping[int, int]  # a status as the caller's dialect reports it (Chat/Responses: 529 -> 503)

    @property
    def finished(self) -> bool: ...

    def feed(self, chunk: bytes) -> bytes: ...

    def end(self) -> bytes: ...

    def error_frame(self, err: GatewayError) -> bytes: ...


class _Finishing(Protocol):
    @property
    def finished(self) -> bool: ...


Translator = TypeVar("Translator", bound=_Finishing)


class TranslatedStream(Generic[Translator]):
    """What the translating StreamTranslators share: the meter, an SSE parser over the upstream's chunks, and a
    dialect translator (gateway/dialects/) whose `finished` says the caller got the stream's final event."""

    statuses: Mapping[int, int] = {}

    def __init__(self, meter: OutputMeter, translator: Translator, provider: str) -> None:
        self.meter, self._translator, self._provider = meter, translator, provider
        self._parser = sse.SSEParser()

    @property
    def finished(self) -> bool:
        return self._translator.finished

    def _anthropic_events(self, chunk: bytes) -> Iterator[tuple[str, dict[str, Any]]]:
        """The chunk's complete Anthropic events, parsed, each told to the meter before it is translated."""
        for event, data in self._parser.feed(chunk):
            parsed = json_object(data)
            self.meter.anthropic_event(event, parsed)
            yield event, parsed

    def _stopped_short(self, final_event: str) -> UpstreamUnreachable:
        """The upstream body ended cleanly but early: the caller's own final event would pass it off as whole."""
        return UpstreamUnreachable(f"{self._provider} ended the stream before {final_event}")


async def relay_stream(
    ex: Exchange, reply: UpstreamReply, translator: StreamTranslator, headers: Mapping[str, str] = EVENT_STREAM
) -> None:
    """Answer `ex` with the translated stream of `reply`; every ending sets ex.status and settles the usage."""
    resp = await start_stream(ex, headers)
    if resp is None:
        return
    present, failure, tail = False, None, b""
    try:
        present = await _pump(ex, reply, translator, resp)
        if present:
            tail = translator.end()
    except GatewayError as err:  # the provider broke off, timed out or stopped short: say so in-band
        log.warning("upstream_stream_broken", request_id=ex.request_id, error=err.message)
        failure, tail = err, translator.error_frame(err)
    finally:  # also when the caller's disconnect cancels this task: the row must still be right
        ex.status = _status(ex, translator, gone=not present and failure is None, failure=failure)
        if ex.billable:
            translator.meter.settle()
    if tail:
        await write_quietly(resp, tail)
    await eof_quietly(resp)


async def _pump(ex: Exchange, reply: UpstreamReply, translator: StreamTranslator, resp: web.StreamResponse) -> bool:
    """Relay chunk by chunk, as they arrive; False once the caller is gone."""
    async for chunk in reply.chunks():
        if ex.first_byte_ns is None:
            ex.first_byte_ns = time.perf_counter_ns()
        out = translator.feed(chunk)
        if out and not await write_quietly(resp, out):
            return False
    return True


def _status(ex: Exchange, translator: StreamTranslator, *, gone: bool, failure: GatewayError | None) -> int:
    status = translator.meter.error_status or 200
    if failure is not None:
        status = failure.status_for(ex.dialect)
    elif gone and status == 200 and not translator.finished:
        status = CLIENT_CLOSED  # gone before the final event; after it, the request was complete
    return translator.statuses.get(status, status)
