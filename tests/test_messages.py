"""POST /v1/messages through the whole pipeline, against the fake upstream and a real PostgreSQL."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import UPSTREAM_KEY, GatewayFactory, flushed_usage
from tests.fakes.upstream import FakeUpstream, anthropic_error

BODY = {"model": "claude-fast", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


def url(server: TestServer, path: str) -> str:
    return str(server.make_url(path))


async def post(server: TestServer, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession() as s, s.post(url(server, path), json=body, headers=headers) as r:
        raw = await r.read()
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = raw
        return r.status, parsed, r.headers


async def test_non_stream_maps_alias_swaps_credentials_and_logs_usage(
    gateway: TestServer, upstream: FakeUpstream, key: str, pool: asyncpg.Pool
) -> None:
    upstream.usage(input_tokens=100, output_tokens=20, cache_read_input_tokens=1000, cache_creation_input_tokens=10)
    status, body, headers = await post(
        gateway,
        "/v1/messages?beta=true",
        BODY,
        {"x-api-key": key, "anthropic-version": "2023-06-01", "anthropic-beta": "a-1,b-2", "x-app": "cli"},
    )
    assert status == 200, body
    assert body["type"] == "message"
    assert headers["x-request-id"]
    sent = upstream.requests[-1]
    assert sent.path == "/v1/messages" and sent.query_string == "beta=true"
    assert sent.json["model"] == "claude-haiku-4-5"
    assert sent.headers["x-api-key"] == UPSTREAM_KEY
    assert "authorization" not in {k.lower() for k in sent.headers}
    assert sent.headers["anthropic-beta"] == "a-1,b-2" and sent.headers["x-app"] == "cli"

    [row] = await flushed_usage(gateway, pool)
    assert (row["alias"], row["provider_model"], row["status"], row["streamed"]) == (
        "claude-fast",
        "claude-haiku-4-5",
        200,
        False,
    )
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"], row["cache_write_tokens"]) == (
        100,
        20,
        1000,
        10,
    )
    # 100*1 + 20*5 + 1000*0.10 + 10*1.25 per million
    assert row["cost_usd"] == Decimal("0.00031250")


async def test_body_bytes_reach_upstream_unchanged_but_for_the_model(
    gateway: TestServer, upstream: FakeUpstream, key: str
) -> None:
    upstream.validate = False  # "big" is no Messages API field (the API would refuse it); this test is about bytes
    raw = (
        b'{"model": "claude-fast", "max_tokens": 64, "temperature": 1.0, "big": 12345678901234567890,'
        b' "messages": [{"role": "user", "content": "caf\\u00e9 \\"model\\": x"}], "metadata": {"model": "keep"}}'
    )
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            url(gateway, "/v1/messages"), data=raw, headers={"x-api-key": key, "content-type": "application/json"}
        ) as r,
    ):
        assert r.status == 200
    assert upstream.requests[-1].raw_body == raw.replace(b'"claude-fast"', b'"claude-haiku-4-5"')  # the value only


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"claude-fast","max_tokens":16,"messages":[{"role":"user","content":"hi"}],"model":"claude-opus-4-1"}',
        b'{"max_tokens":16,"model":"claude-opus-4-1","messages":[{"role":"user","content":"hi"}],"model":"claude-fast"}',
    ],
    ids=["routed-by-the-first", "routed-by-the-last"],
)
async def test_a_duplicated_model_key_cannot_run_another_model(
    gateway: TestServer, upstream: FakeUpstream, key: str, raw: bytes
) -> None:
    """Routed and billed as claude-fast, the second "model" once reached the upstream as sent: a parser keeping the
    last key would have run (and the caller not paid for) claude-opus-4-1. A body that opens with its model is
    refused at the edge (400); any other reaches the upstream with the routed model alone."""
    headers = {"x-api-key": key, "content-type": "application/json"}
    async with aiohttp.ClientSession() as s, s.post(url(gateway, "/v1/messages"), data=raw, headers=headers) as r:
        status = r.status
    if raw.startswith(b'{"model"'):
        assert status == 400 and upstream.requests == []
        return
    assert status == 200
    sent = upstream.requests[-1].raw_body
    assert b"claude-opus-4-1" not in sent and orjson.loads(sent)["model"] == "claude-haiku-4-5"


async def test_stream_is_relayed_and_usage_read_from_events(
    gateway: TestServer, upstream: FakeUpstream, key: str, pool: asyncpg.Pool
) -> None:
    upstream.usage(input_tokens=42)
    body = {**BODY, "stream": True}
    async with (
        aiohttp.ClientSession() as s,
        s.post(url(gateway, "/v1/messages"), json=body, headers={"Authorization": f"Bearer {key}"}) as r,
    ):
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        text = (await r.read()).decode()
    events = [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("event: ")]
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert "ping" in events and events.count("content_block_delta") == 5
    [row] = await flushed_usage(gateway, pool)
    assert row["streamed"] is True and row["status"] == 200
    assert row["input_tokens"] == 42 and row["output_tokens"] == 5
    assert row["ttfb_ms"] is not None and row["ttfb_ms"] <= row["latency_ms"]


async def test_count_tokens_is_proxied_and_not_billed(
    gateway: TestServer, upstream: FakeUpstream, key: str, pool: asyncpg.Pool
) -> None:
    status, body, _ = await post(
        gateway,
        "/v1/messages/count_tokens",
        {"model": "claude-fast", "messages": [{"role": "user", "content": "hi"}]},
        {"x-api-key": key},
    )
    assert status == 200 and body["input_tokens"] > 0
    assert upstream.requests[-1].path == "/v1/messages/count_tokens"
    assert upstream.requests[-1].json["model"] == "claude-haiku-4-5"
    assert await flushed_usage(gateway, pool) == []


async def test_upstream_error_is_relayed_with_status_and_logged(
    gateway: TestServer, upstream: FakeUpstream, key: str, pool: asyncpg.Pool
) -> None:
    upstream.enqueue(status=529, body=anthropic_error("overloaded_error", "Overloaded"))
    status, body, _ = await post(gateway, "/v1/messages", BODY, {"x-api-key": key})
    assert status == 529
    assert body == anthropic_error("overloaded_error", "Overloaded")
    [row] = await flushed_usage(gateway, pool)
    assert row["status"] == 529 and row["output_tokens"] == 0


async def test_unreachable_upstream_is_502_in_anthropic_shape_with_usage_row(
    make_gateway: GatewayFactory, key: str, pool: asyncpg.Pool
) -> None:
    server = await make_gateway(
        providers={"anthropic": {"type": "anthropic", "base_url": "http://127.0.0.1:9", "retries": {"attempts": 1}}}
    )
    status, body, _ = await post(server, "/v1/messages", BODY, {"x-api-key": key})
    assert status == 502
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    [row] = await flushed_usage(server, pool)
    assert row["status"] == 502


async def test_stream_broken_midway_ends_with_error_event_and_is_billed(
    gateway: TestServer, upstream: FakeUpstream, key: str, pool: asyncpg.Pool
) -> None:
    upstream.usage(input_tokens=7)
    upstream.enqueue(reset_after_events=4)
    async with (
        aiohttp.ClientSession() as s,
        s.post(url(gateway, "/v1/messages"), json={**BODY, "stream": True}, headers={"x-api-key": key}) as r,
    ):
        text = (await r.read()).decode()
    assert "event: message_start" in text and text.rstrip().splitlines()[-2] == "event: error"
    [row] = await flushed_usage(gateway, pool)
    assert row["status"] == 502 and row["input_tokens"] == 7


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        pytest.param({}, "missing API key", id="no-key"),
        pytest.param({"x-api-key": "gw-0123456789abcdef_nope"}, "invalid or revoked", id="unknown-gateway-key"),
        pytest.param({"Authorization": "Bearer something-else"}, "neither a gateway key", id="foreign-token"),
        pytest.param({"Authorization": "Basic abc"}, "missing API key", id="wrong-scheme"),
    ],
)
async def test_bad_credentials_get_401_in_anthropic_shape(
    gateway: TestServer, upstream: FakeUpstream, headers: dict[str, str], message: str
) -> None:
    status, body, _ = await post(gateway, "/v1/messages", BODY, headers)
    assert status == 401
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    assert message in body["error"]["message"]
    assert upstream.requests == []


async def test_revoked_key_is_refused_once_the_cache_expires(
    make_gateway: GatewayFactory, make_key: Any, pool: asyncpg.Pool
) -> None:
    server = await make_gateway(auth={"cache_ttl_s": 0.2})
    plaintext, row = await make_key()
    assert (await post(server, "/v1/messages", BODY, {"x-api-key": plaintext}))[0] == 200
    await pool.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1", row.id)
    import asyncio

    await asyncio.sleep(0.3)
    assert (await post(server, "/v1/messages", BODY, {"x-api-key": plaintext}))[0] == 401


async def test_wrong_secret_for_a_real_lookup_id_is_refused(gateway: TestServer, key: str) -> None:
    forged = key[: key.index("_") + 1] + "x" * 43
    assert (await post(gateway, "/v1/messages", BODY, {"x-api-key": forged}))[0] == 401


@pytest.mark.parametrize(
    ("data", "content_type", "status", "fragment"),
    [
        pytest.param(b"{not json", "application/json", 400, "not valid JSON", id="malformed"),
        pytest.param(b"[1, 2]", "application/json", 400, "must be a JSON object", id="array"),
        pytest.param(b"", "application/json", 400, "empty", id="empty"),
        pytest.param(b'{"max_tokens": 5}', "application/json", 400, "'model' is required", id="no-model"),
        pytest.param(b'{"model": 5}', "application/json", 400, "'model' is required", id="model-not-string"),
        pytest.param(b'{"model": "gpt-4"}', "application/json", 404, "configured aliases: claude-fast", id="unknown"),
        pytest.param(b"model=x", "application/x-www-form-urlencoded", 415, "application/json", id="form"),
    ],
)
async def test_bad_input_gets_a_clear_4xx_in_anthropic_shape(
    gateway: TestServer, upstream: FakeUpstream, key: str, data: bytes, content_type: str, status: int, fragment: str
) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(url(gateway, "/v1/messages"), data=data, headers={"x-api-key": key, "Content-Type": content_type}) as r,
    ):
        assert r.status == status
        body = await r.json()
    assert body["type"] == "error" and fragment in body["error"]["message"]
    assert upstream.requests == []


async def test_body_over_the_limit_is_413(make_gateway: GatewayFactory, key: str, upstream: FakeUpstream) -> None:
    server = await make_gateway(server={"max_body_bytes": 1000})
    big = {**BODY, "messages": [{"role": "user", "content": "x" * 2000}]}
    status, body, _ = await post(server, "/v1/messages", big, {"x-api-key": key})
    assert status == 413 and body["error"]["type"] == "request_too_large"
    assert upstream.requests == []


async def test_probes(gateway: TestServer) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.head(url(gateway, "/")) as r:
            assert r.status == 200
        async with s.get(url(gateway, "/")) as r:
            assert r.status == 200
        async with s.get(url(gateway, "/health")) as r:
            assert r.status == 200 and (await r.json())["database"] == "up"
        async with s.get(url(gateway, "/v1/nothing")) as r:
            assert r.status == 404 and "error" in await r.json()
        async with s.get(url(gateway, "/v1/messages")) as r:
            assert r.status == 405 and (await r.json())["type"] == "error"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            b'{"model": "claude-fast", "stream": true}', {"model": "claude-fast", "stream": True}, id="stream"
        ),
        pytest.param(
            b'{"model":"a\\"b","max_tokens":1}', {"model": 'a"b', "stream": False, "max_tokens": 1}, id="escaped-model"
        ),
        pytest.param(b'{"max_tokens": 1, "model": "x"}', None, id="model-not-first"),
        pytest.param(b'{"model": "x"}', None, id="model-only"),
        pytest.param(b'{"model": "x", "a": 1', None, id="unclosed"),
    ],
)
def test_body_sketch(raw: bytes, expected: dict[str, Any] | None) -> None:
    from gateway.app import body_sketch

    assert body_sketch(raw) == expected


async def test_a_nested_stream_flag_does_not_make_a_json_reply_a_stream(
    gateway: TestServer, upstream: FakeUpstream, key: str, pool: asyncpg.Pool
) -> None:
    """A sketched body's "stream": true may sit in a nested object; the reply's content type decides."""
    body = {**BODY, "stream": False, "metadata": {"tool_state": {"stream": True}}}
    status, answer, headers = await post(gateway, "/v1/messages", body, {"x-api-key": key})
    assert status == 200 and answer["type"] == "message" and headers["Content-Type"].startswith("application/json")
    [row] = await flushed_usage(gateway, pool)
    assert row["output_tokens"] == 5 and row["streamed"] is False


async def test_malformed_json_after_a_leading_model_is_refused_upstream_in_anthropic_shape(
    gateway: TestServer, upstream: FakeUpstream, key: str
) -> None:
    """Such a body is not parsed whole by the gateway (only relayed): the provider's 400 reaches the caller."""
    raw = b'{"model": "claude-fast", "max_tokens": 5, oops}'
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            url(gateway, "/v1/messages"), data=raw, headers={"x-api-key": key, "content-type": "application/json"}
        ) as r,
    ):
        assert r.status == 400
        assert (await r.json())["type"] == "error"
