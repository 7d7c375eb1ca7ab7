"""Typed keys for what the application and each request carry (aiohttp AppKey / RequestKey)."""

from __future__ import annotations

from aiohttp import web

from gateway.composition import SERVICES
from gateway.edge import REQUEST_ID, ConcurrencyLimit
from gateway.hot_reload import Runtime

__all__ = ["REQUEST_ID", "RUNTIME", "SERVICES", "SLOTS"]
RUNTIME = web.AppKey("runtime", Runtime)  # the config and the chains built from it; a reload updates it in place
SLOTS = web.AppKey("slots", ConcurrencyLimit)  # taken by each /v1/ route after authentication
