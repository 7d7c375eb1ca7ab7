"""Claude Code's body through a DLP-enabled alias: every byte as sent except the redacted spans (and the model)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer, make_mocked_request

from gateway import db
from gateway.config import DlpConfig, DlpPolicy, ModelAlias, RoutingConfig
from gateway.dlp.findings import FindingsLog
from gateway.error_shape import ErrorShape
from gateway.metrics import Metrics
from gateway.pipeline import Exchange
from gateway.stages.dlp import PreventDataLoss
from tests.conftest import GatewayFactory
from tests.fakes.upstream import FakeUpstream

CLAUDE_CODE_BODY = (Path(__file__).parents[1] / "fixtures" / "claude_code_stream.json").read_bytes()
KeyFactory = Callable[..., Awaitable[tuple[str, db.KeyRow]]]
SECRET = "ghp_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5"
EMAIL = "jane.roe@corp-mail.io"


def planted(body: bytes) -> bytes:
    """The capture with a token and an address pasted into the user's cached text block ("say hi")."""
    marker = b'"text": "say hi", "cache_control": {"type": "ephemeral"}'
    assert marker in body
    pasted = f"say hi, my token is {SECRET}; mail {EMAIL} or {EMAIL}".encode()
    return body.replace(b'"say hi"', orjson.dumps(pasted.decode()), 1)


async def send_raw(server: TestServer, raw: bytes, key: str) -> int:
    url = str(server.make_url("/v1/messages?beta=true"))
    headers = {"Authorization": f"Bearer {key}", "content-type": "application/json", "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession() as s, s.post(url, data=raw, headers=headers) as r:
        await r.read()
        return r.status


async def test_redaction_changes_only_the_redacted_spans(
    make_gateway: GatewayFactory, upstream: FakeUpstream, make_key: KeyFactory
) -> None:
    policy = {"enabled": True, "detectors": {"email": {"action": "redact"}}}
    gateway = await make_gateway(dlp={"aliases": {"claude-fast": policy}})
    key, _ = await make_key()
    raw = planted(CLAUDE_CODE_BODY)
    assert await send_raw(gateway, raw, key) == 200
    expected = (
        raw.replace(SECRET.encode(), b"[REDACTED:github_token:1]")
        .replace(EMAIL.encode(), b"[REDACTED:email:1]")
        .replace(b'"model": "claude-fast"', b'"model": "claude-haiku-4-5"', 1)
    )
    sent = upstream.requests[-1].raw_body
    assert sent == expected
    assert sent.count(b'"cache_control": {"type": "ephemeral"}') == raw.count(b'"cache_control": {"type": "ephemeral"}')


async def test_a_clean_claude_code_body_goes_through_byte_for_byte(
    make_gateway: GatewayFactory, upstream: FakeUpstream, make_key: KeyFactory
) -> None:
    gateway = await make_gateway(dlp={"enabled": True})
    key, _ = await make_key()
    assert await send_raw(gateway, CLAUDE_CODE_BODY, key) == 200
    sent = upstream.requests[-1].raw_body
    assert sent == CLAUDE_CODE_BODY.replace(b'"model": "claude-fast"', b'"model": "claude-haiku-4-5"', 1)


async def test_a_value_written_with_escapes_is_still_found_and_redacted(
    make_gateway: GatewayFactory, upstream: FakeUpstream, make_key: KeyFactory
) -> None:
    gateway = await make_gateway(dlp={"enabled": True})
    key, _ = await make_key()
    escaped = "".join(f"\\u{ord(c):04x}" for c in SECRET)  # each character as \uXXXX: no raw-byte match
    raw = b'{"model": "claude-fast", "max_tokens": 8, "messages": [{"role": "user", "content": "' + escaped.encode()
    raw += b'"}]}'
    assert await send_raw(gateway, raw, key) == 200
    sent = upstream.requests[-1].json
    assert sent["messages"][0]["content"] == "[REDACTED:github_token:1]"


def exchange(body: bytes) -> Exchange:
    request = make_mocked_request("POST", "/v1/messages")
    return Exchange(ErrorShape.ANTHROPIC, "messages", request, body, {"model": "claude-quality"}, "r1", sketched=True)


@pytest.mark.parametrize("enabled_for", ["claude-fast", None], ids=["other-alias", "nowhere"])
async def test_an_alias_without_dlp_leaves_the_body_unparsed(enabled_for: str | None) -> None:
    models = {m: ModelAlias(name=m, provider="anthropic", model=m) for m in ("claude-fast", "claude-quality")}
    aliases = {enabled_for: DlpPolicy(enabled=True)} if enabled_for else {}
    stage = PreventDataLoss(DlpConfig(aliases=aliases), models, RoutingConfig(), Metrics(), FindingsLog(None))  # type: ignore[arg-type]
    ex = exchange(planted(CLAUDE_CODE_BODY))
    seen: list[Exchange] = []

    async def relay(e: Exchange) -> None:
        seen.append(e)

    await stage(ex, relay)
    assert seen == [ex] and ex.sketched and ex.body == {"model": "claude-quality"}
