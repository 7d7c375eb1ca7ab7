"""Claude Code through the gateway: its captured requests replayed byte for byte, then the real CLI end to end.

Claude Code 2.1.x sends `HEAD /` (no credentials), then `POST /v1/messages?beta=true` with `stream: true`, a
77 KB body (24 tools, system blocks with cache_control, `thinking: adaptive`, a message with role "system"),
a long `anthropic-beta` list, `x-app: cli` and `X-Claude-Code-Session-Id`. The gateway must pass all of it
through untouched except the model (alias to provider model) and the credentials (caller's out, ours in).
The fixtures are captures of Claude Code 2.1.197 (tests/fixtures/).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestServer

from gateway import db
from tests.conftest import UPSTREAM_KEY, flushed_usage
from tests.fakes.upstream import REPLY_TEXT, FakeUpstream, anthropic_events_for

MakeKey = Callable[..., Awaitable[tuple[str, db.KeyRow]]]

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
CAPTURED_BODY = FIXTURES / "claude_code_stream.json"  # the first request's body, as Claude Code 2.1.197 sent it
CAPTURES = {"bearer": "claude_code_requests.jsonl", "x-api-key": "cc_api_key.jsonl"}  # ANTHROPIC_AUTH_TOKEN / _API_KEY
# Not Claude Code's to send on: connection-level headers the client library redoes, and its credentials.
NOT_FORWARDED = frozenset({"connection", "host", "content-length", "accept-encoding", "authorization", "x-api-key"})
ALIAS, PROVIDER_MODEL = "claude-fast", "claude-haiku-4-5"  # as tests/conftest.py configures them
FIVE_WORDS = " ".join(REPLY_TEXT.split()[:5])  # the fake's default reply: its first `chunks` (5) words
CLI_TIMEOUT_S = 120


def captured_requests(name: str) -> list[dict[str, Any]]:
    """One capture: a JSON object per request (method, path, query, headers, body)."""
    return [orjson.loads(line) for line in (FIXTURES / CAPTURES[name]).read_bytes().splitlines() if line.strip()]


def replay_headers(captured: dict[str, str], key: str) -> dict[str, str]:
    """The captured headers as a caller would send them through us: our key in place of Claude Code's token."""
    headers = {k: v for k, v in captured.items() if k.lower() not in NOT_FORWARDED}
    if "Authorization" in captured:
        headers["Authorization"] = f"Bearer {key}"
    if "x-api-key" in captured:
        headers["x-api-key"] = key
    return headers


_MODEL_PAIR = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"')


def with_model_placeholder(raw: bytes) -> bytes:
    """`raw` with its first (top-level, leading) "model" pair normalised, so two bodies compare byte for byte."""
    return _MODEL_PAIR.sub(b'"model":"<model>"', raw, count=1)


@pytest.mark.parametrize("capture", list(CAPTURES))
async def test_captured_claude_code_request_passes_through_byte_for_byte(
    gateway: TestServer, upstream: FakeUpstream, make_key: MakeKey, pool: asyncpg.Pool, capture: str
) -> None:
    key, row = await make_key("claude-code-user")
    head, post = captured_requests(capture)
    raw = CAPTURED_BODY.read_bytes()  # the body of the Bearer capture; the x-api-key one differs in session ids only
    body = orjson.loads(raw)
    assert raw.startswith(b'{"model": "claude-fast",') and body["stream"] is True

    async with aiohttp.ClientSession() as session:
        async with session.head(gateway.make_url(head["path"]), headers=replay_headers(head["headers"], key)) as r:
            assert r.status == 200  # Claude Code's reachability probe, sent without credentials
        url = gateway.make_url(f"{post['path']}?{post['query']}")
        async with session.post(url, data=raw, headers=replay_headers(post["headers"], key)) as r:
            assert r.status == 200, await r.text()
            assert r.content_type == "text/event-stream"
            stream = await r.text()
    assert stream.rstrip().endswith('data: {"type":"message_stop"}') and FIVE_WORDS.split()[-1] in stream

    [sent] = upstream.requests  # HEAD / is the gateway's to answer, never the provider's
    assert (sent.method, sent.path, sent.query_string) == ("POST", "/v1/messages", "beta=true")
    assert sent.json == {**body, "model": PROVIDER_MODEL}
    assert list(sent.json) == list(body)  # key order kept
    assert with_model_placeholder(sent.raw_body) == with_model_placeholder(raw)

    for name, value in post["headers"].items():
        if name.lower() not in NOT_FORWARDED:  # every anthropic-* header, x-app, the session id, user agent
            assert sent.headers.get(name) == value, name
    assert sent.headers["x-claude-code-session-id"] == post["headers"]["X-Claude-Code-Session-Id"]
    assert sent.headers["x-app"] == "cli"
    assert sent.headers["x-api-key"] == UPSTREAM_KEY and "authorization" not in {k.lower() for k in sent.headers}

    [usage] = await flushed_usage(gateway, pool)
    assert (usage["key_id"], usage["alias"], usage["provider_model"], usage["status"], usage["streamed"]) == (
        row.id,
        ALIAS,
        PROVIDER_MODEL,
        200,
        True,
    )
    assert usage["input_tokens"] == len(sent.raw_body) // 4 and usage["output_tokens"] == 5


# --- the real CLI ------------------------------------------------------------------------------------


def claude_binary() -> str | None:
    """The `claude` CLI: where .ci/run installs it (.ci/node_modules), a local node_modules, or PATH."""
    for prefix in (REPO / ".ci", REPO):
        candidate = prefix / "node_modules" / ".bin" / "claude"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("claude")


@pytest.fixture(scope="module")
def claude() -> str:
    binary = claude_binary()
    if binary is None:
        pytest.skip(
            "Claude Code CLI not found (.ci/node_modules/.bin/claude, node_modules/.bin/claude or `claude` on PATH); "
            "install it with `npm install --prefix .ci @anthropic-ai/claude-code` (.ci/run does)"
        )
    return binary


def claude_env(gateway: TestServer, home: Path, **credential: str) -> dict[str, str]:
    """Only what a user would set to point Claude Code at the gateway; no other ANTHROPIC_* variable."""
    return {
        "HOME": str(home),  # a fresh profile: no login, no settings, no history of the developer's
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "ANTHROPIC_BASE_URL": str(gateway.make_url("")),
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",  # no telemetry, update checks or other calls home
        **credential,
    }


async def run_claude(claude: str, args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str, float]:
    """Run the CLI without blocking the event loop (the gateway under test serves on it); kill it on timeout."""
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        claude,
        *args,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        pytest.fail(f"claude did not finish within {CLI_TIMEOUT_S} s\nstdout: {out.decode()}\nstderr: {err.decode()}")
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode(), time.perf_counter() - started


@pytest.mark.parametrize("credential_var", ["ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_API_KEY"])
async def test_claude_code_cli_says_hi_through_the_gateway(
    claude: str,
    gateway: TestServer,
    upstream: FakeUpstream,
    make_key: MakeKey,
    pool: asyncpg.Pool,
    tmp_path: Path,
    credential_var: str,
) -> None:
    key, row = await make_key("claude-code-user")
    env = claude_env(gateway, tmp_path, **{credential_var: key})
    code, out, err, seconds = await run_claude(claude, ["-p", "say hi", "--model", ALIAS], env, tmp_path)

    assert code == 0, f"exit {code} after {seconds:.1f} s\nstdout: {out}\nstderr: {err}"
    assert FIVE_WORDS in out
    posts = [r for r in upstream.requests if r.method == "POST"]
    assert posts, "Claude Code reached the gateway but the gateway called no provider"
    # Every call Claude Code made, background ones included, went out as a configured provider model.
    assert {r.json["model"] for r in posts} == {PROVIDER_MODEL}, [r.json["model"] for r in posts]
    assert all(r.headers["x-api-key"] == UPSTREAM_KEY for r in posts)
    first = posts[0]
    assert (first.path, first.query_string, first.json["stream"]) == ("/v1/messages", "beta=true", True)
    assert first.headers["x-app"] == "cli" and first.headers["anthropic-version"] == "2023-06-01"
    assert "claude-code-20250219" in first.headers["anthropic-beta"].split(",")

    rows = await flushed_usage(gateway, pool)
    assert len(rows) == len(posts)
    assert {(r["key_id"], r["alias"], r["provider_model"], r["status"]) for r in rows} == {
        (row.id, ALIAS, PROVIDER_MODEL, 200)
    }


@pytest.mark.parametrize("credential_var", ["ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_API_KEY"])
async def test_claude_code_with_its_own_token_runs_as_the_mapped_user(
    claude: str,
    gateway: TestServer,
    upstream: FakeUpstream,
    make_key: MakeKey,
    pool: asyncpg.Pool,
    tmp_path: Path,
    credential_var: str,
) -> None:
    """Issue 5: the token Claude Code already sends, registered as the user's claudecodeUserKey, is that user."""
    admin, _ = await make_key("ops", admin=True)
    user = {
        "email": "ada@example.com",
        "firstname": "Ada",
        "lastname": "Lovelace",
        "claudecodeUserKey": "cc-test-token",
    }
    async with (
        aiohttp.ClientSession() as s,
        s.post(str(gateway.make_url("/v1/user-api-keys")), json=user, headers={"x-api-key": admin}) as r,
    ):
        assert r.status == 201, await r.text()
        created = await r.json()

    env = claude_env(gateway, tmp_path, **{credential_var: "cc-test-token"})
    code, out, err, seconds = await run_claude(claude, ["-p", "say hi", "--model", ALIAS], env, tmp_path)

    assert code == 0, f"exit {code} after {seconds:.1f} s\nstdout: {out}\nstderr: {err}"
    assert FIVE_WORDS in out
    posts = [r for r in upstream.requests if r.method == "POST"]
    assert posts and all(r.headers["x-api-key"] == UPSTREAM_KEY for r in posts)  # the token never goes upstream
    rows = await flushed_usage(gateway, pool)
    assert len(rows) == len(posts)
    assert {str(r["user_id"]) for r in rows} == {created["id"]}
    live_key = await pool.fetchval(
        "SELECT id FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL", rows[0]["user_id"]
    )
    assert {r["key_id"] for r in rows} == {live_key}


async def test_claude_code_runs_a_tool_and_sends_its_result_back_through_the_gateway(
    claude: str, gateway: TestServer, upstream: FakeUpstream, key: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    # A streamed tool_use (input_json_delta fragments) that Claude Code must reassemble and run.
    bash = {"command": "echo hi-from-bash", "description": "Print a greeting"}
    upstream.enqueue(events=anthropic_events_for(tool_use_message("Bash", bash)))
    args = ["-p", "run echo", "--model", ALIAS, "--allowedTools", "Bash"]
    code, out, err, seconds = await run_claude(
        claude, args, claude_env(gateway, tmp_path, ANTHROPIC_AUTH_TOKEN=key), tmp_path
    )

    assert code == 0, f"exit {code} after {seconds:.1f} s\nstdout: {out}\nstderr: {err}"
    assert FIVE_WORDS in out  # the fake's default reply to the tool result ends the turn
    first, second = (r.json for r in upstream.requests if r.method == "POST")
    assert first["model"] == second["model"] == PROVIDER_MODEL
    [result] = second["messages"][-1]["content"]
    assert result["type"] == "tool_result" and result["tool_use_id"] == "toolu_fake_bash"
    assert result["content"] == "hi-from-bash" and result["is_error"] is False
    assert [r["status"] for r in await flushed_usage(gateway, pool)] == [200, 200]


def tool_use_message(tool: str, tool_input: dict[str, Any]) -> dict[str, Any]:
    """An assistant reply that calls `tool`, as the Messages API sends it."""
    return {
        "id": "msg_fake_tool",
        "type": "message",
        "role": "assistant",
        "model": PROVIDER_MODEL,
        "content": [
            {"type": "text", "text": "Running it."},
            {"type": "tool_use", "id": "toolu_fake_bash", "name": tool, "input": tool_input},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }
