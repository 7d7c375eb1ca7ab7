"""Typed keys for what the application and each request carry (aiohttp AppKey / RequestKey)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.config import GatewayConfig
from gateway.pipeline import Exchange
from gateway.services import Services

CONFIG = web.AppKey("config", GatewayConfig)
SERVICES = web.AppKey("services", Services)
PIPELINE = web.AppKey("pipeline", Callable[[Exchange], Awaitable[None]])  # auth -> ... -> relay
AUTH_PIPELINE = web.AppKey("auth_pipeline", Callable[[Exchange], Awaitable[None]])  # auth and key mapping only
REQUEST_ID = web.RequestKey("request_id", str)
