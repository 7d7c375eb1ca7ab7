"""The innermost step of the pipeline: call the provider and answer the caller.

One relay per (route, provider dialect) pair, in the table below. Where the caller and the provider speak the
same dialect, bytes pass through untouched but for the `model` value; otherwise the pure functions in
gateway/dialects/ translate. A new pairing is one module here plus one line in RELAYS: its request translation,
and for streams a StreamTranslator that `relay_stream` (gateway/relays/stream.py) drives.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gateway.dialect import Dialect
from gateway.errors import BadRequest
from gateway.pipeline import Exchange
from gateway.relays.anthropic_passthrough import relay_anthropic
from gateway.relays.chat_over_anthropic import relay_chat_over_anthropic
from gateway.relays.messages_over_openai import relay_messages_over_openai
from gateway.relays.openai_passthrough import relay_openai
from gateway.relays.responses_over_anthropic import relay_responses_over_anthropic

Relay = Callable[[Exchange], Awaitable[None]]

RELAYS: dict[tuple[str, Dialect], Relay] = {
    ("messages", Dialect.ANTHROPIC): relay_anthropic,
    ("count_tokens", Dialect.ANTHROPIC): relay_anthropic,
    ("chat_completions", Dialect.ANTHROPIC): relay_chat_over_anthropic,
    ("chat_completions", Dialect.OPENAI): relay_openai,
    ("responses", Dialect.ANTHROPIC): relay_responses_over_anthropic,
    ("messages", Dialect.OPENAI): relay_messages_over_openai,
    ("count_tokens", Dialect.OPENAI): relay_messages_over_openai,  # answered with an estimate, never sent up
}


async def relay(ex: Exchange) -> None:
    """Send the exchange to its target provider and write the answer to the caller."""
    assert ex.target is not None
    handler = RELAYS.get((ex.route, ex.target.provider.dialect))
    if handler is None:
        raise BadRequest(f"{ex.route} is not available for models served by {ex.target.provider.name}")
    await handler(ex)
