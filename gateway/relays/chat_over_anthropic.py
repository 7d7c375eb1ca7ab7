"""OpenAI Chat Completions caller, Anthropic provider: translate the request, the reply and the stream."""

from __future__ import annotations

import time
from typing import Any

import orjson
import structlog
from aiohttp import web

from gateway.dialect import Dialect
from gateway.dialects import sse
from gateway.dialects.anthropic_to_openai import (
    CLIENT_STATUSES,
    ChatStreamTranslator,
    error_to_openai,
    message_to_chat_completion,
)
from gateway.dialects.openai_to_anthropic import TranslationError, chat_request_to_anthropic
from gateway.dialects.responses import is_responses_body, responses_request_to_anthropic
from gateway.dialects.responses_stream import ChatCustomCalls, chat_completion_with_custom_calls
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


async def relay_chat_over_anthropic(ex: Exchange) -> None:
    assert ex.target is not None
    options = translation_options(ex.target)
    custom: frozenset[str] = frozenset()  # a Responses-shaped body's custom tools, answered as custom calls
    try:
        if is_responses_body(ex.body):  # Cursor posts some models' requests in Responses shape, wants Chat back
            # `store` is ignored on this route, as in Chat Completions bodies: nothing here would be stored.
            translation = responses_request_to_anthropic({**ex.body, "store": False}, options)
            translated, custom = translation.request, translation.custom_tools
        else:
            translated = chat_request_to_anthropic(ex.body, options)
    except TranslationError as exc:
        raise BadRequest(str(exc), param=exc.param) from None
    except (TypeError, AttributeError, KeyError) as exc:  # a shape the translator did not foresee: still the caller's
        raise unexpected_shape(exc) from None
    stream = translated.get("stream") is True
    notes = thinking_headers(ex.body, translated)  # reasoning asked for but sent without thinking: say so
    reply = await send_to_anthropic(ex, translated)
    try:
        if reply.status != 200:
            await _openai_error(ex, reply)
        elif stream:
            await _openai_stream(ex, reply, custom, notes)
        else:
            await _openai_whole(ex, reply, custom)
        if not ex.streamed and ex.response is not None:
            ex.response.headers.update(notes)
    finally:
        reply.release()


def _completion_id(ex: Exchange) -> str:
    return f"chatcmpl-{ex.request_id}"


async def _openai_error(ex: Exchange, reply: UpstreamReply) -> None:
    data = await reply.read()
    ex.first_byte_ns = time.perf_counter_ns()
    status, body = error_to_openai(reply.status, data)
    ex.status = status
    headers = {k: v for k, v in reply.headers.items() if k.lower() in ("retry-after", "request-id")}
    ex.response = web.json_response(body, status=status, headers=headers, dumps=_dumps)


async def _openai_whole(ex: Exchange, reply: UpstreamReply, custom: frozenset[str]) -> None:
    assert ex.target is not None
    message = anthropic_reply(await reply.read(), ex.target.provider.name)
    ex.first_byte_ns = time.perf_counter_ns()
    with readable_upstream(ex.target.provider.name):
        ex.usage.update_from_anthropic(message.get("usage") or {})
        body = message_to_chat_completion(
            message, model=ex.alias_name, completion_id=_completion_id(ex), created=int(time.time())
        )
        if custom:
            body = chat_completion_with_custom_calls(body, custom)
    ex.status = 200
    ex.response = web.Response(body=orjson.dumps(body), content_type="application/json")


async def _openai_stream(
    ex: Exchange, reply: UpstreamReply, custom: frozenset[str], notes: dict[str, str] | None = None
) -> None:
    assert ex.target is not None
    options = ex.body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    translator = ChatStreamTranslator(
        model=ex.alias_name, completion_id=_completion_id(ex), created=int(time.time()), include_usage=include_usage
    )
    resp = await start_stream(ex, {**EVENT_STREAM, **(notes or {})})
    if resp is None:
        return
    parser = sse.SSEParser()
    held = ChatCustomCalls(custom)
    try:
        async for chunk in reply.chunks():
            if ex.first_byte_ns is None:
                ex.first_byte_ns = time.perf_counter_ns()
            frames: list[bytes] = []
            with readable_upstream(ex.target.provider.name):
                for event, data in parser.feed(chunk):
                    note_anthropic_event(ex, event, data)
                    chunks = translator.feed(event, json_object(data))
                    frames.extend(sse.data_frame(c) for c in (held.feed(chunks) if custom else chunks))
            if frames and not await write_quietly(resp, b"".join(frames)):
                ex.status = CLIENT_CLOSED
                return
        if not translator.finished:  # the body ended cleanly but early: [DONE] alone would pass it off as whole
            raise UpstreamUnreachable(f"{ex.target.provider.name} ended the stream before message_stop")
    except GatewayError as err:
        ex.status = err.status_for(ex.dialect)
        log.warning("upstream_stream_broken", request_id=ex.request_id, error=err.message)
        await write_quietly(resp, sse.data_frame(err.render(Dialect.OPENAI)))
    ex.status = CLIENT_STATUSES.get(ex.status, ex.status)  # an in-stream overloaded_error is a 503, as unstreamed
    await write_quietly(resp, sse.DONE_FRAME)
    await eof_quietly(resp)


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()
