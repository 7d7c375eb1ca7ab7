"""Client faults, shutdown and hostile input: clean 4xx/503s, graceful SIGTERM, throttled guessing."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from gateway import db
from gateway.keys import generate_key
from tests.conftest import UPSTREAM_KEY, GatewayFactory, flushed_usage
from tests.fakes.upstream import FakeUpstream
from tests.net import free_port

BODY = {"model": "claude-fast", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
ROOT = Path(__file__).resolve().parent.parent


async def post(
    server: TestServer, key: str, *, headers: dict[str, str] | None = None, **kwargs: Any
) -> tuple[int, Any, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(str(server.make_url("/v1/messages")), headers={"x-api-key": key, **(headers or {})}, **kwargs) as r,
    ):
        return r.status, await r.read(), r.headers


async def test_repeated_failed_guesses_at_one_key_are_slowed_down_but_a_valid_key_is_not(
    make_gateway: GatewayFactory, make_key: Any, key: str, upstream: FakeUpstream
) -> None:
    server = await make_gateway(server={"auth_failures_per_minute": 5})
    target, _ = await make_key("target")
    guess = target.rsplit("_", 1)[0] + "_wrong"  # the key's public prefix, a made-up secret
    statuses = [(await post(server, guess, json=BODY))[0] for _ in range(7)]
    assert statuses == [401] * 5 + [429] * 2
    status, body, headers = await post(server, guess + "-other", json=BODY)
    assert status == 429 and b"too many failed authentications" in body and int(headers["Retry-After"]) > 0
    assert upstream.requests == []
    status, _, _ = await post(server, key, json=BODY)  # same address, another key: never refused for their guesses
    assert status == 200


async def test_concurrency_beyond_the_limit_gets_a_clean_503(
    make_gateway: GatewayFactory, key: str, upstream: FakeUpstream
) -> None:
    server = await make_gateway(server={"max_concurrency": 2})
    for _ in range(2):
        upstream.enqueue(delay_s=0.5)
    results = await asyncio.gather(*(post(server, key, json=BODY) for _ in range(4)))
    statuses = sorted(r[0] for r in results)
    assert statuses == [200, 200, 503, 503]
    refused = next(r for r in results if r[0] == 503)
    assert b'"overloaded_error"' in refused[1] and refused[2]["Retry-After"] == "1"
    async with aiohttp.ClientSession() as s, s.get(str(server.make_url("/health"))) as r:
        assert r.status == 200  # probes are never refused


async def test_a_body_that_trickles_in_too_slowly_gets_408(make_gateway: GatewayFactory, key: str) -> None:
    server = await make_gateway(server={"body_timeout_s": 0.3})

    async def trickle() -> Any:
        yield b'{"model": "claude-fast",'
        await asyncio.sleep(1.0)
        yield b' "max_tokens": 5, "messages": []}'

    headers = {"Content-Type": "application/json"}
    status, body, _ = await post(server, key, data=trickle(), headers=headers)
    assert status == 408 and b"did not arrive within 0.3 s" in body


async def test_oversized_headers_are_refused(gateway: TestServer, key: str) -> None:
    status, _, _ = await post(gateway, key, json=BODY, headers={"x-junk": "a" * 40_000})
    assert status in (400, 431)


async def test_sigterm_lets_a_stream_finish_flushes_usage_and_exits_0(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    upstream = FakeUpstream()
    await upstream.start()
    new = generate_key(rounds=4)
    row = await db.insert_key(pool, lookup_id=new.lookup_id, key_hash=new.key_hash, name="t", is_admin=False)
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"server: {{port: {port}, shutdown_grace_s: 10}}\n"
        f"database: {{url: '{database_url}'}}\n"
        f"providers: {{anthropic: {{base_url: '{upstream.url}', api_key: {UPSTREAM_KEY}}}}}\n"
        "models: {claude-fast: {provider: anthropic, model: claude-haiku-4-5}}\n"
        f"usage_log: {{flush_interval_ms: 60000, spill_dir: '{tmp_path}/spill'}}\n"
        "logging: {format: json, level: warning}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ANTHROPIC_", "DATABASE_URL"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--config", str(config), "serve", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as s:
            for _ in range(100):
                try:
                    async with s.get(f"{base}/health") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            upstream.enqueue(chunk_delay_s=0.3)  # about 3 s of stream
            body = {**BODY, "stream": True}
            async with s.post(f"{base}/v1/messages", json=body, headers={"x-api-key": new.plaintext}) as r:
                assert r.status == 200
                await r.content.readline()  # the stream has begun ...
                proc.send_signal(signal.SIGTERM)  # ... when the deploy stops the gateway
                rest = await r.read()
        assert b"event: message_stop" in rest  # the stream in flight finished
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        rows = await db.usage_rows(pool, key_id=row.id)
        assert len(rows) == 1 and rows[0]["status"] == 200  # flushed on the way out (interval is 60 s)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await upstream.close()


async def test_usage_is_recorded_for_a_client_that_disappears(
    gateway: TestServer, upstream: FakeUpstream, key: str, pool: asyncpg.Pool
) -> None:
    upstream.enqueue(chunk_delay_s=0.2)
    async with aiohttp.ClientSession() as s:
        r = await s.post(
            str(gateway.make_url("/v1/messages")), json={**BODY, "stream": True}, headers={"x-api-key": key}
        )
        await r.content.readline()
        r.close()
    for _ in range(40):
        rows = await flushed_usage(gateway, pool)
        if rows:
            break
        await asyncio.sleep(0.05)
    assert [r["status"] for r in rows] == [499]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param(
            "/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": []}]}]}, id="part-type"
        ),
        pytest.param("/v1/chat/completions", {"messages": [{"role": [], "content": "hi"}]}, id="role"),
        pytest.param(
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "reasoning_effort": []},
            id="effort",
        ),
        pytest.param("/v1/messages", {"model": "claude-x\u0000y", "max_tokens": 5, "messages": []}, id="nul-in-model"),
        pytest.param("/v1/messages", {"model": "c" * 300, "max_tokens": 5, "messages": []}, id="long-model"),
    ],
)
async def test_inputs_the_fuzzer_found_get_a_400_not_a_500(
    gateway: TestServer, key: str, path: str, body: dict[str, Any]
) -> None:
    payload = {"model": "claude-fast", **body}
    async with (
        aiohttp.ClientSession() as s,
        s.post(str(gateway.make_url(path)), json=payload, headers={"Authorization": f"Bearer {key}"}) as r,
    ):
        assert r.status == 400, await r.text()
