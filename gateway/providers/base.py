"""The one small interface every provider adapter implements, and the boundary where aiohttp errors stop.

A provider moves bytes: a request body in; a status, headers and an async iterator of body chunks out.
Translation between dialects happens outside (gateway/relays/), so a provider that speaks the caller's
dialect relays a stream without re-serialising it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar, Protocol

import aiohttp

from gateway.dialect import Dialect
from gateway.errors import UpstreamTimeout, UpstreamUnreachable


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    path: str  # e.g. "/v1/messages"
    query_string: str  # passed on byte for byte ("beta=true")
    headers: Mapping[str, str]  # what the caller sent that may go upstream; the provider adds its credentials
    body: bytes
    stream: bool


class UpstreamReply(Protocol):
    status: int
    headers: Mapping[str, str]

    def chunks(self) -> AsyncIterator[bytes]: ...  # body bytes as they arrive
    async def read(self) -> bytes: ...
    def release(self) -> None: ...


class Provider(Protocol):
    """One upstream wire API. A new provider is one module here plus `type:` in gateway.yaml."""

    name: str
    dialect: ClassVar[Dialect]

    async def send(self, call: UpstreamCall) -> UpstreamReply: ...
    async def aclose(self) -> None: ...


@contextlib.contextmanager
def upstream_errors(provider: str) -> Iterator[None]:
    """Map aiohttp/asyncio failures talking to `provider` onto the gateway's errors, keeping the cause."""
    try:
        yield
    except TimeoutError as exc:  # before ClientConnectionError: some timeouts are both
        raise UpstreamTimeout(f"{provider} did not answer within the configured timeout") from exc
    except aiohttp.ClientPayloadError as exc:
        raise UpstreamUnreachable(f"{provider} broke off the response: {exc}") from exc
    except (aiohttp.ClientConnectionError, aiohttp.ClientResponseError) as exc:
        raise UpstreamUnreachable(f"{provider} connection failed: {exc}") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamUnreachable(f"{provider} request failed: {exc}") from exc


class AiohttpReply:
    """An aiohttp response behind the UpstreamReply interface; every read maps errors at the boundary."""

    def __init__(self, provider: str, response: aiohttp.ClientResponse) -> None:
        self._provider, self._response = provider, response
        self.status = response.status
        self.headers = response.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        with upstream_errors(self._provider):
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def read(self) -> bytes:
        with upstream_errors(self._provider):
            return await self._response.read()

    def release(self) -> None:
        # close(), not release(): a stream cut short must not hand a half-read connection back to the pool
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()
