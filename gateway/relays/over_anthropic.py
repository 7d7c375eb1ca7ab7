"""What the relays of an OpenAI-dialect caller (Chat Completions, Responses) to an Anthropic provider share: send
the translated request, then answer with the upstream's error, the translated stream or the translated reply."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from gateway.dialects.chat.reply import CLIENT_STATUSES
from gateway.dialects.thinking import thinking_headers
from gateway.errors import UpstreamError
from gateway.pipeline import Exchange
from gateway.providers.base import UpstreamReply
from gateway.relays.headers import EVENT_STREAM
from gateway.relays.replies import answer, anthropic_reply, readable_upstream, relay_error
from gateway.relays.stream import StreamTranslator, TranslatedStream, Translator, bill_message, relay_stream
from gateway.relays.upstream import Upstream

_ERROR_HEADERS = frozenset({"retry-after", "request-id"})  # an upstream error's headers that reach the caller


class FromAnthropic(TranslatedStream[Translator]):
    """An Anthropic stream translated for an OpenAI-dialect caller."""

    statuses: Mapping[int, int] = CLIENT_STATUSES  # an in-stream overloaded_error is a 503, as unstreamed


Render = Callable[[dict[str, Any]], dict[str, Any]]  # a billed Anthropic reply -> the caller's body


async def relay_over_anthropic(
    ex: Exchange,
    upstream: Upstream,
    request: dict[str, Any],
    *,
    render: Render,
    translator: Callable[[], StreamTranslator],
) -> None:
    """Send the translated Messages `request`; answer with an upstream error in the caller's shape, `render`'s
    of a whole reply, or the stream through `translator()`. Reasoning asked for but sent without thinking is
    said in headers (gateway/dialects/thinking.py)."""
    notes = thinking_headers(ex.body, request)
    reply = await upstream.send_anthropic(ex, request)
    await answer(
        reply,
        stream=request.get("stream") is True,
        error=lambda: relay_error(ex, reply, UpstreamError.from_anthropic, _ERROR_HEADERS),
        streamed=lambda: relay_stream(ex, reply, translator(), {**EVENT_STREAM, **notes}),
        whole=lambda: _whole(ex, reply, render),
    )
    if not ex.streamed and ex.response is not None:
        ex.response.headers.update(notes)


async def _whole(ex: Exchange, reply: UpstreamReply, render: Render) -> None:
    assert ex.target is not None
    message = anthropic_reply(await reply.read(), ex.target.provider.name)
    ex.first_byte_ns = time.perf_counter_ns()
    with readable_upstream(ex.target.provider.name):
        message = bill_message(ex.usage, message)  # without a usable output count, its content is billed
        body = orjson.dumps(render(message))
    ex.status = 200
    ex.response = web.Response(body=body, content_type="application/json")
