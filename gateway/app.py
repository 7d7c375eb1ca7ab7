"""The aiohttp applications: routes, startup and shutdown. Nothing else (the edge is gateway/edge.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import structlog
from aiohttp import web

from gateway import console, db, management, me, openapi
from gateway.app_keys import RUNTIME, SERVICES, SLOTS
from gateway.composition import Services, open_services
from gateway.config import GatewayConfig
from gateway.edge import (
    ConcurrencyLimit,
    Handler,
    ModelRoute,
    Serving,
    add_request_id,
    dialect_of,
    edge,
    error_edge,
    expect_after_auth,
    method_not_allowed,
    unserved,
)
from gateway.error_shape import ErrorShape
from gateway.errors import Forbidden
from gateway.hot_reload import Runtime, build_runtime, reload_config
from gateway.metrics import CONTENT_TYPE, SHARE_DIR_ENV, Metrics
from gateway.models_list import list_models
from gateway.request_body import body_sketch

__all__ = ["SERVICES", "body_sketch", "build_app"]  # tests and bench/ import these from here

log = structlog.get_logger("gateway")


async def models(request: web.Request) -> web.StreamResponse:
    """GET /v1/models and /v1/models/{id}: the aliases, in the caller's dialect (auth required)."""
    runtime = request.config_dict[RUNTIME]
    await runtime.authenticate(request)
    with request.config_dict[SLOTS]:
        body, status = list_models(runtime.config.models, dialect_of(request), request.match_info.get("model_id"))
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


async def metrics_endpoint(request: web.Request) -> web.Response:
    """GET /metrics in Prometheus' text format; an admin key unless metrics.require_admin is false."""
    runtime = request.app[RUNTIME]
    if runtime.config.metrics.require_admin and not (await runtime.authenticate(request)).is_admin:
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
            ping = asyncio.ensure_future(db.ping(request.config_dict[SERVICES].pool))
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
    """The gateway as an aiohttp Application; services open on startup and close on cleanup.

    Three applications, so that the model routes run no middleware or signal: the root holds the model routes
    (each one coroutine, gateway/edge.py) and the probes (each wrapped once in the error edge); `/v1` holds the
    rest of the API (/v1/models, /v1/me, the management API) behind `error_edge`; `/console` holds the console.
    """
    serving = Serving(ConcurrencyLimit(cfg.server.max_concurrency))
    app = web.Application(client_max_size=cfg.server.max_body_bytes)  # no middlewares, no signals: see above
    app[SLOTS] = slots = serving.slots

    async def services_ctx(app: web.Application) -> Any:
        svc = await open_services(cfg, dsn=dsn, clock=clock)
        app[SERVICES] = svc
        app[RUNTIME] = runtime = build_runtime(cfg, svc)
        serving.runtime, serving.metrics = runtime, svc.metrics
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
        handler = ModelRoute(dialect, route, serving, billable=billable).handle
        app.router.add_post(path, handler, expect_handler=expect_after_auth(dialect))  # no 100 Continue before auth
        app.router.add_route("*", path, method_not_allowed("POST"))
    app.add_subapp("/v1", _api(cfg))
    for path, probe in (
        ("/health", health_check()),
        ("/metrics", metrics_endpoint),
        ("/openapi.json", openapi_document()),
        ("/", root),
    ):
        app.router.add_get(path, edge(probe))  # aiohttp answers HEAD for every GET route
        app.router.add_route("*", path, unserved("GET", "HEAD"))
    console.add_routes(app, cfg)
    app.router.add_route("*", "/{path:.*}", unserved())  # last: any other path, a 404 with its request id
    return app


def _api(cfg: GatewayConfig) -> web.Application:
    """/v1 but the model routes: /v1/models, /v1/me, the management API; errors rendered by `error_edge`."""
    api = web.Application(middlewares=[error_edge], client_max_size=cfg.server.max_body_bytes)
    api.on_response_prepare.append(add_request_id)
    api.router.add_get("/models", models)
    api.router.add_get("/models/{model_id}", models)
    management.add_routes(api, mounted_at="/v1")
    me.add_routes(api, mounted_at="/v1")
    return api


def _reload(runtime: Runtime, svc: Services) -> None:
    """SIGHUP: reload the config, and let the metrics take its model names as labels."""
    if reload_config(runtime, svc):
        svc.metrics.allow_models(runtime.config.models)
