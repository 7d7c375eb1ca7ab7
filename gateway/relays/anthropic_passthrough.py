"""Anthropic caller, Anthropic provider: the caller's bytes go upstream with only `model` patched, and the
answer comes back untouched; a stream is written chunk by chunk as it arrives while usage is read on the side.
"""

from __future__ import annotations

import time

import orjson
import structlog
from aiohttp import web

from gateway.dialects import sse
from gateway.errors import GatewayError
from gateway.pipeline import Exchange, Target
from gateway.providers.base import UpstreamCall, UpstreamReply
from gateway.relays.common import (
    eof_quietly,
    forwardable_headers,
    json_object,
    note_anthropic_event,
    relayed_headers,
    send,
    start_stream,
    with_model,
    write_quietly,
)
from gateway.stages.usage_log import CLIENT_CLOSED

log = structlog.get_logger("gateway.relay")


def _upstream_path(ex: Exchange) -> str:
    return "/v1/messages/count_tokens" if ex.route == "count_tokens" else "/v1/messages"


async def relay_anthropic(ex: Exchange) -> None:
    """Anthropic caller, Anthropic provider: the caller's bytes, `model` patched; the answer as it comes."""
    stream = ex.body.get("stream") is True and ex.route == "messages"  # picks the upstream timeouts
    path, headers = _upstream_path(ex), forwardable_headers(ex.request.headers)
    query = ex.request.rel_url.raw_query_string  # as sent: `request.query_string` is percent-decoded

    def build(target: Target) -> UpstreamCall:
        body = with_model(ex.raw_body, ex.full_body, target.provider_model, unique=ex.sketched)
        return UpstreamCall(path=path, query_string=query, headers=headers, body=body, stream=stream)

    reply = await send(ex, build)
    try:
        # The reply says what it is: a sketched body's "stream" flag may come from a nested object.
        if reply.status == 200 and reply.headers.get("Content-Type", "").startswith("text/event-stream"):
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
        ex.usage.update_from_anthropic(json_object(data).get("usage") or {})
    headers = relayed_headers(reply.headers)
    headers["Content-Type"] = reply.headers.get("Content-Type", "application/json")
    ex.response = web.Response(body=data, status=reply.status, headers=headers)


async def _relay_stream(ex: Exchange, reply: UpstreamReply) -> None:
    headers = relayed_headers(reply.headers)
    headers["Content-Type"] = reply.headers.get("Content-Type", "text/event-stream")
    headers["Cache-Control"] = "no-cache"
    resp = await start_stream(ex, headers)
    if resp is None:
        return
    scanner = sse.UsageEventScanner()  # usage from the few events that carry it; the rest is only relayed
    try:
        async for chunk in reply.chunks():
            if ex.first_byte_ns is None:
                ex.first_byte_ns = time.perf_counter_ns()
            try:
                await resp.write(chunk)  # each chunk as soon as it arrives: no coalescing, no re-serialising
            except ConnectionResetError:
                ex.status = CLIENT_CLOSED
                return
            for event, data in scanner.feed(chunk):
                note_anthropic_event(ex, event, data)
    except GatewayError as err:  # the provider broke off mid-stream: say so in-band, the status line is gone
        ex.status = err.status_for(ex.dialect)
        log.warning("upstream_stream_broken", request_id=ex.request_id, error=err.message)
        await write_quietly(resp, sse.frame(orjson.dumps(err.render(ex.dialect)), "error"))
    await eof_quietly(resp)
