"""Anthropic's Messages API (or anything that speaks it) as a provider."""

from __future__ import annotations

import io
from typing import ClassVar

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway.config import ProviderConfig
from gateway.dialect import Dialect
from gateway.providers.base import AiohttpReply, UpstreamCall, upstream_errors

DEFAULT_VERSION = "2023-06-01"
LARGE_BODY = 1024 * 1024


class AnthropicProvider:
    """POSTs to `<base_url><path>?<query>` with the provider's own key; the caller's key never leaves."""

    dialect: ClassVar[Dialect] = Dialect.ANTHROPIC

    def __init__(self, cfg: ProviderConfig, session: aiohttp.ClientSession) -> None:
        self.name = cfg.name
        self._base_url, self._api_key, self._session = cfg.base_url, cfg.api_key, session
        t = cfg.timeouts
        # A stream may stay silent up to `idle`; a non-stream reply may take up to `first_byte` to arrive.
        self._stream_timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect_s, sock_read=t.idle_s)
        # A whole reply: one timer for the request (sock_read would re-arm a timer on every chunk read).
        self._reply_timeout = aiohttp.ClientTimeout(total=t.first_byte_s, sock_connect=t.connect_s)
        self._own_headers = {
            "content-type": "application/json",
            "accept-encoding": "identity",  # relayed as-is: never decompress and recompress
            **({"x-api-key": cfg.api_key} if cfg.api_key else {}),
        }

    async def send(self, call: UpstreamCall) -> AiohttpReply:
        headers = CIMultiDict(call.headers)  # case-insensitive: the caller may send Anthropic-Version
        headers.setdefault("anthropic-version", DEFAULT_VERSION)
        headers.update(self._own_headers)
        # encoded=True: the caller's query goes upstream byte for byte (yarl would re-quote %2F, %7E, ...)
        url = URL(self._base_url + call.path + (f"?{call.query_string}" if call.query_string else ""), encoded=True)
        # aiohttp writes a bytes body in one go; past 1 MB (images) a stream keeps the event loop responsive
        body = io.BytesIO(call.body) if len(call.body) > LARGE_BODY else call.body
        timeout = self._stream_timeout if call.stream else self._reply_timeout
        with upstream_errors(self.name):
            response = await self._session.post(url, data=body, headers=headers, timeout=timeout)
        return AiohttpReply(self.name, response)

    async def aclose(self) -> None:
        """The session is shared and closed by the app."""
