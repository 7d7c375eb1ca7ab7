"""The real Claude Code CLI on a model behind an OpenAI-compatible server, through the gateway.

Claude Code speaks only the Messages API; the alias it is given is served by a provider of `type: openai`
(the fake upstream's `/v1/chat/completions`), so every turn is translated both ways: its 24 tools become
function tools, its streamed answer is rebuilt as the Anthropic event sequence it parses strictly, and a tool
call it runs comes back as a `tool` message. Skipped when the CLI is not installed (see tests/test_claude_code.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import GatewayFactory, flushed_usage
from tests.fakes.upstream import REPLY_TEXT, FakeUpstream, openai_events_for
from tests.test_claude_code import claude_binary, claude_env, run_claude

OPENAI_KEY = "sk-openai-upstream-secret"
ALIAS, PROVIDER_MODEL = "gpt-fast", "gpt-4o-mini"
FIVE_WORDS = " ".join(REPLY_TEXT.split()[:5])  # the fake's default reply: its first `chunks` (5) words


@pytest.fixture(scope="module")
def claude() -> str:
    binary = claude_binary()
    if binary is None:
        pytest.skip("Claude Code CLI not found; install it with `npm install --prefix .ci @anthropic-ai/claude-code`")
    return binary


@pytest.fixture
async def gateway(make_gateway: GatewayFactory, upstream: FakeUpstream) -> TestServer:
    """Every model id Claude Code asks for (its own claude-* ids for background work too) lands on the alias."""
    return await make_gateway(
        providers={
            "openai": {
                "type": "openai",
                "base_url": f"{upstream.url}/v1",
                "api_key": OPENAI_KEY,
                "retries": {"attempts": 1},
            }
        },
        models={ALIAS: {"provider": "openai", "model": PROVIDER_MODEL}},
        routing={"rules": [{"match": "claude-*", "alias": ALIAS}]},
        pricing={PROVIDER_MODEL: {"input": 0.15, "output": 0.60, "cache_write": 0.0, "cache_read": 0.075}},
    )


def chat_posts(upstream: FakeUpstream) -> list[dict[str, Any]]:
    """The bodies the provider received; each must have gone to the OpenAI endpoint with our key."""
    posts = [r for r in upstream.requests if r.method == "POST"]
    assert posts, "Claude Code reached the gateway but the gateway called no provider"
    for r in posts:
        assert r.path == "/v1/chat/completions", r.path
        assert r.headers["authorization"] == f"Bearer {OPENAI_KEY}" and "x-api-key" not in r.headers
    return [dict(r.json) for r in posts]


async def test_claude_code_says_hi_through_an_openai_backend(
    claude: str, gateway: TestServer, upstream: FakeUpstream, key: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    env = claude_env(gateway, tmp_path, ANTHROPIC_AUTH_TOKEN=key)
    code, out, err, seconds = await run_claude(claude, ["-p", "say hi", "--model", ALIAS], env, tmp_path)

    assert code == 0, f"exit {code} after {seconds:.1f} s\nstdout: {out}\nstderr: {err}"
    assert FIVE_WORDS in out
    bodies = chat_posts(upstream)
    assert {b["model"] for b in bodies} == {PROVIDER_MODEL}
    first = bodies[0]
    assert first["stream"] is True and first["stream_options"] == {"include_usage": True}
    assert first["messages"][0]["role"] == "system" and "Claude" in first["messages"][0]["content"]
    assert "Bash" in {t["function"]["name"] for t in first["tools"]}
    assert not {"thinking", "context_management", "output_config", "metadata"} & set(first)

    rows = await flushed_usage(gateway, pool)
    assert len(rows) == len(bodies)
    assert {(r["alias"], r["provider"], r["provider_model"], r["status"]) for r in rows} == {
        (ALIAS, "openai", PROVIDER_MODEL, 200)
    }
    assert all(r["input_tokens"] > 0 and r["output_tokens"] == 5 and r["cost_usd"] > 0 for r in rows)


async def test_claude_code_runs_a_tool_called_by_an_openai_backend(
    claude: str, gateway: TestServer, upstream: FakeUpstream, key: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    # A streamed tool call (arguments in fragments) that the gateway rebuilds as tool_use + input_json_delta.
    bash = {"command": "echo hi-from-bash", "description": "Print a greeting"}
    upstream.enqueue(events=openai_events_for(tool_call_completion("Bash", bash), include_usage=True))
    args = ["-p", "run echo", "--model", ALIAS, "--allowedTools", "Bash"]
    code, out, err, seconds = await run_claude(
        claude, args, claude_env(gateway, tmp_path, ANTHROPIC_AUTH_TOKEN=key), tmp_path
    )

    assert code == 0, f"exit {code} after {seconds:.1f} s\nstdout: {out}\nstderr: {err}"
    assert FIVE_WORDS in out  # the fake's default reply to the tool result ends the turn
    first, second = chat_posts(upstream)
    assert first["model"] == second["model"] == PROVIDER_MODEL
    call, result = second["messages"][-2:]
    assert call["role"] == "assistant" and call["content"] == "Running it."
    [tool_call] = call["tool_calls"]
    assert tool_call["id"] == "call_fake_bash" and tool_call["function"]["name"] == "Bash"
    assert orjson.loads(tool_call["function"]["arguments"]) == bash
    assert result == {"role": "tool", "tool_call_id": "call_fake_bash", "content": "hi-from-bash"}
    rows = await flushed_usage(gateway, pool)
    assert [(r["status"], r["streamed"]) for r in rows] == [(200, True), (200, True)]
    assert rows[0]["input_tokens"] == 10 and rows[0]["output_tokens"] == 5


def tool_call_completion(tool: str, tool_input: dict[str, Any]) -> dict[str, Any]:
    """A chat.completion that says a few words and calls `tool`, as an OpenAI-compatible server sends it."""
    call = {
        "id": "call_fake_bash",
        "type": "function",
        "function": {"name": tool, "arguments": orjson.dumps(tool_input).decode()},
    }
    message = {"role": "assistant", "content": "Running it.", "tool_calls": [call]}
    return {
        "id": "chatcmpl-fake-tool",
        "object": "chat.completion",
        "created": 0,
        "model": PROVIDER_MODEL,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
