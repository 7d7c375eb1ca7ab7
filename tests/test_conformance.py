"""Conformance: what Anthropic asks of an LLM gateway in front of Claude Code, one test per requirement.

Each test quotes the requirement it checks, from Anthropic's published pages:

  [GW]       https://code.claude.com/docs/en/llm-gateway (LLM gateway configuration, "Gateway requirements")
  [PROTOCOL] https://code.claude.com/docs/en/llm-gateway-protocol (Gateway protocol reference)
  [ROLLOUT]  https://code.claude.com/docs/en/llm-gateway-rollout (Roll out an LLM gateway, "Gateway requirements")

and the ways other gateways are known to break Claude Code: anthropic-beta values filtered, the system array
rewritten without Claude Code's attribution block, thinking blocks or signatures lost or re-serialised,
count_tokens answering 404, background calls on a haiku id the gateway does not know, stream events held back.

Every test drives the running gateway (a real listening server) over HTTP, with the recording fake upstream
(tests/fakes/upstream.py) checking what arrives there byte for byte, and the caller checking what comes back.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import asyncpg
import orjson
import pytest
import yaml
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from yarl import URL

from gateway import db
from tests.conftest import UPSTREAM_KEY, GatewayFactory, flushed_usage
from tests.fakes.upstream import Event, FakeUpstream, anthropic_events_for, sse_frame

MakeUser = Callable[..., Awaitable[tuple[str, db.KeyRow]]]

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ALIAS, PROVIDER_MODEL = "claude-fast", "claude-haiku-4-5"  # as tests/conftest.py configures them
# Claude Code 2.1.197's own headers on POST /v1/messages (tests/fixtures/claude_code_requests.jsonl).
BETAS = (
    "claude-code-20250219,interleaved-thinking-2025-05-14,thinking-token-count-2026-05-13,"
    "context-management-2025-06-27,prompt-caching-scope-2026-01-05,mid-conversation-system-2026-04-07,"
    "effort-2025-11-24"
)
SESSION_ID = "db2a91c2-cf66-4478-8104-8175421f0612"
CLAUDE_CODE_HEADERS = {
    "Accept": "application/json",
    "Content-Type": "application/json",
    "User-Agent": "claude-cli/2.1.197 (external, cli)",
    "X-Claude-Code-Session-Id": SESSION_ID,
    "X-Stainless-Lang": "js",
    "X-Stainless-Retry-Count": "0",
    "X-Stainless-Timeout": "600",
    "anthropic-beta": BETAS,
    "anthropic-dangerous-direct-browser-access": "true",
    "anthropic-version": "2023-06-01",
    "x-app": "cli",
}
BILLING_BLOCK = {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197.123; cc_entrypoint=cli;"}
SIGNATURE_1 = "EqQBCkYIBxgCKkDdz0p1c2FfYXNzaXN0YW50X3R1cm5fb25lX3NpZ25hdHVyZQ+/=" * 3
SIGNATURE_2 = "ErcBCkYIBxgCKkCvc2lnbmF0dXJlX29mX3R1cm5fdHdvX3RoaW5raW5n/+==" * 3
PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
STREAM_DELAY_S = 0.25  # between two upstream events in the timing test: long enough to see any holding back


# --- helpers -----------------------------------------------------------------------------------------


def credential(kind: str, key: str) -> dict[str, str]:
    """Claude Code's credential header: ANTHROPIC_AUTH_TOKEN is sent as Bearer, ANTHROPIC_API_KEY as x-api-key."""
    return {"Authorization": f"Bearer {key}"} if kind == "bearer" else {"x-api-key": key}


def claude_code_headers(key: str, kind: str = "bearer") -> dict[str, str]:
    return {**CLAUDE_CODE_HEADERS, **credential(kind, key)}


def with_provider_model(raw: bytes, alias: str = ALIAS, model: str = PROVIDER_MODEL) -> bytes:
    """`raw` with the one top-level "model" value swapped: the only bytes a gateway may change."""
    old, new = json.dumps(alias).encode(), json.dumps(model).encode()
    assert raw.count(old) == 1, "the test body must name the alias exactly once"
    return raw.replace(old, new)


async def post(
    server: TestServer, path: str, raw: bytes, headers: dict[str, str] | CIMultiDict[str]
) -> tuple[int, bytes, CIMultiDict[str]]:
    """POST raw bytes (never re-serialised by a client library); the status, body bytes and headers."""
    url = URL(f"http://{server.host}:{server.port}{path}", encoded=True)  # the query exactly as written
    async with aiohttp.ClientSession() as session, session.post(url, data=io.BytesIO(raw), headers=headers) as r:
        return r.status, await r.read(), CIMultiDict(r.headers)


def frames_of(events: list[Event]) -> bytes:
    """The exact bytes the fake upstream writes for `events`."""
    return b"".join(sse_frame(name, data) for name, data in events)


def conversation(*, stream: bool, model_first: bool = True) -> dict[str, Any]:
    """A Claude Code turn deep into a session: every field it sends, extended thinking and tool use in the history.

    The assistant turns carry signed thinking blocks (and a redacted one) before their tool_use; the user turns
    answer with tool_result blocks (text and an image); a message with role "system" sits mid-conversation
    (beta mid-conversation-system-2026-04-07), as Claude Code 2.1.197 sends it.
    """
    body: dict[str, Any] = {"model": ALIAS} if model_first else {}
    body |= {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "List the files, then show README.md \u2013 caf\u00e9 \u2615"}],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "I should run ls first.", "signature": SIGNATURE_1},
                    {"type": "text", "text": "Listing the files."},
                    {"type": "tool_use", "id": "toolu_01A", "name": "Bash", "input": {"command": "ls", "n": 1.5e3}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "README.md\nlogo.png"},
                ],
            },
            {"role": "system", "content": "Available agent types for the Agent tool: claude, Explore"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Now read both.", "signature": SIGNATURE_2},
                    {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa"},
                    {"type": "tool_use", "id": "toolu_01B", "name": "Read", "input": {"file_path": "/r/logo.png"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01B",
                        "content": [
                            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_1PX}}
                        ],
                    },
                    {"type": "text", "text": "Thanks.", "cache_control": {"type": "ephemeral"}},
                ],
            },
        ],
        "system": [
            BILLING_BLOCK,
            {
                "type": "text",
                "text": "You are Claude Code, Anthropic's official CLI for Claude.",
                "cache_control": {"type": "ephemeral", "ttl": "1h"},
            },
            {"type": "text", "text": "\nYou are an interactive agent.\n", "cache_control": {"type": "ephemeral"}},
        ],
        "tools": [
            {
                "name": "Bash",
                "description": "Run a shell command.",
                "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}},
            },
            {
                "name": "Read",
                "description": "Read a file.",
                "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}},
                "cache_control": {"type": "ephemeral"},
            },
        ],
        "metadata": {"user_id": json.dumps({"device_id": "39382d0b", "account_uuid": "", "session_id": SESSION_ID})},
        "max_tokens": 32000,
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "temperature": 1.0,
        "stream": stream,
    }
    if not model_first:
        body["model"] = ALIAS  # last: where some SDKs put it
    return body


def pretty(body: dict[str, Any]) -> bytes:
    """Serialised unlike any gateway would (indented, \\u escapes), so a re-serialised body cannot pass for it."""
    return json.dumps(body, indent=2, ensure_ascii=True).encode()


def signed_reply(model: str) -> dict[str, Any]:
    """The upstream's answer to `conversation()`: signed thinking, text, and another tool call."""
    return {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [
            {"type": "thinking", "thinking": "The image is a logo; read README next.", "signature": SIGNATURE_2},
            {"type": "text", "text": "That is the project's logo."},
            {"type": "tool_use", "id": "toolu_01C", "name": "Read", "input": {"file_path": "/r/README.md"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 2100, "output_tokens": 61, "cache_read_input_tokens": 1800},
    }


# --- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture
async def shipped_routing(make_gateway: GatewayFactory) -> TestServer:
    """A gateway with gateway.yaml's own `routing` section (the test config has none)."""
    routing = yaml.safe_load((REPO / "gateway.yaml").read_text())["routing"]
    premium = {"claude-premium": {"provider": "anthropic", "model": "claude-opus-4-5"}}  # the rules name it
    return await make_gateway(routing=routing, models=premium)


@pytest.fixture
async def user(make_user: MakeUser) -> tuple[str, db.KeyRow]:
    return await make_user("dev@example.com")


# --- API format: the endpoints ------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_messages_endpoint_is_exposed(
    gateway: TestServer, upstream: FakeUpstream, user: tuple[str, db.KeyRow], pool: asyncpg.Pool, stream: bool
) -> None:
    """[GW] "The gateway must expose to clients at least one of the following API formats: Anthropic Messages:
    /v1/messages, /v1/messages/count_tokens"."""
    key, row = user
    raw = orjson.dumps(
        {"model": ALIAS, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]} | {"stream": stream}
    )
    status, body, headers = await post(gateway, "/v1/messages?beta=true", raw, claude_code_headers(key))

    assert status == 200, body
    assert headers["Content-Type"].startswith("text/event-stream" if stream else "application/json")
    [sent] = upstream.requests
    assert (sent.method, sent.path, sent.query_string) == ("POST", "/v1/messages", "beta=true")
    [usage] = await flushed_usage(gateway, pool)
    assert (usage["user_id"], usage["provider_model"], usage["streamed"]) == (row.user_id, PROVIDER_MODEL, stream)


async def test_count_tokens_is_proxied_upstream_and_never_billed(
    gateway: TestServer, upstream: FakeUpstream, user: tuple[str, db.KeyRow], pool: asyncpg.Pool
) -> None:
    """[GW] "Anthropic Messages: /v1/messages, /v1/messages/count_tokens"; [PROTOCOL] lists
    /v1/messages/count_tokens among the Anthropic Messages endpoints. Known failure: count_tokens answering 404.

    The gateway answers it from the upstream (same path, query, headers and body, model mapped), relays the
    upstream's answer byte for byte, and records no usage: counting tokens costs nothing.
    """
    key, _ = user
    body = conversation(stream=False)
    del body["stream"], body["max_tokens"]
    raw = pretty(body)
    upstream.enqueue(body=b'{"input_tokens":2187}')
    status, answer, _ = await post(gateway, "/v1/messages/count_tokens?beta=true", raw, claude_code_headers(key))

    assert (status, answer) == (200, b'{"input_tokens":2187}')
    [sent] = upstream.requests
    assert (sent.path, sent.query_string) == ("/v1/messages/count_tokens", "beta=true")
    assert sent.raw_body == with_provider_model(raw)
    assert sent.headers["anthropic-beta"] == BETAS and sent.headers["anthropic-version"] == "2023-06-01"
    assert await flushed_usage(gateway, pool) == []


# --- request headers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bearer", "x-api-key"])
async def test_anthropic_version_and_beta_headers_reach_upstream_unchanged(
    gateway: TestServer, upstream: FakeUpstream, user: tuple[str, db.KeyRow], kind: str
) -> None:
    """[GW] "Anthropic Messages ... Must forward request headers: anthropic-beta, anthropic-version";
    [PROTOCOL] "Forward unchanged: pass it to the upstream byte-for-byte". Known failure: anthropic-beta values
    filtered (a gateway that keeps only the betas it knows breaks every feature behind a newer one).

    Every anthropic-* header, with a beta no gateway can know yet, arrives as sent, whether Claude Code
    authenticates with ANTHROPIC_AUTH_TOKEN (Bearer) or ANTHROPIC_API_KEY (x-api-key).
    """
    key, _ = user
    headers = claude_code_headers(key, kind) | {"anthropic-beta": BETAS + ",some-future-beta-2027-01-01"}
    raw = orjson.dumps(conversation(stream=True))
    status, body, _ = await post(gateway, "/v1/messages?beta=true", raw, headers)

    assert status == 200, body
    [sent] = upstream.requests
    for name in ("anthropic-beta", "anthropic-version", "anthropic-dangerous-direct-browser-access"):
        assert sent.headers.getall(name) == [headers[name]], name


async def test_repeated_anthropic_beta_lines_all_reach_upstream(
    gateway: TestServer, upstream: FakeUpstream, user: tuple[str, db.KeyRow]
) -> None:
    """[GW] "Must forward request headers: anthropic-beta, anthropic-version". HTTP lets a client send a header
    as several lines (RFC 9110 §5.3); the Anthropic SDKs accept `betas` that way too. No value may be lost."""
    key, _ = user
    headers = CIMultiDict(claude_code_headers(key))
    headers.popall("anthropic-beta")
    headers.add("anthropic-beta", "claude-code-20250219,interleaved-thinking-2025-05-14")
    headers.add("anthropic-beta", "context-management-2025-06-27")
    status, body, _ = await post(gateway, "/v1/messages", orjson.dumps(conversation(stream=False)), headers)

    assert status == 200, body
    [sent] = upstream.requests
    betas = [b.strip() for line in sent.headers.getall("anthropic-beta") for b in line.split(",")]
    assert betas == ["claude-code-20250219", "interleaved-thinking-2025-05-14", "context-management-2025-06-27"]


async def test_session_id_and_client_identity_headers_reach_upstream(
    gateway: TestServer, upstream: FakeUpstream, user: tuple[str, db.KeyRow]
) -> None:
    """[GW] "X-Claude-Code-Session-Id: A unique identifier for the current Claude Code session. Proxies can use
    this to aggregate all API requests from a single session without parsing the request body."

    It, x-app, User-Agent and the SDK's X-Stainless-* headers go on as Claude Code sent them.
    """
    key, _ = user
    status, body, _ = await post(
        gateway, "/v1/messages", orjson.dumps(conversation(stream=False)), claude_code_headers(key)
    )

    assert status == 200, body
    [sent] = upstream.requests
    for name in ("X-Claude-Code-Session-Id", "x-app", "User-Agent", "X-Stainless-Lang", "X-Stainless-Timeout"):
        assert sent.headers.getall(name) == [CLAUDE_CODE_HEADERS[name]], name
    assert sent.headers.getall("Content-Type") == ["application/json"]  # one, not the caller's and ours


@pytest.mark.parametrize("kind", ["bearer", "x-api-key"])
async def test_hop_by_hop_headers_and_the_callers_credentials_stay_behind(
    gateway: TestServer, upstream: FakeUpstream, user: tuple[str, db.KeyRow], kind: str
) -> None:
    """[PROTOCOL] "Consume: the gateway may read it for routing, attribution, or tracing and need not forward
    it" (the credential); RFC 9110 §7.6.1: hop-by-hop fields are not forwarded.

    The caller's gateway key never reaches the provider; the provider gets the gateway's own key.
    """
    key, _ = user
    headers = claude_code_headers(key, kind) | {
        "Connection": "keep-alive, X-Hop",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Authorization": "Basic c2VjcmV0",
        "Cookie": "session=abc",
    }
    status, body, _ = await post(gateway, "/v1/messages", orjson.dumps(conversation(stream=False)), headers)

    assert status == 200, body
    [sent] = upstream.requests
    names = {name.lower() for name in sent.headers}
    assert not names & {"authorization", "keep-alive", "te", "proxy-authorization", "cookie"}
    assert sent.headers.getall("x-api-key") == [UPSTREAM_KEY]
    assert key not in "".join(sent.headers.values())


@pytest.mark.parametrize(
    "query",
    [
        "beta=true",
        "beta=true&q=a%2Bb%26c%3Dd%20e",  # encoded delimiters: decoding them would change the query's meaning
        pytest.param("beta=true&trace=a%2Fb%7E", id="percent-encoded-unreserved"),
    ],
)
async def test_query_string_reaches_upstream_byte_for_byte(
    gateway: TestServer, upstream: FakeUpstream, user: tuple[str, db.KeyRow], query: str
) -> None:
    """[ROLLOUT] "Forward headers and body unchanged". Claude Code 2.1 posts to /v1/messages?beta=true: the
    query is part of the request and goes on as sent."""
    key, _ = user
    raw = orjson.dumps(conversation(stream=False))
    status, body, _ = await post(gateway, f"/v1/messages?{query}", raw, claude_code_headers(key))

    assert status == 200, body
    assert upstream.requests[0].raw_query_string == query


# --- request body -------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("model_first", [True, False], ids=["model-first", "model-last"])
@pytest.mark.parametrize("layout", ["compact", "indented"])
async def test_body_reaches_upstream_byte_for_byte_but_the_model(
    gateway: TestServer,
    upstream: FakeUpstream,
    user: tuple[str, db.KeyRow],
    stream: bool,
    model_first: bool,
    layout: str,
) -> None:
    """[ROLLOUT] "Forward headers and body unchanged: pass anthropic-beta, anthropic-version, and the request body
    through in both directions"; [PROTOCOL] "Forward unchanged: pass it to the upstream byte-for-byte".

    A body with every field Claude Code sends (system array with cache_control, thinking, context_management,
    output_config, metadata, a message with role "system", signed thinking blocks, tool_use / tool_result,
    an image) arrives with only the model value changed: not one other byte, in whatever layout it came.
    """
    key, _ = user
    body = conversation(stream=stream, model_first=model_first)
    raw = pretty(body) if layout == "indented" else json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    status, answer, _ = await post(gateway, "/v1/messages?beta=true", raw, claude_code_headers(key))

    assert status == 200, answer
    [sent] = upstream.requests
    assert sent.raw_body == with_provider_model(raw)


async def test_model_in_the_middle_of_the_body_is_the_only_change(
    gateway: TestServer, upstream: FakeUpstream, user: tuple[str, db.KeyRow]
) -> None:
    """[PROTOCOL] "Forward unchanged: pass it to the upstream byte-for-byte". Wherever a client puts "model"
    (here between messages and system, with a nested "model" key in a tool schema before it), only its value
    changes; the nested one is not the request's model and stays."""
    key, _ = user
    body = conversation(stream=False, model_first=False)
    body["tools"][0]["input_schema"]["properties"]["model"] = {"type": "string", "enum": ["claude-fast"]}
    ordered = {"messages": body.pop("messages"), "tools": body.pop("tools"), "model": body.pop("model"), **body}
    raw = pretty(ordered)
    status, answer, _ = await post(gateway, "/v1/messages", raw, claude_code_headers(key))

    assert status == 200, answer
    [sent] = upstream.requests
    old, new = b'"model": "claude-fast"', b'"model": "claude-haiku-4-5"'
    assert raw.count(old) == 1 and sent.raw_body == raw.replace(old, new)


async def test_system_array_keeps_claude_codes_attribution_block(
    gateway: TestServer, upstream: FakeUpstream, user: tuple[str, db.KeyRow]
) -> None:
    """[PROTOCOL] "The system prompt attribution block and how it interacts with prompt caching". Known failure:
    gateways that rewrite the system array, dropping Claude Code's first text block
    ("x-anthropic-billing-header: cc_version=...; cc_entrypoint=...;") or merging the blocks into one string,
    lose the attribution and move every cache_control breakpoint.

    The system array arrives as sent: same blocks, same order, the attribution block first, each
    cache_control where it was.
    """
    key, _ = user
    raw = orjson.dumps(conversation(stream=True))
    status, answer, _ = await post(gateway, "/v1/messages?beta=true", raw, claude_code_headers(key))

    assert status == 200, answer
    [sent] = upstream.requests
    system = sent.json["system"]
    assert system == conversation(stream=True)["system"] and system[0] == BILLING_BLOCK
    assert orjson.dumps(system) in sent.raw_body  # the very bytes, not an equivalent


@pytest.mark.parametrize("layout", ["as-captured", "compact"])
async def test_claude_codes_77kb_first_request_reaches_upstream_byte_for_byte(
    gateway: TestServer, upstream: FakeUpstream, user: tuple[str, db.KeyRow], layout: str
) -> None:
    """[ROLLOUT] "Forward headers and body unchanged"; [PROTOCOL] "Forward unchanged: pass it to the upstream
    byte-for-byte". The real 77.6 KB first request of Claude Code 2.1.197 (24 tools, the attribution block,
    thinking adaptive, context_management, output_config, a role "system" message), as captured and as compact
    JSON like Claude Code writes it on the wire."""
    key, _ = user
    raw = (FIXTURES / "claude_code_stream.json").read_bytes()
    if layout == "compact":
        raw = orjson.dumps(orjson.loads(raw))
    status, answer, _ = await post(gateway, "/v1/messages?beta=true", raw, claude_code_headers(key))

    assert status == 200, answer
    [sent] = upstream.requests
    assert sent.raw_body == with_provider_model(raw)


async def test_a_2mb_image_reaches_upstream_byte_for_byte(
    gateway: TestServer, upstream: FakeUpstream, user: tuple[str, db.KeyRow], pool: asyncpg.Pool
) -> None:
    """[ROLLOUT] "Forward headers and body unchanged". A screenshot pasted into Claude Code is a base64 image
    block of megabytes; it goes on untouched (and under the gateway's body limit)."""
    key, row = user
    image = base64.b64encode(os.urandom(1_500_000)).decode()  # 2,000,000 base64 characters
    body = conversation(stream=True)
    body["messages"][0]["content"].insert(
        0, {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": image}}
    )
    raw = orjson.dumps(body)
    assert len(raw) > 2_000_000
    status, answer, _ = await post(gateway, "/v1/messages?beta=true", raw, claude_code_headers(key))

    assert status == 200, answer[:200]
    [sent] = upstream.requests
    assert sent.raw_body == with_provider_model(raw)
    [usage] = await flushed_usage(gateway, pool)
    assert (usage["user_id"], usage["status"]) == (row.user_id, 200)


# --- extended thinking and tool use, over several turns -----------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_multi_turn_thinking_and_tool_use_pass_both_ways_byte_for_byte(
    gateway: TestServer, upstream: FakeUpstream, user: tuple[str, db.KeyRow], pool: asyncpg.Pool, stream: bool
) -> None:
    """[ROLLOUT] "pass anthropic-beta, anthropic-version, and the request body through in both directions".
    Known failure: thinking blocks or their signatures lost or re-serialised; the API refuses a later turn
    whose thinking block's signature does not match.

    Upstream receives the assistant turns' signed thinking blocks, the redacted one, the tool_use blocks and
    the tool_result turns as sent; the caller receives the upstream's reply (signed thinking, text, tool_use)
    exactly as the upstream wrote it, as one JSON body or as the same SSE bytes (thinking_delta,
    signature_delta, input_json_delta).
    """
    key, row = user
    reply = signed_reply(PROVIDER_MODEL)
    events = anthropic_events_for(reply)
    upstream.enqueue(events=events) if stream else upstream.enqueue(body=reply)
    raw = orjson.dumps(conversation(stream=stream))
    status, answer, headers = await post(gateway, "/v1/messages?beta=true", raw, claude_code_headers(key))

    assert status == 200, answer
    [sent] = upstream.requests
    assert sent.raw_body == with_provider_model(raw)
    thinking = [b for m in sent.json["messages"] for b in m["content"] if isinstance(b, dict) and "signature" in b]
    assert [b["signature"] for b in thinking] == [SIGNATURE_1, SIGNATURE_2]
    if stream:
        assert headers["Content-Type"].startswith("text/event-stream")
        assert answer == frames_of(events)
        assert b'"type":"signature_delta"' in answer and b'"type":"input_json_delta"' in answer
    else:
        assert answer == orjson.dumps(reply)
    [usage] = await flushed_usage(gateway, pool)
    assert (usage["user_id"], usage["input_tokens"], usage["output_tokens"]) == (row.user_id, 2100, 61)
    assert usage["cache_read_tokens"] == 1800


async def test_anthropic_sdk_gets_the_thinking_signature_and_tool_call_intact(
    gateway: TestServer, upstream: FakeUpstream, user: tuple[str, db.KeyRow]
) -> None:
    """[ROLLOUT] "in both directions", as a client library sees it: the official SDK (which Claude Code is built
    on) accumulates the relayed stream into the very blocks the upstream sent, and sends them back next turn."""
    key, _ = user
    reply = signed_reply(PROVIDER_MODEL)
    upstream.enqueue(events=anthropic_events_for(reply))
    upstream.enqueue(body=signed_reply(PROVIDER_MODEL) | {"content": [{"type": "text", "text": "Done."}]})
    body = conversation(stream=True)
    params = {name: body[name] for name in ("messages", "system", "tools", "thinking")}
    params["max_tokens"] = 4096  # the SDK refuses a non-streamed create with Claude Code's 32000
    extra = {name: body[name] for name in ("metadata", "context_management", "output_config", "temperature")}
    async with anthropic.AsyncAnthropic(base_url=str(gateway.make_url("")), auth_token=key, max_retries=0) as sdk:
        async with sdk.messages.stream(model=ALIAS, **params, extra_body=extra) as stream:
            kinds = {event.type async for event in stream}
            final = await stream.get_final_message()
        assert {"thinking", "signature", "input_json", "text"} <= kinds
        assert [block.model_dump(exclude_none=True) for block in final.content] == reply["content"]
        result = {"type": "tool_result", "tool_use_id": "toolu_01C", "content": "# README"}
        follow_up = [
            *params["messages"],
            {"role": "assistant", "content": final.content},
            {"role": "user", "content": [result]},
        ]
        await sdk.messages.create(model=ALIAS, **(params | {"messages": follow_up}), extra_body=extra)

    sent_back = upstream.requests[1].json["messages"][-2]["content"]
    assert sent_back == reply["content"]  # the signature the upstream made, exactly


# --- streaming ------------------------------------------------------------------------------------------


async def test_each_stream_event_reaches_the_caller_as_soon_as_the_upstream_sends_it(
    gateway: TestServer, upstream: FakeUpstream, user: tuple[str, db.KeyRow]
) -> None:
    """[ROLLOUT] "Stream responses: pass server-sent events through as they arrive instead of buffering the whole
    response". Known failure: events held back (coalesced, or written only once a buffer fills).

    The upstream writes one event every STREAM_DELAY_S, every kind Claude Code reads: message_start, ping,
    thinking_delta, signature_delta, input_json_delta and a closing error. The caller must see message_start
    before the upstream has even written the second event, and each later event on its own, about
    STREAM_DELAY_S after the one before.
    """
    key, _ = user
    message = signed_reply(PROVIDER_MODEL)
    message["content"] = [
        {"type": "thinking", "thinking": "Checking.", "signature": SIGNATURE_1},
        {"type": "tool_use", "id": "toolu_01D", "name": "Bash", "input": {"command": "ls"}},
    ]
    events = anthropic_events_for(message)[:-2]  # instead of message_delta / message_stop ...
    events.append(("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
    upstream.enqueue(events=events, chunk_delay_s=STREAM_DELAY_S)
    expected = [sse_frame(name, data) for name, data in events]

    arrivals: list[tuple[float, bytes]] = []
    started = time.perf_counter()
    async for when, frame in sse_frames(gateway, orjson.dumps(conversation(stream=True)), claude_code_headers(key)):
        arrivals.append((when - started, frame))

    assert [frame for _, frame in arrivals] == expected
    kinds = set()  # each event's type, and its delta's
    for _, frame in arrivals:
        data = json.loads(frame.split(b"data: ", 1)[1])
        kinds |= {data["type"], data.get("delta", {}).get("type", "")}
    assert {"message_start", "ping", "thinking_delta", "signature_delta", "input_json_delta", "error"} <= kinds
    times = [when for when, _ in arrivals]
    assert times[0] < STREAM_DELAY_S * 0.8, f"message_start came after {times[0]:.2f} s"
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert min(gaps) > STREAM_DELAY_S * 0.5, f"events arrived together: gaps {[round(g, 2) for g in gaps]}"
    assert times[-1] - times[0] > (len(events) - 1) * STREAM_DELAY_S * 0.9


async def sse_frames(server: TestServer, raw: bytes, headers: dict[str, str]) -> AsyncIterator[tuple[float, bytes]]:
    """Each SSE frame of the reply with the moment its last byte arrived, read as the bytes come in."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.make_url("/v1/messages"), data=raw, headers=headers) as r,
    ):
        assert r.status == 200, await r.text()
        buffer = b""
        async for chunk in r.content.iter_any():
            now = time.perf_counter()
            buffer += chunk
            while b"\n\n" in buffer:
                frame, buffer = buffer.split(b"\n\n", 1)
                yield now, frame + b"\n\n"
        assert buffer == b""


# --- upstream errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type", "message", "extra_headers"),
    [
        (400, "invalid_request_error", "prompt is too long: 212514 tokens > 200000 maximum", {}),
        (413, "request_too_large", "Request exceeds the maximum allowed number of bytes.", {}),
        (
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
            {"retry-after": "17"},
        ),
        (529, "overloaded_error", "Overloaded", {}),
    ],
    ids=["prompt-too-long", "too-large", "rate-limited", "overloaded"],
)
async def test_upstream_errors_reach_claude_code_unmodified(
    gateway: TestServer,
    upstream: FakeUpstream,
    user: tuple[str, db.KeyRow],
    status: int,
    error_type: str,
    message: str,
    extra_headers: dict[str, str],
) -> None:
    """[ROLLOUT] "Return upstream errors unmodified: Claude Code's automatic recovery matches on error wording,
    so wrapping errors in the gateway's own envelope breaks it".

    The status, the body byte for byte (request_id included) and the headers Claude Code acts on
    (request-id, retry-after) come back as the upstream sent them.
    """
    key, _ = user
    error = orjson.dumps({"type": "error", "error": {"type": error_type, "message": message}, "request_id": "req_011X"})
    upstream.enqueue(status=status, body=error, headers={"request-id": "req_011X", **extra_headers})
    got_status, got_body, headers = await post(
        gateway, "/v1/messages?beta=true", orjson.dumps(conversation(stream=True)), claude_code_headers(key)
    )

    assert (got_status, got_body) == (status, error)
    assert headers["request-id"] == "req_011X"
    for name, value in extra_headers.items():
        assert headers[name] == value


async def test_response_headers_come_back_from_upstream(
    gateway: TestServer, upstream: FakeUpstream, user: tuple[str, db.KeyRow]
) -> None:
    """[ROLLOUT] "Forward headers and body unchanged ... in both directions". Claude Code reads the upstream's
    request-id and anthropic-ratelimit-* headers (shown in errors, used for back-off)."""
    key, _ = user
    sent_headers = {
        "request-id": "req_011CRateLimited",
        "anthropic-ratelimit-unified-status": "allowed",
        "anthropic-ratelimit-tokens-remaining": "39000",
    }
    upstream.enqueue(events=anthropic_events_for(signed_reply(PROVIDER_MODEL)), headers=sent_headers)
    raw = orjson.dumps(conversation(stream=True))
    status, _, headers = await post(gateway, "/v1/messages?beta=true", raw, claude_code_headers(key))

    assert status == 200
    for name, value in sent_headers.items():
        assert headers.getall(name) == [value], name


# --- routing Claude model names -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "alias", "provider_model"),
    [
        ("claude-haiku-4-5-20251001", "claude-fast", "claude-haiku-4-5"),  # Claude Code's background calls
        ("claude-sonnet-4-6", "claude-quality", "claude-sonnet-4-5"),
    ],
)
async def test_claude_model_names_route_per_gateway_yaml(
    shipped_routing: TestServer,
    upstream: FakeUpstream,
    user: tuple[str, db.KeyRow],
    pool: asyncpg.Pool,
    model: str,
    alias: str,
    provider_model: str,
) -> None:
    """[ROLLOUT] "Route Claude model names: map each name developers use to an upstream model. Claude Code sends
    a model name such as claude-sonnet-4-6 in each request". Known failure: Claude Code's background calls
    (title, summaries) go out on a claude-*haiku* id the gateway does not know and fail with 404.

    With gateway.yaml's routing rules, the dated haiku id becomes claude-fast's model and a sonnet id
    claude-quality's; count_tokens is routed the same way.
    """
    key, row = user
    body = conversation(stream=True) | {"model": model}
    raw = orjson.dumps(body)
    status, answer, _ = await post(shipped_routing, "/v1/messages?beta=true", raw, claude_code_headers(key))
    assert status == 200, answer
    del body["stream"], body["max_tokens"]
    status, answer, _ = await post(
        shipped_routing, "/v1/messages/count_tokens?beta=true", orjson.dumps(body), claude_code_headers(key)
    )
    assert status == 200, answer

    messages, count = upstream.requests
    assert messages.raw_body == with_provider_model(raw, model, provider_model)
    assert count.path == "/v1/messages/count_tokens" and count.json["model"] == provider_model
    [usage] = await flushed_usage(shipped_routing, pool)
    assert (usage["user_id"], usage["alias"], usage["provider_model"]) == (row.user_id, alias, provider_model)


# --- model discovery ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"anthropic-version": "2023-06-01", "Authorization": "Bearer {key}"}, id="bearer+version"),
        pytest.param({"x-api-key": "{key}"}, id="x-api-key"),
    ],
)
async def test_models_list_answers_claude_code_in_anthropics_format(
    gateway: TestServer, user: tuple[str, db.KeyRow], headers: dict[str, str]
) -> None:
    """[GW] "When ANTHROPIC_BASE_URL points at a gateway that exposes the Anthropic Messages format, Claude Code
    can query the gateway's /v1/models" (model discovery); [PROTOCOL] "Model discovery". Claude Code parses
    only Anthropic's list shape and adds to its picker "only models whose ID begins with claude or anthropic".
    """
    key, _ = user
    async with aiohttp.ClientSession() as session:
        sent = {name: value.format(key=key) for name, value in headers.items()}
        async with session.get(gateway.make_url("/v1/models"), headers=sent) as r:
            assert r.status == 200
            listing = await r.json()

    assert set(listing) == {"data", "has_more", "first_id", "last_id"}
    assert listing["has_more"] is False and listing["data"]
    for entry in listing["data"]:
        assert set(entry) == {"type", "id", "display_name", "created_at"} and entry["type"] == "model"
        assert entry["id"].startswith("claude")
    assert (listing["first_id"], listing["last_id"]) == (listing["data"][0]["id"], listing["data"][-1]["id"])


async def test_models_list_answers_openai_callers_in_openais_format(
    gateway: TestServer, user: tuple[str, db.KeyRow]
) -> None:
    """The same GET /v1/models, asked by an OpenAI client (Bearer, no anthropic-version): OpenAI's list shape,
    so Cursor and the openai SDK keep working next to Claude Code."""
    key, _ = user
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as session, session.get(gateway.make_url("/v1/models"), headers=headers) as r:
        assert r.status == 200
        listing = await r.json()

    assert listing["object"] == "list" and listing["data"]
    for entry in listing["data"]:
        assert set(entry) == {"id", "object", "created", "owned_by"} and entry["object"] == "model"
        assert entry["id"].startswith("claude")


async def test_head_probe_is_answered_without_credentials(gateway: TestServer, upstream: FakeUpstream) -> None:
    """Captured behaviour (tests/fixtures/claude_code_requests.jsonl): Claude Code 2.1.197 sends `HEAD /` without
    credentials before its first request and reports a connection failure unless it gets a 200. The gateway
    answers it itself; nothing reaches the provider."""
    async with aiohttp.ClientSession() as session, session.head(gateway.make_url("/")) as r:
        assert r.status == 200
    assert upstream.requests == []
