"""What every relay shares: header filtering, the model patch, sending upstream, the reply dispatch and
error relay, quiet writes. The stream loop itself is gateway/relays/stream.py.

Each relay module answers one (route, provider dialect) pair; `gateway/relays/__init__.py` picks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import orjson
import structlog
from aiohttp import web

from gateway.composition import SERVICES
from gateway.dialects.prompt_cache import with_cache_breakpoints
from gateway.dialects.translation import TranslationError, TranslationOptions
from gateway.errors import BadRequest, UpstreamError, UpstreamUnreachable, error_response
from gateway.pipeline import Exchange, Target
from gateway.providers.base import UpstreamCall, UpstreamReply
from gateway.retry_policy import send_with_fallbacks
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
_GATEWAY_HEADER_PREFIX = "x-gateway-"  # the gateway's own controls (x-gateway-dlp): meant for it, not the provider
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


def forwardable_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The caller's headers that go upstream unchanged (every anthropic-* header among them).

    A header sent as several lines (two `anthropic-beta` lines, say) goes on as one, its values joined with
    ", " as RFC 9110 section 5.3 allows: keeping only one line would drop betas.
    """
    forwarded: dict[str, str] = {}
    spelling: dict[str, str] = {}  # lower-case name -> the spelling of its first line
    for name, value in headers.items():
        lower = name.lower()
        if lower in _REQUEST_HEADERS_DROPPED or lower.startswith(_GATEWAY_HEADER_PREFIX):
            continue
        first = spelling.setdefault(lower, name)
        forwarded[first] = f"{forwarded[first]}, {value}" if first in forwarded else value
    return forwarded


def relayed_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The provider's response headers that reach the caller (request-id, rate-limit and retry-after among them)."""
    return {k: v for k, v in headers.items() if k.lower() not in _RESPONSE_HEADERS_DROPPED}


# --- the model value, patched in place --------------------------------------------------------------

# Only the bytes of the model's string value change: whitespace, key order, escapes and number spellings stay
# the caller's (a provider may cache on the exact prefix, and nothing else is ours to touch). Claude Code and
# the Anthropic SDKs put "model" first, and the edge's sketch has proved it is the only one, so an anchored
# pattern finds it at once; anywhere else, a scan over the body's strings and brackets finds every top-level
# "model" key (a few ms for megabytes of base64), so a second one can never slip through unpatched.
_STRING = rb'"[^"\\]*(?:\\.[^"\\]*)*"'
_MODEL_FIRST = re.compile(rb'\A\s*\{\s*"model"\s*:\s*(' + _STRING + rb")")
_TOKEN = re.compile(_STRING + rb"|[{}\[\]]")
_VALUE = re.compile(rb"\s*:\s*(" + _STRING + rb")")
_COLON = re.compile(rb"\s*:")


def with_model(raw: bytes, body: Callable[[], dict[str, Any]], model: str, *, unique: bool = False) -> bytes:
    """`raw` with the top-level "model" value replaced by `model`, every other byte as the caller sent it.

    The result holds one top-level "model", the routed one, whatever the caller sent: a body whose object has
    the key twice, spelled with \\u escapes, or with a value that is not a string is re-serialised from `body()`
    (parsed once, last key winning) with the routed value only. Nested "model" keys (a tool schema's property)
    are not the request's model and stay as sent. `unique`: the edge already proved the body has a single
    top-level "model" (a sketched body), so an anchored match at the front is enough.
    """
    match = _MODEL_FIRST.match(raw) if unique else None
    spans = [match.span(1)] if match else _top_level_model_values(raw)
    if spans is None or len(spans) != 1:
        return orjson.dumps({**body(), "model": model})
    start, end = spans[0]
    view = memoryview(raw)
    return b"".join((view[:start], orjson.dumps(model), view[end:]))  # one copy of the body, not one per slice


def _top_level_model_values(raw: bytes) -> list[tuple[int, int]] | None:
    """Where the string values of the object's own "model" keys are (nested "model" keys are not the model).

    None when a top-level "model" key cannot be patched in place: spelled with escapes (`"mod\\u0065l"` reads
    as "model" to every JSON parser) or holding something other than a string.
    """
    spans: list[tuple[int, int]] = []
    depth = 0
    for token in _TOKEN.finditer(raw):
        first = raw[token.start()]
        if first == 0x22:  # a string: a key of the top-level object when at depth 1 and followed by ':'
            if depth != 1 or not _COLON.match(raw, token.end()):
                continue
            text = token.group()
            if text == b'"model"':
                if (v := _VALUE.match(raw, token.end())) is None:
                    return None
                spans.append(v.span(1))
            elif b"\\" in text and orjson.loads(text) == "model":
                return None
        elif first in b"{[":
            depth += 1
        else:
            depth -= 1
    return spans


async def send(ex: Exchange, build: Callable[[Target], UpstreamCall]) -> UpstreamReply:
    """The one place every relay reaches upstream: retries and fallbacks (gateway/retry_policy.py) included.

    `build(target)` makes the call for one deployment (its model id goes in the body), so a fallback to
    another deployment sends its own model. `ex.target` ends as the deployment that answered.
    """
    assert ex.target is not None
    if isinstance(build, UpstreamCall):
        raise TypeError("send(ex, build): pass a function of the target, e.g. lambda t: UpstreamCall(...)")
    ex.target, reply = await send_with_fallbacks(ex.target, build, ex.request.app[SERVICES].metrics)
    return reply


def json_object(data: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def anthropic_reply(data: bytes, provider: str) -> dict[str, Any]:
    """A whole Messages API reply; a 502 for a 200 whose body is none (an HTML page from a proxy, a wrong
    base_url): translated, it would pass for an empty answer from the model, with no usage recorded."""
    message = json_object(data)
    if not isinstance(message.get("content"), list):
        raise UpstreamUnreachable(f"{provider} answered 200 with a body that is not a Messages API reply")
    return message


@contextlib.contextmanager
def readable_upstream(provider: str) -> Iterator[None]:
    """Map a reply or stream event the translators cannot read (a field missing or of the wrong type) to a 502.

    Unmapped, it would be a 500 with a traceback, or, mid-stream, a second status line written into the body.
    """
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        log.warning("unreadable_upstream_reply", provider=provider, error=repr(exc))
        raise UpstreamUnreachable(f"{provider} sent a reply the gateway cannot read ({exc!r})") from None


async def write_quietly(resp: web.StreamResponse, data: bytes) -> bool:
    try:
        await resp.write(data)
    except ConnectionResetError:
        return False
    return True


async def eof_quietly(resp: web.StreamResponse) -> None:
    with contextlib.suppress(ConnectionResetError):
        await resp.write_eof()


def unexpected_shape(exc: Exception) -> BadRequest:
    """A 400 for a request body whose fields have types the translator does not handle (logged: it is our gap)."""
    log.warning("untranslatable_request", error=repr(exc))
    return BadRequest("request body has a field of an unexpected type or shape; check it against the API reference")


@contextlib.contextmanager
def translating() -> Iterator[None]:
    """A request body the translator cannot take is the caller's 400, never a 500."""
    try:
        yield
    except TranslationError as exc:
        raise BadRequest(str(exc), param=exc.param) from None
    except (TypeError, AttributeError, KeyError) as exc:  # a shape the translator did not foresee: still the caller's
        raise unexpected_shape(exc) from None


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


EVENT_STREAM = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


async def start_stream(ex: Exchange, headers: Mapping[str, str] = EVENT_STREAM) -> web.StreamResponse | None:
    """Answer 200 as a stream: send the status line and headers; None (and status 499) if the caller is gone."""
    ex.streamed, ex.status = True, 200
    resp = ex.response = web.StreamResponse(status=200, headers=headers)
    try:
        await resp.prepare(ex.request)
    except ConnectionResetError:
        ex.status = CLIENT_CLOSED
        return None
    except asyncio.CancelledError:  # the caller left while the headers were going out
        ex.status = CLIENT_CLOSED
        raise
    return resp


def translation_options(target: Target) -> TranslationOptions:
    """What the OpenAI-dialect translators need to know about the alias and deployment they write for."""
    alias = target.alias
    return TranslationOptions(
        provider_model=target.provider_model,
        default_max_tokens=alias.default_max_tokens,
        thinking_budgets=alias.thinking_budgets,
        structured_outputs=alias.structured_outputs,
    )


async def send_to_anthropic(ex: Exchange, request: dict[str, Any]) -> UpstreamReply:
    """POST a translated Messages request (cache breakpoints added when the alias opts in), fallbacks included."""
    assert ex.target is not None
    if ex.target.alias.auto_cache:  # OpenAI clients send no cache_control; the alias asks the gateway to add it
        request = with_cache_breakpoints(request)
    stream = request.get("stream") is True

    def build(target: Target) -> UpstreamCall:  # a fallback deployment gets its own model id
        body = orjson.dumps({**request, "model": target.provider_model})
        return UpstreamCall(path="/v1/messages", query_string="", headers={}, body=body, stream=stream)

    return await send(ex, build)
