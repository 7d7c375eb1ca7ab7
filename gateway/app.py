"""The aiohttp application: routes, the error edge, startup and shutdown. Nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import orjson
import structlog
from aiohttp import HttpVersion11, web
from aiohttp.hdrs import EXPECT

from gateway import console, db, management, me, openapi
from gateway.app_keys import REQUEST_ID, RUNTIME, SERVICES, SLOTS
from gateway.composition import Services, open_services
from gateway.config import GatewayConfig
from gateway.error_shape import ErrorShape
from gateway.errors import (
    BadRequest,
    BodyTooLarge,
    Forbidden,
    GatewayError,
    MethodNotAllowed,
    RequestTimeout,
    RouteNotFound,
    ServiceUnavailable,
    UnsupportedMediaType,
    error_response,
)
from gateway.hot_reload import Runtime, build_runtime, reload_config
from gateway.metrics import CONTENT_TYPE, SHARE_DIR_ENV, Metrics
from gateway.models_list import list_models
from gateway.pipeline import Exchange
from gateway.stages.usage_log import CLIENT_CLOSED

log = structlog.get_logger("gateway")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def dialect_of(request: web.Request) -> ErrorShape:
    """Which error shape a caller understands, judged by the route it called."""
    if request.path.startswith("/v1/messages"):
        return ErrorShape.ANTHROPIC
    if request.path.startswith("/v1/models") and (
        "anthropic-version" in request.headers or "x-api-key" in request.headers
    ):
        return ErrorShape.ANTHROPIC
    return ErrorShape.OPENAI


# errors as {"error": "..."} under every management API path (404, 405 included): /v1/teams, /v1/audit, ...
MANAGEMENT_PATHS = tuple(sorted({"/".join(route.path.split("/")[:3]) for route in management.ROUTES}))


@web.middleware
async def error_edge(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every GatewayError in the caller's dialect; nothing else ever leaves as a traceback."""
    request[REQUEST_ID] = new_request_id(request)
    shape = ErrorShape.MANAGEMENT if request.path.startswith(MANAGEMENT_PATHS) else dialect_of(request)
    # Every line logged while serving it (stages, relays, retries, the ledger, admin and console handlers)
    # carries the id; reset after, since the requests of one keep-alive connection share one task's context.
    bound = structlog.contextvars.bind_contextvars(request_id=request[REQUEST_ID])
    try:
        return await handler(request)
    except GatewayError as err:
        return error_response(err, shape)
    except web.HTTPException as exc:
        if exc.status >= 400 and request.path.startswith("/v1/"):
            return error_response(_http_exception_as_gateway_error(exc), shape)
        raise
    except Exception:  # a bug of ours: log it whole, answer a plain 500 in the caller's dialect
        log.exception("unhandled_error", path=request.path)
        return error_response(GatewayError("internal gateway error; see the gateway log"), shape)
    finally:
        structlog.contextvars.reset_contextvars(**bound)


def _http_exception_as_gateway_error(exc: web.HTTPException) -> GatewayError:
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


# --- the pipeline routes ---------------------------------------------------------------------------


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
        await _send_continue(request)
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


def new_request_id(request: web.Request) -> str:
    given = request.headers.get("x-request-id", "")
    return given if 0 < len(given) <= 128 and given.isprintable() else secrets.token_hex(12)


def pipeline_handler(
    dialect: ErrorShape, route: str, *, billable: bool = True, slots: ConcurrencyLimit | None = None
) -> Handler:
    """A model route: authenticate from the headers, then take a slot, then read the body, then the pipeline.

    The order is the defence: a caller without a valid key is refused before any body byte is read and
    without holding a slot, so slow or huge unauthenticated bodies cost neither memory nor capacity.
    """
    slots = slots or ConcurrencyLimit(sys.maxsize)

    async def handle(request: web.Request) -> web.StreamResponse:
        app = request.app
        runtime = app[RUNTIME]  # read once: a reload during this request does not change its path
        server, served = runtime.config.server, runtime.served
        ex = Exchange(dialect, route, request, b"", {}, request[REQUEST_ID], billable=billable)
        status = 500
        refusal: str | None = None  # why a 4xx was the gateway's own answer
        try:
            await runtime.auth_pipeline(ex)  # headers only
            with slots:
                ex.raw_body, ex.body, ex.sketched = await read_json_body(
                    request, server.max_body_bytes, server.body_timeout_s, sketch=dialect is ErrorShape.ANTHROPIC
                )
                await served(ex)
            status = ex.status
        except GatewayError as err:
            status = err.status_for(dialect)
            refusal = err.message
            raise
        except asyncio.CancelledError:
            status = ex.status_when_cancelled()
            raise
        finally:
            _observe(app[SERVICES].metrics, ex, status, refusal)  # request_id bound by error_edge
        assert ex.response is not None
        return ex.response

    return handle


async def continue_after_auth(request: web.Request) -> None:
    """The model routes' Expect handler: refuse an unknown expectation, but send no 100 Continue yet.

    aiohttp's default answers `Expect: 100-continue` before the handler runs, inviting the body of a caller
    that has not authenticated; the handler sends it after authentication instead (RFC 9110 10.1.1 lets a
    server answer with the final status in its place), so a client that waits for it never sends a refused body.
    """
    expect = request.headers.get(EXPECT, "")
    if request.version >= HttpVersion11 and expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect}")


async def _send_continue(request: web.Request) -> None:
    if request.version >= HttpVersion11 and request.headers[EXPECT].lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # as aiohttp's own handler does: the response proper has not begun


def _observe(metrics: Metrics, ex: Exchange, status: int, refusal: str | None = None) -> None:
    """One log line and the request metrics for every request on a pipeline route, refused ones included.

    A 4xx line says who refused and why: `refused_by="gateway"` with the gateway's message, or
    `refused_by="upstream"` with the message of the provider's error body (read from the relayed answer).
    """
    seconds = (time.perf_counter_ns() - ex.started_ns) / 1e9
    alias = metrics.model_label(ex.target.alias.name) if ex.target else "-"  # configured names, else "other"
    metrics.requests.inc((ex.route, alias, str(status)))
    metrics.latency.observe((ex.route,), seconds)
    log.info(
        "request",
        request_id=ex.request_id,
        route=ex.route,
        key=ex.principal.lookup_id if ex.principal else None,
        alias=ex.alias_name,
        model=ex.target.provider_model if ex.target else None,
        status=status,
        stream=ex.streamed,
        input_tokens=ex.usage.input_tokens,
        output_tokens=ex.usage.output_tokens,
        ms=round(seconds * 1000, 2),
        **(_refusal_fields(ex, refusal) if 400 <= status < 500 and status != CLIENT_CLOSED else {}),
    )


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


async def models(request: web.Request) -> web.StreamResponse:
    """GET /v1/models and /v1/models/{id}: the aliases, in the caller's dialect (auth required)."""
    ex = Exchange(dialect_of(request), "models", request, b"", {}, request[REQUEST_ID], billable=False)
    runtime = request.app[RUNTIME]
    await runtime.auth_pipeline(ex)
    with request.app[SLOTS]:
        body, status = list_models(runtime.config.models, ex.dialect, request.match_info.get("model_id"))
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


async def metrics_endpoint(request: web.Request) -> web.Response:
    """GET /metrics in Prometheus' text format; an admin key unless metrics.require_admin is false."""
    runtime = request.app[RUNTIME]
    if runtime.config.metrics.require_admin:
        ex = Exchange(ErrorShape.OPENAI, "metrics", request, b"", {}, request[REQUEST_ID], billable=False)
        await runtime.auth_pipeline(ex)
        if ex.principal is None or not ex.principal.is_admin:
            raise Forbidden("/metrics needs an admin key (or set metrics.port to serve it on a private port)")
    return _metrics_response(request.app[SERVICES].metrics)


def _metrics_response(metrics: Metrics) -> web.Response:
    return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})


async def _share_metrics(metrics: Metrics, every_s: float = 2.0) -> None:
    """With several workers: publish this worker's figures for the one that answers a scrape."""
    directory = Path(os.environ[SHARE_DIR_ENV])
    while True:
        with contextlib.suppress(OSError):
            metrics.share(directory)
        await asyncio.sleep(every_s)


async def _serve_metrics_port(cfg: GatewayConfig, metrics: Metrics) -> web.AppRunner | None:
    """metrics.port: /metrics without auth on a separate (private) listener; every worker binds it."""
    if not cfg.metrics.port:
        return None
    side = web.Application()

    async def scrape(request: web.Request) -> web.Response:
        return _metrics_response(metrics)

    side.router.add_get("/metrics", scrape)
    runner = web.AppRunner(side, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, cfg.metrics.host, cfg.metrics.port, reuse_port=True).start()
    return runner


# --- probes ------------------------------------------------------------------------------------------


async def root(request: web.Request) -> web.Response:
    """Claude Code sends HEAD / before its first request; anything but 200 makes it report a failure."""
    return web.json_response({"service": "ai-gateway", "health": "/health"})


def openapi_document() -> Handler:
    """GET /openapi.json: gateway/openapi.py's document, built once when the app is built."""
    document = openapi.served_bytes()

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    return serve


def health_check() -> Handler:
    """GET /health: a database ping, one at a time; callers arriving meanwhile share its answer.

    /health needs no key, so a flood of it must not take the pool's connections from the key lookups.
    """
    ping: asyncio.Future[bool] | None = None

    async def health(request: web.Request) -> web.Response:
        nonlocal ping
        if ping is None or ping.done():
            ping = asyncio.ensure_future(db.ping(request.app[SERVICES].pool))
        ok = await asyncio.shield(ping)  # a caller gone does not cancel the others' answer
        body = {"status": "ok" if ok else "degraded", "database": "up" if ok else "down"}
        return web.json_response(body, status=200 if ok else 503)

    return health


# --- assembly ----------------------------------------------------------------------------------------


MODEL_ROUTES = (  # path, caller dialect, route name (metrics, logs), billable
    ("/v1/messages", ErrorShape.ANTHROPIC, "messages", True),
    ("/v1/messages/count_tokens", ErrorShape.ANTHROPIC, "count_tokens", False),
    ("/v1/chat/completions", ErrorShape.OPENAI, "chat_completions", True),
    ("/v1/responses", ErrorShape.OPENAI, "responses", True),
)


def build_app(
    cfg: GatewayConfig,
    *,
    dsn: str | None = None,
    clock: Callable[[], datetime] | None = None,
    reload_on_sighup: bool = False,
) -> web.Application:
    """The gateway as an aiohttp Application; services open on startup and close on cleanup."""
    slots = ConcurrencyLimit(cfg.server.max_concurrency)
    app = web.Application(middlewares=[error_edge], client_max_size=cfg.server.max_body_bytes)
    app[SLOTS] = slots

    async def services_ctx(app: web.Application) -> Any:
        svc = await open_services(cfg, dsn=dsn, clock=clock)
        app[SERVICES] = svc
        app[RUNTIME] = runtime = build_runtime(cfg, svc)
        svc.metrics.allow_models(cfg.models)
        if reload_on_sighup:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, _reload, runtime, svc)
        side = await _serve_metrics_port(cfg, svc.metrics)
        sharing = asyncio.create_task(_share_metrics(svc.metrics)) if os.environ.get(SHARE_DIR_ENV) else None
        yield
        if sharing is not None:
            sharing.cancel()
        if side is not None:
            await side.cleanup()
        await svc.aclose()

    app.cleanup_ctx.append(services_ctx)
    app.on_response_prepare.append(_add_request_id)

    async def announce_stop(app: web.Application) -> None:
        # After Ctrl-C or SIGTERM the server may wait up to shutdown_grace_s for streams: say so, or it looks hung.
        log.info(
            "stopping",
            in_flight=slots.in_progress,
            grace_s=cfg.server.shutdown_grace_s,
            hint="new connections are refused; requests in flight may finish; a second Ctrl-C stops at once",
        )

    app.on_shutdown.append(announce_stop)
    for path, dialect, route, billable in MODEL_ROUTES:
        handler = pipeline_handler(dialect, route, billable=billable, slots=slots)
        app.router.add_post(path, handler, expect_handler=continue_after_auth)  # no 100 Continue before auth
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{model_id}", models)
    app.router.add_get("/health", health_check())
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/openapi.json", openapi_document())
    management.add_routes(app, send_continue=_send_continue, expect=continue_after_auth)
    me.add_routes(app)
    console.add_routes(app, cfg)
    app.router.add_get("/", root)  # aiohttp answers HEAD for every GET route
    return app


def _reload(runtime: Runtime, svc: Services) -> None:
    """SIGHUP: reload the config, and let the metrics take its model names as labels."""
    if reload_config(runtime, svc):
        svc.metrics.allow_models(runtime.config.models)


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Every response names its request id, so a user's report can be matched to the log line."""
    if REQUEST_ID in request:
        response.headers["x-request-id"] = request[REQUEST_ID]
