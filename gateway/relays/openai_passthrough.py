"""OpenAI Chat Completions caller, OpenAI-compatible provider: the caller's body goes upstream with only `model`
patched (and, on a stream, usage asked for); the answer comes back unchanged, chunk by chunk as it arrives.

A stream's token counts come only in its last chunk, and only when `stream_options.include_usage` is set, so
the gateway always asks for it. A caller that did not ask never sees that chunk: the stream is then re-framed
event by event without it (the events themselves are relayed byte for byte).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson
import structlog
from aiohttp import web

from gateway.dialects import sse
from gateway.dialects.chat.request import stream_flag
from gateway.dialects.messages.reply import usage_to_anthropic
from gateway.error_shape import ErrorShape
from gateway.errors import GatewayError, UpstreamUnreachable, error_frame, json_object
from gateway.pipeline import Exchange, Target
from gateway.providers.base import UpstreamCall, UpstreamReply
from gateway.providers.openai_compat import CHAT_COMPLETIONS_PATH
from gateway.relays.headers import relayed_headers
from gateway.relays.model_patch import with_model
from gateway.relays.request_translation import translating
from gateway.relays.stream import OutputMeter, bill_completion, is_count, relay_stream
from gateway.relays.upstream import Upstream

log = structlog.get_logger("gateway.relay")

# They name the gateway's own OpenAI account, which is none of the caller's business.
_ACCOUNT_HEADERS = frozenset({"openai-organization", "openai-project"})
STREAM_ERROR_STATUS = 502  # an error event inside a 200 stream: the provider failed after it started


async def relay_openai(ex: Exchange, upstream: Upstream) -> None:
    assert ex.target is not None
    with translating():  # `stream: 1` would stream from a lenient provider while the relay awaited a whole reply
        stream = stream_flag(ex.body.get("stream", False)) is True
    caller_wants_usage = include_usage(ex.body)

    def build(target: Target) -> UpstreamCall:  # a fallback deployment gets its own model id
        body = _upstream_body(ex, target.provider_model, force_usage=stream and not caller_wants_usage)
        # No caller headers: OpenAI-Organization/Project would name the caller's account, not ours.
        return UpstreamCall(path=CHAT_COMPLETIONS_PATH, query_string="", headers={}, body=body, stream=stream)

    reply = await upstream.send(ex, build)
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
    if reply.status == 200 and ex.billable and not bill_completion(ex.usage, json_object(data)):
        _warn_no_usage(ex)
    ex.response = web.Response(body=data, status=reply.status, headers=_headers(reply, "application/json"))


async def _relay_stream(ex: Exchange, reply: UpstreamReply, *, keep_usage_chunk: bool) -> None:
    assert ex.target is not None
    headers = _headers(reply, "text/event-stream")
    headers["Cache-Control"] = "no-cache"
    translator = OpenAIPassthrough(OutputMeter(ex.usage), ex, keep_usage_chunk=keep_usage_chunk)
    await relay_stream(ex, reply, translator, headers)


class OpenAIPassthrough:
    """The provider's chunks, as received, while usage, relayed text and the end are read on the side; the
    usage-only chunk the gateway asked for is held back (the stream re-framed event by event) unless the
    caller asked for it too."""

    statuses: Mapping[int, int] = {}

    def __init__(self, meter: OutputMeter, ex: Exchange, *, keep_usage_chunk: bool) -> None:
        self.meter, self._ex, self._keep_usage_chunk = meter, ex, keep_usage_chunk
        self._parser = sse.SSEParser()
        self._done = False  # [DONE] seen
        self._finish_reason = False  # a finish_reason seen: the reply is whole

    @property
    def finished(self) -> bool:
        return self._done or self._finish_reason

    def feed(self, chunk: bytes) -> bytes:
        frames = []
        for event, data in self._parser.feed(chunk):
            is_usage_chunk = self._note(data)
            if not (self._keep_usage_chunk or is_usage_chunk):
                frames.append(sse.frame(data, None if event == "message" else event))
        return chunk if self._keep_usage_chunk else b"".join(frames)  # as received, unless a chunk is held back

    def _note(self, data: bytes) -> bool:
        """Read one event's data; True when it is the usage-only chunk (no choices, only usage)."""
        if data.strip() == b"[DONE]":
            self._done = True
            return False
        chunk = json_object(data)
        if "error" in chunk:
            self.meter.error_status = STREAM_ERROR_STATUS
        choices = chunk.get("choices")
        self.meter.openai_delta(choices)
        if isinstance(choices, list) and any(isinstance(c, dict) and c.get("finish_reason") for c in choices):
            self._finish_reason = True
        usage = chunk.get("usage")
        if not isinstance(usage, dict):
            return False
        self.meter.usage.update_from_anthropic(usage_to_anthropic(usage))
        self.meter.final = self.meter.final or is_count(usage.get("completion_tokens"))
        return not choices

    def end(self) -> bytes:
        if not self.finished:  # the body ended cleanly but early
            assert self._ex.target is not None
            raise UpstreamUnreachable(f"{self._ex.target.provider.name} ended the stream before it finished")
        if not self.meter.final and self._ex.billable:
            _warn_no_usage(self._ex)
        return b""

    def error_frame(self, err: GatewayError) -> bytes:
        return error_frame(err, ErrorShape.OPENAI)


def _warn_no_usage(ex: Exchange) -> None:
    # vLLM, Ollama and LiteLLM report usage; a server that does not leaves the request unbilled: say so.
    assert ex.target is not None
    log.warning("upstream_reported_no_usage", request_id=ex.request_id, provider=ex.target.provider.name)
