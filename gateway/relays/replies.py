"""The reply side every relay shares: reading an upstream reply, the one dispatch of a translated relay (error,
stream or whole reply), an upstream error in the caller's dialect, and the start and quiet writes of a stream.
The stream loop itself is gateway/relays/stream.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
from aiohttp import web

from gateway.errors import UpstreamError, UpstreamUnreachable, error_response, json_object
from gateway.pipeline import CLIENT_CLOSED, Exchange
from gateway.providers.base import UpstreamReply
from gateway.relays.headers import EVENT_STREAM

log = structlog.get_logger("gateway.relay")


def anthropic_reply(data: bytes, provider: str) -> dict[str, Any]:
    """A whole Messages API reply; a 502 for a 200 whose body is none (an HTML page from a proxy, a wrong
    base_url): translated, it would pass for an empty answer from the model, with no usage recorded."""
    message = json_object(data)
    if not isinstance(message.get("content"), list):
        raise UpstreamUnreachable(f"{provider} answered 200 with a body that is not a Messages API reply")
    return message


class readable_upstream:  # lower case: it is used as the function it was, `with readable_upstream(provider):`
    """Map a reply or stream event the translators cannot read (a field missing or of the wrong type) to a 502.

    Unmapped, it would be a 500 with a traceback, or, mid-stream, a second status line written into the body.
    A class, not a @contextmanager: a stream enters it once per chunk, and a generator per chunk was not free.
    """

    __slots__ = ("_provider",)

    def __init__(self, provider: str) -> None:
        self._provider = provider

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is not None and isinstance(exc, _UNREADABLE):
            log.warning("unreadable_upstream_reply", provider=self._provider, error=repr(exc))
            raise UpstreamUnreachable(f"{self._provider} sent a reply the gateway cannot read ({exc!r})") from None


_UNREADABLE = (KeyError, TypeError, ValueError, AttributeError, IndexError)


async def write_quietly(resp: web.StreamResponse, data: bytes) -> bool:
    try:
        await resp.write(data)
    except ConnectionResetError:
        return False
    return True


async def eof_quietly(resp: web.StreamResponse) -> None:
    with contextlib.suppress(ConnectionResetError):
        await resp.write_eof()


Answer = Callable[[], Awaitable[None]]


async def answer(reply: UpstreamReply, *, stream: bool, error: Answer, streamed: Answer, whole: Answer) -> None:
    """The one dispatch of a translated relay: an upstream error, a stream or a whole reply; the reply released."""
    try:
        if reply.status != 200:
            await error()
        elif stream:
            await streamed()
        else:
            await whole()
    finally:
        reply.release()


UpstreamErrorReader = Callable[[int, bytes, dict[str, str]], UpstreamError]  # UpstreamError.from_anthropic, ...


async def relay_error(
    ex: Exchange, reply: UpstreamReply, read: UpstreamErrorReader, keep: frozenset[str] = frozenset({"retry-after"})
) -> None:
    """An upstream error reply in the caller's shape: its status (as the shape reports it) and message kept."""
    data = await reply.read()
    ex.first_byte_ns = time.perf_counter_ns()
    err = read(reply.status, data, {k: v for k, v in reply.headers.items() if k.lower() in keep})
    ex.status = err.status_for(ex.dialect)
    ex.response = error_response(err, ex.dialect)


async def start_stream(ex: Exchange, headers: Mapping[str, str] = EVENT_STREAM) -> web.StreamResponse | None:
    """Answer 200 as a stream: send the status line and headers; None (and status 499) if the caller is gone."""
    ex.streamed, ex.status = True, 200
    resp = ex.response = web.StreamResponse(status=200, headers=headers)
    resp.headers["x-request-id"] = ex.request_id  # the status line goes now: the edge cannot add it later
    try:
        await resp.prepare(ex.request)
    except ConnectionResetError:
        ex.status = CLIENT_CLOSED
        return None
    except asyncio.CancelledError:  # the caller left while the headers were going out
        ex.status = CLIENT_CLOSED
        raise
    return resp
