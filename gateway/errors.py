"""Every error a caller can get from the gateway, each able to render itself in both dialects.

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
    ├── UpstreamTimeout             504  api_error / timeout          the provider did not answer in time
    ├── UpstreamError               (upstream's status)               the provider answered with an error
    └── ServiceUnavailable          503  overloaded_error             the gateway cannot serve right now

The edge (gateway/app.py) turns any GatewayError into a response in the caller's dialect; once a stream
has started it writes the dialect's in-stream error event instead (there is no second status line).
"""

from __future__ import annotations

from typing import Any, ClassVar

from gateway.error_shape import ErrorShape


class GatewayError(Exception):
    """Base of every error the gateway answers with; subclasses set the status and the two dialects' types."""

    status: ClassVar[int] = 500
    anthropic_type: ClassVar[str] = "api_error"
    openai_type: ClassVar[str] = "server_error"
    openai_code: ClassVar[str | None] = None

    def __init__(self, message: str, *, extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.extra = extra or {}  # top-level fields beside "error" (the budget errors carry usage figures)
        self.headers = headers or {}

    def status_for(self, dialect: ErrorShape) -> int:
        return self.status

    def render(self, dialect: ErrorShape) -> dict[str, Any]:
        """The JSON body for this error in the caller's wire format."""
        if dialect is ErrorShape.ANTHROPIC:
            body: dict[str, Any] = {"type": "error", "error": {"type": self.anthropic_type, "message": self.message}}
        else:
            error = {"message": self.message, "type": self.openai_type, "param": None, "code": self.openai_code}
            body = {"error": error}
        body.update(self.extra)
        return body


class BadRequest(GatewayError):
    status, anthropic_type, openai_type = 400, "invalid_request_error", "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.param = param

    def render(self, dialect: ErrorShape) -> dict[str, Any]:
        body = super().render(dialect)
        if dialect is ErrorShape.OPENAI:
            body["error"]["param"] = self.param
        return body


class UnsupportedMediaType(BadRequest):
    status = 415


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
        self.code = code

    def render(self, dialect: ErrorShape) -> dict[str, Any]:
        body = super().render(dialect)
        if dialect is ErrorShape.OPENAI:
            body["error"]["code"] = self.code
        return body


class RateLimited(GatewayError):
    """A per-minute or in-flight limit refused the request; `headers` carry Retry-After and the figures.

    OpenAI's body names the kind in `type` (requests | tokens) with code rate_limit_exceeded, as its API does.
    """

    status, anthropic_type, openai_type, openai_code = 429, "rate_limit_error", "requests", "rate_limit_exceeded"

    def __init__(self, message: str, *, kind: str = "requests", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.kind = kind

    def render(self, dialect: ErrorShape) -> dict[str, Any]:
        body = super().render(dialect)
        if dialect is ErrorShape.OPENAI:
            body["error"]["type"] = self.kind
        return body


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
    status, anthropic_type, openai_type, openai_code = 504, "api_error", "server_error", "timeout"


class ServiceUnavailable(GatewayError):
    status, anthropic_type, openai_type, openai_code = 503, "overloaded_error", "server_error", "service_unavailable"


class UpstreamError(GatewayError):
    """The provider answered with an error status; its own type and message reach the caller.

    `body` is the provider's raw error body, relayed byte for byte to a caller of the same dialect.
    """

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int = 502,
        upstream_type: str = "api_error",
        body: bytes | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.upstream_status = upstream_status
        self.upstream_type = upstream_type
        self.body = body

    def status_for(self, dialect: ErrorShape) -> int:
        # Anthropic's 529 "overloaded" is not an HTTP status OpenAI clients know; they retry on 503.
        if dialect is ErrorShape.OPENAI and self.upstream_status == 529:
            return 503
        return self.upstream_status

    def render(self, dialect: ErrorShape) -> dict[str, Any]:
        if dialect is ErrorShape.ANTHROPIC:
            return {"type": "error", "error": {"type": self.upstream_type, "message": self.message}}
        error = {"message": self.message, "type": _OPENAI_TYPES.get(self.upstream_type, "server_error")}
        return {"error": {**error, "param": None, "code": self.upstream_type}}


_OPENAI_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "request_too_large": "invalid_request_error",
    "rate_limit_error": "rate_limit_exceeded",
    "api_error": "server_error",
    "overloaded_error": "server_error",
}
