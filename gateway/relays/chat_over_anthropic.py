"""OpenAI Chat Completions caller, Anthropic provider: translate the request, the reply and the stream."""

from __future__ import annotations

import time
from collections.abc import Mapping

import orjson
from aiohttp import web

from gateway.dialects import sse
from gateway.dialects.chat.reply import CLIENT_STATUSES, message_to_chat_completion
from gateway.dialects.chat.request import chat_request_to_anthropic
from gateway.dialects.chat.stream import ChatStreamTranslator
from gateway.dialects.responses.request import is_responses_body, responses_request_to_anthropic
from gateway.dialects.responses.stream import ChatCustomCalls, chat_completion_with_custom_calls
from gateway.dialects.thinking import thinking_headers
from gateway.error_shape import ErrorShape
from gateway.errors import GatewayError, UpstreamError, error_frame
from gateway.pipeline import Exchange
from gateway.providers.base import UpstreamReply
from gateway.relays.common import (
    EVENT_STREAM,
    answer,
    anthropic_reply,
    readable_upstream,
    relay_error,
    send_to_anthropic,
    translating,
    translation_options,
)
from gateway.relays.stream import OutputMeter, TranslatedStream, bill_message, relay_stream


async def relay_chat_over_anthropic(ex: Exchange) -> None:
    assert ex.target is not None
    options = translation_options(ex.target)
    custom: frozenset[str] = frozenset()  # a Responses-shaped body's custom tools, answered as custom calls
    with translating():
        if is_responses_body(ex.body):  # Cursor posts some models' requests in Responses shape, wants Chat back
            # `store` is ignored on this route, as in Chat Completions bodies: nothing here would be stored.
            translation = responses_request_to_anthropic({**ex.body, "store": False}, options)
            translated, custom = translation.request, translation.custom_tools
        else:
            translated = chat_request_to_anthropic(ex.body, options)
    notes = thinking_headers(ex.body, translated)  # reasoning asked for but sent without thinking: say so
    reply = await send_to_anthropic(ex, translated)
    await answer(
        reply,
        stream=translated.get("stream") is True,
        error=lambda: relay_error(ex, reply, UpstreamError.from_anthropic, _ERROR_HEADERS),
        streamed=lambda: _openai_stream(ex, reply, custom, notes),
        whole=lambda: _openai_whole(ex, reply, custom),
    )
    if not ex.streamed and ex.response is not None:
        ex.response.headers.update(notes)


_ERROR_HEADERS = frozenset({"retry-after", "request-id"})


def _completion_id(ex: Exchange) -> str:
    return f"chatcmpl-{ex.request_id}"


async def _openai_whole(ex: Exchange, reply: UpstreamReply, custom: frozenset[str]) -> None:
    assert ex.target is not None
    message = anthropic_reply(await reply.read(), ex.target.provider.name)
    ex.first_byte_ns = time.perf_counter_ns()
    with readable_upstream(ex.target.provider.name):
        message = bill_message(ex.usage, message)  # without a usable output count, its content is billed
        body = message_to_chat_completion(
            message, model=ex.alias_name, completion_id=_completion_id(ex), created=int(time.time())
        )
        if custom:
            body = chat_completion_with_custom_calls(body, custom)
    ex.status = 200
    ex.response = web.Response(body=orjson.dumps(body), content_type="application/json")


async def _openai_stream(ex: Exchange, reply: UpstreamReply, custom: frozenset[str], notes: dict[str, str]) -> None:
    options = ex.body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    translator = ChatStreamTranslator(
        model=ex.alias_name, completion_id=_completion_id(ex), created=int(time.time()), include_usage=include_usage
    )
    assert ex.target is not None
    chat = ChatOverAnthropic(OutputMeter(ex.usage), translator, custom, ex.target.provider.name)
    await relay_stream(ex, reply, chat, {**EVENT_STREAM, **notes})


class ChatOverAnthropic(TranslatedStream[ChatStreamTranslator]):
    """Anthropic's events in, Chat Completions chunks out (custom tool calls held back and answered as such)."""

    statuses: Mapping[int, int] = CLIENT_STATUSES  # an in-stream overloaded_error is a 503, as unstreamed

    def __init__(self, meter: OutputMeter, translator: ChatStreamTranslator, custom: frozenset[str], provider: str):
        super().__init__(meter, translator, provider)
        self._held = ChatCustomCalls(custom) if custom else None

    def feed(self, chunk: bytes) -> bytes:
        frames: list[bytes] = []
        with readable_upstream(self._provider):  # an event the translator cannot read: a 502, written in-band
            for event, parsed in self._anthropic_events(chunk):
                chunks = self._translator.feed(event, parsed)
                frames.extend(sse.data_frame(c) for c in (self._held.feed(chunks) if self._held else chunks))
        return b"".join(frames)

    def end(self) -> bytes:
        if not self._translator.finished:
            raise self._stopped_short("message_stop")
        return sse.DONE_FRAME

    def error_frame(self, err: GatewayError) -> bytes:
        return error_frame(err, ErrorShape.OPENAI)
