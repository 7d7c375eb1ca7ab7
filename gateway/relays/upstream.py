"""The one place every relay reaches upstream: retries and fallbacks (gateway/retry_policy.py), counted in the
metrics the composition root gives it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from gateway.dialects.prompt_cache import with_cache_breakpoints
from gateway.metrics import Metrics
from gateway.pipeline import Exchange
from gateway.providers.base import UpstreamCall, UpstreamReply
from gateway.retry_policy import Target, send_with_fallbacks


class Upstream:
    """Sends a relay's request to its target's deployments (the primary, then its fallbacks)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def send(self, ex: Exchange, build: Callable[[Target], UpstreamCall]) -> UpstreamReply:
        """The first good reply (or the last error reply) of the exchange's deployments.

        `build(target)` makes the call for one deployment (its model id goes in the body), so a fallback to
        another deployment sends its own model. `ex.target` ends as the deployment that answered.
        """
        assert ex.target is not None
        ex.target, reply = await send_with_fallbacks(ex.target, build, self._metrics)
        return reply

    async def send_anthropic(self, ex: Exchange, request: dict[str, Any]) -> UpstreamReply:
        """POST a translated Messages request (cache breakpoints added when the alias opts in), fallbacks included."""
        assert ex.target is not None
        if ex.target.alias.auto_cache:  # OpenAI clients send no cache_control; the alias asks the gateway to add it
            request = with_cache_breakpoints(request)
        stream = request.get("stream") is True

        def build(target: Target) -> UpstreamCall:  # a fallback deployment gets its own model id
            body = orjson.dumps({**request, "model": target.provider_model})
            return UpstreamCall(path="/v1/messages", query_string="", headers={}, body=body, stream=stream)

        return await self.send(ex, build)
