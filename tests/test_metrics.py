"""GET /metrics: admin-only by default, and the figures on-call needs after real traffic."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import yaml
from aiohttp.test_utils import TestServer

from tests.conftest import GatewayFactory, flushed_usage
from tests.fakes.upstream import FakeUpstream, anthropic_error
from tests.net import free_port, wait_healthy

ROOT = Path(__file__).resolve().parent.parent

BODY = {"model": "claude-fast", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


async def get_metrics(server: TestServer, key: str | None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as s, s.get(str(server.make_url("/metrics")), headers=headers) as r:
        return r.status, await r.text()


def value(text: str, sample: str) -> float:
    """The value of one sample line, e.g. 'gateway_requests_total{alias="claude-fast",...}'."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {sample!r} in:\n" + "\n".join(x for x in text.splitlines() if "gateway_" in x))


async def post(server: TestServer, key: str, body: Any = None, path: str = "/v1/messages") -> int:
    async with (
        aiohttp.ClientSession() as s,
        s.post(str(server.make_url(path)), json=body or BODY, headers={"x-api-key": key}) as r,
    ):
        await r.read()
        return r.status


async def test_metrics_need_an_admin_key(gateway: TestServer, make_key: Any) -> None:
    user, _ = await make_key("user")
    admin, _ = await make_key("ops", admin=True)
    assert (await get_metrics(gateway, None))[0] == 401
    assert (await get_metrics(gateway, user))[0] == 403
    status, text = await get_metrics(gateway, admin)
    assert status == 200 and "gateway_requests_total" in text


async def test_metrics_after_traffic(
    make_gateway: GatewayFactory, upstream: FakeUpstream, make_key: Any, make_user: Any, pool: asyncpg.Pool
) -> None:
    server = await make_gateway(
        providers={"anthropic": {"type": "anthropic", "base_url": upstream.url, "retries": {"backoff_s": 0.01}}}
    )
    admin, _ = await make_key("ops", admin=True)
    key, _ = await make_user(limit_tokens=1)
    upstream.usage(input_tokens=100, output_tokens=5, cache_read_input_tokens=50)
    assert await post(server, admin) == 200
    assert await post(server, admin, {**BODY, "stream": True}) == 200
    upstream.enqueue(status=529, body=anthropic_error("overloaded_error", "busy"))
    assert await post(server, admin) == 200  # retried
    assert await post(server, admin, {**BODY, "model": "nope"}) == 404
    assert await post(server, key) == 200
    assert await post(server, key) == 429  # over its token limit
    await flushed_usage(server, pool)

    _, text = await get_metrics(server, admin)
    labels = 'alias="claude-fast",route="messages",status="200"'
    assert value(text, f"gateway_requests_total{{{labels}}}") == 4
    assert value(text, 'gateway_requests_total{alias="-",route="messages",status="404"}') == 1
    assert value(text, 'gateway_requests_total{alias="-",route="messages",status="429"}') == 1
    assert value(text, 'gateway_request_seconds_count{route="messages"}') == 6
    assert value(text, 'gateway_time_to_first_byte_seconds_count{route="messages"}') == 4
    assert value(text, 'gateway_tokens_total{alias="claude-fast",kind="input"}') == 400
    assert value(text, 'gateway_tokens_total{alias="claude-fast",kind="cache_read"}') == 200
    assert value(text, 'gateway_cost_usd_total{alias="claude-fast"}') > 0
    assert value(text, 'gateway_upstream_errors_total{provider="anthropic",reason="529"}') == 1
    assert value(text, 'gateway_upstream_retries_total{provider="anthropic"}') == 1
    assert value(text, 'gateway_budget_rejections_total{limit="monthly_token_limit"}') == 1
    assert value(text, "gateway_usage_queue_rows") == 0
    assert value(text, "gateway_usage_flush_seconds_count") >= 1
    assert value(text, "gateway_db_pool_connections_idle") >= 1


async def test_metrics_on_a_private_port_need_no_key(make_gateway: GatewayFactory, key: str) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = await make_gateway(metrics={"port": port})
    assert await post(server, key) == 200
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        assert r.status == 200 and "gateway_requests_total" in await r.text()


# What each kind of request may log, every line with its own request id (a retried upstream call logs its retry
# in gateway/retry_policy.py, a failing deployment its cool-down; every request its "request" line).
EXPECTED_EVENTS = {
    "fast": ({"request"}, {"request"}),
    "busy": ({"upstream_retry", "request"}, {"upstream_retry", "deployment_cooling_down", "request"}),
    "broken": ({"request"}, {"request", "deployment_cooling_down"}),
    "broke": ({"request"}, {"request"}),
}
PER_REQUEST_EVENTS = {"request", "upstream_retry", "deployment_cooling_down"}


async def test_every_response_and_log_line_carries_the_request_id(
    database_url: str, upstream: FakeUpstream, make_key: Any, make_user: Any, tmp_path: Path
) -> None:
    """The log of a real `gateway serve`, read line by line: under concurrency, each line of a request (retries,
    cool-downs, refusals, upstream errors) carries that request's id and no other request's."""
    key, _ = await make_key()
    broke, _ = await make_user("broke@example.com", limit_usd=0)  # every request refused by the budget
    port = free_port()
    retries = {"attempts": 2, "backoff_s": 0.01, "max_backoff_s": 0.02, "cooldown_after": 1, "cooldown_s": 0.05}
    config = {
        "server": {"port": port},
        "database": {"url": database_url},
        "providers": {
            "anthropic": {"type": "anthropic", "base_url": upstream.url, "api_key": "k", "retries": {"attempts": 1}},
            "busy": {"type": "anthropic", "base_url": upstream.url, "api_key": "k", "retries": retries},
        },
        "models": {
            "claude-fast": {"provider": "anthropic", "model": "claude-haiku-4-5"},
            "claude-busy": {"provider": "busy", "model": "fake-error-529"},  # 529 every time: retried, then relayed
            "claude-broken": {"provider": "anthropic", "model": "fake-error-500"},
        },
        "usage_log": {"flush_interval_ms": 50, "spill_dir": str(tmp_path / "spill")},
        "auth": {"bcrypt_rounds": 4},
        "logging": {"format": "json", "level": "info"},
    }
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ANTHROPIC_", "DATABASE_URL"))}
    cmd = [sys.executable, "-m", "gateway", "--config", str(tmp_path / "gateway.yaml"), "serve"]
    base = f"http://127.0.0.1:{port}"
    sent: dict[str, str] = {}  # request id -> kind
    with (tmp_path / "gateway.log").open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, env=env, stdout=log_file, stderr=log_file)
        try:
            async with aiohttp.ClientSession() as s:
                await wait_healthy(s, base)

                async def call(kind: str, i: int) -> None:
                    request_id = sent.setdefault(f"{kind}-{i}", kind) and f"{kind}-{i}"
                    body = {**BODY, "model": "claude-fast" if kind in ("fast", "broke") else f"claude-{kind}"}
                    headers = {"x-api-key": broke if kind == "broke" else key, "x-request-id": request_id}
                    async with s.post(f"{base}/v1/messages", json=body, headers=headers) as r:
                        await r.read()
                        assert r.headers["x-request-id"] == request_id
                        assert r.status == {"fast": 200, "busy": 529, "broken": 500, "broke": 429}[kind]

                await asyncio.gather(*(call(kind, i) for i in range(4) for kind in EXPECTED_EVENTS))
                url, headers = f"{base}/v1/messages", {"x-api-key": key}
                async with s.post(url, json=BODY, headers=headers) as r:
                    assert re.fullmatch(r"[0-9a-f]{24}", generated := r.headers["x-request-id"])
                async with s.post(url, data=b"{", headers={**headers, "Content-Type": "application/json"}) as r:
                    assert r.status == 400 and (malformed := r.headers["x-request-id"])
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 15)
    lines = [
        orjson.loads(line) for line in (tmp_path / "gateway.log").read_bytes().splitlines() if line.startswith(b"{")
    ]
    by_id: dict[str, list[str]] = {}
    for line in lines:
        if line["event"] in PER_REQUEST_EVENTS:
            assert "request_id" in line, line
        if "request_id" in line:
            by_id.setdefault(line["request_id"], []).append(line["event"])
    assert set(by_id) == {*sent, generated, malformed}  # no line carries an id that was never a request's
    for request_id, kind in sent.items():
        at_least, at_most = EXPECTED_EVENTS[kind]
        assert at_least <= set(by_id[request_id]) <= at_most, (request_id, by_id[request_id])
        assert by_id[request_id].count("request") == 1
    assert by_id[generated] == ["request"] and by_id[malformed] == ["request"]
