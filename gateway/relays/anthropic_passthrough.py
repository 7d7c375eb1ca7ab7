"""Anthropic caller, Anthropic provider: the caller's bytes go upstream with only `model` patched, and the
answer comes back untouched; a stream is written chunk by chunk as it arrives while usage is read on the side.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from aiohttp import web

from gateway.dialects import sse
from gateway.error_shape import ErrorShape
from gateway.errors import GatewayError, error_frame, json_object
from gateway.pipeline import Exchange, Target
from gateway.providers.base import UpstreamCall, UpstreamReply
from gateway.relays.headers import forwardable_headers, relayed_headers
from gateway.relays.model_patch import with_model
from gateway.relays.stream import OutputMeter, bill_message, relay_stream
from gateway.relays.upstream import Upstream


def _upstream_path(ex: Exchange) -> str:
    return "/v1/messages/count_tokens" if ex.route == "count_tokens" else "/v1/messages"


async def relay_anthropic(ex: Exchange, upstream: Upstream) -> None:
    """Anthropic caller, Anthropic provider: the caller's bytes, `model` patched; the answer as it comes."""
    stream = ex.body.get("stream") is True and ex.route == "messages"  # picks the upstream timeouts
    path, headers = _upstream_path(ex), forwardable_headers(ex.request.headers)
    query = ex.request.rel_url.raw_query_string  # as sent: `request.query_string` is percent-decoded

    def build(target: Target) -> UpstreamCall:
        body = with_model(ex.raw_body, ex.full_body, target.provider_model, unique=ex.sketched or ex.single_model)
        return UpstreamCall(path=path, query_string=query, headers=headers, body=body, stream=stream)

    reply = await upstream.send(ex, build)
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
        bill_message(ex.usage, json_object(data))
    headers = relayed_headers(reply.headers)
    headers["Content-Type"] = reply.headers.get("Content-Type", "application/json")
    ex.response = web.Response(body=data, status=reply.status, headers=headers)


async def _relay_stream(ex: Exchange, reply: UpstreamReply) -> None:
    headers = relayed_headers(reply.headers)
    headers["Content-Type"] = reply.headers.get("Content-Type", "text/event-stream")
    headers["Cache-Control"] = "no-cache"
    await relay_stream(ex, reply, AnthropicPassthrough(OutputMeter(ex.usage)), headers)


class AnthropicPassthrough:
    """Anthropic's stream, byte for byte: each chunk is written as it arrives (no coalescing, no re-serialising)
    while its events are read on the side for usage, relayed text and the final message_stop."""

    statuses: Mapping[int, int] = {}

    def __init__(self, meter: OutputMeter) -> None:
        self.meter = meter
        self._parser = sse.SSEParser()
        self._finished = False

    @property
    def finished(self) -> bool:
        return self._finished

    def feed(self, chunk: bytes) -> bytes:
        for event, data in self._parser.feed(chunk):
            if event in _READ:
                self.meter.anthropic_event(event, json_object(data))
            elif event == "message_stop":
                self._finished = True
        return chunk

    def end(self) -> bytes:
        return b""

    def error_frame(self, err: GatewayError) -> bytes:
        return error_frame(err, ErrorShape.ANTHROPIC)


# The events parsed on the side; ping and block starts and stops are only relayed.
_READ = frozenset({"content_block_delta", "message_start", "message_delta", "error"})
