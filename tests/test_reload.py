"""Hot reload: a changed gateway.yaml applies to new requests, a bad one is refused, requests in flight finish."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import structlog
from aiohttp.test_utils import TestServer

from gateway.app import build_app
from gateway.app_keys import RUNTIME, SERVICES
from gateway.config import load_config
from gateway.hot_reload import reload_config
from tests.conftest import UPSTREAM_KEY, flushed_usage
from tests.fakes.upstream import FakeUpstream
from tests.net import free_port

ROOT = Path(__file__).resolve().parent.parent
BODY = {"model": "claude-fast", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


PRICED = "{claude-haiku-4-5: {input: 1, output: 5, cache_write: 1.25, cache_read: 0.1}}"


def write_config(
    path: Path, upstream_url: str, *, fast_model: str, extra: str = "", port: int = 0, pricing: str = PRICED
) -> None:
    path.write_text(
        f"server: {{port: {port}, auth_failures_per_minute: 1000}}\n"
        f"providers: {{anthropic: {{base_url: '{upstream_url}', api_key: {UPSTREAM_KEY}, retries: {{attempts: 1}}}}}}\n"
        f"models: {{claude-fast: {{provider: anthropic, model: {fast_model}}}}}\n"
        f"pricing: {pricing}\n"
        f"auth: {{bcrypt_rounds: 4}}\nusage_log: {{spill_dir: '{path.parent}/spill'}}\n"
        "logging: {format: json, level: warning}\n" + extra
    )


@pytest.fixture
async def served(
    tmp_path: Path, upstream: FakeUpstream, database_url: str, pool: asyncpg.Pool
) -> AsyncIterator[tuple[TestServer, Path]]:
    path = tmp_path / "gateway.yaml"
    write_config(path, upstream.url, fast_model="claude-haiku-4-5")
    server = TestServer(build_app(load_config(path, {}), dsn=database_url))
    await server.start_server()
    yield server, path
    await server.close()


async def post(server: TestServer | str, key: str, body: Any = None) -> tuple[int, bytes]:
    url = f"{server}/v1/messages" if isinstance(server, str) else str(server.make_url("/v1/messages"))
    async with aiohttp.ClientSession() as s, s.post(url, json=body or BODY, headers={"x-api-key": key}) as r:
        return r.status, await r.read()


def reload(server: TestServer) -> bool:
    return reload_config(server.app[RUNTIME], server.app[SERVICES])


async def test_a_remapped_alias_applies_to_the_next_request(
    served: tuple[TestServer, Path], upstream: FakeUpstream, key: str
) -> None:
    server, path = served
    assert (await post(server, key))[0] == 200
    write_config(path, upstream.url, fast_model="claude-haiku-9", pricing="{}")
    assert reload(server)
    assert (await post(server, key))[0] == 200
    assert [r.json["model"] for r in upstream.requests] == ["claude-haiku-4-5", "claude-haiku-9"]


async def test_a_new_alias_appears_and_a_removed_one_goes(
    served: tuple[TestServer, Path], upstream: FakeUpstream, key: str
) -> None:
    server, path = served
    path.write_text(path.read_text().replace("models: {claude-fast:", "models: {claude-new:"))
    assert reload(server)
    assert (await post(server, key, {**BODY, "model": "claude-new"}))[0] == 200
    status, body = await post(server, key)
    assert status == 404 and b"configured aliases: claude-new" in body


async def test_a_bad_file_is_refused_and_the_old_config_stays(
    served: tuple[TestServer, Path], upstream: FakeUpstream, key: str
) -> None:
    server, path = served
    path.write_text(path.read_text().replace("provider: anthropic", "provider: antropic"))
    with structlog.testing.capture_logs() as logs:
        assert not reload(server)
    [refused] = [entry for entry in logs if entry["event"] == "config_reload_refused"]
    assert "models.claude-fast.provider: 'antropic' is not a declared provider" in refused["error"]
    assert (await post(server, key))[0] == 200
    assert upstream.requests[-1].json["model"] == "claude-haiku-4-5"


async def test_a_request_in_flight_finishes_on_the_config_it_started_with(
    served: tuple[TestServer, Path], upstream: FakeUpstream, key: str
) -> None:
    server, path = served
    upstream.enqueue(chunk_delay_s=0.1)
    async with aiohttp.ClientSession() as s:
        url = str(server.make_url("/v1/messages"))
        async with s.post(url, json={**BODY, "stream": True}, headers={"x-api-key": key}) as r:
            await r.content.readline()
            write_config(path, upstream.url, fast_model="claude-haiku-9", pricing="{}")
            assert reload(server)
            rest = await r.read()
    assert b"event: message_stop" in rest
    assert (await post(server, key))[0] == 200
    assert [r.json["model"] for r in upstream.requests] == ["claude-haiku-4-5", "claude-haiku-9"]


async def test_gateway_reload_signals_the_running_server(
    tmp_path: Path, upstream: FakeUpstream, database_url: str, key: str
) -> None:
    path, port = tmp_path / "gateway.yaml", free_port()
    extra = f"database: {{url: '{database_url}', embedded_data_dir: '{tmp_path}/pg'}}\n"
    write_config(path, upstream.url, fast_model="claude-haiku-4-5", extra=extra, port=port)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ANTHROPIC_", "DATABASE_URL"))}
    gateway = [sys.executable, "-m", "gateway", "--config", str(path)]
    proc = await asyncio.create_subprocess_exec(*gateway, "serve", cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if (await post(base, key))[0] == 200:
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
        write_config(path, upstream.url, fast_model="claude-haiku-9", extra=extra, pricing="{}", port=port)
        reloaded = await asyncio.create_subprocess_exec(*gateway, "reload", cwd=ROOT, env=env)
        assert await reloaded.wait() == 0
        for _ in range(50):
            await asyncio.sleep(0.1)
            await post(base, key)
            if upstream.requests[-1].json["model"] == "claude-haiku-9":
                break
        assert upstream.requests[-1].json["model"] == "claude-haiku-9"
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 20) == 0


async def test_sections_read_at_start_only_stay_in_force_until_the_restart(
    served: tuple[TestServer, Path], upstream: FakeUpstream, key: str
) -> None:
    """A reload that says "config_needs_restart" must not apply the section anyway: /metrics stays behind an admin
    key and the body limit stays the one the server started with."""
    server, path = served
    write_config(path, upstream.url, fast_model="claude-haiku-4-5", extra="metrics: {require_admin: false}\n")
    path.write_text(path.read_text().replace("server: {", "server: {max_body_bytes: 100, "))
    with structlog.testing.capture_logs() as logs:
        assert reload(server)
    [needs] = [entry for entry in logs if entry["event"] == "config_needs_restart"]
    assert needs["sections"] == ["server", "metrics"]
    async with aiohttp.ClientSession() as s, s.get(str(server.make_url("/metrics"))) as r:
        assert r.status == 401
    assert (await post(server, key))[0] == 200  # a body of more than 100 bytes


async def test_a_new_price_is_charged_from_the_next_request(
    served: tuple[TestServer, Path], upstream: FakeUpstream, key: str, pool: asyncpg.Pool
) -> None:
    """The ledger keeps each model's rates cached; a reload that changes the price must empty that cache."""
    server, path = served
    upstream.usage(input_tokens=1_000_000, output_tokens=0)
    assert (await post(server, key))[0] == 200
    write_config(path, upstream.url, fast_model="claude-haiku-4-5", pricing=PRICED.replace("input: 1,", "input: 3,"))
    assert reload(server)
    assert (await post(server, key))[0] == 200
    rows = await flushed_usage(server, pool)
    assert sorted(row["cost_usd"] for row in rows) == [1, 3]
