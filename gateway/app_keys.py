"""Typed keys for what the application and each request carry (aiohttp AppKey / RequestKey)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from gateway.composition import SERVICES
from gateway.hot_reload import Runtime

if TYPE_CHECKING:
    from gateway.app import ConcurrencyLimit

__all__ = ["REQUEST_ID", "RUNTIME", "SERVICES", "SLOTS"]
RUNTIME = web.AppKey("runtime", Runtime)  # the config and the chains built from it; swapped by a reload
REQUEST_ID = web.RequestKey("request_id", str)
SLOTS: web.AppKey[ConcurrencyLimit] = web.AppKey("slots")  # taken by each /v1/ route after authentication
