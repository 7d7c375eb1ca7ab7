"""The provider boundary: what goes upstream, and how every aiohttp/asyncio failure becomes a gateway error.

Nothing above gateway/providers/ catches aiohttp's exceptions, so each must arrive here as a GatewayError
with its cause kept, whether it happens on the request or part-way through the body (STYLE.md, rule 6).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp.client_reqrep import RequestInfo
from aioresponses import aioresponses
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.errors import GatewayError, ProviderRefusedCredentials, UpstreamTimeout, UpstreamUnreachable
from gateway.providers.base import HttpProvider
from tests.providers.conftest import (
    CHAT_URL,
    MESSAGES_URL,
    SECRET,
    call,
    gateway_config,
    providers,
    scripted_body,
)

KIND_URLS = [
    pytest.param("primary", "/v1/messages", MESSAGES_URL, id="anthropic"),
    pytest.param("openai", "/chat/completions", CHAT_URL, id="openai"),
]


def provider(session: aiohttp.ClientSession, name: str) -> HttpProvider:
    return providers(gateway_config(), session)[name]


def _response_error() -> aiohttp.ClientResponseError:
    url = URL(str(MESSAGES_URL))
    return aiohttp.ClientResponseError(RequestInfo(url, "POST", CIMultiDictProxy(CIMultiDict()), url), ())


# What the gateway's caller gets for each way the request itself can fail (before any reply).
REQUEST_FAILURES = [
    pytest.param(TimeoutError(), UpstreamTimeout, "did not answer within", id="timeout"),
    pytest.param(aiohttp.ServerTimeoutError("read"), UpstreamTimeout, "did not answer within", id="server-timeout"),
    pytest.param(aiohttp.ConnectionTimeoutError("x"), UpstreamTimeout, "did not answer within", id="connect-timeout"),
    pytest.param(aiohttp.ClientConnectionError("refused"), UpstreamUnreachable, "connection failed", id="refused"),
    pytest.param(aiohttp.ServerDisconnectedError(), UpstreamUnreachable, "connection failed", id="disconnected"),
    pytest.param(aiohttp.ClientOSError(104, "reset by peer"), UpstreamUnreachable, "connection failed", id="reset"),
    pytest.param(aiohttp.ClientPayloadError("truncated"), UpstreamUnreachable, "broke off", id="payload"),
    pytest.param(_response_error(), UpstreamUnreachable, "connection failed", id="response-error"),
    pytest.param(aiohttp.InvalidURL("http://["), UpstreamUnreachable, "request failed", id="invalid-url"),
]


@pytest.mark.parametrize(("name", "path", "url"), KIND_URLS)
@pytest.mark.parametrize(("raised", "mapped", "message"), REQUEST_FAILURES)
async def test_a_failed_request_becomes_a_gateway_error_with_its_cause(
    upstream: aioresponses,
    session: aiohttp.ClientSession,
    name: str,
    path: str,
    url: URL,
    raised: Exception,
    mapped: type[GatewayError],
    message: str,
) -> None:
    upstream.post(url, exception=raised)
    with pytest.raises(mapped, match=message) as caught:
        await provider(session, name).send(call(path))
    assert caught.value.__cause__ is raised
    assert caught.value.message.startswith(name)  # the caller learns which provider failed


async def test_an_error_that_is_not_aiohttps_is_not_disguised(
    upstream: aioresponses, session: aiohttp.ClientSession
) -> None:
    upstream.post(MESSAGES_URL, exception=ValueError("a bug of ours"))
    with pytest.raises(ValueError, match="a bug of ours"):
        await provider(session, "primary").send(call())


# A reply whose body fails part-way: the chunks before the failure reach the relay, then the mapped error.
BODY_FAILURES = [
    pytest.param([b"event: a\ndata: {}\n\n"], None, None, id="whole"),
    pytest.param([], None, None, id="empty"),
    pytest.param([b"event: a\ndata: {}\n\n"], aiohttp.ClientPayloadError("cut"), UpstreamUnreachable, id="cut-off"),
    pytest.param([b"data: 1\n\n", b"data: 2\n\n"], TimeoutError(), UpstreamTimeout, id="idle-timeout"),
    pytest.param([b"data: 1\n\n"], aiohttp.ServerDisconnectedError(), UpstreamUnreachable, id="disconnected"),
    pytest.param([], aiohttp.ClientOSError(104, "reset"), UpstreamUnreachable, id="reset-before-any-byte"),
]


@pytest.mark.parametrize(("chunks", "then", "mapped"), BODY_FAILURES)
async def test_a_stream_that_breaks_part_way_is_mapped_after_what_it_carried(
    upstream: aioresponses,
    session: aiohttp.ClientSession,
    chunks: list[bytes],
    then: Exception | None,
    mapped: type[GatewayError] | None,
) -> None:
    upstream.post(MESSAGES_URL, response_class=scripted_body(chunks, then), content_type="text/event-stream")
    reply = await provider(session, "primary").send(call(stream=True))
    got: list[bytes] = []
    if mapped is None:
        got.extend([c async for c in reply.chunks()])
    else:
        with pytest.raises(mapped) as caught:
            async for chunk in reply.chunks():
                got.append(chunk)
        assert caught.value.__cause__ is then
    assert got == chunks


@pytest.mark.parametrize(
    ("then", "mapped"),
    [
        pytest.param(aiohttp.ClientPayloadError("cut"), UpstreamUnreachable, id="cut-off"),
        pytest.param(TimeoutError(), UpstreamTimeout, id="timeout"),
    ],
)
async def test_a_whole_reply_that_breaks_is_mapped(
    upstream: aioresponses, session: aiohttp.ClientSession, then: Exception, mapped: type[GatewayError]
) -> None:
    upstream.post(MESSAGES_URL, response_class=scripted_body([b'{"id":'], then))
    reply = await provider(session, "primary").send(call())
    with pytest.raises(mapped):
        await reply.read()


@pytest.mark.parametrize(
    ("chunks", "relayed"),
    [
        pytest.param([f"data: {SECRET}\n\n".encode()], b"data: [redacted]\n\n", id="in-one-read"),
        pytest.param(
            [b"data: " + SECRET[:9].encode(), SECRET[9:].encode() + b"\n\n"], b"data: [redacted]\n\n", id="split"
        ),
        pytest.param([b"data: " + SECRET[:9].encode()], b"data: " + SECRET[:9].encode(), id="only-its-start"),
    ],
)
async def test_an_echoed_provider_key_is_masked_in_the_stream(
    upstream: aioresponses, session: aiohttp.ClientSession, chunks: list[bytes], relayed: bytes
) -> None:
    upstream.post(MESSAGES_URL, response_class=scripted_body(chunks), content_type="text/event-stream")
    reply = await provider(session, "primary").send(call(stream=True))
    assert b"".join([c async for c in reply.chunks()]) == relayed


@pytest.mark.parametrize(("name", "path", "url"), KIND_URLS)
@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_provider_key_is_the_gateways_fault_not_the_callers(
    upstream: aioresponses, session: aiohttp.ClientSession, name: str, path: str, url: URL, status: int
) -> None:
    body = {"error": {"type": "authentication_error", "message": f"invalid x-api-key {SECRET}"}}
    upstream.post(url, status=status, payload=body)
    with pytest.raises(ProviderRefusedCredentials) as caught:
        await provider(session, name).send(call(path))
    err = caught.value
    assert err.status == 502
    assert f"HTTP {status}: invalid x-api-key [redacted]" in err.message and SECRET not in err.message
    assert "your gateway key was accepted" in err.message


async def test_a_refusal_whose_body_breaks_still_names_the_status(
    upstream: aioresponses, session: aiohttp.ClientSession
) -> None:
    upstream.post(MESSAGES_URL, status=401, response_class=scripted_body([], aiohttp.ClientPayloadError("cut")))
    with pytest.raises(ProviderRefusedCredentials, match=r"\(HTTP 401\)"):
        await provider(session, "primary").send(call())


async def test_only_allowlisted_reply_headers_pass_and_the_key_is_masked(
    upstream: aioresponses, session: aiohttp.ClientSession
) -> None:
    headers = {
        "request-id": "req_1",
        "retry-after": "3",
        "anthropic-ratelimit-requests-remaining": "9",
        "x-ratelimit-limit-tokens": "100",
        "set-cookie": "session=abc",
        "anthropic-organization-id": "org_secret",
        "x-echo": SECRET,
        "x-request-id": f"proxy-saw {SECRET}",
    }
    upstream.post(MESSAGES_URL, status=429, headers=headers, payload={"error": {"message": "slow down"}})
    reply = await provider(session, "primary").send(call())
    assert dict(reply.headers) == {
        "Content-Type": "application/json",
        "request-id": "req_1",
        "retry-after": "3",
        "anthropic-ratelimit-requests-remaining": "9",
        "x-ratelimit-limit-tokens": "100",
        "x-request-id": "proxy-saw [redacted]",
    }


@pytest.mark.parametrize(
    ("name", "path", "url", "caller", "sent"),
    [
        pytest.param(
            "primary",
            "/v1/messages",
            MESSAGES_URL,
            {"x-api-key": "gk_the_callers", "anthropic-beta": "b1"},
            {"x-api-key": SECRET, "anthropic-version": "2023-06-01", "anthropic-beta": "b1"},
            id="anthropic-default-version",
        ),
        pytest.param(
            "primary",
            "/v1/messages",
            MESSAGES_URL,
            {"Anthropic-Version": "2024-01-01"},
            {"x-api-key": SECRET, "anthropic-version": "2024-01-01"},
            id="anthropic-callers-version",
        ),
        pytest.param(
            "openai",
            "/chat/completions",
            CHAT_URL,
            {"authorization": "Bearer gk_the_callers", "openai-organization": "o"},
            {"authorization": f"Bearer {SECRET}", "openai-organization": "o"},
            id="openai",
        ),
    ],
)
async def test_the_provider_sends_its_own_key_never_the_callers(
    upstream: aioresponses,
    session: aiohttp.ClientSession,
    name: str,
    path: str,
    url: URL,
    caller: dict[str, str],
    sent: dict[str, str],
) -> None:
    upstream.post(url, payload={})
    await provider(session, name).send(call(path, headers=caller))
    [request] = upstream.requests[("POST", url)]
    headers = CIMultiDict(request.kwargs["headers"])
    assert {k: headers.get(k) for k in sent} == sent
    assert headers["accept-encoding"] == "identity" and headers["content-type"] == "application/json"
    assert "gk_the_callers" not in str(headers)


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        # a stream may stay silent up to idle_s between chunks; a whole reply gets one timer of first_byte_s
        pytest.param(True, {"total": None, "sock_connect": 10.0, "sock_read": 300.0}, id="stream"),
        pytest.param(False, {"total": 600.0, "sock_connect": 10.0, "sock_read": None}, id="whole"),
    ],
)
async def test_the_timeout_depends_on_streaming(
    upstream: aioresponses, session: aiohttp.ClientSession, stream: bool, expected: dict[str, Any]
) -> None:
    upstream.post(MESSAGES_URL, payload={})
    await provider(session, "primary").send(call(stream=stream))
    [request] = upstream.requests[("POST", MESSAGES_URL)]
    got = request.kwargs["timeout"]
    assert {k: getattr(got, k) for k in expected} == expected


async def test_the_callers_query_goes_upstream(upstream: aioresponses, session: aiohttp.ClientSession) -> None:
    upstream.post(f"{MESSAGES_URL}?beta=true", payload={})
    reply = await provider(session, "primary").send(
        call().__class__("/v1/messages", "beta=true", {}, b"{}", False)  # UpstreamCall with a query
    )
    assert reply.status == 200 and await reply.read() == b"{}"


async def test_an_unscripted_upstream_is_unreachable(upstream: aioresponses, session: aiohttp.ClientSession) -> None:
    with pytest.raises(UpstreamUnreachable, match="Connection refused"):
        await asyncio.wait_for(provider(session, "primary").send(call()), 5)
