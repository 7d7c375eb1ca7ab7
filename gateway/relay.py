"""The innermost step of the pipeline: call the provider and answer the caller.

The relay picks how to answer by the pair (caller dialect, provider dialect). When they match, request
and response bytes pass through untouched but for the `model` value, and a stream is written to the
caller chunk by chunk as it arrives; the few events that carry usage are parsed on the side. When they
differ, the pure functions in gateway/dialects/ translate.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Mapping
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
from gateway.dialects.openai_to_anthropic import TranslationError, TranslationOptions, chat_request_to_anthropic
from gateway.errors import BadRequest, GatewayError, UpstreamUnreachable
from gateway.pipeline import Exchange
from gateway.providers.base import UpstreamCall, UpstreamReply
from gateway.stages.usage_log import CLIENT_CLOSED

log = structlog.get_logger("gateway.relay")

# Never forwarded upstream: hop-by-hop headers, framing the gateway redoes, and the caller's credentials.
_REQUEST_HEADERS_DROPPED = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "accept-encoding",
        "authorization",
        "x-api-key",
        "cookie",
    }
)
_RESPONSE_HEADERS_DROPPED = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "content-encoding",
        "set-cookie",
        "server",
        "date",
    }
)
_STREAM_ERROR_STATUS = {"overloaded_error": 529, "rate_limit_error": 429, "api_error": 500}


def forwardable_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The caller's headers that go upstream unchanged (every anthropic-* header among them)."""
    return {k: v for k, v in headers.items() if k.lower() not in _REQUEST_HEADERS_DROPPED}


def relayed_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The provider's response headers that reach the caller (request-id, rate-limit and retry-after among them)."""
    return {k: v for k, v in headers.items() if k.lower() not in _RESPONSE_HEADERS_DROPPED}


# --- the model value, patched in place --------------------------------------------------------------

# Claude Code and the Anthropic SDKs put "model" first (or last): patch those bytes directly; anything
# else is re-serialised by orjson, which keeps every key, its order and every value.
_MODEL_FIRST = re.compile(rb'\A\s*\{\s*"model"\s*:\s*"(?:[^"\\]|\\.)*"')
_MODEL_LAST = re.compile(rb'[,{]\s*"model"\s*:\s*"(?:[^"\\]|\\.)*"\s*\}\s*\Z')


def with_model(raw: bytes, body: dict[str, Any], model: str) -> bytes:
    """`raw` with the top-level "model" value replaced by `model`, every other byte as the caller sent it."""
    value = orjson.dumps(model)
    if m := _MODEL_FIRST.match(raw):
        return raw[: m.start()] + b'{"model":' + value + raw[m.end() :]
    if m := _MODEL_LAST.search(raw):
        return raw[: m.start() + 1] + b'"model":' + value + b"}"
    return orjson.dumps({**body, "model": model})


# --- the relay --------------------------------------------------------------------------------------


async def relay(ex: Exchange) -> None:
    """Send the exchange to its target provider and write the answer to the caller."""
    assert ex.target is not None
    if ex.dialect is ex.target.provider.dialect:
        await _passthrough(ex)
    elif ex.dialect is Dialect.OPENAI and ex.target.provider.dialect is Dialect.ANTHROPIC:
        await _openai_over_anthropic(ex)
    else:  # pragma: no cover - config validation only admits the pairs above
        raise GatewayError(f"no translation from {ex.dialect.value} to {ex.target.provider.dialect.value}")


def _upstream_path(ex: Exchange) -> str:
    return "/v1/messages/count_tokens" if ex.route == "count_tokens" else "/v1/messages"


async def _passthrough(ex: Exchange) -> None:
    assert ex.target is not None
    stream = ex.body.get("stream") is True and ex.route == "messages"
    call = UpstreamCall(
        path=_upstream_path(ex),
        query_string=ex.request.query_string,
        headers=forwardable_headers(ex.request.headers),
        body=with_model(ex.raw_body, ex.body, ex.target.provider_model),
        stream=stream,
    )
    reply = await ex.target.provider.send(call)
    try:
        if stream and reply.status == 200:
            await _relay_stream(ex, reply)
        else:
            await _relay_whole(ex, reply)
    finally:
        reply.release()


async def _relay_whole(ex: Exchange, reply: UpstreamReply) -> None:
    data = await reply.read()
    ex.first_byte_ns = time.perf_counter_ns()
    ex.status = reply.status
    if reply.status == 200 and ex.billable:
        ex.usage.update_from_anthropic(_json_object(data).get("usage") or {})
    headers = relayed_headers(reply.headers)
    headers["Content-Type"] = reply.headers.get("Content-Type", "application/json")
    ex.response = web.Response(body=data, status=reply.status, headers=headers)


async def _relay_stream(ex: Exchange, reply: UpstreamReply) -> None:
    ex.streamed = True
    ex.status = 200
    headers = relayed_headers(reply.headers)
    headers["Content-Type"] = reply.headers.get("Content-Type", "text/event-stream")
    headers["Cache-Control"] = "no-cache"
    resp = ex.response = web.StreamResponse(status=200, headers=headers)
    await resp.prepare(ex.request)
    parser = sse.SSEParser()
    try:
        async for chunk in reply.chunks():
            if ex.first_byte_ns is None:
                ex.first_byte_ns = time.perf_counter_ns()
            try:
                await resp.write(chunk)  # each chunk as soon as it arrives: no coalescing, no re-serialising
            except ConnectionResetError:
                ex.status = CLIENT_CLOSED
                return
            for event, data in parser.feed(chunk):
                _note_stream_event(ex, event, data)
    except GatewayError as err:  # the provider broke off mid-stream: say so in-band, the status line is gone
        ex.status = err.status_for(ex.dialect)
        log.warning("upstream_stream_broken", request_id=ex.request_id, error=err.message)
        await _write_quietly(resp, sse.frame(orjson.dumps(err.render(ex.dialect)), "error"))
    await _eof_quietly(resp)


def _note_stream_event(ex: Exchange, event: str, data: bytes) -> None:
    """Read usage from the few events that carry it; every other event is only relayed."""
    if event == "message_start":
        ex.usage.update_from_anthropic(_json_object(data).get("message", {}).get("usage") or {})
    elif event == "message_delta":
        ex.usage.update_from_anthropic(_json_object(data).get("usage") or {})
    elif event == "error":
        error_type = (_json_object(data).get("error") or {}).get("type", "api_error")
        ex.status = _STREAM_ERROR_STATUS.get(error_type, 500)


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


async def _write_quietly(resp: web.StreamResponse, data: bytes) -> bool:
    try:
        await resp.write(data)
    except ConnectionResetError:
        return False
    return True


async def _eof_quietly(resp: web.StreamResponse) -> None:
    with contextlib.suppress(ConnectionResetError):
        await resp.write_eof()


# --- OpenAI caller, Anthropic provider --------------------------------------------------------------


async def _openai_over_anthropic(ex: Exchange) -> None:
    assert ex.target is not None
    alias = ex.target.alias
    options = TranslationOptions(
        provider_model=ex.target.provider_model,
        default_max_tokens=alias.default_max_tokens,
        thinking_budgets=alias.thinking_budgets,
    )
    try:
        translated = chat_request_to_anthropic(ex.body, options)
    except TranslationError as exc:
        raise BadRequest(str(exc), param=exc.param) from None
    stream = translated.get("stream") is True
    call = UpstreamCall(path="/v1/messages", query_string="", headers={}, body=orjson.dumps(translated), stream=stream)
    reply = await ex.target.provider.send(call)
    try:
        if reply.status != 200:
            await _openai_error(ex, reply)
        elif stream:
            await _openai_stream(ex, reply)
        else:
            await _openai_whole(ex, reply)
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


async def _openai_whole(ex: Exchange, reply: UpstreamReply) -> None:
    message = _json_object(await reply.read())
    ex.first_byte_ns = time.perf_counter_ns()
    ex.status = 200
    ex.usage.update_from_anthropic(message.get("usage") or {})
    body = message_to_chat_completion(
        message, model=ex.alias_name, completion_id=_completion_id(ex), created=int(time.time())
    )
    ex.response = web.Response(body=orjson.dumps(body), content_type="application/json")


async def _openai_stream(ex: Exchange, reply: UpstreamReply) -> None:
    assert ex.target is not None
    ex.streamed = True
    ex.status = 200
    options = ex.body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    translator = ChatStreamTranslator(
        model=ex.alias_name, completion_id=_completion_id(ex), created=int(time.time()), include_usage=include_usage
    )
    resp = ex.response = web.StreamResponse(
        status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(ex.request)
    parser = sse.SSEParser()
    try:
        async for chunk in reply.chunks():
            if ex.first_byte_ns is None:
                ex.first_byte_ns = time.perf_counter_ns()
            frames: list[bytes] = []
            for event, data in parser.feed(chunk):
                _note_stream_event(ex, event, data)
                frames.extend(sse.data_frame(c) for c in translator.feed(event, _json_object(data)))
            if frames and not await _write_quietly(resp, b"".join(frames)):
                ex.status = CLIENT_CLOSED
                return
        if not translator.finished:  # the body ended cleanly but early: [DONE] alone would pass it off as whole
            raise UpstreamUnreachable(f"{ex.target.provider.name} ended the stream before message_stop")
    except GatewayError as err:
        ex.status = err.status_for(ex.dialect)
        log.warning("upstream_stream_broken", request_id=ex.request_id, error=err.message)
        await _write_quietly(resp, sse.data_frame(err.render(Dialect.OPENAI)))
    ex.status = CLIENT_STATUSES.get(ex.status, ex.status)  # an in-stream overloaded_error is a 503, as unstreamed
    await _write_quietly(resp, sse.DONE_FRAME)
    await _eof_quietly(resp)


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()
