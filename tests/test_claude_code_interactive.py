"""A real, interactive Claude Code session through the gateway: the `claude` TUI in tmux, typed into and read back.

Not `claude -p`: the interactive CLI starts the way a developer's does (HEAD / probe, session-title calls in the
background, the full tool list, permission handling) and keeps one conversation across prompts. The test types
two prompts with `tmux send-keys` and reads the screen with `tmux capture-pane`; the second prompt makes the
(fake) model call Claude Code's Bash tool, whose output must come back through the gateway as a tool_result.

What Claude Code 2.1.197 needs to start straight at its prompt, found by driving it: a `~/.claude.json` with
`hasCompletedOnboarding: true` (else the theme picker and the security notes come first) and the working
directory under `projects` with `hasTrustDialogAccepted: true` (else "Is this a project you created or one you
trust?"). ANTHROPIC_AUTH_TOKEN raises no "use this API key?" question (ANTHROPIC_API_KEY would). As root it
refuses both --dangerously-skip-permissions and --permission-mode bypassPermissions, so none is passed: a
plain `echo` needs no permission, and a permission question, should one appear, is answered with Enter.

The session authenticates with the token registered as a user's claudecodeUserKey (made through the admin
API), so every usage row must belong to that user. Skipped when tmux or the claude CLI is missing; .ci/run
installs both (apt-get tmux, npm @anthropic-ai/claude-code).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shlex
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
import yaml
from aiohttp.test_utils import TestServer

from gateway import db
from tests.conftest import UPSTREAM_KEY, GatewayFactory, flushed_usage
from tests.fakes.upstream import REPLY_TEXT, FakeUpstream, Scripted, _Call, anthropic_events_for
from tests.test_claude_code import claude_binary

MakeKey = Callable[..., Awaitable[tuple[str, db.KeyRow]]]

REPO = Path(__file__).resolve().parents[1]
ALIAS, PROVIDER_MODEL = "claude-fast", "claude-haiku-4-5"  # as tests/conftest.py configures them
FIRST_REPLY = " ".join(REPLY_TEXT.split()[:5])  # the fake's default answer: its first 5 words
TOOL_ID, TOOL_OUTPUT = "toolu_tmux_bash", "hi-from-tmux"
SCREEN_TIMEOUT_S = 90  # the first start of the CLI (a 200 MB binary) can be slow on a cold CI machine


class ClaudeCodeUpstream(FakeUpstream):
    """The fake upstream, playing a model that runs Bash when asked to "use_tool" and reports what it printed.

    Claude Code sends background calls (session titles) next to each turn, in no fixed order, so the reply
    is chosen by what a request holds, not by a queue: a turn whose last user message asks to use_tool gets
    a Bash tool_use; the turn carrying its tool_result gets a text naming the output; anything else the
    fake's default text.
    """

    def _messages_reply(self, call: _Call, script: Scripted) -> Scripted:
        body = call.body or {}
        users = [m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
        last = users[-1]["content"] if users else ""
        results = [b for b in last if isinstance(b, dict) and b.get("type") == "tool_result"] if last else []
        if body.get("tools") and results and results[0].get("tool_use_id") == TOOL_ID:
            said = results[0].get("content")
            text = said if isinstance(said, str) else " ".join(b.get("text", "") for b in said or [])
            return replace(script, events=anthropic_events_for(reply([text_block(f"The tool said: {text}")])))
        if body.get("tools") and not results and "use_tool" in json.dumps(last):
            bash = {"command": f"echo {TOOL_OUTPUT}", "description": "Print a greeting"}
            content = [text_block("Running it."), {"type": "tool_use", "id": TOOL_ID, "name": "Bash", "input": bash}]
            return replace(script, events=anthropic_events_for(reply(content, "tool_use")))
        return super()._messages_reply(call, script)


def text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def reply(content: list[dict[str, Any]], stop_reason: str = "end_turn") -> dict[str, Any]:
    """A Messages API reply with `content`, as the provider model would send it."""
    return {
        "id": f"msg_tmux_{secrets.token_hex(6)}",
        "type": "message",
        "role": "assistant",
        "model": PROVIDER_MODEL,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 40, "output_tokens": 9},
    }


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    """This module's upstream (make_gateway points the gateway at it): the tool-calling fake above."""
    fake = ClaudeCodeUpstream()
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
def tools() -> tuple[str, str]:
    """The tmux and claude executables, or a skip saying which is missing and how CI installs it."""
    tmux, claude = shutil.which("tmux"), claude_binary()
    if tmux is None:
        pytest.skip("tmux not found on PATH: install it (`apt-get install tmux`; .ci/run does) to drive Claude Code")
    if claude is None:
        pytest.skip(
            "Claude Code CLI not found (.ci/node_modules/.bin/claude or `claude` on PATH): "
            "`npm install --prefix .ci @anthropic-ai/claude-code` (.ci/run does)"
        )
    return tmux, claude


class Tmux:
    """One private tmux server (its socket in the test's tmp dir) running one session; every call is a subprocess
    the event loop awaits, so the gateway under test keeps serving meanwhile."""

    def __init__(self, tmux: str, socket: Path) -> None:
        self._tmux, self._socket, self.session = tmux, socket, "claude"

    async def run(self, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            self._tmux,
            "-S",
            str(self._socket),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)}: exit {proc.returncode}: {err.decode().strip()}")
        return out.decode()

    async def start(self, command: list[str], cwd: Path) -> None:
        # The pane stays after the CLI exits (its status printed), so a failure can still be read.
        shell = f'{shlex.join(command)}; echo "[claude exited: $?]"; sleep 600'
        await self.run("new-session", "-d", "-s", self.session, "-x", "160", "-y", "50", "-c", str(cwd), shell)

    async def screen(self) -> str:
        """The whole pane, scroll-back included, wrapped lines joined."""
        return await self.run("capture-pane", "-p", "-J", "-S", "-", "-t", self.session)

    async def type(self, text: str) -> None:
        await self.run("send-keys", "-t", self.session, "-l", text)
        await asyncio.sleep(0.3)  # let the input box take the text before Enter submits it
        await self.run("send-keys", "-t", self.session, "Enter")

    async def press(self, key: str) -> None:
        await self.run("send-keys", "-t", self.session, key)

    async def kill(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            self._tmux, "-S", str(self._socket), "kill-server", stderr=asyncio.subprocess.DEVNULL
        )
        await proc.wait()


async def wait_for_screen(tmux: Tmux, upstream: FakeUpstream, *needles: str, count: int = 1) -> str:
    """Poll the pane (sleeping on the event loop, so the gateway keeps serving) until each needle shows
    `count` times; answer a permission question on the way. Fails with the screen and what the upstream saw."""
    deadline = time.monotonic() + SCREEN_TIMEOUT_S
    while True:
        screen = await tmux.screen()
        if all(screen.count(needle) >= count for needle in needles):
            return screen
        if "Do you want to proceed?" in screen:
            await tmux.press("Enter")  # "1. Yes" is preselected
        if "[claude exited" in screen or time.monotonic() > deadline:
            seen = [(r.method, r.path, r.json.get("model") if r.raw_body else None) for r in upstream.requests]
            pytest.fail(f"waited for {needles!r} (x{count}); upstream saw {seen}\n--- screen ---\n{screen}")
        await asyncio.sleep(0.25)


async def register_user(server: TestServer, admin_key: str, token: str) -> str:
    """A user made through the admin API with `token` as its claudecodeUserKey; returns the user id."""
    body = {"email": "dev@example.com", "firstname": "Dev", "lastname": "Eloper", "claudecodeUserKey": token}
    headers = {"Authorization": f"Bearer {admin_key}"}
    url = server.make_url("/v1/user-api-keys")
    async with aiohttp.ClientSession() as session, session.post(url, json=body, headers=headers) as r:
        answer = await r.json()
        assert r.status == 201, answer
    return str(answer["id"])


def seed_profile(home: Path, project: Path) -> None:
    """What Claude Code 2.1.197 needs to open at its prompt: onboarding done and the project trusted."""
    profile = {"hasCompletedOnboarding": True, "projects": {str(project): {"hasTrustDialogAccepted": True}}}
    (home / ".claude.json").write_bytes(orjson.dumps(profile))


async def test_interactive_claude_code_session_in_tmux(
    tools: tuple[str, str],
    make_gateway: GatewayFactory,
    upstream: FakeUpstream,
    make_key: MakeKey,
    pool: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    """Two prompts typed into the interactive CLI; the second has the model run Bash. The screen shows both
    answers, the provider got every call as the mapped model, and every usage row is the registered user's."""
    tmux_path, claude = tools
    routing = yaml.safe_load((REPO / "gateway.yaml").read_text())["routing"]  # as shipped: haiku ids -> claude-fast
    premium = {"claude-premium": {"provider": "anthropic", "model": "claude-opus-4-5"}}  # the rules name it
    gateway = await make_gateway(routing=routing, models=premium)
    admin_key, _ = await make_key("ops", admin=True)
    token = f"cc-{secrets.token_urlsafe(24)}"  # what the developer's Claude Code already sends
    user_id = await register_user(gateway, admin_key, token)

    home, project = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    project.mkdir()
    project = project.resolve()
    seed_profile(home, project)
    env = {
        "HOME": str(home),
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),  # node, when claude is its npm script
        "TERM": "xterm-256color",
        "ANTHROPIC_BASE_URL": str(gateway.make_url("")),
        "ANTHROPIC_AUTH_TOKEN": token,
        "ANTHROPIC_MODEL": ALIAS,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    tmux = Tmux(tmux_path, tmp_path / "tmux.sock")
    await tmux.start(["env", "-i", *(f"{k}={v}" for k, v in env.items()), claude], project)
    try:
        await wait_for_screen(tmux, upstream, "? for shortcuts")
        await tmux.type("say hi")
        await wait_for_screen(tmux, upstream, FIRST_REPLY)
        await tmux.type("please use_tool to run echo")
        screen = await wait_for_screen(tmux, upstream, f"The tool said: {TOOL_OUTPUT}")
        posts = [r for r in upstream.requests if r.method == "POST"]
        rows = await settled_usage(gateway, pool, len(posts))  # before the CLI goes: no call cut short
    finally:
        await tmux.kill()

    # The transcript: both prompts, the first answer, the Bash call with its output, the answer to its result.
    for expected in ("say hi", FIRST_REPLY, "please use_tool to run echo", "Running it.", f"Bash(echo {TOOL_OUTPUT})"):
        assert expected in screen, f"{expected!r} not on screen:\n{screen}"
    assert screen.index(FIRST_REPLY) < screen.index("Running it.") < screen.index(f"The tool said: {TOOL_OUTPUT}")

    assert {r.json["model"] for r in posts} == {PROVIDER_MODEL}, [r.json["model"] for r in posts]
    assert all(r.headers["x-api-key"] == UPSTREAM_KEY and token not in str(r.headers) for r in posts)
    turns = [r.json for r in posts if r.json.get("tools")]  # the conversation itself; the rest is background
    assert len(turns) >= 3  # first prompt, second prompt, its tool result
    [result] = [b for b in turns[-1]["messages"][-1]["content"] if b.get("type") == "tool_result"]
    assert (result["tool_use_id"], result["content"], result["is_error"]) == (TOOL_ID, TOOL_OUTPUT, False)
    assert {(str(r["user_id"]), r["alias"], r["provider_model"], r["status"]) for r in rows} == {
        (user_id, ALIAS, PROVIDER_MODEL, 200)
    }


async def settled_usage(server: TestServer, pool: asyncpg.Pool, expected: int) -> list[dict[str, Any]]:
    """The usage rows once there is one per upstream request (a background call may still be finishing)."""
    for _ in range(100):  # up to 10 s
        if len(rows := await flushed_usage(server, pool)) >= expected:
            break
        await asyncio.sleep(0.1)
    assert len(rows) == expected, rows
    return rows
