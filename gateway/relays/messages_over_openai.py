"""Anthropic Messages caller, OpenAI-compatible provider: translate the request, the reply and the stream.

This is what lets Claude Code and the anthropic SDK run on a model behind OpenAI, vLLM, Ollama or LiteLLM.
`count_tokens` has no Chat Completions counterpart, so it is answered here with an estimate (about four bytes
of translated JSON per token, marked by the `x-gateway-token-estimate` header) and never reaches the provider:
Claude Code uses it to judge how full its context is, where an estimate serves and a 404 would not.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from gateway.dialects import sse
from gateway.dialects.messages.reply import Event, chat_completion_to_message
from gateway.dialects.messages.request import estimate_input_tokens, messages_request_to_chat
from gateway.dialects.messages.stream import AnthropicStreamTranslator
from gateway.error_shape import ErrorShape
from gateway.errors import BadRequest, GatewayError, UpstreamError, UpstreamUnreachable, error_frame, json_object
from gateway.pipeline import Exchange, Target
from gateway.providers.base import UpstreamCall, UpstreamReply
from gateway.providers.openai_compat import CHAT_COMPLETIONS_PATH
from gateway.relays.replies import answer, relay_error
from gateway.relays.request_translation import translating
from gateway.relays.stream import OutputMeter, TranslatedStream, is_count, relay_stream
from gateway.relays.upstream import Upstream

STREAM_ERROR_STATUS = 502  # an error event inside a 200 stream: the provider failed after it started
ESTIMATE_HEADER = "x-gateway-token-estimate"


async def relay_messages_over_openai(ex: Exchange, upstream: Upstream) -> None:
    assert ex.target is not None
    with translating():
        translated = messages_request_to_chat(ex.full_body(), provider_model=ex.target.provider_model)
    if ex.route == "count_tokens":
        _estimate_tokens(ex, translated)
        return
    max_tokens = translated.get("max_tokens")
    if type(max_tokens) is not int or max_tokens < 1:  # the Messages API's own rule, and the budget's bound:
        # without it an OpenAI-compatible server writes until the context ends while 4,096 tokens were reserved
        raise BadRequest(f"max_tokens: must be a positive integer, got {max_tokens!r}", param="max_tokens")
    stream = translated.get("stream") is True

    def build(target: Target) -> UpstreamCall:  # a fallback deployment gets its own model id
        body = orjson.dumps({**translated, "model": target.provider_model})
        return UpstreamCall(path=CHAT_COMPLETIONS_PATH, query_string="", headers={}, body=body, stream=stream)

    reply = await upstream.send(ex, build)
    await answer(
        reply,
        stream=stream,
        error=lambda: relay_error(ex, reply, UpstreamError.from_openai),
        streamed=lambda: _anthropic_stream(ex, reply),
        whole=lambda: _anthropic_whole(ex, reply),
    )


def _message_id(ex: Exchange) -> str:
    return f"msg_{ex.request_id}"


def _estimate_tokens(ex: Exchange, translated: dict[str, Any]) -> None:
    ex.first_byte_ns = time.perf_counter_ns()
    ex.status = 200
    body = orjson.dumps({"input_tokens": estimate_input_tokens(translated)})
    ex.response = web.Response(body=body, content_type="application/json", headers={ESTIMATE_HEADER: "true"})


async def _anthropic_whole(ex: Exchange, reply: UpstreamReply) -> None:
    assert ex.target is not None
    completion = json_object(await reply.read())
    ex.first_byte_ns = time.perf_counter_ns()
    if not completion.get("choices"):
        raise UpstreamUnreachable(f"{ex.target.provider.name} answered 200 without a chat completion")
    ex.status = 200
    message = chat_completion_to_message(completion, message_id=_message_id(ex), model=ex.alias_name)
    ex.usage.update_from_anthropic(message["usage"])
    ex.response = web.Response(body=orjson.dumps(message), content_type="application/json")


def _frames(events: list[Event]) -> bytes:
    return b"".join(sse.frame(orjson.dumps(data), name) for name, data in events)


async def _anthropic_stream(ex: Exchange, reply: UpstreamReply) -> None:
    assert ex.target is not None
    translator = AnthropicStreamTranslator(message_id=_message_id(ex), model=ex.alias_name)
    await relay_stream(ex, reply, MessagesOverOpenAI(OutputMeter(ex.usage), translator, ex.target.provider.name))


class MessagesOverOpenAI(TranslatedStream[AnthropicStreamTranslator]):
    """Chat Completions chunks in, Anthropic events out, ending in message_stop."""

    def feed(self, chunk: bytes) -> bytes:
        events: list[Event] = []
        for _, data in self._parser.feed(chunk):
            if data.strip() == b"[DONE]":
                events += self._translator.finish()
                continue
            parsed = json_object(data)
            self.meter.openai_delta(parsed.get("choices"))
            if isinstance(usage := parsed.get("usage"), Mapping):
                self.meter.final = self.meter.final or is_count(usage.get("completion_tokens"))
            events += self._translator.feed(parsed)
        self.meter.usage.update_from_anthropic(self._translator.usage)
        if any(name == "error" for name, _ in events):
            self.meter.error_status = STREAM_ERROR_STATUS
        return _frames(events)

    def end(self) -> bytes:
        if self._translator.finished:
            return b""
        if not self._translator.saw_finish_reason:  # the body ended cleanly but early
            raise self._stopped_short("a finish_reason")
        return _frames(self._translator.finish())  # a server that never sends [DONE]

    def error_frame(self, err: GatewayError) -> bytes:
        return error_frame(err, ErrorShape.ANTHROPIC)
