"""OpenAI Chat Completions caller, Anthropic provider: translate the request, the reply and the stream."""

from __future__ import annotations

import time
from typing import Any

from gateway.dialects import sse
from gateway.dialects.chat.reply import message_to_chat_completion
from gateway.dialects.chat.request import chat_request_to_anthropic
from gateway.dialects.chat.stream import ChatStreamTranslator
from gateway.dialects.responses.request import is_responses_body, responses_request_to_anthropic
from gateway.dialects.responses.stream import ChatCustomCalls, chat_completion_with_custom_calls
from gateway.error_shape import ErrorShape
from gateway.errors import GatewayError, error_frame
from gateway.pipeline import Exchange
from gateway.relays.over_anthropic import FromAnthropic, relay_over_anthropic
from gateway.relays.replies import readable_upstream
from gateway.relays.request_translation import translating, translation_options
from gateway.relays.stream import OutputMeter
from gateway.relays.upstream import Upstream


async def relay_chat_over_anthropic(ex: Exchange, upstream: Upstream) -> None:
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
    assert ex.target is not None
    provider, completion_id, created = ex.target.provider.name, f"chatcmpl-{ex.request_id}", int(time.time())

    def render(message: dict[str, Any]) -> dict[str, Any]:
        body = message_to_chat_completion(message, model=ex.alias_name, completion_id=completion_id, created=created)
        return chat_completion_with_custom_calls(body, custom) if custom else body

    def translator() -> ChatOverAnthropic:
        options = ex.body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        chat = ChatStreamTranslator(
            model=ex.alias_name, completion_id=completion_id, created=created, include_usage=include_usage
        )
        return ChatOverAnthropic(OutputMeter(ex.usage), chat, custom, provider)

    await relay_over_anthropic(ex, upstream, translated, render=render, translator=translator)


class ChatOverAnthropic(FromAnthropic[ChatStreamTranslator]):
    """Anthropic's events in, Chat Completions chunks out (custom tool calls held back and answered as such)."""

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
