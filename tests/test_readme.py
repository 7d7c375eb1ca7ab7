"""The README's quick start and admin workflow, every shell command run as written, in a fresh clone.

What differs from a new operator's shell, and why:
- The clone is `git clone` of this checkout's committed HEAD (commit README edits before running this), made
  in a temporary directory outside /tmp/pytest-of-<user>: the embedded PostgreSQL runs as `nobody` when we are
  root and needs o+x on the directories above it, which pytest resets there whenever any pytest run starts.
- `GATEWAY_VENV` points ./scripts/* at the `.venv` this test runs in, so the clone does not spend 15 s
  installing its own; scripts/_venv.sh then puts the clone's own code first on PYTHONPATH, so what runs is the
  clone's code with the already-installed dependencies. (A fresh clone without it: see the report of issue 18,
  about 15 s and 116 MB for ./scripts/serve.)
- `ANTHROPIC_BASE_URL` points the shipped gateway.yaml at the fake upstream (tests/fakes/), and `PORT` at a free
  port, which replaces `127.0.0.1:8000` in the commands; `gw-...` in `KEY=gw-...` is the key the first start
  printed. Everything else, placeholders such as `sk-ant-...` and `<their token>` included, runs literally.
- `./scripts/serve` runs in the background (a person leaves it in its own terminal); the other commands run in one
  bash session, in order, with `set -euo pipefail`, so an `export` carries on as it does for a person.

Parametrized: the embedded database (no DATABASE_URL), and an external one (DATABASE_URL = the test database).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import orjson
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.net import free_port

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("## Quick start", "## Users and keys (admin workflow)")
KEY = re.compile(r"gw-[0-9a-f]{16}_[A-Za-z0-9_-]+")
MARK = "=== README command "


def section(text: str, heading: str) -> str:
    start = text.index(heading + "\n")
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else len(text)]


def shell_commands(readme: str) -> list[str]:
    """Every command of the ```bash blocks of the two sections, continuation lines joined, in order."""
    commands: list[str] = []
    for heading in SECTIONS:
        for block in re.findall(r"```bash\n(.*?)```", section(readme, heading), re.DOTALL):
            pending = ""
            for line in block.splitlines():
                pending += line
                if pending.endswith("\\"):
                    pending = pending[:-1] + " "
                    continue
                if pending.strip():
                    commands.append(pending.strip())
                pending = ""
    return commands


@pytest.fixture
def clone() -> Iterator[Path]:
    parent = Path(tempfile.mkdtemp(prefix="gateway-readme-"))
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(parent / "ai-gateway")], check=True, timeout=120)
    yield parent / "ai-gateway"
    shutil.rmtree(parent, ignore_errors=True)


def test_readme_commands_are_the_expected_ones() -> None:
    """The extraction itself: a README edit that drops a step must fail here, not silently shrink the test."""
    commands = [c.split("#")[0].strip() for c in shell_commands((ROOT / "README.md").read_text())]
    assert commands[:2] == ["export ANTHROPIC_API_KEY=sk-ant-...", "./scripts/serve"]
    assert any(c.startswith("ADMIN=$(./scripts/gateway keys create") for c in commands)
    assert sum(c.startswith("curl") for c in commands) >= 8
    assert not any(c.startswith(("gateway ", "./scripts/test")) for c in commands)  # no bare `gateway`, no recursion


@pytest.mark.parametrize("database", ["embedded", "external"])
async def test_quick_start_and_admin_workflow_as_written(
    clone: Path, upstream: FakeUpstream, database_url: str, pool: asyncpg.Pool, database: str
) -> None:
    """`pool` empties the test database first: the external case must start, as a new operator does, keyless."""
    readme = (clone / "README.md").read_text()
    commands = shell_commands(readme)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ANTHROPIC_", "DATABASE_URL"))}
    env |= {"GATEWAY_VENV": str(Path(sys.prefix)), "ANTHROPIC_BASE_URL": upstream.url, "PORT": str(port)}
    env |= {"DATABASE_URL": database_url} if database == "external" else {}
    env.pop("PYTHONPATH", None)

    serve_at = next(i for i, c in enumerate(commands) if c.split("#")[0].strip().endswith("./scripts/serve"))
    before, serve_line, after = commands[:serve_at], commands[serve_at], commands[serve_at + 1 :]
    # The commands before serve (the export) apply to it too, as they do in the person's terminal.
    prologue = "".join(f"{c}\n" for c in before)
    out, err = clone / "serve.out", clone / "serve.err"
    server = start_in_background(f"set -euo pipefail\n{prologue}exec {serve_line.split('#')[0].strip()}", clone, env)
    try:
        # The fake upstream answers on this test's event loop: every blocking wait runs in a thread.
        key = await asyncio.to_thread(wait_for_first_key, server, out, err)
        assert "./scripts/gateway keys create --name NAME --admin" in out.read_text()

        script = ["set -euo pipefail", *before]
        for n, command in enumerate(after):
            command = command.replace("127.0.0.1:8000", f"127.0.0.1:{port}").replace("KEY=gw-...", f"KEY={key}")
            script += [f"echo '{MARK}{n}'", f"echo '{MARK}{n}' >&2", command, "echo"]
        done = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-c", "\n".join(script)],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        outputs = dict(split_by_marks(done.stdout))
        assert done.returncode == 0, f"{done.stderr}\n{done.stdout}"
        check_outputs(after, outputs, done.stderr, database)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)  # the person's Ctrl-C, to the gateway alone
        code = await asyncio.to_thread(server.wait, 30)
    assert code == 0, err.read_text()
    if database == "embedded":
        assert not (clone / ".gateway" / "pgdata" / "postmaster.pid").exists()  # its PostgreSQL stopped with it


def start_in_background(script: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`script` in bash, its stdout and stderr in cwd/serve.out and cwd/serve.err (a person's other terminal)."""
    with (cwd / "serve.out").open("w") as stdout, (cwd / "serve.err").open("w") as stderr:
        return subprocess.Popen(
            ["bash", "-c", script], cwd=cwd, env=env, stdout=stdout, stderr=stderr, start_new_session=True
        )


def wait_for_first_key(server: subprocess.Popen[bytes], out: Path, err: Path, timeout_s: float = 120) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := KEY.search(out.read_text()):
            return found.group(0)
        assert server.poll() is None, f"./scripts/serve exited: {err.read_text()}"
        time.sleep(0.1)
    raise AssertionError(f"no first admin key printed in {timeout_s} s: {err.read_text()}")


def split_by_marks(stdout: str) -> Iterator[tuple[int, str]]:
    for chunk in stdout.split(MARK)[1:]:
        number, _, output = chunk.partition("\n")
        yield int(number), output.strip()


def check_outputs(commands: list[str], outputs: dict[int, str], stderr: str, database: str) -> None:
    """What each command must have answered; any curl that got an error body fails here."""
    assert set(outputs) == set(range(len(commands))), "every command ran"
    for n, command in enumerate(commands):
        answer = outputs[n]
        with contextlib.suppress(orjson.JSONDecodeError):
            parsed = orjson.loads(answer) if answer else None
            assert not (isinstance(parsed, dict) and "error" in parsed), f"{command}\n-> {answer}"
        words = shlex.split(command, comments=True)
        if "/v1/messages" in command:
            assert orjson.loads(answer)["type"] == "message", answer
        elif "/v1/chat/completions" in command:
            assert answer.startswith("data: {") and answer.rstrip().endswith("data: [DONE]"), answer
        elif words[:2] == ["echo", "$ADA"]:
            created = orjson.loads(answer)
            assert created["apiKey"].startswith("gw-") and created["claudecodeUserKey"] == "<their token>"
        elif command.endswith("/regenerate") or "regenerate" in command:
            assert orjson.loads(answer)["apiKey"] == orjson.loads(answer)["newApiKey"]
        elif "increase-token-limit" in command:
            assert orjson.loads(answer)["newLimit"] > 1_000_000
        elif "usage-history" in command:
            assert orjson.loads(answer)["history"] == []
        elif command.endswith('/usage -H "Authorization: Bearer $ADMIN"'):
            assert [u["email"] for u in orjson.loads(answer)] == ["ada@example.com"]
        elif "-X DELETE" in command:
            assert orjson.loads(answer) == {"success": True}
    where = "gateway: database embedded at " if database == "embedded" else "gateway: database postgres@"
    assert where in stderr  # the CLI said which database it opened
