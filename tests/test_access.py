"""Access under attack, behind a real nginx (and HAProxy): authenticate before any work, throttle only the guesser.

Each test is one finding of issue 15 that held on the code before it: a shared-fate throttle, slow and big
bodies read before authentication, bcrypt as a CPU weapon, upstream secrets echoed, unbounded metric labels.
Clients bind distinct loopback addresses (127.0.0.2, 127.0.0.3, ...: all of 127/8 is local on Linux), so
nginx sees, and forwards in X-Forwarded-For, one address per client.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path
from typing import Any
from unittest.mock import patch

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from gateway import bcrypt_executor, throttle
from gateway.accounting.spill import SpillDir
from gateway.bcrypt_executor import BcryptExecutor
from gateway.errors import ServiceUnavailable
from gateway.instance import record as write_pid_file
from gateway.keys import generate_key, lookup_id_of
from tests.conftest import UPSTREAM_KEY, GatewayFactory, gateway_config
from tests.fakes.reverse_proxy import haproxy_in_front, nginx_in_front
from tests.fakes.upstream import FakeUpstream
from tests.net import free_port, wait_healthy

JSON = {"Content-Type": "application/json"}
BODY = {"model": "claude-fast", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
CHAT = {"model": "claude-fast", "messages": [{"role": "user", "content": "hi"}]}
BEHIND_NGINX = {"trusted_proxies": ["127.0.0.1/32"]}
ROOT = Path(__file__).resolve().parent.parent


def client(address: str) -> aiohttp.ClientSession:
    """A client whose connections come from `address` (a loopback address of its own)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0), limit=0))


async def post(
    session: aiohttp.ClientSession, url: str, key: str, *, path: str = "/v1/messages", **kwargs: Any
) -> tuple[int, bytes, Any]:
    headers = {"x-api-key": key, **kwargs.pop("headers", {})}
    async with session.post(url + path, headers=headers, json=kwargs.pop("json", BODY), **kwargs) as r:
        return r.status, await r.read(), r.headers


# --- 1. the throttle refuses the guesser, not the guesser's neighbours ------------------------------------


@pytest.mark.parametrize("proxy_in_front", [nginx_in_front, haproxy_in_front], ids=["nginx", "haproxy"])
async def test_guesses_behind_the_proxy_never_refuse_another_callers_valid_key(
    make_gateway: GatewayFactory, make_key: Any, tmp_path: Path, proxy_in_front: Any
) -> None:
    server = await make_gateway(server={"auth_failures_per_minute": 5, **BEHIND_NGINX})
    alice, _ = await make_key("alice")  # never used before: her first request needs a real check
    bob, _ = await make_key("bob")
    prefix = lookup_id_of(alice)
    async with proxy_in_front(server.port, tmp_path) as url, client("127.0.0.2") as mallory:
        # Mallory guesses at Alice's key and claims, in her own X-Forwarded-For, to be Alice's address:
        # nginx appends the real one, and only that is believed.
        spoof = {"X-Forwarded-For": "127.0.0.3"}
        statuses = [(await post(mallory, url, f"gw-{prefix}_guess{i}", headers=spoof))[0] for i in range(8)]
        assert statuses == [401] * 5 + [429] * 3
        async with client("127.0.0.3") as alice_client:  # another client behind the same proxy
            assert (await post(alice_client, url, alice))[0] == 200
        assert (await post(mallory, url, bob))[0] == 200  # Bob shares Mallory's address (a NAT): not refused
        status, _, headers = await post(mallory, url, f"gw-{prefix}_guess9")
        assert status == 429 and int(headers["Retry-After"]) > 0  # ... and Mallory is still refused


async def test_a_flood_of_made_up_keys_does_not_push_a_guesser_out_of_the_throttle(
    make_gateway: GatewayFactory, make_key: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(throttle, "MAX_SUBJECTS", 10)  # a small table, so 50 made-up keys would overflow it
    server = await make_gateway(server={"auth_failures_per_minute": 3})
    alice, _ = await make_key("alice")
    prefix, url = lookup_id_of(alice), str(server.make_url(""))
    async with client("127.0.0.2") as mallory:
        assert [(await post(mallory, url, f"gw-{prefix}_guess{i}"))[0] for i in range(4)] == [401] * 3 + [429]
        made_up = [(await post(mallory, url, f"gw-{i:016x}_x"))[0] for i in range(50)]  # no such keys
        assert made_up == [401] * 50  # refused, and leave no trace in the table
        assert (await post(mallory, url, f"gw-{prefix}_guess9"))[0] == 429


async def test_forwarded_for_is_ignored_from_a_peer_that_is_not_a_trusted_proxy(
    make_gateway: GatewayFactory, make_key: Any
) -> None:
    server = await make_gateway(server={"auth_failures_per_minute": 3})  # no trusted proxies: the peer counts
    alice, _ = await make_key("alice")
    prefix = lookup_id_of(alice)
    url = str(server.make_url(""))
    async with client("127.0.0.2") as mallory:
        for i in range(5):  # a new X-Forwarded-For on each guess would be a new client, were it believed
            await post(mallory, url, f"gw-{prefix}_guess{i}", headers={"X-Forwarded-For": f"10.0.0.{i}"})
        assert (await post(mallory, url, f"gw-{prefix}_guess9"))[0] == 429


# --- 2. and 3. no slot and no body before authentication --------------------------------------------------


async def _open_slow_bodies(port: int, count: int, key: str) -> list[asyncio.StreamWriter]:
    """`count` requests that send their headers and one body byte, then nothing."""
    writers = []
    for _ in range(count):
        _, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.4", 0))
        writer.write(
            b"POST /v1/messages HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            + f"x-api-key: {key}\r\nContent-Length: 100000\r\n\r\n{{".encode()
        )
        writers.append(writer)
    await asyncio.gather(*(w.drain() for w in writers))
    return writers


@pytest.mark.parametrize("wrong_key", ["gw-0123456789abcdef_wrong", "not-even-a-gateway-key", ""])
async def test_slow_unauthenticated_bodies_hold_no_slot(
    make_gateway: GatewayFactory, key: str, tmp_path: Path, wrong_key: str
) -> None:
    server = await make_gateway(server={"max_concurrency": 4, "body_timeout_s": 30, **BEHIND_NGINX})
    async with nginx_in_front(server.port, tmp_path) as url:
        writers = await _open_slow_bodies(int(url.rsplit(":", 1)[1]), 40, wrong_key)
        await asyncio.sleep(0.5)  # nginx has passed their headers on; before, each held a slot for 30 s
        try:
            async with client("127.0.0.5") as alice:
                statuses = [(await post(alice, url, key))[0] for _ in range(6)]
        finally:
            for w in writers:
                w.close()
    assert statuses == [200] * 6


async def test_an_unauthenticated_body_is_refused_before_it_is_sent(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    server = await make_gateway(server=BEHIND_NGINX)
    async with nginx_in_front(server.port, tmp_path) as url:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        writer.write(
            b"POST /v1/messages HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            b"x-api-key: gw-0123456789abcdef_wrong\r\nContent-Length: 31457280\r\n\r\n" + b" " * 65536
        )  # 30 MB announced, 64 KB sent: the answer must not wait for the rest
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 401")


async def _expecting(port: int, key: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A request that waits for 100 Continue before its body, as curl does for bodies over 1 KB."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = orjson.dumps(BODY)
    writer.write(
        b"POST /v1/messages HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
        + f"x-api-key: {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    )
    await writer.drain()
    return reader, writer, await asyncio.wait_for(reader.readline(), 5)


async def test_100_continue_invites_only_an_authenticated_body(gateway: TestServer, key: str) -> None:
    reader, writer, first = await _expecting(gateway.port, "gw-0123456789abcdef_wrong")
    writer.close()
    assert first.startswith(b"HTTP/1.1 401")  # the final answer instead of 100: the body is never sent

    reader, writer, first = await _expecting(gateway.port, key)
    assert first == b"HTTP/1.1 100 Continue\r\n"
    await reader.readline()
    writer.write(orjson.dumps(BODY))
    status = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert status.startswith(b"HTTP/1.1 200")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the gateway's peak RSS from /proc")
async def test_twelve_30_mb_unauthenticated_bodies_leave_the_worker_under_120_mb(
    database_url: str, tmp_path: Path
) -> None:
    upstream = FakeUpstream()
    await upstream.start()
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"server: {{port: {port}, trusted_proxies: [127.0.0.1/32]}}\n"
        f"database: {{url: '{database_url}'}}\n"
        f"providers: {{anthropic: {{base_url: '{upstream.url}', api_key: {UPSTREAM_KEY}}}}}\n"
        "models: {claude-fast: {provider: anthropic, model: claude-haiku-4-5}}\n"
        f"usage_log: {{spill_dir: '{tmp_path}/spill'}}\n"
        "logging: {format: json, level: warning}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ANTHROPIC_", "DATABASE_URL"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--config", str(config), "serve", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with nginx_in_front(port, tmp_path) as url, client("127.0.0.2") as s:
            await wait_healthy(s, url)
            big = b'{"model": "claude-fast", "x": "' + b"a" * (30 * 1024 * 1024) + b'"}'
            answers = await asyncio.gather(
                *(
                    post(s, url, "gw-0123456789abcdef_wrong", json=None, data=io.BytesIO(big), headers=JSON)
                    for _ in range(12)
                ),
                return_exceptions=True,
            )
        peak_mb = _peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        await proc.wait()
        await upstream.close()
    statuses = [a[0] if isinstance(a, tuple) else repr(a) for a in answers]
    assert set(statuses) <= {401, "ClientOSError", "ServerDisconnectedError"} and 401 in statuses, statuses
    assert peak_mb < 120, f"peak RSS {peak_mb:.0f} MB"


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):  # the high-water mark of resident memory
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


# --- 4. bcrypt: counted when it starts, on its own bounded queue, failures remembered ----------------------


async def test_concurrent_wrong_guesses_are_counted_when_they_start(
    make_gateway: GatewayFactory, make_key: Any, tmp_path: Path
) -> None:
    server = await make_gateway(server={"auth_failures_per_minute": 20, **BEHIND_NGINX})
    alice, _ = await make_key("alice")
    prefix = lookup_id_of(alice)
    async with nginx_in_front(server.port, tmp_path) as url, client("127.0.0.2") as mallory:
        answers = await asyncio.gather(*(post(mallory, url, f"gw-{prefix}_guess{i}") for i in range(200)))
    statuses = sorted(a[0] for a in answers)
    # At most 20 guesses checked; a 503 (bcrypt queue full) is no verdict and no count, so it may free a place
    assert statuses.count(401) <= 20 and statuses.count(429) >= 160 and set(statuses) <= {401, 429, 503}


async def test_a_wrong_secret_tried_again_costs_no_second_bcrypt(make_gateway: GatewayFactory, make_key: Any) -> None:
    server = await make_gateway(server={"auth_failures_per_minute": 1000})
    alice, _ = await make_key("alice")
    wrong = f"gw-{lookup_id_of(alice)}_not-her-secret"
    url = str(server.make_url(""))
    with patch.object(bcrypt_executor, "bcrypt_matches", wraps=bcrypt_executor.bcrypt_matches) as checks:
        async with client("127.0.0.2") as s:
            statuses = [(await post(s, url, wrong))[0] for _ in range(40)]
    assert statuses == [401] * 40 and checks.call_count == 1


async def test_a_first_attempt_overtakes_a_guessers_queued_checks() -> None:
    executor, hashed = BcryptExecutor(workers=1, max_queued=8), generate_key(rounds=10)
    order: list[str] = []

    async def check(name: str, priority: int) -> None:
        await executor.check(hashed.plaintext, hashed.key_hash, priority=priority)
        order.append(name)

    guesses = [asyncio.create_task(check(f"guess{i}", i)) for i in range(6)]
    await asyncio.sleep(0)
    first = asyncio.create_task(check("first attempt", 0))
    await asyncio.gather(*guesses, first)
    assert order.index("first attempt") <= 1  # behind the check already running, at most


async def test_repeat_attempts_leave_a_thread_free_for_first_attempts() -> None:
    executor, hashed = BcryptExecutor(workers=2, max_queued=8), generate_key(rounds=10)
    done: list[str] = []

    async def check(name: str, priority: int) -> None:
        await executor.check(hashed.plaintext, hashed.key_hash, priority=priority)
        done.append(name)

    guesses = [asyncio.create_task(check(f"guess{i}", i + 1)) for i in range(4)]  # a guesser's 2nd to 5th tries
    await asyncio.sleep(0)
    assert executor.queued == 3  # one thread for them, one kept free
    await check("first attempt", 0)  # starts at once on the free thread
    assert done[0] in ("first attempt", "guess0") and "first attempt" in done[:2]
    await asyncio.gather(*guesses)
    executor.shutdown()


async def test_a_full_bcrypt_queue_refuses_the_least_deserving_with_503() -> None:
    executor, hashed = BcryptExecutor(workers=1, max_queued=2), generate_key(rounds=8)
    tasks = [asyncio.create_task(executor.check(hashed.plaintext, hashed.key_hash, priority=p)) for p in (5, 5, 5, 0)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    refused = [i for i, r in enumerate(results) if isinstance(r, ServiceUnavailable)]
    assert refused == [2]  # the last guess to arrive; the first attempt (priority 0) took its place
    assert isinstance(results[2], ServiceUnavailable) and results[2].headers["Retry-After"] == "1"
    assert results[3] is True
    executor.shutdown()


# --- 5. the provider's key never reaches the caller ----------------------------------------------------------


# A 429 is relayed (status and message kept); a 401/403 is the provider refusing the gateway's own key, a 502.
@pytest.mark.parametrize(("upstream_status", "status"), [(429, 429), (401, 502)], ids=["relayed", "refused-key"])
@pytest.mark.parametrize(("path", "body"), [("/v1/messages", BODY), ("/v1/chat/completions", CHAT)])
async def test_an_upstream_that_echoes_its_key_shows_it_to_no_caller(
    gateway: TestServer,
    upstream: FakeUpstream,
    key: str,
    capsys: pytest.CaptureFixture[str],
    path: str,
    body: dict[str, Any],
    upstream_status: int,
    status: int,
) -> None:
    echo = {
        "type": "error",
        "error": {"type": "authentication_error", "message": f"invalid x-api-key: {UPSTREAM_KEY}"},
    }
    upstream.enqueue(
        status=upstream_status,
        body=echo,
        headers={
            "request-id": "req_upstream_1",
            "retry-after": "7",
            "x-echo-authorization": f"Bearer {UPSTREAM_KEY}",
            "x-ratelimit-remaining-requests": UPSTREAM_KEY,  # allowlisted name, echoed value: still masked
            "set-cookie": "session=abc",
            "anthropic-organization-id": "org-123",
        },
    )
    async with aiohttp.ClientSession() as s:
        got, raw, headers = await post(s, str(gateway.make_url("")), key, path=path, json=body)
    everything = raw.decode() + str(dict(headers)) + capsys.readouterr().out + capsys.readouterr().err
    assert got == status and "invalid x-api-key" in raw.decode()  # the provider's message, kept
    assert UPSTREAM_KEY not in everything
    if path == "/v1/messages" and status == 429:  # the passthrough relays the allowlisted headers
        assert headers["request-id"] == "req_upstream_1" and headers["retry-after"] == "7"
    assert not {"x-echo-authorization", "set-cookie", "anthropic-organization-id"} & {h.lower() for h in headers}


# --- 6. callers cannot grow the metric label set ------------------------------------------------------------


async def test_model_ids_callers_choose_are_counted_under_other(
    make_gateway: GatewayFactory, upstream: FakeUpstream, key: str
) -> None:
    server = await make_gateway(
        routing={"rules": [{"match": "*", "provider": "anthropic"}]}, metrics={"require_admin": False}
    )
    async with aiohttp.ClientSession() as s:
        url = str(server.make_url(""))
        for i in range(30):
            assert (await post(s, url, key, json={**BODY, "model": f"made-up-{i}"}))[0] == 200
        assert (await post(s, url, key))[0] == 200
        async with s.get(f"{url}/metrics") as r:
            exposition = await r.text()
    assert "made-up-" not in exposition
    assert 'alias="other"' in exposition and 'alias="claude-fast"' in exposition


# --- 7. files the gateway writes are its own ---------------------------------------------------------------


def test_spill_files_are_private(tmp_path: Path) -> None:
    previous = os.umask(0o022)  # a typical umask: a plain open() makes 0644 files
    try:
        path = SpillDir(tmp_path / "spill").append([])
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o600


def test_the_pid_file_is_private(tmp_path: Path) -> None:
    cfg = gateway_config("http://127.0.0.1:9", database={"embedded_data_dir": str(tmp_path / "pgdata")})
    (tmp_path / "gateway.pid").write_text("1\n")
    (tmp_path / "gateway.pid").chmod(0o644)  # left by an earlier version
    path = write_pid_file(cfg, 8000)
    assert path.stat().st_mode & 0o777 == 0o600 and path.read_text().startswith(f"{os.getpid()}\nport=8000\n")
