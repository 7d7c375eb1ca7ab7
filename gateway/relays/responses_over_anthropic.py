"""OpenAI Responses caller (POST /v1/responses: Codex CLI, the `openai` SDK), Anthropic provider.

Stateless: every request carries the whole conversation as `input` items; the gateway stores no response.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import orjson
from aiohttp import web

from gateway.dialects.chat.reply import CLIENT_STATUSES
from gateway.dialects.responses.reply import ResponseContext, event_frame, message_to_response
from gateway.dialects.responses.request import responses_request_to_anthropic
from gateway.dialects.responses.stream import ResponsesStreamTranslator
from gateway.dialects.thinking import thinking_headers
from gateway.errors import GatewayError, UpstreamError
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


async def relay_responses_over_anthropic(ex: Exchange) -> None:
    assert ex.target is not None
    with translating():
        translation = responses_request_to_anthropic(ex.body, translation_options(ex.target))
    ctx = ResponseContext(f"resp_{ex.request_id}", int(time.time()), ex.alias_name, translation)
    notes = thinking_headers(ex.body, translation.request)  # reasoning asked for but sent without thinking
    reply = await send_to_anthropic(ex, translation.request)
    await answer(
        reply,
        stream=translation.request.get("stream") is True,
        error=lambda: relay_error(ex, reply, UpstreamError.from_anthropic, _ERROR_HEADERS),
        streamed=lambda: _stream(ex, reply, ctx, notes),
        whole=lambda: _whole(ex, reply, ctx),
    )
    if not ex.streamed and ex.response is not None:
        ex.response.headers.update(notes)


_ERROR_HEADERS = frozenset({"retry-after", "request-id"})


async def _whole(ex: Exchange, reply: UpstreamReply, ctx: ResponseContext) -> None:
    assert ex.target is not None
    message = anthropic_reply(await reply.read(), ex.target.provider.name)
    ex.first_byte_ns = time.perf_counter_ns()
    with readable_upstream(ex.target.provider.name):
        message = bill_message(ex.usage, message)  # without a usable output count, its content is billed
        body = orjson.dumps(message_to_response(message, ctx))
    ex.status = 200
    ex.response = web.Response(body=body, content_type="application/json")


async def _stream(ex: Exchange, reply: UpstreamReply, ctx: ResponseContext, notes: dict[str, str]) -> None:
    assert ex.target is not None
    translator = ResponsesOverAnthropic(OutputMeter(ex.usage), ResponsesStreamTranslator(ctx), ex.target.provider.name)
    await relay_stream(ex, reply, translator, {**EVENT_STREAM, **notes})


class ResponsesOverAnthropic(TranslatedStream[ResponsesStreamTranslator]):
    """Anthropic's events in, Responses events out, ending in response.completed (or .failed / .incomplete)."""

    statuses: Mapping[int, int] = CLIENT_STATUSES  # an in-stream overloaded_error is a 503, as unstreamed

    def feed(self, chunk: bytes) -> bytes:
        frames: list[bytes] = []
        with readable_upstream(self._provider):  # an event the translator cannot read: a 502, written in-band
            for event, parsed in self._anthropic_events(chunk):
                frames.extend(event_frame(e) for e in self._translator.feed(event, parsed))
        return b"".join(frames)

    def end(self) -> bytes:
        if not self._translator.finished:
            raise self._stopped_short("message_stop")
        return b""

    def error_frame(self, err: GatewayError) -> bytes:
        return b"".join(event_frame(e) for e in self._translator.fail(err.anthropic_type, err.message))
