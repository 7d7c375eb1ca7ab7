"""Request logging: a 4xx line says who refused (the gateway or the upstream) and why; every line logged while
serving a request carries its request id."""

from __future__ import annotations

from typing import Any

import aiohttp
import structlog
from aiohttp.test_utils import TestServer

from tests.conftest import GatewayFactory
from tests.fakes.upstream import FakeUpstream, anthropic_error


def request_lines(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in logs if line["event"] == "request"]


async def post(server: TestServer, path: str, body: dict[str, Any], key: str) -> int:
    async with (
        aiohttp.ClientSession() as s,
        s.post(str(server.make_url(path)), json=body, headers={"Authorization": f"Bearer {key}"}) as r,
    ):
        await r.read()
        return r.status


async def test_gateway_refusal_is_logged_with_its_message(gateway: TestServer, key: str) -> None:
    body = {"model": "claude-fast", "messages": [{"role": "user", "content": "hi"}], "stop": "\n"}
    with structlog.testing.capture_logs() as logs:
        assert await post(gateway, "/v1/chat/completions", body, key) == 400
    [line] = request_lines(logs)
    assert line["status"] == 400 and line["refused_by"] == "gateway"
    assert line["reason"].startswith("stop: ")


async def test_upstream_refusal_is_logged_with_the_upstreams_message(
    gateway: TestServer, key: str, upstream: FakeUpstream
) -> None:
    body = {"model": "claude-fast", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}], "bogus": 1}
    with structlog.testing.capture_logs() as logs:
        assert await post(gateway, "/v1/messages", body, key) == 400
    [line] = request_lines(logs)
    assert line["refused_by"] == "upstream"
    assert line["reason"] == "bogus: Extra inputs are not permitted"


async def test_success_lines_carry_no_refusal(gateway: TestServer, key: str) -> None:
    body = {"model": "claude-fast", "messages": [{"role": "user", "content": "hi"}]}
    with structlog.testing.capture_logs() as logs:
        assert await post(gateway, "/v1/chat/completions", body, key) == 200
    [line] = request_lines(logs)
    assert "refused_by" not in line and "reason" not in line


async def test_retry_lines_carry_the_request_id(make_gateway: GatewayFactory, upstream: FakeUpstream, key: str) -> None:
    retries = {"attempts": 2, "backoff_s": 0.01, "max_backoff_s": 0.02}
    server = await make_gateway(
        providers={"anthropic": {"type": "anthropic", "base_url": upstream.url, "retries": retries}}
    )
    upstream.enqueue(status=529, body=anthropic_error("overloaded_error", "busy"))
    body = {"model": "claude-fast", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]}
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        assert await post(server, "/v1/messages", body, key) == 200
    [retry] = [line for line in logs if line["event"] == "upstream_retry"]
    [request] = request_lines(logs)
    assert retry["request_id"] == request["request_id"]
