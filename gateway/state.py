"""Typed keys for what the application and each request carry (aiohttp AppKey / RequestKey)."""

from __future__ import annotations

from aiohttp import web

from gateway.runtime import Runtime
from gateway.services import SERVICES

__all__ = ["REQUEST_ID", "RUNTIME", "SERVICES"]
RUNTIME = web.AppKey("runtime", Runtime)  # the config and the chains built from it; swapped by a reload
REQUEST_ID = web.RequestKey("request_id", str)
