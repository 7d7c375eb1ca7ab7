"""The edge: what stands between aiohttp and the request path.

A model route (`/v1/messages`, `/v1/chat/completions`, `/v1/responses`, count_tokens) is one coroutine,
`ModelRoute.handle`, from aiohttp's router to the upstream and back: no aiohttp middleware or signal runs for
it (its application has none); it gives the request its id, authenticates, takes a concurrency slot, reads the
body, runs the chain built by the composition root, renders any error in the caller's dialect, and writes the
request's log line and metrics. Every other route (/v1/models, the management API, /v1/me, probes, the console)
goes through `error_edge`, the same rules as a middleware or a wrapper composed once at start-up.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson
import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from gateway.error_shape import ErrorShape
from gateway.errors import (
    BodyTooLarge,
    GatewayError,
    MethodNotAllowed,
    RouteNotFound,
    ServiceUnavailable,
    error_response,
)
from gateway.hot_reload import Runtime
from gateway.logs import request_line
from gateway.metrics import Metrics
from gateway.pipeline import CLIENT_CLOSED, Exchange
from gateway.request_body import continue_after_auth, read_json_body, undecodable_body

log = structlog.get_logger("gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ExpectHandler = Callable[[web.Request], Awaitable[web.StreamResponse | None]]
REQUEST_ID = web.RequestKey("request_id", str)  # set by error_edge on every route but the model routes
REQUEST_ID_HEADER = "x-request-id"


def new_request_id(request: web.Request) -> str:
    """The caller's `x-request-id` when it is printable ASCII and at most 128 characters, else 24 random hex digits.

    ASCII only: it is echoed in a response header and written in every log line, where a bidi override or a
    look-alike letter would pass for another request's id.
    """
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if 0 < len(given) <= 128 and given.isascii() and given.isprintable() else secrets.token_hex(12)


def dialect_of(request: web.Request) -> ErrorShape:
    """Which error shape a caller understands, judged by the route it called."""
    if request.path.startswith("/v1/messages"):
        return ErrorShape.ANTHROPIC
    if request.path.startswith("/v1/models") and (
        "anthropic-version" in request.headers or "x-api-key" in request.headers
    ):
        return ErrorShape.ANTHROPIC
    return ErrorShape.OPENAI


# The management API's paths: errors under them (404 and 405 included) are `{"error": "..."}`. Written out here,
# not derived from gateway/management.py's route table (which imports the handlers): tests/test_roles.py checks
# that every route of that table starts with one of them.
MANAGEMENT_PATHS = (
    "/v1/audit",
    "/v1/dlp-findings",
    "/v1/management-keys",
    "/v1/rate-limits",
    "/v1/teams",
    "/v1/user-api-keys",
)
INTERNAL_ERROR = "internal gateway error; see the gateway log"


@web.middleware
async def error_edge(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every GatewayError in the caller's dialect; nothing else ever leaves as a traceback.

    The middleware of every application but the model routes' (the /v1 API's and the console's); the probes at
    the root take it as a wrapper (`edge`). Every response names its request id (`add_request_id`).
    """
    request[REQUEST_ID] = new_request_id(request)
    shape = ErrorShape.MANAGEMENT if request.path.startswith(MANAGEMENT_PATHS) else dialect_of(request)
    # Every line logged while serving it (admin and console handlers, the ledger, retries) carries the id; reset
    # after, since the requests of one keep-alive connection share one task's context.
    bound = structlog.contextvars.bind_contextvars(request_id=request[REQUEST_ID])
    try:
        return await handler(request)
    except GatewayError as err:
        return error_response(err, shape)
    except web.HTTPException as exc:
        if exc.status >= 400 and request.path.startswith("/v1/"):
            return error_response(http_exception_as_gateway_error(exc), shape)
        exc.headers[REQUEST_ID_HEADER] = request[REQUEST_ID]  # aiohttp renders it: no prepare signal of ours runs
        raise
    except RequestPayloadError:  # a handler's body read (management API, console forms)
        return error_response(undecodable_body(request), shape)
    except Exception:  # a bug of ours: log it whole, answer a plain 500 in the caller's dialect
        log.exception("unhandled_error", path=request.path)
        return error_response(GatewayError(INTERNAL_ERROR), shape)
    finally:
        structlog.contextvars.reset_contextvars(**bound)


def edge(handler: Handler) -> Handler:
    """`handler` behind error_edge, composed once: for the routes of an application without middlewares."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        response = await error_edge(request, handler)
        response.headers[REQUEST_ID_HEADER] = request[REQUEST_ID]
        return response

    return guarded


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare of the applications with error_edge: every response names its request id."""
    if REQUEST_ID in request:
        response.headers[REQUEST_ID_HEADER] = request[REQUEST_ID]


def http_exception_as_gateway_error(exc: web.HTTPException) -> GatewayError:
    """aiohttp's own refusals (no such route, method, body over the limit) as the gateway's errors."""
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return BodyTooLarge("request body is over the size limit")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(f"method not allowed here; allowed: {', '.join(sorted(exc.allowed_methods))}")
    return RouteNotFound(
        "no such endpoint: the gateway serves /v1/messages, /v1/chat/completions, /v1/responses and /v1/models"
    )


class ConcurrencyLimit:
    """At most `limit` API requests in progress on this worker; the next gets a clean 503 at once.

    Queueing them instead would only turn overload into timeouts; a 503 lets clients (and a load balancer)
    retry elsewhere. Every /v1/ route takes its slot in the handler, after authentication (`app[SLOTS]`), so
    callers without a valid key (slow bodies, floods, guesses waiting on the database or bcrypt) never hold
    one. Probes (/health, /) are never refused.
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.in_progress = limit, 0

    def __enter__(self) -> None:
        if self.in_progress >= self.limit:
            raise ServiceUnavailable(
                f"the gateway is at its limit of {self.limit} concurrent requests; retry shortly",
                headers={"Retry-After": "1"},
            )
        self.in_progress += 1

    def __exit__(self, *exc_info: object) -> None:
        self.in_progress -= 1


@dataclass
class Serving:
    """What the model routes read at each request, filled when the services open (startup) and kept by a reload."""

    slots: ConcurrencyLimit
    runtime: Runtime | None = None  # the config and request path; a reload updates this object in place
    metrics: Metrics | None = None


class ModelRoute:
    """One model route, as one straight coroutine (see the module docstring); built once per route at startup.

    The order is the defence: a caller without a valid key is refused before any body byte is read and
    without holding a slot, so slow or huge unauthenticated bodies cost neither memory nor capacity.
    """

    def __init__(self, dialect: ErrorShape, route: str, serving: Serving, *, billable: bool = True) -> None:
        self._dialect, self._route, self._billable, self._serving = dialect, route, billable, serving
        self._sketch = dialect is ErrorShape.ANTHROPIC  # an Anthropic body may pass through unparsed

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The route's aiohttp handler (a bound method: aiohttp takes coroutine functions only)."""
        runtime, metrics = self._serving.runtime, self._serving.metrics
        assert runtime is not None and metrics is not None  # set at startup, before the server listens
        request_id = new_request_id(request)
        ex = Exchange(self._dialect, self._route, request, b"", {}, request_id, billable=self._billable)
        status, refusal = 500, None  # refusal: why a 4xx was the gateway's own answer
        # Every line logged while serving it (retries, cool-downs, broken streams) carries the request id.
        bound = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            try:
                await self._serve(ex, runtime)  # read `runtime` once: a reload meanwhile does not change its path
                status = ex.status
                response = ex.response
                assert response is not None
            except GatewayError as err:
                status, refusal = err.status_for(self._dialect), err.message
                response = error_response(err, self._dialect)
            except web.HTTPException as exc:  # aiohttp's own refusal while reading the body
                refused = http_exception_as_gateway_error(exc)
                status, refusal = refused.status_for(self._dialect), refused.message
                response = error_response(refused, self._dialect)
            except asyncio.CancelledError:
                status = ex.status_when_cancelled()
                raise
            except Exception:  # a bug of ours: log it whole, answer a plain 500 in the caller's dialect
                log.exception("unhandled_error", path=request.path)  # request_id bound above
                response = error_response(GatewayError(INTERNAL_ERROR), self._dialect)
        finally:
            observe(metrics, ex, status, refusal)
            structlog.contextvars.reset_contextvars(**bound)
        if not response.prepared:  # a stream's headers went out with its id (gateway/relays/replies.py)
            response.headers[REQUEST_ID_HEADER] = request_id
        return response

    async def _serve(self, ex: Exchange, runtime: Runtime) -> None:
        """authenticate (headers only) -> a slot -> the body -> the chain (composition.build_request_path)."""
        server, served = runtime.config.server, runtime.served
        ex.principal = await runtime.authenticate(ex.request)
        with self._serving.slots:
            ex.raw_body, ex.body, ex.sketched = await read_json_body(
                ex.request, server.max_body_bytes, server.body_timeout_s, sketch=self._sketch
            )
            await served(ex)


def observe(metrics: Metrics, ex: Exchange, status: int, refusal: str | None = None) -> None:
    """One log line and the request metrics for every request on a model route, refused ones included.

    A 4xx line says who refused and why: `refused_by="gateway"` with the gateway's message, or
    `refused_by="upstream"` with the message of the provider's error body (read from the relayed answer).
    """
    seconds = (time.perf_counter_ns() - ex.started_ns) / 1e9
    target = ex.target
    alias = metrics.model_label(target.alias.name) if target else "-"  # configured names, else "other"
    metrics.requests.inc((ex.route, alias, str(status)))
    metrics.latency.observe((ex.route,), seconds)
    fields = {
        "request_id": ex.request_id,
        "route": ex.route,
        "key": ex.principal.lookup_id if ex.principal else None,
        "alias": ex.alias_name,
        "model": target.provider_model if target else None,
        "status": status,
        "stream": ex.streamed,
        "input_tokens": ex.usage.input_tokens,
        "output_tokens": ex.usage.output_tokens,
        "ms": round(seconds * 1000, 2),
    }
    if 400 <= status < 500 and status != CLIENT_CLOSED:
        fields.update(_refusal_fields(ex, refusal))
    request_line(fields)


REFUSAL_LOG_CHARS = 500  # an upstream's error message is logged up to this length


def _refusal_fields(ex: Exchange, refusal: str | None) -> dict[str, str]:
    """refused_by and reason for a 4xx: the gateway's own message, or the error message in the upstream's answer."""
    if refusal is not None:
        return {"refused_by": "gateway", "reason": refusal[:REFUSAL_LOG_CHARS]}
    body = getattr(ex.response, "body", None)  # a relayed error answer; None for a stream
    try:
        parsed = orjson.loads(body) if isinstance(body, bytes) else None
    except orjson.JSONDecodeError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return {"refused_by": "upstream", "reason": str(message or "no error message")[:REFUSAL_LOG_CHARS]}


def unserved(*allowed: str) -> Handler:
    """aiohttp's own plain 405 (`allowed` methods) or, with none, 404, behind the edge: for the root application's
    probes and every path it does not serve, which would otherwise leave without a request id (it has no signal
    to add one)."""

    async def refuse(request: web.Request) -> web.StreamResponse:
        if allowed:
            raise web.HTTPMethodNotAllowed(request.method, allowed)
        raise web.HTTPNotFound()

    return edge(refuse)


def expect_after_auth(shape: ErrorShape) -> ExpectHandler:
    """The Expect handler of the routes that authenticate before reading a body (request_body.continue_after_auth),
    an unknown expectation refused in `shape` with its request id: aiohttp runs an Expect handler before any
    middleware, so its own 417 would be plain text naming no request."""

    async def check(request: web.Request) -> web.StreamResponse | None:
        try:
            await continue_after_auth(request)
        except GatewayError as err:
            response = error_response(err, shape)
            response.headers[REQUEST_ID_HEADER] = new_request_id(request)
            return response
        return None

    return check


def method_not_allowed(allowed: str) -> Handler:
    """The model paths' answer to any other method: 405 in the caller's dialect (their application has no
    middleware to turn aiohttp's own 405 into one)."""

    async def refuse(request: web.Request) -> web.StreamResponse:
        refused = http_exception_as_gateway_error(web.HTTPMethodNotAllowed(request.method, [allowed]))
        response = error_response(refused, dialect_of(request))
        response.headers[REQUEST_ID_HEADER] = new_request_id(request)
        return response

    return refuse
