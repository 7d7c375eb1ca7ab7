"""gateway/errors.py: every error renders in every error shape, and the real SDKs read each body as that error.

The types and statuses checked are the documented ones:
- Anthropic: https://docs.anthropic.com/en/api/errors (the HTTP status -> `error.type` table below);
- OpenAI: https://platform.openai.com/docs/guides/error-codes (401, 403, 404, 429, 500, 503) and the body
  `{"error": {"message", "type", "param", "code"}}` the openai SDK reads (`openai._exceptions.APIError`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anthropic
import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import gateway.admin  # noqa: F401  (AdminError is a GatewayError too: imported so the walk below sees it)
from gateway.admin import AdminError
from gateway.dialects.chat.reply import ANTHROPIC_ERROR_TYPES_TO_OPENAI
from gateway.dialects.sse import SSEParser
from gateway.error_shape import ErrorShape
from gateway.errors import GatewayError, UpstreamError, error_frame, error_response

# https://docs.anthropic.com/en/api/errors: HTTP status -> error.type
ANTHROPIC_DOCUMENTED = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
ANTHROPIC_TYPES = frozenset(ANTHROPIC_DOCUMENTED.values())
MESSAGE = "boom: do this next"


def all_subclasses(cls: type[GatewayError]) -> Iterator[type[GatewayError]]:
    """Every subclass, however deep: a new error class cannot be left out of the tests below."""
    for sub in cls.__subclasses__():
        yield sub
        yield from all_subclasses(sub)


ERRORS = sorted({GatewayError, *all_subclasses(GatewayError)}, key=lambda c: c.__name__)
# Errors whose constructor takes more than a message; any other new one must be buildable from its message alone.
FACTORIES: dict[type[GatewayError], Callable[[str], GatewayError]] = {AdminError: lambda m: AdminError(409, m)}


def build(cls: type[GatewayError]) -> GatewayError:
    return FACTORIES.get(cls, cls)(MESSAGE)


errors = pytest.mark.parametrize("error_cls", ERRORS, ids=lambda c: c.__name__)


def test_the_walk_finds_every_error() -> None:
    names = {c.__name__ for c in ERRORS}
    assert {"BadRequest", "UnsupportedMediaType", "UpstreamError", "AdminError", "ManagementApiError"} <= names
    assert len(ERRORS) >= 20


@errors
def test_anthropic_shape(error_cls: type[GatewayError]) -> None:
    err = build(error_cls)
    status, body = err.status_for(ErrorShape.ANTHROPIC), err.render(ErrorShape.ANTHROPIC)
    assert 400 <= status <= 599
    assert body["type"] == "error"
    assert body["error"] == {"type": err.anthropic_type, "message": MESSAGE}
    assert err.anthropic_type in ANTHROPIC_TYPES
    if status in ANTHROPIC_DOCUMENTED:
        assert err.anthropic_type == ANTHROPIC_DOCUMENTED[status]


@errors
def test_openai_shape(error_cls: type[GatewayError]) -> None:
    err = build(error_cls)
    status, body = err.status_for(ErrorShape.OPENAI), err.render(ErrorShape.OPENAI)
    assert 400 <= status <= 599 and status != 529  # 529 is Anthropic's alone; OpenAI clients know 503
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] == MESSAGE
    assert isinstance(error["type"], str) and error["type"]
    assert error["code"] is None or isinstance(error["code"], str)
    if status == 429:  # OpenAI's 429s: "rate limit reached" or "quota exceeded"
        assert error["type"] in {"rate_limit_exceeded", "requests", "tokens", "insufficient_quota", "budget_exceeded"}
    if status >= 500:
        assert error["type"] == "server_error"


@errors
def test_management_shape(error_cls: type[GatewayError]) -> None:
    err = build(error_cls)
    assert err.render(ErrorShape.MANAGEMENT) == {"error": MESSAGE}
    assert err.status_for(ErrorShape.MANAGEMENT) == err.status_for(ErrorShape.OPENAI)


@errors
@pytest.mark.parametrize("shape", list(ErrorShape), ids=lambda s: s.value)
def test_http_response(error_cls: type[GatewayError], shape: ErrorShape) -> None:
    err = build(error_cls)
    response = error_response(err, shape)
    assert response.status == err.status_for(shape)
    assert response.content_type == "application/json"
    assert isinstance(response.body, bytes)
    assert orjson.loads(response.body) == err.render(shape)


@errors
def test_anthropic_stream_frame(error_cls: type[GatewayError]) -> None:
    err = build(error_cls)
    assert SSEParser().feed(error_frame(err, ErrorShape.ANTHROPIC)) == [
        ("error", orjson.dumps(err.render(ErrorShape.ANTHROPIC)))
    ]


@errors
def test_openai_stream_frame(error_cls: type[GatewayError]) -> None:
    err = build(error_cls)
    events = SSEParser().feed(error_frame(err, ErrorShape.OPENAI))
    assert events == [("message", orjson.dumps(err.render(ErrorShape.OPENAI))), ("message", b"[DONE]")]


def test_extra_fields_and_headers_reach_the_caller() -> None:
    err = GatewayError("over", extra={"usage": {"tokens": 3}}, headers={"Retry-After": "7"})
    assert err.render(ErrorShape.OPENAI)["usage"] == {"tokens": 3}
    assert err.render(ErrorShape.ANTHROPIC)["usage"] == {"tokens": 3}
    assert error_response(err, ErrorShape.ANTHROPIC).headers["Retry-After"] == "7"


# --- the real SDKs read every body as the error its status stands for ---------------------------------


ANTHROPIC_SDK_CLASSES: dict[int, type[anthropic.APIStatusError]] = {
    400: anthropic.BadRequestError,
    401: anthropic.AuthenticationError,
    403: anthropic.PermissionDeniedError,
    404: anthropic.NotFoundError,
    408: anthropic.RequestTimeoutError,
    409: anthropic.ConflictError,
    413: anthropic.ContentTooLargeError,
    422: anthropic.UnprocessableEntityError,
    429: anthropic.RateLimitError,
}
OPENAI_SDK_CLASSES: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    409: openai.ConflictError,
    422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}


def sdk_class_matches(exc: Exception, status: int, sdk: Any) -> bool:
    """The SDK raised the class for `status`: its own for a listed 4xx, InternalServerError (or a subclass: the
    anthropic SDK has ServiceUnavailableError, GatewayTimeoutError) for a 5xx, the generic APIStatusError otherwise."""
    classes = ANTHROPIC_SDK_CLASSES if sdk is anthropic else OPENAI_SDK_CLASSES
    if status >= 500:
        return isinstance(exc, sdk.InternalServerError)
    return type(exc) is classes.get(status, sdk.APIStatusError)


class Replies:
    """A tiny server answering every request with the next queued (status, body, content type)."""

    def __init__(self) -> None:
        self.queue: list[tuple[int, bytes, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        status, body, content_type = self.queue.pop(0)
        return web.Response(status=status, body=body, content_type=content_type)


@pytest.fixture
async def replies() -> AsyncIterator[tuple[Replies, str]]:
    state = Replies()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.handle)
    server = TestServer(app)
    await server.start_server()
    try:
        yield state, str(server.make_url("/"))
    finally:
        await server.close()


async def test_anthropic_sdk_raises_the_matching_class(replies: tuple[Replies, str]) -> None:
    state, url = replies
    client = anthropic.AsyncAnthropic(api_key="k", base_url=url, max_retries=0)
    for cls in ERRORS:
        err = build(cls)
        state.queue.append(
            (err.status_for(ErrorShape.ANTHROPIC), orjson.dumps(err.render(ErrorShape.ANTHROPIC)), "application/json")
        )
        with pytest.raises(anthropic.APIStatusError) as caught:
            await client.messages.create(model="m", max_tokens=1, messages=[{"role": "user", "content": "hi"}])
        status = err.status_for(ErrorShape.ANTHROPIC)
        assert sdk_class_matches(caught.value, status, anthropic), cls.__name__
        assert caught.value.status_code == status
        assert caught.value.body == err.render(ErrorShape.ANTHROPIC)
    await client.close()


async def test_openai_sdk_raises_the_matching_class(replies: tuple[Replies, str]) -> None:
    state, url = replies
    client = openai.AsyncOpenAI(api_key="k", base_url=f"{url}v1", max_retries=0)
    for cls in ERRORS:
        err = build(cls)
        state.queue.append(
            (err.status_for(ErrorShape.OPENAI), orjson.dumps(err.render(ErrorShape.OPENAI)), "application/json")
        )
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        status = err.status_for(ErrorShape.OPENAI)
        assert sdk_class_matches(caught.value, status, openai), cls.__name__
        assert caught.value.message.endswith(MESSAGE)
        assert caught.value.code == err.render(ErrorShape.OPENAI)["error"]["code"]
    await client.close()


async def test_sdks_raise_on_the_stream_frames(replies: tuple[Replies, str]) -> None:
    state, url = replies
    claude = anthropic.AsyncAnthropic(api_key="k", base_url=url, max_retries=0)
    gpt = openai.AsyncOpenAI(api_key="k", base_url=f"{url}v1", max_retries=0)
    for cls in ERRORS:
        err = build(cls)
        state.queue.append((200, error_frame(err, ErrorShape.ANTHROPIC), "text/event-stream"))
        with pytest.raises(anthropic.APIStatusError) as raised:
            stream = await claude.messages.create(
                model="m", max_tokens=1, messages=[{"role": "user", "content": "hi"}], stream=True
            )
            async for _ in stream:
                pass
        assert raised.value.body == err.render(ErrorShape.ANTHROPIC), cls.__name__
        state.queue.append((200, error_frame(err, ErrorShape.OPENAI), "text/event-stream"))
        with pytest.raises(openai.APIError) as failed:
            chunks = await gpt.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            async for _ in chunks:
                pass
        assert failed.value.message == MESSAGE, cls.__name__
        assert failed.value.body == err.render(ErrorShape.OPENAI)["error"]
    await claude.close()
    await gpt.close()


# --- an upstream's error reply, in the caller's shape (UpstreamError.from_anthropic / from_openai) -------


def anthropic_error(error_type: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": error_type, "message": message}, "request_id": "req_1"})


def openai_error(message: str, error_type: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


STATUS_BY_TYPE = {type_: status for status, type_ in ANTHROPIC_DOCUMENTED.items()}


@pytest.mark.parametrize(
    ("status", "body", "expected_status", "expected"),
    [
        *(
            pytest.param(
                STATUS_BY_TYPE[anthropic_type],
                anthropic_error(anthropic_type, "upstream says no"),
                503 if anthropic_type == "overloaded_error" else STATUS_BY_TYPE[anthropic_type],
                openai_error("upstream says no", openai_type, anthropic_type),
                id=anthropic_type,
            )
            for anthropic_type, openai_type in ANTHROPIC_ERROR_TYPES_TO_OPENAI.items()
        ),
        pytest.param(
            418,
            anthropic_error("teapot_error", "short and stout"),
            418,
            openai_error("short and stout", "server_error", "teapot_error"),
            id="unknown-type",
        ),
        pytest.param(
            429,
            b'{"type": "error", "error": {"message": "slow down"}}',
            429,
            openai_error("slow down", "rate_limit_exceeded", "rate_limit_error"),
            id="type-missing-taken-from-status",
        ),
        pytest.param(
            502,
            b"<html>Bad Gateway</html>",
            502,
            openai_error("upstream returned HTTP 502 with an unreadable error body", "server_error", None),
            id="html-body",
        ),
        pytest.param(
            529,
            b"",
            503,
            openai_error("upstream returned HTTP 529 with an unreadable error body", "server_error", None),
            id="empty-body-529",
        ),
        pytest.param(
            429,
            b'{"detail": "nope"}',
            429,
            openai_error("upstream returned HTTP 429 with an unreadable error body", "rate_limit_exceeded", None),
            id="json-but-not-an-error",
        ),
        pytest.param(
            409,
            b"[1, 2]",
            409,
            openai_error("upstream returned HTTP 409 with an unreadable error body", "invalid_request_error", None),
            id="json-array",
        ),
    ],
)
def test_anthropic_upstream_error_in_openai_shape(
    status: int, body: bytes, expected_status: int, expected: dict[str, Any]
) -> None:
    err = UpstreamError.from_anthropic(status, body)
    assert (err.status_for(ErrorShape.OPENAI), err.render(ErrorShape.OPENAI)) == (expected_status, expected)


def test_anthropic_upstream_error_kept_for_an_anthropic_caller() -> None:
    err = UpstreamError.from_anthropic(529, anthropic_error("overloaded_error", "Overloaded"))
    assert err.status_for(ErrorShape.ANTHROPIC) == 529
    assert err.render(ErrorShape.ANTHROPIC) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }


def test_every_anthropic_error_type_is_mapped() -> None:
    assert set(ANTHROPIC_ERROR_TYPES_TO_OPENAI) == set(STATUS_BY_TYPE)


@pytest.mark.parametrize(
    ("status", "body", "expected_type", "message"),
    [
        pytest.param(
            429,
            {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}},
            "rate_limit_error",
            "Rate limit reached",
            id="openai-429",
        ),
        pytest.param(
            401,
            {"error": {"message": "Incorrect API key", "type": "invalid_request_error"}},
            "authentication_error",
            "Incorrect API key",
            id="openai-401",
        ),
        pytest.param(
            404, {"error": "model 'llama9' not found"}, "not_found_error", "model 'llama9' not found", id="ollama"
        ),
        pytest.param(
            400, {"detail": "max_tokens is too large"}, "invalid_request_error", "max_tokens is too large", id="fastapi"
        ),
        pytest.param(503, b"<html>bad gateway</html>", "api_error", "upstream returned HTTP 503", id="html"),
        pytest.param(500, {"error": {"message": "boom"}}, "api_error", "boom", id="500"),
        pytest.param(422, {"message": "bad"}, "invalid_request_error", "bad", id="other-4xx"),
    ],
)
def test_openai_upstream_error_in_anthropic_shape(status: int, body: object, expected_type: str, message: str) -> None:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    err = UpstreamError.from_openai(status, raw)
    got_status, got = err.status_for(ErrorShape.ANTHROPIC), err.render(ErrorShape.ANTHROPIC)
    assert got_status == status
    assert got["type"] == "error" and got["error"]["type"] == expected_type
    assert got["error"]["message"].startswith(message)
