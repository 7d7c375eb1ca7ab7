"""The innermost step of the pipeline: call the provider and answer the caller.

One relay per (route, provider dialect) pair, in the table below. Where the caller and the provider speak the
same dialect, bytes pass through untouched but for the `model` value; otherwise the pure functions in
gateway/dialects/ translate. A new pairing is one module here plus one line in RELAYS: its request translation,
and for streams a StreamTranslator that `relay_stream` (gateway/relays/stream.py) drives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from gateway.error_shape import ErrorShape
from gateway.errors import BadRequest
from gateway.metrics import Metrics
from gateway.pipeline import Exchange
from gateway.relays.anthropic_passthrough import relay_anthropic
from gateway.relays.chat_over_anthropic import relay_chat_over_anthropic
from gateway.relays.messages_over_openai import relay_messages_over_openai
from gateway.relays.openai_passthrough import relay_openai
from gateway.relays.responses_over_anthropic import relay_responses_over_anthropic
from gateway.relays.upstream import Upstream

log = structlog.get_logger("gateway.relay")

PairRelay = Callable[[Exchange, Upstream], Coroutine[Any, Any, None]]

RELAYS: dict[tuple[str, ErrorShape], PairRelay] = {
    ("messages", ErrorShape.ANTHROPIC): relay_anthropic,
    ("count_tokens", ErrorShape.ANTHROPIC): relay_anthropic,
    ("chat_completions", ErrorShape.ANTHROPIC): relay_chat_over_anthropic,
    ("chat_completions", ErrorShape.OPENAI): relay_openai,
    ("responses", ErrorShape.ANTHROPIC): relay_responses_over_anthropic,
    ("messages", ErrorShape.OPENAI): relay_messages_over_openai,
    ("count_tokens", ErrorShape.OPENAI): relay_messages_over_openai,  # answered with an estimate, never sent up
}


class Relay:
    """The innermost step of the chain, built once by the composition root with the metrics its upstream counts."""

    def __init__(self, metrics: Metrics) -> None:
        self._upstream = Upstream(metrics)

    async def __call__(self, ex: Exchange) -> None:
        """Send the exchange to its target provider and write the answer to the caller."""
        assert ex.target is not None
        handler = RELAYS.get((ex.route, ex.target.provider.dialect))
        if handler is None:
            raise BadRequest(f"{ex.route} is not available for models served by {ex.target.provider.name}")
        if ex.billable and ex.body.get("stream") is not True:
            await _RunsDespiteHangUp(handler(ex, self._upstream), ex)
        else:
            await handler(ex, self._upstream)


class _RunsDespiteHangUp(asyncio.Task[None]):
    """A whole-reply relay, run to its end even when the caller hangs up, so its usage row holds the real counts.

    The upstream generates (and bills) a whole reply whether or not anyone still waits for it, and sends it
    only once generated: a caller that hung up just before it came would otherwise leave a 499 row of 0 tokens.
    So this task turns down the first cancellation its waiter passes on (the caller hung up); the row keeps the
    499, and a second cancellation (the server shutting down) ends the wait and the relay.

    The waiting handler then gets its CancelledError once the relay has ended (asyncio's Task.cancel sets
    `_must_cancel` when its waiter refuses); a second cancellation goes through and ends the relay. One task
    and no `asyncio.shield`: a shield's outer future and callbacks cost about 20,000 instructions per request.
    """

    _hung_up = False

    def __init__(self, relaying: Coroutine[Any, Any, None], ex: Exchange) -> None:
        super().__init__(relaying)
        self._request_id = ex.request_id
        # Only a cancellation passed on by this waiter is a hang-up: aiohttp's client timeout (first_byte) cancels
        # this task itself, and turning that down would let the upstream hold the caller as long as it likes.
        # Task.cancel counts a request on the waiter before it passes it on, so the waiter's count tells them apart.
        self._waiter = asyncio.current_task()
        self._waiter_cancels = self._waiter.cancelling() if self._waiter is not None else 0

    def cancel(self, msg: Any | None = None) -> bool:
        waiter = self._waiter
        if self._hung_up or self.done() or waiter is None or waiter.cancelling() <= self._waiter_cancels:
            return super().cancel(msg)
        self._hung_up = True
        log.info("caller_gone_awaiting_usage", request_id=self._request_id)
        return False
