"""OpenAI Chat Completions caller, OpenAI-compatible provider: the caller's body goes upstream with only `model`
patched (and, on a stream, usage asked for); the answer comes back unchanged, chunk by chunk as it arrives.

A stream's token counts come only in its last chunk, and only when `stream_options.include_usage` is set, so
the gateway always asks for it. A caller that did not ask never sees that chunk: the stream is then re-framed
event by event without it (the events themselves are relayed byte for byte).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import structlog
from aiohttp import web

from gateway.dialect import Dialect
from gateway.dialects import sse
from gateway.dialects.openai_to_anthropic_reply import usage_to_anthropic
from gateway.errors import GatewayError, UpstreamUnreachable
from gateway.pipeline import Exchange, Target
from gateway.providers.base import UpstreamCall, UpstreamReply
from gateway.providers.openai_compat import CHAT_COMPLETIONS_PATH
from gateway.relays.common import (
    eof_quietly,
    json_object,
    relayed_headers,
    send,
    start_stream,
    with_model,
    write_quietly,
)
from gateway.stages.usage_log import CLIENT_CLOSED

log = structlog.get_logger("gateway.relay")

# They name the gateway's own OpenAI account, which is none of the caller's business.
_ACCOUNT_HEADERS = frozenset({"openai-organization", "openai-project"})
STREAM_ERROR_STATUS = 502  # an error event inside a 200 stream: the provider failed after it started


async def relay_openai(ex: Exchange) -> None:
    assert ex.target is not None
    stream = ex.body.get("stream") is True
    caller_wants_usage = include_usage(ex.body)

    def build(target: Target) -> UpstreamCall:  # a fallback deployment gets its own model id
        body = _upstream_body(ex, target.provider_model, force_usage=stream and not caller_wants_usage)
        # No caller headers: OpenAI-Organization/Project would name the caller's account, not ours.
        return UpstreamCall(path=CHAT_COMPLETIONS_PATH, query_string="", headers={}, body=body, stream=stream)

    reply = await send(ex, build)
    try:
        if stream and reply.status == 200:
            await _relay_stream(ex, reply, keep_usage_chunk=caller_wants_usage)
        else:
            await _relay_whole(ex, reply)
    finally:
        reply.release()


def include_usage(body: dict[str, Any]) -> bool:
    """Whether the caller asked for a stream's usage chunk."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _upstream_body(ex: Exchange, model: str, *, force_usage: bool) -> bytes:
    if not force_usage:
        return with_model(ex.raw_body, ex.full_body, model)
    options = ex.body.get("stream_options")
    options = {**options, "include_usage": True} if isinstance(options, dict) else {"include_usage": True}
    return orjson.dumps({**ex.body, "model": model, "stream_options": options})


def _headers(reply: UpstreamReply, content_type: str) -> dict[str, str]:
    headers = {k: v for k, v in relayed_headers(reply.headers).items() if k.lower() not in _ACCOUNT_HEADERS}
    headers["Content-Type"] = reply.headers.get("Content-Type", content_type)
    return headers


async def _relay_whole(ex: Exchange, reply: UpstreamReply) -> None:
    data = await reply.read()
    ex.first_byte_ns = time.perf_counter_ns()
    ex.status = reply.status
    if reply.status == 200 and ex.billable:
        usage = json_object(data).get("usage")
        if isinstance(usage, dict):
            ex.usage.update_from_anthropic(usage_to_anthropic(usage))
        else:
            _warn_no_usage(ex)
    ex.response = web.Response(body=data, status=reply.status, headers=_headers(reply, "application/json"))


class _StreamWatch:
    """What the relay learns from a stream's events on the side: usage, whether it ended, in-stream errors."""

    def __init__(self, ex: Exchange) -> None:
        self._ex = ex
        self.done = False  # [DONE] seen
        self.finished = False  # a finish_reason seen: the reply is whole
        self.saw_usage = False

    def note(self, data: bytes) -> bool:
        """Read one event's data; True when it is the usage-only chunk (no choices, only usage)."""
        if data.strip() == b"[DONE]":
            self.done = True
            return False
        chunk = json_object(data)
        if "error" in chunk:
            self._ex.status = STREAM_ERROR_STATUS
        choices = chunk.get("choices")
        if isinstance(choices, list) and any(isinstance(c, dict) and c.get("finish_reason") for c in choices):
            self.finished = True
        usage = chunk.get("usage")
        if not isinstance(usage, dict):
            return False
        self.saw_usage = True
        self._ex.usage.update_from_anthropic(usage_to_anthropic(usage))
        return not choices


async def _relay_stream(ex: Exchange, reply: UpstreamReply, *, keep_usage_chunk: bool) -> None:
    assert ex.target is not None
    headers = _headers(reply, "text/event-stream")
    headers["Cache-Control"] = "no-cache"
    resp = await start_stream(ex, headers)
    if resp is None:
        return
    parser, watch = sse.SSEParser(), _StreamWatch(ex)
    try:
        async for chunk in reply.chunks():
            if ex.first_byte_ns is None:
                ex.first_byte_ns = time.perf_counter_ns()
            frames = []
            for event, data in parser.feed(chunk):
                is_usage_chunk = watch.note(data)
                if not (keep_usage_chunk or is_usage_chunk):
                    frames.append(sse.frame(data, None if event == "message" else event))
            out = chunk if keep_usage_chunk else b"".join(frames)  # as received, unless a chunk is held back
            if out and not await write_quietly(resp, out):
                ex.status = CLIENT_CLOSED
                return
        if not (watch.done or watch.finished):  # the body ended cleanly but early
            raise UpstreamUnreachable(f"{ex.target.provider.name} ended the stream before it finished")
    except GatewayError as err:  # the provider broke off mid-stream: say so in-band, the status line is gone
        ex.status = err.status_for(ex.dialect)
        log.warning("upstream_stream_broken", request_id=ex.request_id, error=err.message)
        await write_quietly(resp, sse.data_frame(err.render(Dialect.OPENAI)) + sse.DONE_FRAME)
    else:
        if not watch.saw_usage and ex.billable:
            _warn_no_usage(ex)
    await eof_quietly(resp)


def _warn_no_usage(ex: Exchange) -> None:
    # vLLM, Ollama and LiteLLM report usage; a server that does not leaves the request unbilled: say so.
    assert ex.target is not None
    log.warning("upstream_reported_no_usage", request_id=ex.request_id, provider=ex.target.provider.name)
