"""The provider layer's unit tests: aioresponses scripts what the upstream answers, try by try.

These tests stop at `gateway/providers/` and `gateway/retry_policy.py`: no server, no database. The end-to-end
behaviour of the same rules (what a caller sees, the usage row) is tested against the fake upstream in
tests/fakes/ (tests/test_upstream_faults.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from types import SimpleNamespace
from typing import Any
from unittest.mock import MagicMock

import aiohttp
import pytest
from aioresponses import aioresponses
from yarl import URL

from gateway.config import GatewayConfig, parse_config
from gateway.error_shape import ErrorShape
from gateway.pipeline import Exchange, Target
from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.base import HttpProvider, UpstreamCall
from gateway.providers.openai_compat import OpenAICompatProvider
from gateway.stages.route import RouteToProvider

SECRET = "sk-upstream-secret-0123456789"  # the provider's own key: long enough to be masked in what comes back
PRIMARY, BACKUP, OPENAI = "https://primary.test", "https://backup.test", "https://openai.test/v1"
MESSAGES_URL, BACKUP_URL = URL(f"{PRIMARY}/v1/messages"), URL(f"{BACKUP}/v1/messages")
CHAT_URL = URL(f"{OPENAI}/chat/completions")
KINDS: dict[str, type[HttpProvider]] = {"anthropic": AnthropicProvider, "openai": OpenAICompatProvider}


class Response(aiohttp.ClientResponse):
    """aiohttp 3.14's ClientResponse, built the way aioresponses 0.7.9 builds one.

    aiohttp 3.14 added a required `stream_writer` argument that aioresponses does not pass yet
    (pnuckowski/aioresponses#289, open): a reply built here has been sent whole, so its writer wrote 0 bytes.
    """

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


class ScriptedUpstream(aioresponses):
    """aioresponses with replies of the Response class above (unless a test scripts its own class)."""

    def add(self, *args: Any, **kwargs: Any) -> None:
        kwargs["response_class"] = kwargs.get("response_class") or Response
        super().add(*args, **kwargs)


@pytest.fixture
def upstream() -> Iterator[aioresponses]:
    """Every aiohttp request of the test answered from the script; an unscripted one is a connection error."""
    with ScriptedUpstream() as mocked:
        yield mocked


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def gateway_config(**retries: Any) -> GatewayConfig:
    """Two Anthropic deployments of one alias (primary, then backup) and an OpenAI-compatible one."""
    tries = {"attempts": 3, "backoff_s": 0.5, "max_backoff_s": 8.0, **retries}

    def provider(url: str, kind: str = "anthropic") -> dict[str, Any]:
        return {"type": kind, "base_url": url, "api_key": SECRET, "retries": tries}

    backup = [{"provider": "backup", "model": "claude-haiku-4-5"}]
    return parse_config(
        {
            "providers": {
                "primary": provider(PRIMARY),
                "backup": provider(BACKUP),
                "openai": provider(OPENAI, "openai"),
            },
            "models": {
                "claude-fast": {"provider": "primary", "model": "claude-haiku-4-5", "fallbacks": backup},
                "gpt": {"provider": "openai", "model": "gpt-4o-mini"},
            },
        },
        {},
    )


def providers(cfg: GatewayConfig, session: aiohttp.ClientSession) -> dict[str, HttpProvider]:
    return {name: KINDS[p.type](p, session) for name, p in cfg.providers.items()}


async def target(model: str, route: RouteToProvider) -> Target:
    """The target the route stage picks for `model` (its health shared across requests, as when serving)."""
    ex = Exchange(ErrorShape.ANTHROPIC, "messages", MagicMock(), b"", {"model": model}, "rid")

    async def served(_: Exchange) -> None:
        return None

    await route(ex, served)
    assert ex.target is not None
    return ex.target


def call(path: str = "/v1/messages", *, stream: bool = False, headers: dict[str, str] | None = None) -> UpstreamCall:
    return UpstreamCall(path, "", headers or {}, b'{"model":"m","max_tokens":8,"messages":[]}', stream)


def tries(mocked: aioresponses, url: URL) -> int:
    """How many requests reached `url`."""
    return len(mocked.requests.get(("POST", url), []))


class ScriptedBody:
    """A response body that arrives in `chunks` (one per read) and then ends, or fails with `then`."""

    def __init__(self, chunks: Sequence[bytes], then: BaseException | None) -> None:
        self._chunks, self._then = list(chunks), then

    def feed_data(self, data: bytes) -> None:  # aioresponses feeds its `body`; the script replaces it
        return None

    def feed_eof(self) -> None:
        return None

    def exception(self) -> BaseException | None:
        return None

    def set_exception(self, exc: BaseException, cause: BaseException | None = None) -> None:
        return None  # aiohttp's close() marks a reader it closes; the script has nothing left to read anyway

    def at_eof(self) -> bool:
        return not self._chunks and self._then is None

    async def readany(self) -> bytes:
        if self._chunks:
            return self._chunks.pop(0)
        if self._then is not None:
            raise self._then
        return b""

    async def read(self, n: int = -1) -> bytes:
        body = b"".join(self._chunks)
        self._chunks.clear()
        if self._then is not None:
            raise self._then
        return body


def scripted_body(chunks: Sequence[bytes], then: BaseException | None = None) -> type[aiohttp.ClientResponse]:
    """A ClientResponse class (aioresponses' `response_class`) whose body is `chunks`, then `then` or the end."""

    class Scripted(Response):
        @property  # type: ignore[override]  # aiohttp declares `content` a plain attribute
        def content(self) -> ScriptedBody:
            return self._scripted

        @content.setter
        def content(self, _reader: object) -> None:
            self._scripted = ScriptedBody(chunks, then)

    return Scripted
