"""An OpenAI-compatible Chat Completions API as a provider: OpenAI itself, vLLM, Ollama, a LiteLLM proxy.

`base_url` includes the version prefix, as OpenAI clients expect (`https://api.openai.com/v1`,
`http://localhost:11434/v1`), so a call's `path` is relative to it: "/chat/completions".
"""

from __future__ import annotations

import io
from typing import ClassVar

import aiohttp

from gateway.config import ProviderConfig
from gateway.dialect import Dialect
from gateway.providers.anthropic import LARGE_BODY
from gateway.providers.base import AiohttpReply, UpstreamCall, upstream_errors

CHAT_COMPLETIONS_PATH = "/chat/completions"


class OpenAICompatProvider:
    """POSTs to `<base_url><path>` with `Authorization: Bearer <api_key>`; the caller's key never leaves."""

    dialect: ClassVar[Dialect] = Dialect.OPENAI

    def __init__(self, cfg: ProviderConfig, session: aiohttp.ClientSession) -> None:
        self.name = cfg.name
        self._base_url, self._api_key, self._session = cfg.base_url, cfg.api_key, session
        t = cfg.timeouts
        # A stream may stay silent up to `idle`; a non-stream reply may take up to `first_byte` to arrive.
        self._stream_timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect_s, sock_read=t.idle_s)
        # A whole reply: one timer for the request (sock_read would re-arm a timer on every chunk read).
        self._reply_timeout = aiohttp.ClientTimeout(total=t.first_byte_s, sock_connect=t.connect_s)

    async def send(self, call: UpstreamCall) -> AiohttpReply:
        headers = dict(call.headers)
        headers["content-type"] = "application/json"
        headers["accept-encoding"] = "identity"  # relayed as-is: never decompress and recompress
        if self._api_key:  # Ollama and a local vLLM need none
            headers["authorization"] = f"Bearer {self._api_key}"
        url = self._base_url + call.path + (f"?{call.query_string}" if call.query_string else "")
        timeout = self._stream_timeout if call.stream else self._reply_timeout
        with upstream_errors(self.name):
            body = io.BytesIO(call.body) if len(call.body) > LARGE_BODY else call.body  # as in anthropic.py
            response = await self._session.post(url, data=body, headers=headers, timeout=timeout)
        return AiohttpReply(self.name, response)

    async def aclose(self) -> None:
        """The session is shared and closed by the app."""
