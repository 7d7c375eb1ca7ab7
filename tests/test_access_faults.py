"""The access layer attacked again (issue a15): each test is one fault found by probing the merged gateway.

An attacker on the internet, a careless operator, a new user: odd header bytes, a database that hangs
instead of going away, an upstream that splits its echoed key across reads, IPv6 callers with a /64 each.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from gateway import db
from gateway.app import build_app
from gateway.app_keys import SERVICES
from gateway.config import ConfigError, parse_config
from gateway.keys import generate_key
from gateway.logs import console_renderer, not_a_malformed_request
from gateway.providers.base import REDACTED, _Chunks
from tests.conftest import UPSTREAM_KEY, GatewayFactory, gateway_config
from tests.fakes.tcp_proxy import TcpProxy, through, upstream_of
from tests.fakes.upstream import FakeUpstream
from tests.test_config import MINIMAL

BODY = {"model": "claude-fast", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def db_proxy(database_url: str) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(upstream_of(database_url))
    await proxy.start()
    yield proxy
    await proxy.close()


async def post(server: TestServer, key: str) -> tuple[int, Any, float]:
    started = time.monotonic()
    async with (
        aiohttp.ClientSession() as s,
        s.post(str(server.make_url("/v1/messages")), json=BODY, headers={"x-api-key": key}) as r,
    ):
        return r.status, await r.json(), time.monotonic() - started


# --- the database hangs (rather than going away) during auth --------------------------------------------------


async def test_a_database_that_stops_answering_delays_a_known_key_by_the_lookup_timeout_only(
    make_gateway: GatewayFactory, db_proxy: TcpProxy, database_url: str, make_key: Any
) -> None:
    server = await make_gateway(dsn=through(database_url, db_proxy.port), auth={"cache_ttl_s": 0.1})
    known, _ = await make_key("known")
    unknown, _ = await make_key("unknown")
    assert (await post(server, known))[0] == 200  # verified once, now in the cache
    await server.app[SERVICES].ledger.flush()  # written now: the lookup finds an idle connection, sends its query

    db_proxy.freeze()
    await asyncio.sleep(0.2)  # the verdict expires: the lookup goes to a database that never answers
    (status, _, took), (unknown_status, body, unknown_took) = await asyncio.gather(
        post(server, known), post(server, unknown)
    )
    assert status == 200 and took < 10  # before: 33 s (the query's timeout, then its cancel and the pool's reset)
    assert unknown_status == 503 and "database is unreachable" in body["error"]["message"] and unknown_took < 10


# --- credentials that are not UTF-8 ---------------------------------------------------------------------------


async def raw_exchange(server: TestServer, request: bytes) -> bytes:
    """Send `request` as bytes (aiohttp's client would refuse to) and read the answer to the end."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(request)
    async with asyncio.timeout(10):
        answer = await reader.read()
    writer.close()
    return answer


@pytest.mark.parametrize("credential", [b"x-api-key: \xff\xfe", b"Authorization: Bearer gw-0123456789abcdef_\xff"])
@pytest.mark.parametrize(
    ("method", "path", "error"),
    [
        (b"POST", b"/v1/messages", b'"type":"authentication_error"'),
        (b"POST", b"/v1/chat/completions", b'"code":"invalid_api_key"'),
        (b"GET", b"/v1/models", b'"type":"authentication_error"'),
        (b"GET", b"/v1/user-api-keys", b'{"error":"invalid API key'),
        (b"GET", b"/metrics", b'"code":"invalid_api_key"'),
    ],
)
async def test_a_key_that_is_not_utf8_is_a_401_not_a_500(
    gateway: TestServer, capsys: pytest.CaptureFixture[str], credential: bytes, method: bytes, path: bytes, error: bytes
) -> None:
    body = b'{"model": "claude-fast", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}'
    request = b"%s %s HTTP/1.1\r\nHost: gw\r\n%s\r\nContent-Type: application/json\r\n" % (method, path, credential)
    answer = await raw_exchange(
        gateway, request + b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
    )
    assert answer.startswith(b"HTTP/1.1 401 ") and error in answer  # before: 500, a UnicodeEncodeError hashing it
    assert "Traceback" not in capsys.readouterr().err


# --- the provider's key, split across reads ------------------------------------------------------------------


class Reads:
    """An upstream body as the network hands it over: `readany` returns one piece at a time."""

    def __init__(self, *pieces: bytes) -> None:
        self._pieces = [piece for piece in pieces if piece]  # b"" is the end of the body

    async def readany(self) -> bytes:
        return self._pieces.pop(0) if self._pieces else b""


async def relayed(*pieces: bytes) -> list[bytes]:
    return [chunk async for chunk in _Chunks("anthropic", Reads(*pieces), UPSTREAM_KEY.encode())]  # type: ignore[arg-type]


async def test_the_provider_key_split_across_reads_is_masked_at_every_split() -> None:
    stream = b'data: {"type":"error","error":{"message":"invalid x-api-key: ' + UPSTREAM_KEY.encode() + b'"}}\n\n'
    at = stream.index(UPSTREAM_KEY.encode())
    for split in range(at, at + len(UPSTREAM_KEY) + 1):
        for second in (split, split + 1, split + 7):  # two reads, or three with a short one in the middle
            chunks = await relayed(stream[:split], stream[split:second], stream[second:])
            assert b"".join(chunks) == stream.replace(UPSTREAM_KEY.encode(), REDACTED), split  # before: the key
            assert all(chunks)  # no empty chunk reaches a relay


async def test_a_stream_without_the_key_is_relayed_read_for_read() -> None:
    pieces = (b"event: ping\ndata: {}\n\n", b'data: {"text":"sk"}\n\n', b"data: s", b"k-ant-up")  # key-like endings
    assert await relayed(*pieces) == [pieces[0], pieces[1], b"data: ", b"sk-ant-up"]  # only a possible start waits


# --- tracebacks on a terminal ---------------------------------------------------------------------------------


def test_a_traceback_on_the_terminal_shows_no_local_variable() -> None:
    def send(api_key: str) -> None:
        headers = {"x-api-key": api_key}
        raise RuntimeError(f"a bug with {len(headers)} header")

    try:
        send(UPSTREAM_KEY)
    except RuntimeError:
        line = console_renderer(colors=False)(None, "error", {"event": "unhandled_error", "exc_info": sys.exc_info()})
    assert "a bug with 1 header" in line and "send" in line  # the traceback is there
    assert UPSTREAM_KEY not in line  # before: rich printed every frame's locals, the key among them


# --- an IPv6 guesser rotating through its /64 -----------------------------------------------------------------


async def test_an_ipv6_guesser_rotating_addresses_in_its_64_is_throttled(
    make_gateway: GatewayFactory, make_key: Any
) -> None:
    server = await make_gateway(server={"trusted_proxies": ["127.0.0.1/32"], "auth_failures_per_minute": 3})
    key, row = await make_key("victim")
    url = str(server.make_url("/v1/messages"))

    async def attempt(credential: str, client: str) -> int:
        headers = {"x-api-key": credential, "X-Forwarded-For": client}  # as a trusted proxy (127.0.0.1) names it
        async with aiohttp.ClientSession() as s, s.post(url, json=BODY, headers=headers) as r:
            return r.status

    statuses = [await attempt(f"gw-{row.lookup_id}_wrong{i}", f"2001:db8:1:2::{i:x}") for i in range(1, 8)]
    assert statuses[:3] == [401] * 3 and set(statuses[3:]) == {429}  # before: 401 each, a fresh allowance each
    assert await attempt(f"gw-{row.lookup_id}_wrong", "2001:db8:1:3::1") == 401  # the next /64 is someone else
    assert await attempt(key, "2001:db8:1:3::1") == 200


# --- a guesser behind the same NAT as the key's owner ---------------------------------------------------------


async def test_a_key_verified_before_is_not_refused_for_a_neighbours_guesses_at_it(
    make_gateway: GatewayFactory, make_key: Any
) -> None:
    server = await make_gateway(server={"auth_failures_per_minute": 3}, auth={"cache_ttl_s": 0.1})
    key, row = await make_key("victim")
    assert (await post(server, key))[0] == 200  # the owner, verified once
    for i in range(3):  # someone behind the same address guesses at the owner's (public) prefix
        assert (await post(server, f"gw-{row.lookup_id}_wrong{i}"))[0] == 401
    assert (await post(server, f"gw-{row.lookup_id}_wrong"))[0] == 429
    await asyncio.sleep(0.2)  # the owner's verdict expires: checking it again needs a row read, no bcrypt
    assert (await post(server, key))[0] == 200  # before: 429, the guesser's count refused the owner


# --- unauthenticated requests on the other /v1/ routes hold no slot -----------------------------------------


@pytest.mark.parametrize("path", ["/v1/models", "/v1/user-api-keys"])
async def test_unauthenticated_requests_waiting_on_auth_hold_no_slot_on_any_route(
    make_gateway: GatewayFactory, db_proxy: TcpProxy, database_url: str, make_key: Any, path: str
) -> None:
    server = await make_gateway(dsn=through(database_url, db_proxy.port), server={"max_concurrency": 3})
    key, _ = await make_key("owner")
    assert (await post(server, key))[0] == 200  # verified: answered from memory from now on
    db_proxy.freeze()  # each made-up prefix now waits LOOKUP_TIMEOUT_S for its lookup

    async def made_up(i: int) -> int:
        async with (
            aiohttp.ClientSession() as s,
            s.get(str(server.make_url(path)), headers={"x-api-key": f"gw-{i:016x}_guess"}) as r,
        ):
            return r.status

    waiting = [asyncio.create_task(made_up(i)) for i in range(3)]
    await asyncio.sleep(0.5)
    status, body, _ = await post(server, key)
    assert status == 200, body  # before: 503, every slot held by a caller not yet authenticated
    assert await asyncio.gather(*waiting) == [503] * 3  # the database is unreachable: their keys cannot be checked


# --- a careless operator trusts every address as a proxy ------------------------------------------------------


@pytest.mark.parametrize("everyone", ["0.0.0.0/0", "::/0", "10.0.0.0/8, 0.0.0.0/0"])
def test_trusting_every_address_as_a_proxy_is_refused_at_start(everyone: str) -> None:
    raw = {**MINIMAL, "server": {"trusted_proxies": everyone}}  # before: accepted, and every client named itself
    with pytest.raises(ConfigError, match=r"server\.trusted_proxies: '.*/0' trusts every address"):
        parse_config(raw, {})


# --- a guesser who hangs up before the verdict ----------------------------------------------------------------


async def test_a_guess_whose_caller_hangs_up_is_still_counted(
    upstream: FakeUpstream, database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    cfg = gateway_config(
        upstream.url, server={"auth_failures_per_minute": 3}, usage_log={"spill_dir": str(tmp_path / "spill")}
    )
    server = TestServer(build_app(cfg, dsn=database_url), handler_cancellation=True)  # as `gateway serve` runs it
    await server.start_server()
    slow = generate_key(rounds=12)  # a real key's bcrypt: ~0.25 s, time enough to hang up in
    await db.insert_key(pool, lookup_id=slow.lookup_id, key_hash=slow.key_hash, name="victim", is_admin=False)
    url = str(server.make_url("/v1/messages"))

    async def guess(secret: str, *, hang_up: bool) -> int | None:
        timeout = aiohttp.ClientTimeout(total=0.05 if hang_up else 30)
        headers = {"x-api-key": f"gw-{slow.lookup_id}_{secret}"}
        try:
            async with aiohttp.ClientSession(timeout=timeout) as s, s.post(url, json=BODY, headers=headers) as r:
                return r.status
        except TimeoutError:
            return None  # hung up before the verdict; the bcrypt runs on (shielded) and refuses it

    try:
        for i in range(4):
            await guess(f"wrong{i}", hang_up=True)
        await asyncio.sleep(2)  # the checks finish without a caller to answer
        assert await guess("wrong-again", hang_up=False) == 429  # before: 401, a hang-up took its guess back
    finally:
        await server.close()


# --- 100 Continue invites no body the gateway will refuse -----------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "refusal"),
    [
        (b"Content-Type: application/json\r\nContent-Length: 1001\r\n", b"HTTP/1.1 413 "),
        (b"Content-Type: text/plain\r\nContent-Length: 10\r\n", b"HTTP/1.1 415 "),
    ],
    ids=["over-the-limit", "not-json"],
)
async def test_100_continue_is_not_sent_for_a_body_its_headers_already_refuse(
    make_gateway: GatewayFactory, key: str, headers: bytes, refusal: bytes
) -> None:
    server = await make_gateway(server={"max_body_bytes": 1000})
    request = b"POST /v1/messages HTTP/1.1\r\nHost: gw\r\nx-api-key: %s\r\nExpect: 100-continue\r\n" % key.encode()
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(request + headers + b"\r\n")  # and waits for the 100, sending no body
    async with asyncio.timeout(10):
        status_line = await reader.readuntil(b"\r\n")
    writer.close()
    assert status_line.startswith(refusal)  # before: "HTTP/1.1 100 Continue" first, inviting a body to refuse


async def test_regenerating_ones_own_key_invites_no_body_before_the_key_is_checked(gateway: TestServer) -> None:
    request = b"POST /v1/me/regenerate HTTP/1.1\r\nHost: gw\r\nx-api-key: gw-wrong\r\nExpect: 100-continue\r\n"
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    writer.write(request + b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n")  # waits for the 100
    async with asyncio.timeout(10):
        status_line = await reader.readuntil(b"\r\n")
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 401 ")  # before: "HTTP/1.1 100 Continue" to a caller with no valid key


# --- a body nested too deep -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens", "/v1/chat/completions"])
async def test_a_body_nested_too_deep_is_a_400_not_a_500(gateway: TestServer, key: str, path: str) -> None:
    deep = b'{"model": "claude-fast", "max_tokens": 5, "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    headers = {"x-api-key": key, "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s, s.post(str(gateway.make_url(path)), data=deep, headers=headers) as r:
        assert r.status == 400, await r.text()  # before: 500 on the Anthropic routes (msgspec's RecursionError)
        assert "not valid JSON" in str(await r.json())


@pytest.mark.parametrize(
    ("path", "encoding"),
    [("/v1/messages", "gzip"), ("/v1/chat/completions", "gzip"), ("/v1/user-api-keys", "gzip")],
)
async def test_a_body_that_does_not_decode_as_its_content_encoding_is_a_400_not_a_500(
    gateway: TestServer, make_key: Any, path: str, encoding: str
) -> None:
    admin, _ = await make_key("root", admin=True)
    headers = {"Authorization": f"Bearer {admin}", "Content-Type": "application/json", "Content-Encoding": encoding}
    async with aiohttp.ClientSession() as s, s.post(str(gateway.make_url(path)), data=b"{}", headers=headers) as r:
        assert r.status == 400, await r.text()  # before: 500, "internal gateway error", and a traceback logged
        error = (await r.json())["error"]
        assert f"Content-Encoding: {encoding}" in (error if isinstance(error, str) else error["message"])


# --- the management API while the database is away ------------------------------------------------------------


async def test_the_management_api_answers_503_while_the_database_is_away(
    make_gateway: GatewayFactory, db_proxy: TcpProxy, database_url: str, make_key: Any
) -> None:
    server = await make_gateway(dsn=through(database_url, db_proxy.port))
    admin, _ = await make_key("root", admin=True)
    url, headers = str(server.make_url("/v1/user-api-keys")), {"x-api-key": admin}
    user = {"email": "a@example.com", "firstname": "A", "lastname": "B", "claudecodeUserKey": "sk-ant-oat01-abcdef"}
    async with aiohttp.ClientSession() as s:
        async with s.get(url, headers=headers) as r:
            assert r.status == 200  # the admin key verified, now answered from memory
        await db_proxy.cut()
        for method, path, body in [("GET", "", None), ("GET", "/usage", None), ("POST", "", user)]:
            async with s.request(method, url + path, headers=headers, json=body) as r:
                assert r.status == 503, await r.text()  # before: 500, an OSError from the pool
                assert await r.json() == {"error": "the gateway's database is unreachable; retry shortly"}
                assert r.headers["Retry-After"] == "5"


# --- a flood of /health (no key needed) ---------------------------------------------------------------------


async def test_a_flood_of_health_checks_runs_one_ping_at_a_time_and_answers_in_bounded_time(
    make_gateway: GatewayFactory, db_proxy: TcpProxy, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await make_gateway(dsn=through(database_url, db_proxy.port))
    pings, ping = [], db.ping

    async def counted(pool: asyncpg.Pool) -> bool:
        pings.append(pool)
        return await ping(pool)

    monkeypatch.setattr(db, "ping", counted)
    await server.app[SERVICES].ledger.flush()
    db_proxy.freeze()  # each ping now waits for its timeout: the flood arrives while the first is in flight

    async def check() -> int:
        async with aiohttp.ClientSession() as s, s.get(str(server.make_url("/health"))) as r:
            return r.status

    started = time.monotonic()
    statuses = await asyncio.gather(*(check() for _ in range(30)))
    assert statuses == [503] * 30 and time.monotonic() - started < 10  # each within the ping's own timeout
    assert len(pings) <= 2  # before: 30, each holding or waiting for one of the pool's connections


# --- the management API sends 100 Continue only to an admin ---------------------------------------------------


@pytest.mark.parametrize(("who", "status_line"), [("nobody", b"HTTP/1.1 401 "), ("user", b"HTTP/1.1 403 ")])
async def test_the_management_api_invites_no_body_before_the_caller_proves_to_be_an_admin(
    gateway: TestServer, key: str, who: str, status_line: bytes
) -> None:
    credential = key if who == "user" else "gw-0123456789abcdef_guess"
    request = b"POST /v1/user-api-keys HTTP/1.1\r\nHost: gw\r\nx-api-key: %s\r\nExpect: 100-continue\r\n" % (
        credential.encode()
    )
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    writer.write(request + b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n")  # waits for 100
    async with asyncio.timeout(10):
        first = await reader.readuntil(b"\r\n")
    writer.close()
    assert first.startswith(status_line)  # before: "HTTP/1.1 100 Continue", a body invited to be refused


async def test_the_management_api_sends_100_continue_to_an_admin(gateway: TestServer, make_key: Any) -> None:
    admin, _ = await make_key("root", admin=True)
    body = b'{"email": "c@example.com", "firstname": "C", "lastname": "D", "claudecodeUserKey": "sk-ant-oat01-xyz"}'
    head = b"POST /v1/user-api-keys HTTP/1.1\r\nHost: gw\r\nx-api-key: %s\r\nExpect: 100-continue\r\n" % admin.encode()
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    writer.write(head + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
    async with asyncio.timeout(10):
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 201 ")
    writer.close()


# --- a malformed request is not logged with its header lines --------------------------------------------------


@pytest.mark.parametrize(
    "bad_header",
    [
        b"x-api-key: gw-0123456789abcdef_SECRET\x00\r\n",
        b"x-api-key: gw-0123456789abcdef_SECRET" + b"a" * 9000 + b"\r\n",
    ],
    ids=["control-character", "line-too-long"],
)
async def test_a_malformed_request_leaves_no_log_line_quoting_its_key(
    gateway: TestServer, caplog: pytest.LogCaptureFixture, bad_header: bytes
) -> None:
    server_log = logging.getLogger("aiohttp.server")
    server_log.addFilter(not_a_malformed_request)  # as configure_logging installs it
    try:
        answer = await raw_exchange(gateway, b"POST /v1/messages HTTP/1.1\r\nHost: gw\r\n" + bad_header + b"\r\n")
    finally:
        server_log.removeFilter(not_a_malformed_request)
    assert answer.startswith(b"HTTP/1.0 400 ")  # aiohttp's own answer to the client
    logged = [(r.getMessage(), str(r.exc_info[1]) if r.exc_info else "") for r in caplog.records]
    assert "SECRET" not in str(logged)  # before: an ERROR with a traceback quoting the header line, key and all
