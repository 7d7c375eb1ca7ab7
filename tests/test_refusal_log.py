"""The per-request log line of a 4xx says who refused (the gateway or the upstream) and why."""

from __future__ import annotations

from typing import Any

import aiohttp
import structlog
from aiohttp.test_utils import TestServer

from tests.fakes.upstream import FakeUpstream


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
