"""simonw's `llm` CLI against the gateway: configured as an OpenAI-compatible model, as a user would.

The CLI runs as a subprocess started with asyncio, so the gateway keeps serving on this test's loop
while the CLI waits for its answer. Plugins are off (LLM_LOAD_PLUGINS=""), so only llm's built-in
OpenAI support is exercised.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import flushed_usage
from tests.fakes.upstream import WORDS, FakeUpstream

REPLY = " ".join(WORDS[:5])  # the fake's default reply


def write_llm_config(user_path: Path, gateway: TestServer, key: str) -> None:
    """What the README tells a user to write: the gateway aliases as extra OpenAI models, the key under a name."""
    api_base = str(gateway.make_url("/v1"))
    (user_path / "extra-openai-models.yaml").write_text(
        f"""\
- model_id: gw-fast
  model_name: claude-fast
  api_base: {api_base}
  api_key_name: gateway
  supports_tools: true
- model_id: gw-quality
  model_name: claude-quality
  api_base: {api_base}
  api_key_name: gateway
  reasoning: true
"""
    )
    (user_path / "keys.json").write_text(json.dumps({"gateway": key}))  # what `llm keys set gateway` writes


async def run_llm(user_path: Path, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "LLM_USER_PATH": str(user_path), "LLM_LOAD_PLUGINS": ""}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llm", *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), stderr.decode()


@pytest.fixture
def llm_home(tmp_path: Path, gateway: TestServer, key: str) -> Path:
    write_llm_config(tmp_path, gateway, key)
    return tmp_path


@pytest.mark.parametrize(
    ("flags", "streamed"), [pytest.param([], True, id="stream"), pytest.param(["--no-stream"], False, id="no-stream")]
)
async def test_llm_prompt_prints_the_reply_and_is_billed(
    llm_home: Path,
    gateway: TestServer,
    upstream: FakeUpstream,
    pool: asyncpg.Pool,
    flags: list[str],
    streamed: bool,
) -> None:
    code, out, err = await run_llm(llm_home, "-m", "gw-fast", *flags, "say hi")
    assert code == 0, err
    assert out.strip() == REPLY
    sent = upstream.requests[-1].json
    assert sent["model"] == "claude-haiku-4-5" and sent.get("stream", False) is streamed
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "say hi"}]}]
    [row] = await flushed_usage(gateway, pool)
    assert (row["alias"], row["status"], row["streamed"]) == ("claude-fast", 200, streamed)
    assert row["input_tokens"] > 0 and row["output_tokens"] == 5


async def test_llm_records_the_usage_the_gateway_reports(llm_home: Path, upstream: FakeUpstream) -> None:
    upstream.usage(input_tokens=30, output_tokens=5, cache_read_input_tokens=12)
    code, _, err = await run_llm(llm_home, "-m", "gw-fast", "-s", "Be brief.", "say hi")
    assert code == 0, err
    assert upstream.requests[-1].json["system"] == [{"type": "text", "text": "Be brief."}]
    code, out, err = await run_llm(llm_home, "logs", "--json", "-n", "1")
    assert code == 0, err
    [logged] = json.loads(out)
    assert (logged["model"], logged["response"]) == ("gw-fast", REPLY)
    assert (logged["input_tokens"], logged["output_tokens"]) == (42, 5)  # prompt tokens include cache reads


async def test_llm_tool_call_round_trip(llm_home: Path, upstream: FakeUpstream) -> None:
    # The fake calls the first tool it is offered, with {"q": "fake"}, when the prompt says "use_tool".
    lookup = 'def lookup(q: str) -> str:\n    "Look something up."\n    return f"{q}: forty-two"'
    code, out, err = await run_llm(llm_home, "-m", "gw-fast", "--functions", lookup, "--td", "use_tool now")
    assert code == 0, err
    assert "lookup({'q': 'fake'})" in err and "fake: forty-two" in err  # --td: the tool call and its result
    first, second = (r.json for r in upstream.requests)
    assert first["tools"] == [
        {
            "name": "lookup",
            "description": "Look something up.",
            "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        }
    ]
    assert second["messages"][0] == first["messages"][0]
    [*_, tool_use] = second["messages"][1]["content"]
    assert (tool_use["type"], tool_use["name"], tool_use["input"]) == ("tool_use", "lookup", {"q": "fake"})
    assert second["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": tool_use["id"], "content": "fake: forty-two"}],
    }
    assert out.strip().endswith(REPLY)


async def test_llm_reasoning_effort_option(llm_home: Path, upstream: FakeUpstream) -> None:
    code, out, err = await run_llm(llm_home, "-m", "gw-quality", "-o", "reasoning_effort", "low", "think")
    assert code == 0, err
    assert out.strip() == REPLY
    assert upstream.requests[-1].json["thinking"] == {"type": "enabled", "budget_tokens": 1024}


async def test_llm_shows_the_gateways_error(llm_home: Path, upstream: FakeUpstream) -> None:
    (llm_home / "keys.json").write_text(json.dumps({"gateway": "gw-0123456789abcdef_nope"}))
    code, out, err = await run_llm(llm_home, "-m", "gw-fast", "say hi")
    assert code != 0 and out == ""
    assert "invalid or revoked API key" in err
    assert upstream.requests == []
