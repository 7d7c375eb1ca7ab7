"""Every error a caller can get from the gateway, and the one place that renders them.

    GatewayError                    500  api_error / server_error
    ├── BadRequest                  400  invalid_request_error        malformed JSON, missing model, bad fields
    │   └── UnsupportedMediaType    415  invalid_request_error        Content-Type is not application/json
    ├── BodyTooLarge                413  request_too_large            body over server.max_body_bytes
    ├── RequestTimeout              408  invalid_request_error        body slower than server.body_timeout_s
    ├── TooManyAuthFailures         429  rate_limit_error             too many failed authentications from one address
    ├── Unauthenticated             401  authentication_error         no key, unknown or revoked key
    ├── Forbidden                   403  permission_error             a user key on an admin endpoint
    ├── Conflict                    409  invalid_request_error        one regenerate of a key at a time
    ├── UnknownModel                404  not_found_error              model is neither an alias nor a routed id
    ├── RouteNotFound               404  not_found_error              no such endpoint
    ├── MethodNotAllowed            405  invalid_request_error        e.g. GET /v1/messages
    ├── BudgetExceeded              429  rate_limit_error             monthly token or USD limit reached
    ├── RateLimited                 429  rate_limit_error             requests/tokens per minute or in flight
    ├── UpstreamUnreachable         502  api_error / bad_gateway      connection to the provider failed
    ├── ProviderRefusedCredentials  502  api_error / provider_auth_failed  401/403 to the gateway's own key
    ├── UpstreamTimeout             504  timeout_error / timeout      the provider did not answer in time
    ├── UpstreamError               (upstream's status, type, message) the provider answered with an error status
    ├── ServiceUnavailable          503  overloaded_error             the gateway cannot serve right now
    └── ManagementApiError          (its status: 400 404 409 415 ...)  a management API request refused

`render` is the only code that builds a caller-facing error body: `error_response` (an HTTP response, for the
edge in gateway/app.py, the relays' upstream errors, /v1/me, /v1/models and the management API) and `error_frame`
(the in-stream error once a stream's 200 went out: there is no second status line) both call it. Each error class
carries everything its bodies need: status, Anthropic `error.type`, OpenAI `error.type`/`code`/`param`, and `extra`
top-level fields. Four shapes (ErrorShape):

    ANTHROPIC   {"type": "error", "error": {"type": ..., "message": ...}}           https://docs.anthropic.com/en/api/errors
    OPENAI      {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}
                https://platform.openai.com/docs/guides/error-codes
    MANAGEMENT  {"error": "..."}                                  the management API (/v1/user-api-keys, ...)
    frames      ANTHROPIC: `event: error` + the body; OPENAI: a `data:` chunk holding the body, then `data: [DONE]`

Foreign errors are mapped at two boundaries: aiohttp's and asyncio's in gateway/providers/base.py
(`upstream_errors`), and an upstream's error reply here (`UpstreamError.from_anthropic`, `.from_openai`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from gateway.dialects import sse
from gateway.dialects.chat.reply import ANTHROPIC_ERROR_TYPES_TO_OPENAI, CLIENT_STATUSES, STATUS_ERROR_TYPES
from gateway.dialects.messages.reply import error_message
from gateway.error_shape import ErrorShape


class GatewayError(Exception):
    """Base of every error the gateway answers with; subclasses set the status and the error shapes' types.

    The attributes are class-level defaults an instance may override (BudgetExceeded's `code`, RateLimited's
    `kind`, an UpstreamError's upstream type); `render` reads only them.
    """

    status: int = 500
    anthropic_type: str = "api_error"
    openai_type: str = "server_error"
    openai_code: str | None = None
    param: str | None = None  # OpenAI's `error.param`: the request field at fault

    def __init__(self, message: str, *, extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.extra = extra or {}  # top-level fields beside "error" (the budget errors carry usage figures)
        self.headers = headers or {}

    def status_for(self, shape: ErrorShape) -> int:
        """The HTTP status in `shape`: Anthropic's 529 "overloaded" is not a status OpenAI clients know (503)."""
        return self.status if shape is ErrorShape.ANTHROPIC else CLIENT_STATUSES.get(self.status, self.status)

    def render(self, shape: ErrorShape) -> dict[str, Any]:
        """The JSON body for this error in `shape`; the only place an error body is built (see the module doc)."""
        if shape is ErrorShape.MANAGEMENT:
            return {"error": self.message}
        if shape is ErrorShape.ANTHROPIC:
            body: dict[str, Any] = {"type": "error", "error": {"type": self.anthropic_type, "message": self.message}}
        else:
            error = {"message": self.message, "type": self.openai_type, "param": self.param, "code": self.openai_code}
            body = {"error": error}
        body.update(self.extra)
        return body


def error_response(err: GatewayError, shape: ErrorShape) -> web.Response:
    """`err` as an HTTP response in `shape`: its status, its JSON body and its headers (Retry-After, ...)."""
    return web.Response(
        body=orjson.dumps(err.render(shape)),
        status=err.status_for(shape),
        content_type="application/json",
        headers=err.headers,
    )


def error_frame(err: GatewayError, shape: ErrorShape) -> bytes:
    """`err` as the last bytes of a stream already answered 200 in `shape`.

    Anthropic streams carry it as an `error` event (the SDKs raise on it); Chat Completions streams as a chunk
    holding the error object, then `[DONE]` (the OpenAI SDK raises APIError on a chunk with an `error`).
    """
    if shape is ErrorShape.ANTHROPIC:
        return sse.frame(orjson.dumps(err.render(shape)), "error")
    return sse.data_frame(err.render(ErrorShape.OPENAI)) + sse.DONE_FRAME


class BadRequest(GatewayError):
    status, anthropic_type, openai_type = 400, "invalid_request_error", "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.param = param


class UnsupportedMediaType(BadRequest):
    status = 415


class ExpectationFailed(BadRequest):
    status = 417  # an `Expect` other than 100-continue (RFC 9110 10.1.1)


class BodyTooLarge(GatewayError):
    status, anthropic_type, openai_type = 413, "request_too_large", "invalid_request_error"


class RequestTimeout(GatewayError):
    status, anthropic_type, openai_type = 408, "invalid_request_error", "invalid_request_error"


class TooManyAuthFailures(GatewayError):
    status, anthropic_type, openai_type, openai_code = 429, "rate_limit_error", "rate_limit_exceeded", "auth_throttled"


class Unauthenticated(GatewayError):
    status, anthropic_type, openai_type, openai_code = (
        401,
        "authentication_error",
        "authentication_error",
        "invalid_api_key",
    )


class Forbidden(GatewayError):
    status, anthropic_type, openai_type = 403, "permission_error", "permission_error"


class Conflict(GatewayError):
    status, anthropic_type, openai_type = 409, "invalid_request_error", "invalid_request_error"


class UnknownModel(GatewayError):
    status, anthropic_type, openai_type, openai_code = (
        404,
        "not_found_error",
        "invalid_request_error",
        "model_not_found",
    )


class RouteNotFound(GatewayError):
    status, anthropic_type, openai_type, openai_code = 404, "not_found_error", "invalid_request_error", "not_found"


class MethodNotAllowed(GatewayError):
    status, anthropic_type, openai_type = 405, "invalid_request_error", "invalid_request_error"


class BudgetExceeded(GatewayError):
    status, anthropic_type, openai_type = 429, "rate_limit_error", "budget_exceeded"

    def __init__(self, message: str, *, code: str = "monthly_limit", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.code = self.openai_code = code  # the reason, also a metrics label


class RateLimited(GatewayError):
    """A per-minute or in-flight limit refused the request; `headers` carry Retry-After and the figures.

    OpenAI's body names the kind in `type` (requests | tokens) with code rate_limit_exceeded, as its API does.
    """

    status, anthropic_type, openai_type, openai_code = 429, "rate_limit_error", "requests", "rate_limit_exceeded"

    def __init__(self, message: str, *, kind: str = "requests", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.openai_type = kind


class UpstreamUnreachable(GatewayError):
    status, anthropic_type, openai_type, openai_code = 502, "api_error", "server_error", "bad_gateway"


class ProviderRefusedCredentials(GatewayError):
    """The provider answered 401/403: it refused the gateway's own credentials (providers.NAME.api_key).

    The caller's key never goes upstream, so such a reply is never about the caller; relaying it as the
    provider's `authentication_error` would send users hunting for a fault in their gateway key. A 502, like
    any provider the gateway cannot use; not retried (the same key would be refused again).
    """

    status, anthropic_type, openai_type, openai_code = 502, "api_error", "server_error", "provider_auth_failed"


class UpstreamTimeout(GatewayError):
    status, anthropic_type, openai_type, openai_code = 504, "timeout_error", "server_error", "timeout"


class ServiceUnavailable(GatewayError):
    status, anthropic_type, openai_type, openai_code = 503, "overloaded_error", "server_error", "service_unavailable"


class UpstreamError(GatewayError):
    """The provider answered with an error status: its status, type and message reach the caller in its own shape.

    Built by the relays from the upstream's error reply (`from_anthropic`, `from_openai`) and rendered like any
    other error. It is answered, not raised: the reply is the provider's, relayed, so it is neither logged as the
    gateway's own refusal nor does it skip the relay's accounting (first byte, usage row with the upstream status).
    A caller of the provider's own dialect on a passthrough route gets the upstream's bytes untouched instead.
    """

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int = 502,
        upstream_type: str = "api_error",
        code: str | None = "api_error",
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.status = upstream_status
        self.anthropic_type = upstream_type
        self.openai_type = ANTHROPIC_ERROR_TYPES_TO_OPENAI.get(upstream_type, "server_error")
        self.openai_code = code  # the provider's own type, so an OpenAI caller still sees what it said

    @classmethod
    def from_anthropic(cls, status: int, body: bytes, headers: dict[str, str] | None = None) -> UpstreamError:
        """An Anthropic error reply, `{"type": "error", "error": {"type", "message"}}`, kept as the provider said it.

        A body that is not an Anthropic error (an HTML page from a proxy, say) gets a message naming the status
        and no code.
        """
        error = json_object(body).get("error")
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            kind = str(error.get("type") or STATUS_ERROR_TYPES.get(status, "api_error"))
            return cls(error["message"], upstream_status=status, upstream_type=kind, code=kind, headers=headers)
        return cls(
            _unreadable(status), upstream_status=status, upstream_type=_status_type(status), code=None, headers=headers
        )

    @classmethod
    def from_openai(cls, status: int, body: bytes, headers: dict[str, str] | None = None) -> UpstreamError:
        """An OpenAI-compatible error reply: its message, and Anthropic's type for its status (which is kept).

        Reads OpenAI's `{"error": {"message"}}`, Ollama's `{"error": "..."}` and FastAPI's `{"detail": "..."}`;
        the status is kept so the SDKs raise the matching class.
        """
        message = error_message(json_object(body)) or _unreadable(status)
        kind = _status_type(status)
        return cls(message, upstream_status=status, upstream_type=kind, code=kind, headers=headers)


def json_object(body: bytes) -> dict[str, Any]:
    """`body` parsed as a JSON object; {} for anything else (not JSON, an array, a bare value): an upstream's
    body, read by the error mapping here and by the relays (gateway/relays/)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _unreadable(status: int) -> str:
    return f"upstream returned HTTP {status} with an unreadable error body"


def _status_type(status: int) -> str:
    """Anthropic's documented error type for an HTTP status (https://docs.anthropic.com/en/api/errors)."""
    return STATUS_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


class ManagementApiError(GatewayError):
    """A management API request refused with the status the handler names (400, 403, 404, 409, 415, ...)."""

    def __init__(self, message: str, *, status: int = 400, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.status = status
        self.anthropic_type = self.openai_type = _status_type(status)
