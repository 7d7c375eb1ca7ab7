"""Reading a model request's body: `Expect: 100-continue` only after authentication, the size and time limits,
and the sketch of a body that only passes through (its model read without parsing the rest)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import msgspec
import orjson
from aiohttp import HttpVersion11, web
from aiohttp.hdrs import CONTENT_ENCODING, EXPECT
from aiohttp.web_protocol import RequestPayloadError

from gateway.errors import BadRequest, BodyTooLarge, ExpectationFailed, RequestTimeout, UnsupportedMediaType

# A body that only passes through (Anthropic caller, Anthropic provider) need not be parsed whole: Claude Code
# and the Anthropic SDKs put "model" first, and a 78 KB parse is most of what such a request would cost. The
# sketch holds model and stream; a relay that needs more calls Exchange.full_body().
_WS = rb"[ \t\n\r]*"  # JSON's whitespace; regex's \s also takes \v and \f, which no JSON parser does
_MODEL_FIRST = re.compile(
    rb"\A" + _WS + rb"\{" + _WS + rb'"model"' + _WS + b":" + _WS + rb'("(?:[^"\\]|\\.)*")' + _WS + b"," + _WS + b'(?=")'
)


# The remainder's top-level keys, each value left unparsed (msgspec.Raw: a view, not built): a third of orjson's
# time on the Claude Code body. Keys are decoded and checked as UTF-8 ("mod\xc1\xa5l", an overlong "e", is refused
# where a lax decoder would read a second "model"), escapes included ("mod\u0065l" is "model").
_REST = msgspec.json.Decoder(dict[str, msgspec.Raw])


def body_sketch(raw: bytes) -> dict[str, Any] | None:
    """{"model", "stream", "max_tokens"} of a body that opens with its model, without building the rest; None otherwise.

    The remainder after the first key is decoded too, so a second top-level "model" (duplicated, or spelled
    with escapes such as "mod\\u0065l") is found: the upstream would serve that one while the gateway routed
    and billed the first, so such a body is refused with a 400.
    """
    match = _MODEL_FIRST.match(raw)
    if match is None:
        return None
    try:
        model = orjson.loads(match.group(1))
        rest = _REST.decode(b"".join((b"{", memoryview(raw)[match.end() :])))  # one copy, not two
        stream, max_tokens = (msgspec.json.decode(rest[k]) if k in rest else None for k in ("stream", "max_tokens"))
    except (orjson.JSONDecodeError, msgspec.DecodeError, RecursionError):  # msgspec: RecursionError when too deep
        return None  # not JSON (a bad escape, a lone surrogate, nesting too deep...): the full parse says why, as a 400
    if "model" in rest:  # the last of duplicate keys wins, for the upstream's parser as for msgspec
        raise BadRequest('request body has more than one top-level "model" key; send it once')
    sketch = {"model": model, "stream": stream is True}
    if max_tokens is not None:
        sketch["max_tokens"] = max_tokens
    return sketch


async def read_json_body(
    request: web.Request, max_bytes: int, timeout_s: float, *, sketch: bool = False
) -> tuple[bytes, dict[str, Any], bool]:
    """The request body, parsed once (or sketched); a clear 4xx for anything that is not a JSON object in the limit.

    Returns (raw bytes, body, whether the body is only a sketch).
    """
    if request.content_length is not None and request.content_length > max_bytes:
        raise BodyTooLarge(f"request body of {request.content_length} bytes is over the limit of {max_bytes} bytes")
    content_type = request.headers.get("Content-Type", "application/json")
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {content_type!r}")
    if EXPECT in request.headers:  # only now invite the body: authenticated, and not refused by its headers
        await send_continue(request)
    try:
        if request.content.is_eof():  # the whole body came with the headers: nothing to wait for
            raw = await request.read()
        else:
            async with asyncio.timeout(timeout_s):
                raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(f"request body is over the limit of {max_bytes} bytes") from None
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout_s:g} s") from None
    except RequestPayloadError:
        raise undecodable_body(request) from None
    if not raw:
        raise BadRequest("request body is empty: send a JSON object")
    if sketch and (sketched := body_sketch(raw)) is not None:
        return raw, sketched, True
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object, got {type(body).__name__}")
    return raw, body, False


def undecodable_body(request: web.Request) -> BadRequest:
    """The 400 for a body aiohttp cannot decode as its Content-Encoding says (a corrupt or mislabelled gzip)."""
    encoding = request.headers.get(CONTENT_ENCODING, "none")
    return BadRequest(f"request body does not decode as its Content-Encoding: {encoding}; send it as it is")


async def continue_after_auth(request: web.Request) -> None:
    """The model routes' Expect handler: refuse an unknown expectation, but send no 100 Continue yet.

    aiohttp's default answers `Expect: 100-continue` before the handler runs, inviting the body of a caller
    that has not authenticated; the handler sends it after authentication instead (RFC 9110 10.1.1 lets a
    server answer with the final status in its place), so a client that waits for it never sends a refused body.
    """
    expect = request.headers.get(EXPECT, "")
    if request.version >= HttpVersion11 and expect.lower() != "100-continue":
        raise ExpectationFailed(f"unknown Expect: {expect!r}; only 100-continue is supported")


async def send_continue(request: web.Request) -> None:
    if request.version >= HttpVersion11 and request.headers[EXPECT].lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # as aiohttp's own handler does: the response proper has not begun
