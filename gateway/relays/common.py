"""What every relay shares: header filtering, the model patch, usage from Anthropic events, quiet writes.

Each relay module answers one (route, provider dialect) pair; `gateway/relays/__init__.py` picks it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import structlog
from aiohttp import web

from gateway.errors import BadRequest
from gateway.pipeline import Exchange, Target
from gateway.providers.base import UpstreamCall, UpstreamReply
from gateway.services import SERVICES
from gateway.upstream import send_with_fallbacks

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
STREAM_ERROR_STATUS = {"overloaded_error": 529, "rate_limit_error": 429, "api_error": 500}


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


async def send(ex: Exchange, build: Callable[[Target], UpstreamCall]) -> UpstreamReply:
    """The one place every relay reaches upstream: retries and fallbacks (gateway/upstream.py) included.

    `build(target)` makes the call for one deployment (its model id goes in the body), so a fallback to
    another deployment sends its own model. `ex.target` ends as the deployment that answered.
    """
    assert ex.target is not None
    if isinstance(build, UpstreamCall):
        raise TypeError("send(ex, build): pass a function of the target, e.g. lambda t: UpstreamCall(...)")
    ex.target, reply = await send_with_fallbacks(ex.target, build, ex.request.app[SERVICES].metrics)
    return reply


def note_anthropic_event(ex: Exchange, event: str, data: bytes) -> None:
    """Read usage from the few events that carry it; every other event is only relayed."""
    if event == "message_start":
        ex.usage.update_from_anthropic(json_object(data).get("message", {}).get("usage") or {})
    elif event == "message_delta":
        ex.usage.update_from_anthropic(json_object(data).get("usage") or {})
    elif event == "error":
        error_type = (json_object(data).get("error") or {}).get("type", "api_error")
        ex.status = STREAM_ERROR_STATUS.get(error_type, 500)


def json_object(data: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


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
