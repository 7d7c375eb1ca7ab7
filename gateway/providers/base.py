"""The one small interface every provider adapter implements, and the boundary where aiohttp errors stop.

A provider moves bytes: a request body in; a status, headers and an async iterator of body chunks out.
Translation between dialects happens outside (gateway/relays/), so a provider that speaks the caller's
dialect relays a stream without re-serialising it.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import ClassVar, Protocol

import aiohttp
import orjson
import structlog
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.config import ProviderConfig
from gateway.error_shape import ErrorShape
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
    dialect: ClassVar[ErrorShape]

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


_MAPPED = (TimeoutError, aiohttp.ClientError)  # the failures `upstream_error` maps


class UpstreamErrors:
    """A context manager mapping aiohttp/asyncio failures talking to `provider` onto the gateway's errors, keeping
    the cause. A class (one per provider for the POST): a @contextmanager's generator per use cost more."""

    __slots__ = ("_provider",)

    def __init__(self, provider: str) -> None:
        self._provider = provider

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is not None and isinstance(exc, _MAPPED) and (mapped := upstream_error(self._provider, exc)):
            raise mapped from exc


def upstream_errors(provider: str) -> UpstreamErrors:
    """Map aiohttp/asyncio failures talking to `provider` onto the gateway's errors, keeping the cause."""
    return UpstreamErrors(provider)


# The upstream's response headers a caller may see: what it needs to read the body, match a request id in the
# provider's console, and back off. Everything else (cookies, account and organisation ids, a proxy's debug
# headers, an echoed credential) stops here.
RELAYED_HEADERS = frozenset({"content-type", "request-id", "x-request-id", "retry-after", "retry-after-ms"})
RELAYED_HEADER_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")
REDACTED = b"[redacted]"
MIN_SECRET_LEN = 12  # a placeholder like "ollama" is no secret, and masking it would edit model output


def allowed_headers(headers: Mapping[str, str], secret: str) -> CIMultiDictProxy[str]:
    """The allowlisted response headers, with the provider's key (`secret`) masked in any value that holds it."""
    kept: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower in RELAYED_HEADERS or lower.startswith(RELAYED_HEADER_PREFIXES):
            kept.add(name, value.replace(secret, REDACTED.decode()) if secret and secret in value else value)
    return CIMultiDictProxy(kept)


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
    """Body chunks as they arrive (`readany`), each read mapped at the boundary; a plain iterator, no generator.

    The secret is masked even when the network splits it across reads: a chunk's last bytes that could begin
    it wait for the next read (an event stream's chunks end in a blank line, so in practice nothing waits).
    """

    def __init__(self, provider: str, content: aiohttp.StreamReader, secret: bytes) -> None:
        self._provider, self._content, self._secret = provider, content, secret
        self._held = b""  # the end of the last read, when it could be the start of the secret

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        while True:
            try:
                chunk = await self._content.readany()
            except (TimeoutError, aiohttp.ClientError) as exc:
                mapped = upstream_error(self._provider, exc)
                if mapped is None:
                    raise
                raise mapped from exc
            if not chunk:
                if held := self._held:
                    self._held = b""
                    return held
                raise StopAsyncIteration
            if not self._secret:
                return chunk
            if self._held:
                chunk, self._held = self._held + chunk, b""
            if self._secret in chunk:  # an upstream echoing its credential (memmem: no allocation)
                chunk = chunk.replace(self._secret, REDACTED)
            if begun := _secret_begun_at_end(chunk, self._secret):
                chunk, self._held = chunk[:-begun], chunk[-begun:]
            if chunk:
                return chunk


def _secret_begun_at_end(data: bytes, secret: bytes) -> int:
    """How many of `data`'s last bytes are the first bytes of `secret` (0: none), so its rest may follow."""
    start = max(0, len(data) - len(secret) + 1)
    while (start := data.find(secret[:1], start)) != -1:
        if secret.startswith(data[start:]):
            return len(data) - start
        start += 1
    return 0


class AiohttpReply:
    """An aiohttp response behind the UpstreamReply interface; every read maps errors at the boundary.

    Only allowlisted headers pass, and the provider's own key (`secret`) is masked wherever the upstream puts
    it: in a header, an error body, a stream. A proxy in front of a provider may echo the request it got.
    """

    def __init__(self, provider: str, response: aiohttp.ClientResponse, secret: str = "") -> None:
        self._provider, self._response, self._secret = provider, response, secret.encode()
        self.status = response.status
        self.headers = allowed_headers(response.headers, secret)

    def chunks(self) -> AsyncIterator[bytes]:
        return _Chunks(self._provider, self._response.content, self._secret)

    async def read(self) -> bytes:
        with UpstreamErrors(self._provider):
            body = await self._response.read()
        return body.replace(self._secret, REDACTED) if self._secret and self._secret in body else body

    def release(self) -> None:
        # close(), not release(): a stream cut short must not hand a half-read connection back to the pool
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


MAX_CACHED_URLS = 64  # distinct path + query strings whose URL a provider keeps (Claude Code sends ?beta=true)
LARGE_BODY = 1024 * 1024  # aiohttp writes a bytes body in one go; past this (images) a stream keeps the loop free


class HttpProvider:
    """What every HTTP adapter shares: the upstream URL, timeouts and one POST; subclasses add headers.

    A stream may stay silent up to `timeouts.idle`; a whole (non-stream) reply may take up to
    `timeouts.first_byte` and gets one timer for the request (sock_read would re-arm one per chunk read).
    """

    def __init__(self, cfg: ProviderConfig, session: aiohttp.ClientSession) -> None:
        self.name = cfg.name
        self._base_url, self._session = cfg.base_url, session
        self._secret = cfg.api_key if len(cfg.api_key) >= MIN_SECRET_LEN else ""  # masked in what comes back
        t = cfg.timeouts
        self._stream_timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect_s, sock_read=t.idle_s)
        self._reply_timeout = aiohttp.ClientTimeout(total=t.first_byte_s, sock_connect=t.connect_s)
        self._errors = UpstreamErrors(self.name)
        self._urls: dict[str, URL] = {}  # path and query -> URL, built once (a query comes from callers: bounded)

    def headers(self, call: UpstreamCall) -> Mapping[str, str]:
        raise NotImplementedError

    async def send(self, call: UpstreamCall) -> AiohttpReply:
        target = call.path + (f"?{call.query_string}" if call.query_string else "")
        if (url := self._urls.get(target)) is None:
            # encoded=True: the caller's query goes upstream byte for byte (yarl would re-quote %2F, %7E, ...)
            url = URL(self._base_url + target, encoded=True)
            if len(self._urls) < MAX_CACHED_URLS:
                self._urls[target] = url
        body = io.BytesIO(call.body) if len(call.body) > LARGE_BODY else call.body
        timeout = self._stream_timeout if call.stream else self._reply_timeout
        with self._errors:
            response = await self._session.post(url, data=body, headers=self.headers(call), timeout=timeout)
        if response.status in CREDENTIAL_STATUSES:
            raise await self._refused_credentials(response)
        return AiohttpReply(self.name, response, self._secret)

    async def _refused_credentials(self, response: aiohttp.ClientResponse) -> ProviderRefusedCredentials:
        """The caller's error for a 401/403 upstream: the provider refused *our* key, never the caller's."""
        try:
            with upstream_errors(self.name):
                detail = _error_message(await response.read())
            if self._secret:  # an upstream that echoes the key it refused must not show it to the caller
                detail = detail.replace(self._secret, REDACTED.decode())
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
