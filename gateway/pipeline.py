"""The request path's types: the Exchange a request's stages fill, the Stage protocol, and `chain`.

Types and `chain` only: which stages there are, and their order, is written down once, in the composition root
(`gateway/composition.py`, `build_request_path`); this module imports no stage, relay or service.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import structlog
from aiohttp import web

from gateway.error_shape import ErrorShape
from gateway.errors import BadRequest
from gateway.keys import Principal
from gateway.retry_policy import Target

__all__ = ["CLIENT_CLOSED", "Exchange", "Next", "Stage", "Target", "Usage", "chain", "usage_count"]

log = structlog.get_logger("gateway.usage")


# Upstream usage counts are untrusted: one request cannot consume more than this many tokens of one kind (the
# largest context windows are 1M tokens), and a count past it would make a usage row the database refuses.
MAX_COUNT = 10_000_000


def usage_count(value: Any, name: str) -> int | None:
    """An upstream count as a non-negative int no larger than MAX_COUNT; None when absent.

    A negative, absurd or non-numeric count is clamped (never credited to the caller) and logged.
    """
    if value is None:
        return None
    if type(value) is int and 0 <= value <= MAX_COUNT:  # every count a sane upstream sends
        return value
    if isinstance(value, float) and math.isfinite(value):
        count = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        count = value
    else:
        count = -1  # not a number at all
    clamped = min(max(count, 0), MAX_COUNT)
    if clamped != value:
        log.warning("usage_count_clamped", field=name, reported=repr(value)[:40], recorded=clamped)
    return clamped


@dataclass(slots=True)
class Usage:
    """Tokens one request consumed, as the provider reported them (or, where it could not, as estimated).

    `cache_write_tokens` is every cache write; `cache_write_5m_tokens` / `cache_write_1h_tokens` split it by
    lifetime when the provider says (`usage.cache_creation`), as they are priced differently.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    web_search_requests: int = 0
    estimated: bool = False  # output counted from the relayed text: the stream ended before its final usage

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens

    def as_anthropic(self) -> dict[str, int]:
        """The counts as an Anthropic `usage` object: what a translator reports to the caller, never the raw,
        untrusted values (a string count would make its arithmetic a 500)."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read_tokens,
            "cache_creation_input_tokens": self.cache_write_tokens,
        }

    def update_from_anthropic(self, usage: Mapping[str, Any]) -> None:
        """Take the counts an Anthropic `usage` object carries (message_start, message_delta or a reply).

        The counts are cumulative (server tools only add input as a turn goes on), so a later event never lowers
        one: a message_delta with `input_tokens: 0` after message_start's 5,000 must not bill no input.
        """
        self.input_tokens = _largest(self.input_tokens, usage, "input_tokens")
        self.output_tokens = _largest(self.output_tokens, usage, "output_tokens")
        self.cache_read_tokens = _largest(self.cache_read_tokens, usage, "cache_read_input_tokens")
        self.cache_write_tokens = _largest(self.cache_write_tokens, usage, "cache_creation_input_tokens")
        if isinstance(creation := usage.get("cache_creation"), Mapping):
            self.cache_write_5m_tokens = _largest(self.cache_write_5m_tokens, creation, "ephemeral_5m_input_tokens")
            self.cache_write_1h_tokens = _largest(self.cache_write_1h_tokens, creation, "ephemeral_1h_input_tokens")
        # Every cache write is never less than its parts, whichever event carried which (a later message_delta
        # with a lower cache_creation_input_tokens left the 1-hour writes priced below their 5-minute price).
        parts = min(self.cache_write_5m_tokens + self.cache_write_1h_tokens, MAX_COUNT)
        self.cache_write_tokens = max(self.cache_write_tokens, parts)
        if isinstance(tools := usage.get("server_tool_use"), Mapping):
            self.web_search_requests = _largest(self.web_search_requests, tools, "web_search_requests")


def _largest(current: int, counts: Mapping[str, Any], name: str) -> int:
    """`current`, or the count `counts[name]` reports when larger (absent or clamped counts never lower it)."""
    value = counts.get(name)
    if type(value) is int and 0 <= value <= MAX_COUNT:  # every count a sane upstream sends: no call for it
        return value if value > current else current
    reported = usage_count(value, name)
    return current if reported is None else max(current, reported)


CLIENT_CLOSED = 499  # nginx's code for "the client went away before the answer was complete"


@dataclass(slots=True)
class Exchange:
    """One request's state; each stage fills its own field."""

    dialect: ErrorShape  # the wire format the caller speaks; fixed by the route
    route: str  # messages | count_tokens | chat_completions
    request: web.Request  # read by the auth stage (headers) and the relay (to answer); no stage writes to it
    raw_body: bytes
    body: dict[str, Any]  # parsed once at the edge; stages read it, never re-parse it
    request_id: str
    billable: bool = True  # count_tokens reaches the provider but leaves no usage row
    principal: Principal | None = None  # set by the edge from gateway/authentication.py, before the body is read
    target: Target | None = None  # set by RouteToProvider
    usage: Usage = field(default_factory=Usage)
    status: int = 0  # the HTTP status the caller got; set by the relay
    streamed: bool = False
    response: web.StreamResponse | None = None  # what the handler returns; set by the relay
    started_ns: int = field(default_factory=time.perf_counter_ns)
    first_byte_ns: int | None = None

    sketched: bool = False  # body holds only model and stream, read from raw_body without parsing it all
    # The edge's sketch proved raw_body holds one top-level "model"; stays true when the body is parsed later
    # (the DLP stage does), so the relay can still patch the model in place instead of re-serialising.
    single_model: bool = False

    def status_when_cancelled(self) -> int:
        """The status of a request whose caller left: a stream's relay has already judged how far it got (200
        after the final event, an in-stream error's status, or 499); anything else is a 499."""
        return self.status if self.streamed and self.status else CLIENT_CLOSED

    def full_body(self) -> dict[str, Any]:
        """The whole parsed body (parsed now if only a sketch was read); 400 when it is not a JSON object."""
        if self.sketched:
            try:
                body = orjson.loads(self.raw_body)
            except orjson.JSONDecodeError as exc:
                raise BadRequest(f"request body is not valid JSON: {exc}") from None
            if not isinstance(body, dict):
                raise BadRequest(f"request body must be a JSON object, got {type(body).__name__}")
            self.body, self.sketched, self.single_model = body, False, True
        return self.body

    @property
    def alias_name(self) -> str:
        model = self.body.get("model")
        return model if isinstance(model, str) else ""


Next = Callable[[Exchange], Awaitable[None]]


class Stage(Protocol):
    async def __call__(self, ex: Exchange, call_next: Next) -> None: ...


def chain(stages: Sequence[Stage], relay: Next) -> Next:
    """Wrap `relay` in the stages once, at startup; no request ever rebuilds the chain."""
    step = relay
    for stage in reversed(stages):
        step = _bound(stage, step)
    return step


def _bound(stage: Stage, call_next: Next) -> Next:
    """`stage` with its next step bound: a closure over the bound `__call__`, as `functools.partial(stage,
    call_next=...)` was, at 1,300 instructions less per stage and request (no keyword dict, no `__call__` lookup)."""
    call = stage.__call__

    def step(ex: Exchange) -> Awaitable[None]:
        return call(ex, call_next)

    return step
