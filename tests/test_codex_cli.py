"""OpenAI's Codex CLI against the gateway, configured as a custom model provider speaking the Responses API.

Codex runs as a subprocess started with asyncio, so the gateway keeps serving on this test's loop while Codex
waits for its answer. Its configuration is what the README tells a user to write: a `[model_providers.gateway]`
table with the gateway's /v1 URL, `wire_api = "responses"` and the key in an environment variable.

The CI script installs it (`npm install --prefix .ci @openai/codex`); without the binary these tests skip.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import flushed_usage
from tests.fakes.upstream import WORDS, FakeUpstream, anthropic_events_for

REPLY = " ".join(WORDS[:5])  # the fake's default reply
ROOT = Path(__file__).resolve().parent.parent
CODEX_PLACES = (ROOT / ".ci" / "node_modules" / ".bin" / "codex", ROOT / "node_modules" / ".bin" / "codex")
# Codex's shell tool has changed name and shape between releases: tool name -> arguments that run `echo hi`.
SHELL_CALLS: dict[str, dict[str, Any]] = {
    "exec_command": {"cmd": "echo hi-from-the-tool"},
    "shell_command": {"command": "echo hi-from-the-tool"},
    "shell": {"command": ["bash", "-lc", "echo hi-from-the-tool"]},
}


def find_codex() -> str | None:
    found = [str(p) for p in CODEX_PLACES if p.is_file() and os.access(p, os.X_OK)]
    return found[0] if found else shutil.which("codex")


CODEX = find_codex()
pytestmark = pytest.mark.skipif(
    CODEX is None,
    reason="codex CLI not found in .ci/node_modules/.bin, ./node_modules/.bin or PATH "
    "(npm install --prefix .ci --no-save @openai/codex)",
)


def write_codex_config(home: Path, gateway: TestServer) -> None:
    """The README's Codex setup: the gateway as a model provider, spoken to with the Responses API."""
    (home / "config.toml").write_text(
        f"""\
model_provider = "gateway"
model = "claude-fast"
check_for_update_on_startup = false

[model_providers.gateway]
name = "AI gateway"
base_url = "{gateway.make_url("/v1")}"
env_key = "GATEWAY_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
"""
    )


@pytest.fixture
def codex_home(tmp_path: Path, gateway: TestServer) -> Path:
    home = tmp_path / "codex-home"
    home.mkdir()
    write_codex_config(home, gateway)
    (tmp_path / "work").mkdir()
    return home


async def run_codex(home: Path, key: str, prompt: str) -> tuple[int, str, str]:
    assert CODEX is not None
    env = {**os.environ, "CODEX_HOME": str(home), "HOME": str(home.parent), "GATEWAY_KEY": key, "NO_COLOR": "1"}
    proc = await asyncio.create_subprocess_exec(
        CODEX,
        "exec",
        "--skip-git-repo-check",
        "--sandbox",
        "danger-full-access",  # the container has no user namespaces for Codex's sandbox; the command is harmless
        prompt,
        cwd=home.parent / "work",
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), stderr.decode()


def responses_requests(upstream: FakeUpstream) -> list[dict[str, Any]]:
    return [r.json for r in upstream.requests if r.path == "/v1/messages"]


async def test_codex_exec_says_hi(
    codex_home: Path, gateway: TestServer, upstream: FakeUpstream, pool: asyncpg.Pool, key: str
) -> None:
    code, out, err = await run_codex(codex_home, key, "say hi")
    assert code == 0, err
    assert REPLY in out
    [sent] = responses_requests(upstream)
    assert sent["model"] == "claude-haiku-4-5" and sent["stream"] is True
    [user] = sent["messages"]  # its environment context and the prompt, merged into one user turn
    assert user["role"] == "user" and user["content"][-1] == {"type": "text", "text": "say hi"}
    assert sent["system"] and "Codex" in sent["system"][0]["text"]  # its developer messages became the system prompt
    tool_names = {tool["name"] for tool in sent["tools"]}
    assert tool_names & set(SHELL_CALLS)  # its shell tool, among others
    [row] = await flushed_usage(gateway, pool)
    assert (row["route"], row["alias"], row["status"], row["streamed"]) == ("responses", "claude-fast", 200, True)


async def test_codex_runs_the_tool_the_model_calls(codex_home: Path, upstream: FakeUpstream, key: str) -> None:
    code, _, err = await run_codex(codex_home, key, "say hi")  # learn which shell tool this Codex release offers
    assert code == 0, err
    offered = {tool["name"] for tool in responses_requests(upstream)[0]["tools"]}
    shell = next(name for name in SHELL_CALLS if name in offered)
    upstream.requests.clear()

    call = {"type": "tool_use", "id": "toolu_codex_1", "name": shell, "input": SHELL_CALLS[shell]}
    message = {
        "id": "msg_codex_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": "Running it."}, call],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 50, "output_tokens": 10},
    }
    upstream.enqueue(events=anthropic_events_for(message))  # then the default text reply ends the turn
    code, out, err = await run_codex(codex_home, key, "run echo hi-from-the-tool in the shell")
    assert code == 0, err
    assert REPLY in out

    first, second = responses_requests(upstream)
    assert second["messages"][: len(first["messages"])] == first["messages"]  # the whole conversation, again
    assistant, results = second["messages"][len(first["messages"]) :]
    assert assistant["role"] == "assistant"
    assert {"type": "tool_use", "id": "toolu_codex_1", "name": shell, "input": SHELL_CALLS[shell]} in assistant[
        "content"
    ]
    [result] = results["content"]
    assert (result["type"], result["tool_use_id"]) == ("tool_result", "toolu_codex_1")
    assert "hi-from-the-tool" in str(result["content"])  # Codex ran the command and sent its output back


async def test_codex_gets_namespaced_calls_back_with_their_namespace(
    codex_home: Path, upstream: FakeUpstream, key: str
) -> None:
    # Codex offers its sub-agent tools as a `namespace`; the gateway flattens them to <namespace>__<tool> for
    # Anthropic and hands a call back as {"name": "wait_agent", "namespace": "multi_agent_v1"}.
    call = {"type": "tool_use", "id": "toolu_ns", "name": "multi_agent_v1__wait_agent", "input": {"targets": ["x"]}}
    message = {
        "id": "msg_codex_ns",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [call],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 50, "output_tokens": 10},
    }
    upstream.enqueue(events=anthropic_events_for(message))
    code, _, err = await run_codex(codex_home, key, "wait for the agent")
    assert code == 0, err
    first, second = responses_requests(upstream)
    if "multi_agent_v1__wait_agent" not in {tool["name"] for tool in first["tools"]}:
        pytest.skip("this Codex release offers no multi_agent_v1 namespace")
    assert second["messages"][-2] == {"role": "assistant", "content": [call]}  # replayed under the flat name
    [result] = second["messages"][-1]["content"]
    assert result["tool_use_id"] == "toolu_ns"
    assert "invalid agent id" in str(result["content"])  # Codex's wait_agent ran it (and refused the made-up id)


async def test_codex_thinks_and_replays_its_thinking(codex_home: Path, upstream: FakeUpstream, key: str) -> None:
    # model_reasoning_effort -> the alias's thinking budget; the thinking block goes to Codex as a reasoning item
    # whose encrypted_content Codex sends back, so Anthropic gets it, signature intact, before the tool_result.
    config = codex_home / "config.toml"
    config.write_text(
        config.read_text().replace('model = "claude-fast"', 'model = "claude-quality"\nmodel_reasoning_effort = "low"')
    )
    thinking = {"type": "thinking", "thinking": "I should run echo.", "signature": "c2lnbmF0dXJl"}
    call = {"type": "tool_use", "id": "toolu_think", "name": "exec_command", "input": {"cmd": "echo thought"}}
    message = {
        "id": "msg_codex_think",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [thinking, call],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 50, "output_tokens": 10},
    }
    upstream.enqueue(events=anthropic_events_for(message))
    code, out, err = await run_codex(codex_home, key, "think, then run echo thought")
    assert code == 0, err
    first, second = responses_requests(upstream)
    if "exec_command" not in {tool["name"] for tool in first["tools"]}:
        pytest.skip("this Codex release has no exec_command tool")
    assert first["thinking"] == {"type": "enabled", "budget_tokens": 1024}  # the test config's claude-quality budget
    assert second["messages"][-2] == {"role": "assistant", "content": [thinking, call]}
    assert "thought" in str(second["messages"][-1]["content"][0]["content"])
    assert REPLY in out
