"""The one small interface every provider adapter implements, and the boundary where aiohttp errors stop.

A provider moves bytes: a request body in; a status, headers and an async iterator of body chunks out.
Translation between dialects happens outside (gateway/relays/), so a provider that speaks the caller's
dialect relays a stream without re-serialising it.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar, Protocol

import aiohttp
import orjson
import structlog
from yarl import URL

from gateway.config import ProviderConfig
from gateway.dialect import Dialect
from gateway.errors import GatewayError, ProviderRefusedCredentials, UpstreamTimeout, UpstreamUnreachable

log = structlog.get_logger("gateway.upstream")

CREDENTIAL_STATUSES = frozenset({401, 403})  # the provider's verdict on the gateway's own api_key


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


def upstream_error(provider: str, exc: BaseException) -> GatewayError | None:
    """The gateway's error for an aiohttp/asyncio failure talking to `provider`, or None if it is not one."""
    if isinstance(exc, TimeoutError):  # before ClientConnectionError: some timeouts are both
        return UpstreamTimeout(f"{provider} did not answer within the configured timeout")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamUnreachable(f"{provider} broke off the response: {exc}")
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientResponseError):
        return UpstreamUnreachable(f"{provider} connection failed: {exc}")
    if isinstance(exc, aiohttp.ClientError):
        return UpstreamUnreachable(f"{provider} request failed: {exc}")
    return None


@contextlib.contextmanager
def upstream_errors(provider: str) -> Iterator[None]:
    """Map aiohttp/asyncio failures talking to `provider` onto the gateway's errors, keeping the cause."""
    try:
        yield
    except (TimeoutError, aiohttp.ClientError) as exc:
        mapped = upstream_error(provider, exc)
        if mapped is None:
            raise
        raise mapped from exc


def _error_message(body: bytes, limit: int = 200) -> str:
    """The message inside an Anthropic or OpenAI error body (`{"error": {"message": ...}}`), else its start."""
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        error = None
    message = error.get("message") if isinstance(error, dict) else None
    text = message if isinstance(message, str) else body.decode("utf-8", "replace")
    return " ".join(text.split())[:limit]


class _Chunks:
    """Body chunks as they arrive (`readany`), each read mapped at the boundary; a plain iterator, no generator."""

    def __init__(self, provider: str, content: aiohttp.StreamReader) -> None:
        self._provider, self._content = provider, content

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._content.readany()
        except (TimeoutError, aiohttp.ClientError) as exc:
            mapped = upstream_error(self._provider, exc)
            if mapped is None:
                raise
            raise mapped from exc
        if not chunk:
            raise StopAsyncIteration
        return chunk


class AiohttpReply:
    """An aiohttp response behind the UpstreamReply interface; every read maps errors at the boundary."""

    def __init__(self, provider: str, response: aiohttp.ClientResponse) -> None:
        self._provider, self._response = provider, response
        self.status = response.status
        self.headers = response.headers

    def chunks(self) -> AsyncIterator[bytes]:
        return _Chunks(self._provider, self._response.content)

    async def read(self) -> bytes:
        with upstream_errors(self._provider):
            return await self._response.read()

    def release(self) -> None:
        # close(), not release(): a stream cut short must not hand a half-read connection back to the pool
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


LARGE_BODY = 1024 * 1024  # aiohttp writes a bytes body in one go; past this (images) a stream keeps the loop free


class HttpProvider:
    """What every HTTP adapter shares: the upstream URL, timeouts and one POST; subclasses add headers.

    A stream may stay silent up to `timeouts.idle`; a whole (non-stream) reply may take up to
    `timeouts.first_byte` and gets one timer for the request (sock_read would re-arm one per chunk read).
    """

    def __init__(self, cfg: ProviderConfig, session: aiohttp.ClientSession) -> None:
        self.name = cfg.name
        self._base_url, self._session = cfg.base_url, session
        t = cfg.timeouts
        self._stream_timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect_s, sock_read=t.idle_s)
        self._reply_timeout = aiohttp.ClientTimeout(total=t.first_byte_s, sock_connect=t.connect_s)

    def headers(self, call: UpstreamCall) -> Mapping[str, str]:
        raise NotImplementedError

    async def send(self, call: UpstreamCall) -> AiohttpReply:
        # encoded=True: the caller's query goes upstream byte for byte (yarl would re-quote %2F, %7E, ...)
        url = URL(self._base_url + call.path + (f"?{call.query_string}" if call.query_string else ""), encoded=True)
        body = io.BytesIO(call.body) if len(call.body) > LARGE_BODY else call.body
        timeout = self._stream_timeout if call.stream else self._reply_timeout
        with upstream_errors(self.name):
            response = await self._session.post(url, data=body, headers=self.headers(call), timeout=timeout)
        if response.status in CREDENTIAL_STATUSES:
            raise await self._refused_credentials(response)
        return AiohttpReply(self.name, response)

    async def _refused_credentials(self, response: aiohttp.ClientResponse) -> ProviderRefusedCredentials:
        """The caller's error for a 401/403 upstream: the provider refused *our* key, never the caller's."""
        try:
            with upstream_errors(self.name):
                detail = _error_message(await response.read())
        except GatewayError:
            detail = ""
        finally:
            response.release()
        log.error(
            "provider_refused_credentials",
            provider=self.name,
            status=response.status,
            detail=detail,
            hint=f"check providers.{self.name}.api_key in gateway.yaml and the variable it reads",
        )
        said = f": {detail}" if detail else ""
        return ProviderRefusedCredentials(
            f"the provider {self.name!r} refused the gateway's own credentials (HTTP {response.status}{said}); "
            "your gateway key was accepted: the gateway's operator must fix the provider's API key"
        )

    async def aclose(self) -> None:
        """The session is shared and closed by the app."""
