"""OpenAI Responses caller (POST /v1/responses: Codex CLI, the `openai` SDK), Anthropic provider.

Stateless: every request carries the whole conversation as `input` items; the gateway stores no response.
"""

from __future__ import annotations

import time

from gateway.dialects.responses.reply import ResponseContext, event_frame, message_to_response
from gateway.dialects.responses.request import responses_request_to_anthropic
from gateway.dialects.responses.stream import ResponsesStreamTranslator
from gateway.errors import GatewayError
from gateway.pipeline import Exchange
from gateway.relays.over_anthropic import FromAnthropic, relay_over_anthropic
from gateway.relays.replies import readable_upstream
from gateway.relays.request_translation import translating, translation_options
from gateway.relays.stream import OutputMeter
from gateway.relays.upstream import Upstream


async def relay_responses_over_anthropic(ex: Exchange, upstream: Upstream) -> None:
    assert ex.target is not None
    with translating():
        translation = responses_request_to_anthropic(ex.body, translation_options(ex.target))
    ctx = ResponseContext(f"resp_{ex.request_id}", int(time.time()), ex.alias_name, translation)
    provider = ex.target.provider.name

    def translator() -> ResponsesOverAnthropic:
        return ResponsesOverAnthropic(OutputMeter(ex.usage), ResponsesStreamTranslator(ctx), provider)

    await relay_over_anthropic(
        ex,
        upstream,
        translation.request,
        render=lambda message: message_to_response(message, ctx),
        translator=translator,
    )


class ResponsesOverAnthropic(FromAnthropic[ResponsesStreamTranslator]):
    """Anthropic's events in, Responses events out, ending in response.completed (or .failed / .incomplete)."""

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
