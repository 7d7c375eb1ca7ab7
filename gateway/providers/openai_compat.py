"""An OpenAI-compatible Chat Completions API as a provider: OpenAI itself, vLLM, Ollama, a LiteLLM proxy.

`base_url` includes the version prefix, as OpenAI clients expect (`https://api.openai.com/v1`,
`http://localhost:11434/v1`), so a call's `path` is relative to it: "/chat/completions".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import aiohttp

from gateway.config import ProviderConfig
from gateway.error_shape import ErrorShape
from gateway.providers.base import HttpProvider, UpstreamCall

CHAT_COMPLETIONS_PATH = "/chat/completions"


class OpenAICompatProvider(HttpProvider):
    """POSTs to `<base_url><path>` with `Authorization: Bearer <api_key>`; the caller's key never leaves."""

    dialect: ClassVar[ErrorShape] = ErrorShape.OPENAI

    def __init__(self, cfg: ProviderConfig, session: aiohttp.ClientSession) -> None:
        super().__init__(cfg, session)
        self._own_headers = {
            "content-type": "application/json",
            "accept-encoding": "identity",  # relayed as-is: never decompress and recompress
            **({"authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}),  # Ollama, local vLLM: none
        }

    def headers(self, call: UpstreamCall) -> Mapping[str, str]:
        return {**call.headers, **self._own_headers}
