"""OpenAI Responses caller (POST /v1/responses: Codex CLI, the `openai` SDK), Anthropic provider.

Stateless: every request carries the whole conversation as `input` items; the gateway stores no response.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import structlog
from aiohttp import web

from gateway.dialects import sse
from gateway.dialects.anthropic_to_openai import CLIENT_STATUSES
from gateway.dialects.openai_to_anthropic import TranslationError
from gateway.dialects.responses import (
    ResponseContext,
    error_to_responses,
    event_frame,
    message_to_response,
    responses_request_to_anthropic,
)
from gateway.dialects.responses_stream import ResponsesStreamTranslator
from gateway.dialects.thinking import thinking_headers
from gateway.errors import BadRequest, GatewayError, UpstreamUnreachable
from gateway.pipeline import Exchange
from gateway.providers.base import UpstreamReply
from gateway.relays.common import (
    EVENT_STREAM,
    anthropic_reply,
    eof_quietly,
    json_object,
    note_anthropic_event,
    readable_upstream,
    send_to_anthropic,
    start_stream,
    translation_options,
    unexpected_shape,
    write_quietly,
)
from gateway.stages.usage_log import CLIENT_CLOSED

log = structlog.get_logger("gateway.relay")


async def relay_responses_over_anthropic(ex: Exchange) -> None:
    assert ex.target is not None
    try:
        translation = responses_request_to_anthropic(ex.body, translation_options(ex.target))
    except TranslationError as exc:
        raise BadRequest(str(exc), param=exc.param) from None
    except (TypeError, AttributeError, KeyError) as exc:  # a shape the translator did not foresee: still the caller's
        raise unexpected_shape(exc) from None
    stream = translation.request.get("stream") is True
    ctx = ResponseContext(f"resp_{ex.request_id}", int(time.time()), ex.alias_name, translation)
    notes = thinking_headers(ex.body, translation.request)  # reasoning asked for but sent without thinking
    reply = await send_to_anthropic(ex, translation.request)
    try:
        if reply.status != 200:
            await _error(ex, reply)
        elif stream:
            await _stream(ex, reply, ctx, notes)
        else:
            await _whole(ex, reply, ctx)
        if not ex.streamed and ex.response is not None:
            ex.response.headers.update(notes)
    finally:
        reply.release()


async def _error(ex: Exchange, reply: UpstreamReply) -> None:
    data = await reply.read()
    ex.first_byte_ns = time.perf_counter_ns()
    status, body = error_to_responses(reply.status, data)
    ex.status = status
    headers = {k: v for k, v in reply.headers.items() if k.lower() in ("retry-after", "request-id")}
    ex.response = web.json_response(body, status=status, headers=headers, dumps=_dumps)


async def _whole(ex: Exchange, reply: UpstreamReply, ctx: ResponseContext) -> None:
    assert ex.target is not None
    message = anthropic_reply(await reply.read(), ex.target.provider.name)
    ex.first_byte_ns = time.perf_counter_ns()
    with readable_upstream(ex.target.provider.name):
        ex.usage.update_from_anthropic(message.get("usage") or {})
        body = orjson.dumps(message_to_response(message, ctx))
    ex.status = 200
    ex.response = web.Response(body=body, content_type="application/json")


async def _stream(ex: Exchange, reply: UpstreamReply, ctx: ResponseContext, notes: dict[str, str]) -> None:
    assert ex.target is not None
    translator = ResponsesStreamTranslator(ctx)
    resp = await start_stream(ex, {**EVENT_STREAM, **notes})
    if resp is None:
        return
    parser = sse.SSEParser()
    try:
        async for chunk in reply.chunks():
            if ex.first_byte_ns is None:
                ex.first_byte_ns = time.perf_counter_ns()
            frames: list[bytes] = []
            with readable_upstream(ex.target.provider.name):
                for event, data in parser.feed(chunk):
                    note_anthropic_event(ex, event, data)
                    frames.extend(event_frame(e) for e in translator.feed(event, json_object(data)))
            if frames and not await write_quietly(resp, b"".join(frames)):
                ex.status = CLIENT_CLOSED
                return
        if not translator.finished:  # the body ended cleanly but early: response.completed would pass it off as whole
            raise UpstreamUnreachable(f"{ex.target.provider.name} ended the stream before message_stop")
    except GatewayError as err:
        ex.status = err.status_for(ex.dialect)
        log.warning("upstream_stream_broken", request_id=ex.request_id, error=err.message)
        await write_quietly(resp, b"".join(event_frame(e) for e in translator.fail("api_error", err.message)))
    ex.status = CLIENT_STATUSES.get(ex.status, ex.status)  # an in-stream overloaded_error is a 503, as unstreamed
    await eof_quietly(resp)


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()
