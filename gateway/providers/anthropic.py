"""Anthropic's Messages API (or anything that speaks it) as a provider."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import aiohttp
from multidict import CIMultiDict

from gateway.config import ProviderConfig
from gateway.error_shape import ErrorShape
from gateway.providers.base import HttpProvider, UpstreamCall

DEFAULT_VERSION = "2023-06-01"


class AnthropicProvider(HttpProvider):
    """POSTs to `<base_url><path>?<query>` with the provider's own key; the caller's key never leaves."""

    dialect: ClassVar[ErrorShape] = ErrorShape.ANTHROPIC

    def __init__(self, cfg: ProviderConfig, session: aiohttp.ClientSession) -> None:
        super().__init__(cfg, session)
        self._own_headers = {
            "content-type": "application/json",
            "accept-encoding": "identity",  # relayed as-is: never decompress and recompress
            **({"x-api-key": cfg.api_key} if cfg.api_key else {}),
        }

    def headers(self, call: UpstreamCall) -> Mapping[str, str]:
        headers = CIMultiDict(call.headers)  # case-insensitive: the caller may send Anthropic-Version
        headers.setdefault("anthropic-version", DEFAULT_VERSION)
        headers.update(self._own_headers)
        return headers
