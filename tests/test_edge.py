"""The edge of the model routes (gateway/edge.py): one coroutine, no aiohttp middleware or signal, and the same
answers as before: the request id on every answer (streams included), errors in the caller's dialect, 405s."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest
import structlog
from aiohttp.test_utils import TestServer

from gateway import logs
from gateway.config import LoggingConfig
from gateway.logs import configure_logging, request_line

BODY = {"model": "claude-fast", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


def test_the_model_routes_application_runs_no_middleware_or_signal(gateway: TestServer) -> None:
    app = gateway.app
    assert app is not None
    assert not app.middlewares and not app.on_response_prepare  # nothing runs per request but the route's handler
    resource = next(r for r in app.router.resources() if r.canonical == "/v1/messages")
    assert {route.method for route in resource} == {"POST", "*"}


@pytest.mark.parametrize(("path", "shape"), [("/v1/messages", "anthropic"), ("/v1/chat/completions", "openai")])
async def test_a_stream_and_a_refusal_carry_the_request_id(
    gateway: TestServer, key: str, path: str, shape: str
) -> None:
    body: dict[str, Any] = {**BODY, "stream": True}
    async with aiohttp.ClientSession() as s:
        url = str(gateway.make_url(path))
        async with s.post(url, json=body, headers={"x-api-key": key, "x-request-id": "stream-7"}) as r:
            assert r.status == 200 and r.headers["x-request-id"] == "stream-7"
            assert b"data:" in await r.read()
        async with s.get(url, headers={"x-request-id": "wrong-verb"}) as r:
            assert r.status == 405 and r.headers["x-request-id"] == "wrong-verb"
            error = await r.json()
            assert (error["type"] == "error") if shape == "anthropic" else ("message" in error["error"])
        async with s.post(url, json=BODY, headers={"x-request-id": "no-key"}) as r:
            assert r.status == 401 and r.headers["x-request-id"] == "no-key"


@pytest.mark.parametrize("given", ["caf\u00e9-1", "id-\u202e1-di", "\u0440equest-1", "x" * 129])
async def test_a_request_id_that_is_not_short_printable_ascii_is_replaced(gateway: TestServer, given: str) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(gateway.make_url("/v1/messages"), json=BODY, headers={"x-request-id": given}) as r,
    ):
        assert r.status == 401
        assert re.fullmatch(r"[0-9a-f]{24}", r.headers["x-request-id"]), r.headers["x-request-id"]


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.BytesIO]:
    saved = structlog.get_config()
    out = io.BytesIO()
    stderr = io.TextIOWrapper(out)  # kept here: collected, it would close `out`
    monkeypatch.setattr("sys.stderr", stderr)
    configure_logging(LoggingConfig(format="json", level="info"))
    yield out
    structlog.configure(**saved)
    logs._json_output = None
    stderr.detach()


def test_the_request_line_is_rendered_as_the_json_chain_renders_it(json_logs: io.BytesIO) -> None:
    fields = {"request_id": "r-1", "route": "messages", "status": 200, "stream": False, "ms": 1.25}
    request_line(dict(fields))
    structlog.get_logger("gateway").info("request", **fields)  # the processor chain's own rendering
    fast, slow = (orjson.loads(line) for line in json_logs.getvalue().splitlines())
    assert fast.pop("timestamp").endswith("Z") and slow.pop("timestamp").endswith("Z")
    assert list(fast.items()) == list(slow.items())  # same fields, same order, same level


def test_the_request_line_goes_through_structlog_when_its_set_up_is_replaced(json_logs: io.BytesIO) -> None:
    with structlog.testing.capture_logs() as captured:
        request_line({"request_id": "r-2", "status": 401})
    assert captured == [{"event": "request", "request_id": "r-2", "status": 401, "log_level": "info"}]
    assert json_logs.getvalue() == b""


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/foo", 404),
        ("POST", "//v1/messages", 404),
        ("HEAD", "/V1/messages", 404),
        ("PUT", "/health", 405),
        ("POST", "/metrics", 405),
        ("OPTIONS", "/", 405),
        ("DELETE", "/openapi.json", 405),
    ],
)
async def test_a_path_or_method_the_root_does_not_serve_still_names_its_request_id(
    gateway: TestServer, method: str, path: str, status: int
) -> None:
    """Outside /v1/ aiohttp's own plain 404 and 405 (with its Allow header), as before, and the caller's id."""
    async with aiohttp.ClientSession() as s:
        url = aiohttp.client.URL(str(gateway.make_url("")).rstrip("/") + path, encoded=True)
        async with s.request(method, url, headers={"x-request-id": "lost-1"}) as r:
            assert r.status == status and r.headers.get("x-request-id") == "lost-1"
            assert (status == 405) == ("Allow" in r.headers)


@pytest.mark.parametrize(
    ("path", "shape"),
    [("/v1/messages", "anthropic"), ("/v1/chat/completions", "openai"), ("/v1/user-api-keys", "management")],
)
async def test_an_unknown_expectation_is_a_417_in_the_callers_shape_with_its_request_id(
    gateway: TestServer, path: str, shape: str
) -> None:
    """aiohttp's own 417 is plain text and names no request id: an Expect handler runs before any middleware."""
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nExpect: 42-continue\r\nContent-Length: 2\r\nx-request-id: exp-1\r\n"
    writer.write(head.encode() + b"Content-Type: application/json\r\nConnection: close\r\n\r\n")
    try:
        status_line, _, headers = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).partition(b"\r\n")
        length = next(int(h.split(b":")[1]) for h in headers.split(b"\r\n") if h.lower().startswith(b"content-length"))
        body = await asyncio.wait_for(reader.readexactly(length), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    assert status_line.startswith(b"HTTP/1.1 417") and b"x-request-id: exp-1" in headers.lower()
    error = orjson.loads(body)
    message = error["error"] if shape == "management" else error["error"]["message"]
    assert "42-continue" in message and (error.get("type") == "error") == (shape == "anthropic")
