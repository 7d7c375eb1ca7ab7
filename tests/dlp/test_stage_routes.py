"""The DLP stage through the whole gateway: every action on all three routes, streamed and not, findings via the API."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from gateway import db
from gateway.app import SERVICES
from tests.conftest import GatewayFactory
from tests.fakes.upstream import FakeUpstream

AWS_KEY = "AKIAZ3MSJV4WWNKWW5FG"  # well-formed, not a real key
PLACEHOLDER = "[REDACTED:aws_access_key:1]"
KeyFactory = Callable[..., Awaitable[tuple[str, db.KeyRow]]]

ROUTES = {  # route -> (path, body with the key in the caller's text, where the stage says it found it)
    "messages": (
        "/v1/messages",
        {"model": "claude-fast", "max_tokens": 64, "messages": [{"role": "user", "content": f"key {AWS_KEY} ok"}]},
        "messages[0].content",
    ),
    "chat": (
        "/v1/chat/completions",
        {"model": "claude-fast", "messages": [{"role": "user", "content": [{"type": "text", "text": AWS_KEY}]}]},
        "messages[0].content[0]",
    ),
    "responses": ("/v1/responses", {"model": "claude-fast", "input": f"use {AWS_KEY} please"}, "input"),
}


def dlp_config(action: str, **section: Any) -> dict[str, Any]:
    return {
        "aliases": {"claude-fast": {"enabled": True, "detectors": {"aws_access_key": {"action": action}}}},
        **section,
    }


async def post(server: TestServer, path: str, body: Any, key: str, **headers: str) -> tuple[int, bytes]:
    url = str(server.make_url(path))
    async with aiohttp.ClientSession() as s, s.post(url, json=body, headers={"x-api-key": key, **headers}) as r:
        return r.status, await r.read()


async def findings(server: TestServer, admin_key: str, query: str = "") -> list[dict[str, Any]]:
    await server.app[SERVICES].extras["dlp_findings"].flush()
    url = str(server.make_url(f"/v1/dlp-findings{query}"))
    async with aiohttp.ClientSession() as s, s.get(url, headers={"Authorization": f"Bearer {admin_key}"}) as r:
        assert r.status == 200, await r.text()
        return list((await r.json())["findings"])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("action", ["block", "redact", "audit"])
async def test_every_action_on_every_route(
    make_gateway: GatewayFactory, upstream: FakeUpstream, make_key: KeyFactory, action: str, route: str, stream: bool
) -> None:
    gateway = await make_gateway(dlp=dlp_config(action))
    user_key, user = await make_key("alice")
    admin_key, _ = await make_key("root", admin=True)
    path, body, location = ROUTES[route]
    status, answer = await post(gateway, path, {**body, "stream": stream}, user_key)

    if action == "block":
        assert status == 400, answer
        error = orjson.loads(answer)["error"]
        assert "aws_access_key" in error["message"] and location in error["message"]
        assert AWS_KEY.encode() not in answer
        assert error["type"] == "invalid_request_error"
        if route != "messages":
            assert error["param"] == location  # OpenAI dialect: the place, as a param
        assert upstream.requests == []
    else:
        assert status == 200, answer
        sent = upstream.requests[-1].raw_body
        assert (AWS_KEY.encode() in sent) is (action == "audit")
        assert (PLACEHOLDER.encode() in sent) is (action == "redact")
    [found] = await findings(gateway, admin_key)
    assert (found["detector"], found["action"], found["location"]) == ("aws_access_key", action, location)
    assert (found["keyId"], found["model"], found["occurrences"]) == (user.id, "claude-fast", 1)
    assert AWS_KEY not in orjson.dumps(found).decode()


async def test_an_alias_without_dlp_passes_the_value_and_records_nothing(
    make_gateway: GatewayFactory, upstream: FakeUpstream, make_key: KeyFactory
) -> None:
    gateway = await make_gateway(dlp=dlp_config("block"))
    key, _ = await make_key()
    admin_key, _ = await make_key("root", admin=True)
    body = {**ROUTES["messages"][1], "model": "claude-quality"}
    status, _ = await post(gateway, "/v1/messages", body, key)
    assert status == 200
    assert AWS_KEY.encode() in upstream.requests[-1].raw_body
    assert await findings(gateway, admin_key) == []


async def test_a_routed_model_id_gets_its_alias_policy(
    make_gateway: GatewayFactory, upstream: FakeUpstream, make_key: KeyFactory
) -> None:
    routing = {"rules": [{"match": "claude-*haiku*", "alias": "claude-fast"}]}
    gateway = await make_gateway(dlp=dlp_config("block"), routing=routing)
    key, _ = await make_key()
    body = {**ROUTES["messages"][1], "model": "claude-3-5-haiku-20241022"}  # what Claude Code sends for background work
    status, answer = await post(gateway, "/v1/messages", body, key)
    assert status == 400 and b"aws_access_key" in answer


@pytest.mark.parametrize(
    ("roles", "admin", "expected"),
    [([], True, 403), (["admin"], False, 403), (["admin"], True, 200), (["admin", "user"], False, 200)],
    ids=["nobody", "user-refused", "admin", "user-allowed"],
)
async def test_the_bypass_header_only_for_allowed_roles(
    make_gateway: GatewayFactory,
    upstream: FakeUpstream,
    make_key: KeyFactory,
    roles: list[str],
    admin: bool,
    expected: int,
) -> None:
    gateway = await make_gateway(dlp=dlp_config("block", bypass_roles=roles))
    key, row = await make_key("caller", admin=admin)
    with capture_logs() as logs:
        status, answer = await post(gateway, "/v1/messages", ROUTES["messages"][1], key, **{"x-gateway-dlp": "off"})
    assert status == expected, answer
    bypassed = [e for e in logs if e["event"] == "dlp_bypassed"]
    if expected == 403:
        assert orjson.loads(answer)["error"]["type"] == "permission_error"
        assert bypassed == []
    else:
        assert AWS_KEY.encode() in upstream.requests[-1].raw_body
        assert "x-gateway-dlp" not in upstream.requests[-1].headers  # the gateway's own header stays here
        assert [(e["key_id"], e["alias"]) for e in bypassed] == [(row.id, "claude-fast")]  # the skip leaves a trace


SHADOWED = b'"messages": [{"role": "user", "content": "' + AWS_KEY.encode() + b'"}],'


@pytest.mark.parametrize(
    "clean",
    [b"hello", b"hello" + b"\\u0022" * SHADOWED.count(b'"')],
    ids=["plain", "quotes-escaped-to-even-the-count"],
)
async def test_a_duplicate_key_cannot_hide_a_value_from_the_scan(
    make_gateway: GatewayFactory, upstream: FakeUpstream, make_key: KeyFactory, clean: bytes
) -> None:
    gateway = await make_gateway(dlp=dlp_config("block"))
    key, _ = await make_key()
    # A parser that keeps the first "messages" would see the key; ours keeps the last, which is clean. Quotes
    # written \u0022 in the clean text carry no `"` byte, so they must not make up for the shadowed key's.
    raw = (
        b'{"model": "claude-fast", "max_tokens": 8, '
        + SHADOWED
        + b' "messages": [{"role": "user", "content": "'
        + clean
        + b'"}]}'
    )
    url = str(gateway.make_url("/v1/messages"))
    headers = {"x-api-key": key, "content-type": "application/json"}
    async with aiohttp.ClientSession() as s, s.post(url, data=raw, headers=headers) as r:
        assert r.status == 400
        assert "duplicate key" in (await r.json())["error"]["message"]
    assert upstream.requests == []


async def test_findings_api_is_admin_only_filters_and_pages(
    make_gateway: GatewayFactory, upstream: FakeUpstream, make_key: KeyFactory
) -> None:
    gateway = await make_gateway(dlp=dlp_config("audit", detectors={"email": {"action": "redact"}}))
    key, _ = await make_key()
    admin_key, _ = await make_key("root", admin=True)
    text = f"{AWS_KEY} and jane.roe@corp-mail.io, again jane.roe@corp-mail.io"
    body = {"model": "claude-fast", "max_tokens": 8, "messages": [{"role": "user", "content": text}]}
    for _ in range(3):
        assert (await post(gateway, "/v1/messages", body, key))[0] == 200
    assert b"[REDACTED:email:1], again [REDACTED:email:1]" in upstream.requests[-1].raw_body

    everything = await findings(gateway, admin_key)
    assert len(everything) == 6
    emails = await findings(gateway, admin_key, "?detector=email")
    assert {(f["action"], f["occurrences"]) for f in emails} == {("redact", 2)}
    page = await findings(gateway, admin_key, "?limit=4")
    assert len(page) == 4
    url = str(gateway.make_url("/v1/dlp-findings"))
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "?limit=4&offset=4", headers={"x-api-key": admin_key}) as r:
            assert (await r.json())["nextOffset"] is None and len((await r.json())["findings"]) == 2
        async with s.get(url, headers={"x-api-key": key}) as r:
            assert r.status == 403
        for bad in ("?detector=nope", "?action=off", "?userId=x", "?limit=0", "?from=2026-02-01&to=2026-01-01"):
            async with s.get(url + bad, headers={"x-api-key": admin_key}) as r:
                assert r.status == 400, bad
                assert "error" in await r.json()


async def test_findings_are_counted_in_metrics(
    make_gateway: GatewayFactory, upstream: FakeUpstream, make_key: KeyFactory
) -> None:
    gateway = await make_gateway(dlp=dlp_config("redact"))
    key, _ = await make_key()
    admin_key, _ = await make_key("root", admin=True)
    assert (await post(gateway, "/v1/messages", ROUTES["messages"][1], key))[0] == 200
    metrics_url = str(gateway.make_url("/metrics"))
    async with aiohttp.ClientSession() as s, s.get(metrics_url, headers={"x-api-key": admin_key}) as r:
        text = await r.text()
    assert 'gateway_dlp_findings_total{action="redact",detector="aws_access_key"} 1.0' in text


async def test_count_tokens_is_scanned_too(
    make_gateway: GatewayFactory, upstream: FakeUpstream, make_key: KeyFactory
) -> None:
    gateway = await make_gateway(dlp=dlp_config("block"))
    key, _ = await make_key()
    status, answer = await post(gateway, "/v1/messages/count_tokens", ROUTES["messages"][1], key)
    assert status == 400 and b"aws_access_key" in answer
    assert upstream.requests == []  # the body would have left the company to be counted


async def test_a_flood_of_candidates_is_refused_not_scanned_for_seconds(
    make_gateway: GatewayFactory, upstream: FakeUpstream, make_key: KeyFactory
) -> None:
    gateway = await make_gateway(dlp=dlp_config("audit"))
    key, _ = await make_key()
    body = {"model": "claude-fast", "max_tokens": 8, "messages": [{"role": "user", "content": "AKIA " * 10_001}]}
    status, answer = await post(gateway, "/v1/chat/completions", body, key)
    assert status == 400
    assert "too many aws_access_key candidates" in orjson.loads(answer)["error"]["message"]


async def test_big_bodies_are_scanned_in_a_thread_and_text_over_the_limit_is_refused(
    make_gateway: GatewayFactory, upstream: FakeUpstream, make_key: KeyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.stages import dlp

    monkeypatch.setattr(dlp, "IN_THREAD_BYTES", 1000)
    monkeypatch.setattr(dlp, "MAX_SCAN_BYTES", 50_000)
    gateway = await make_gateway(dlp=dlp_config("redact"))
    key, _ = await make_key()
    filler = "lorem ipsum " * 2000  # 24 KB: over the thread threshold, under the limit
    body = {"model": "claude-fast", "max_tokens": 8, "messages": [{"role": "user", "content": f"{filler} {AWS_KEY}"}]}
    assert (await post(gateway, "/v1/messages", body, key))[0] == 200
    assert PLACEHOLDER.encode() in upstream.requests[-1].raw_body
    body["messages"][0]["content"] = filler * 3  # 72 KB of text
    status, answer = await post(gateway, "/v1/messages", body, key)
    assert status == 413 and b"data-loss scan limit" in answer


async def test_a_value_in_a_block_type_the_walker_does_not_name_is_still_redacted(
    make_gateway: GatewayFactory, upstream: FakeUpstream, make_key: KeyFactory
) -> None:
    gateway = await make_gateway(dlp=dlp_config("redact"))
    key, _ = await make_key()
    result = {
        "type": "search_result",
        "source": "https://wiki",
        "title": "creds",
        "content": [{"type": "text", "text": AWS_KEY}],
    }
    body = {"model": "claude-fast", "max_tokens": 8, "messages": [{"role": "user", "content": [result]}]}
    status, answer = await post(gateway, "/v1/messages", body, key)
    assert status == 200, answer
    sent = upstream.requests[-1]
    assert AWS_KEY.encode() not in sent.raw_body
    assert sent.json["messages"][0]["content"][0]["content"][0]["text"] == PLACEHOLDER


async def test_a_value_written_as_a_tool_input_key_is_redacted(
    make_gateway: GatewayFactory, upstream: FakeUpstream, make_key: KeyFactory
) -> None:
    gateway = await make_gateway(dlp=dlp_config("redact"))
    key, _ = await make_key()
    call = {"type": "tool_use", "id": "toolu_1", "name": "note", "input": {AWS_KEY: "remember this"}}
    messages = [
        {"role": "user", "content": "note it"},
        {"role": "assistant", "content": [call]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]},
    ]
    status, answer = await post(
        gateway, "/v1/messages", {"model": "claude-fast", "max_tokens": 8, "messages": messages}, key
    )
    assert status == 200, answer
    sent = upstream.requests[-1]
    assert AWS_KEY.encode() not in sent.raw_body
    assert sent.json["messages"][1]["content"][0]["input"] == {PLACEHOLDER: "remember this"}


@pytest.mark.parametrize(
    ("text", "found"),
    [
        # 10,000 phone numbers (160 KB, under the 512 KB thread limit) once held the event loop for 0.6 s
        ("\n".join(["call +1 415 555 2671"] * 600), [("phone", 600)]),
        # 400 KB of digits held it for 0.4 s finding anchors alone: a long text goes to the thread up front
        ("lorem ipsum dolor " * 2500, []),
    ],
    ids=["many-candidates", "long-text"],
)
async def test_a_busy_body_is_scanned_off_the_event_loop(
    make_gateway: GatewayFactory,
    upstream: FakeUpstream,
    make_key: KeyFactory,
    monkeypatch: pytest.MonkeyPatch,
    text: str,
    found: list[tuple[str, int]],
) -> None:
    gateway = await make_gateway(dlp={"enabled": True})
    key, _ = await make_key()
    admin_key, _ = await make_key("root", admin=True)
    threads: list[str] = []
    to_thread = asyncio.to_thread

    async def recording(func: Callable[..., Any], /, *args: Any) -> Any:
        threads.append(func.__name__)
        return await to_thread(func, *args)

    monkeypatch.setattr(asyncio, "to_thread", recording)
    body = {"model": "claude-fast", "max_tokens": 8, "messages": [{"role": "user", "content": text}]}
    status, answer = await post(gateway, "/v1/messages", body, key)
    assert status == 200, answer
    assert "inspect" in threads
    assert [(f["detector"], f["occurrences"]) for f in await findings(gateway, admin_key)] == found


async def test_a_key_split_by_zero_width_spaces_is_redacted_whole(
    make_gateway: GatewayFactory, upstream: FakeUpstream, make_key: KeyFactory
) -> None:
    gateway = await make_gateway(dlp=dlp_config("redact"))
    key, _ = await make_key()
    hidden = "\u200b".join(AWS_KEY)  # reads the same; no pattern matches it as written
    body = {"model": "claude-fast", "max_tokens": 8, "messages": [{"role": "user", "content": f"use {hidden}!"}]}
    status, answer = await post(gateway, "/v1/chat/completions", body, key)
    assert status == 200, answer
    sent = upstream.requests[-1].json
    assert sent["messages"][0]["content"] in (f"use {PLACEHOLDER}!", [{"type": "text", "text": f"use {PLACEHOLDER}!"}])
