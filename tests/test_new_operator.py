"""A new operator's mistakes on a fresh machine (issue a18), each as it happened, with what they should see.

The CLI and `gateway serve` run as subprocesses, as typed; helpers come from tests/test_first_hour.py.
"""

from __future__ import annotations

import asyncio
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.net import free_port
from tests.pg import create_test_database
from tests.test_first_hour import ROOT, Served, clean_env, cli, write_config
from tests.test_readme import KEY


@pytest.fixture
def empty_database() -> Iterator[str]:
    """A database with no schema and no key: what `DATABASE_URL` names on a first start."""
    dsn, drop = asyncio.run(create_test_database())
    yield dsn
    asyncio.run(drop())


def test_first_admin_key_is_not_lost_when_the_port_is_taken(tmp_path: Path, empty_database: str) -> None:
    """The first start found port 8000 taken: its admin key was made but never printed, and no later start
    prints one (the key table is no longer empty), leaving the operator without an admin key."""
    config = write_config(tmp_path, "http://127.0.0.1:9")
    env = clean_env(DATABASE_URL=empty_database)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        refused = cli(config, "serve", "--port", str(taken.getsockname()[1]), env=env)
    assert refused.returncode == 1
    assert "already in use" in refused.stderr
    assert "First admin key" not in refused.stdout
    listed = cli(config, "keys", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "first-admin" not in listed.stdout  # nothing was made that nobody saw

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(config), "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert server.stdout is not None
        printed = "".join(server.stdout.readline() for _ in range(5))
        assert "First admin key" in printed
        assert KEY.search(printed), printed
        _wait_until_healthy(port)  # a SIGTERM while it still starts would be answered only after its start-up
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:  # never leave a server (and its pipe) behind for the next test
            server.kill()
            server.wait(10)
        assert server.stdout is not None
        server.stdout.close()


def _wait_until_healthy(port: int, within_s: float = 60.0) -> None:
    """Poll GET /health until it answers 200 (the server has finished starting)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"gateway on port {port} did not become healthy within {within_s:g} s")
        time.sleep(0.1)


def _check(tmp_path: Path, text: bytes | str, **env: str) -> subprocess.CompletedProcess[str]:
    """`gateway config check FILE` on the shipped gateway.yaml with one edit, as an operator types it."""
    path = tmp_path / "gateway.yaml"
    if isinstance(text, str):
        path.write_text(text)
    else:
        path.write_bytes(text)
    return cli(path, "config", "check", str(path), env=clean_env(**env))


SHIPPED = (ROOT / "gateway.yaml").read_text()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        pytest.param(
            ("${ANTHROPIC_API_KEY:-}", "${ANTHROPIC_API_KEY"),
            "providers.anthropic.api_key: a `${` that is not ${VAR} or ${VAR:-default} (VAR: letters, digits, _)",
            id="unclosed-brace",
        ),
        pytest.param(
            ("${ANTHROPIC_API_KEY:-}", "${ANTHROPIC-API-KEY}"),
            "providers.anthropic.api_key: a `${` that is not ${VAR} or ${VAR:-default} (VAR: letters, digits, _)",
            id="dashes-in-name",
        ),
        pytest.param(
            ("url: ${DATABASE_URL:-}", "url: secretpw@localhost:5432"),
            "database.url: not a postgresql:// URL (e.g. postgresql://gateway:PASSWORD@db:5432/gateway)",
            id="database-url-without-scheme",
        ),
        pytest.param(
            ("pool_min: 1\n", "pool_min: 20\n"),
            "database.pool_min: 20 is more than pool_max (10)",
            id="pool-min-above-max",
        ),
        pytest.param(
            ("pool_min: 1\n", "pool_min: -1\n"), "database.pool_min: must be 0 or more, got -1", id="pool-min-negative"
        ),
        pytest.param(
            ("host: ${GATEWAY_HOST:-127.0.0.1}", "host: ''"),
            "server.host: empty (leave the key out for the default)",
            id="empty-host-listened-everywhere",
        ),
        pytest.param(
            ("model: ${CLAUDE_FAST_MODEL:-claude-haiku-4-5}", "model: ${CLAUDE_FAST_MODEL:-}"),
            "models.claude-fast.model: empty",
            id="empty-model",
        ),
        pytest.param(
            ("embedded_data_dir: ./.gateway/pgdata", "embedded_data_dir: ''"),
            "database.embedded_data_dir: empty (leave the key out for the default)",
            id="empty-data-dir",
        ),
        pytest.param(
            ("flush_rows: 500", "flush_rows: 500\n  spill_dir: ''"),
            "usage_log.spill_dir: empty (leave the key out for the default)",
            id="empty-spill-dir",
        ),
    ],
)
def test_config_typos_are_one_line_naming_the_key(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    """Each of these passed `config check`: the gateway then sent `${ANTHROPIC_API_KEY` to Anthropic as its key,
    or failed at start on the database URL that the check had called ok."""
    old, new = edit
    assert old in SHIPPED
    result = _check(tmp_path, SHIPPED.replace(old, new, 1))
    assert result.returncode == 2, result.stdout
    assert result.stderr.strip().splitlines() == [f"gateway: config error: {message}"]
    assert "secretpw" not in result.stderr  # a URL's password is never echoed


def test_a_config_file_in_another_encoding_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """gateway.yaml saved as Latin-1 by an editor (a comment with `é`) gave a UnicodeDecodeError traceback."""
    text = SHIPPED.replace("# Aliases callers put", "# Aliases (café) callers put").encode("latin-1")
    line = SHIPPED.splitlines().index(next(x for x in SHIPPED.splitlines() if x.startswith("# Aliases"))) + 1
    result = _check(tmp_path, text)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"gateway: config error: {tmp_path / 'gateway.yaml'}: line {line} is not UTF-8 (byte 0xe9)"
    ]


def test_a_yaml_error_is_one_line(tmp_path: Path) -> None:
    """A NUL byte in the file gave a two-line message, the second one `in "<unicode string>", position 0)`."""
    result = _check(tmp_path, "server: {port: 8000}\n\x00\n")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gateway: config error: "), result.stderr
    assert "not valid YAML" in lines[0]


def test_output_piped_to_a_reader_that_stops_early_is_not_an_error(tmp_path: Path) -> None:
    """`gateway config check | head -1` printed `gateway: [Errno 32] Broken pipe`, as if the check had failed."""
    config = tmp_path / "gateway.yaml"
    config.write_text(SHIPPED)
    cmd = f"{shlex.quote(sys.executable)} -m gateway config check {shlex.quote(str(config))} | true"
    result = subprocess.run(
        ["bash", "-c", cmd], capture_output=True, text=True, env=clean_env(), cwd=tmp_path, timeout=60
    )
    assert "Broken pipe" not in result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr


def test_serve_runs_where_it_cannot_write_its_pid_file(tmp_path: Path, database_url: str) -> None:
    """A read-only checkout (and the image, whose /app belongs to root while the gateway runs as uid 10001):
    `gateway serve` printed its first admin key, then died with `gateway: [Errno 13] Permission denied:
    '.gateway'`. We run as root in CI, so a regular file where the directory should be stands in for it."""
    blocked = tmp_path / "read-only"
    blocked.write_text("")
    config = write_config(tmp_path, "http://127.0.0.1:9")
    config.write_text(config.read_text().replace(f"{tmp_path}/.gateway/pgdata", f"{blocked}/pgdata"))
    port = free_port()
    served = Served(config, port, clean_env(DATABASE_URL=database_url))
    try:
        warning = served.wait_event("pid_file_unwritable", timeout_s=60)
        assert warning["path"] == f"{blocked}/gateway.pid"
        assert f"kill -HUP {served.proc.pid}" in warning["hint"]
        with urllib.request.urlopen(f"{served.base}/health", timeout=10) as answer:
            assert answer.status == 200
        assert served.stop() == 0
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait(30)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--port", "99999"), "argument --port: 99999 is not a TCP port (0-65535)"),
        (("--port", "-1"), "argument --port: -1 is not a TCP port (0-65535)"),
        (("--port", "http"), "argument --port: 'http' is not a whole number"),
        (("--workers", "0"), "argument --workers: must be 1 or more, got 0"),
        (("--workers", "-2"), "argument --workers: must be 1 or more, got -2"),
    ],
)
def test_serve_flags_out_of_range_are_a_usage_error(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    """`--port 99999` was an OverflowError traceback; `--workers -2` started no worker and exited 0."""
    result = cli(write_config(tmp_path, "http://127.0.0.1:9"), "serve", *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"gateway serve: error: {message}"
    assert "Traceback" not in result.stderr


def test_a_second_server_on_its_own_database_leaves_the_first_ones_pid_file(tmp_path: Path, database_url: str) -> None:
    """The refusal of a second embedded server advises DATABASE_URL; that second server then overwrote the
    first's pid file and deleted it at exit, so `gateway reload` found no gateway while the first still ran."""
    config = write_config(tmp_path, "http://127.0.0.1:9")
    env = clean_env(DATABASE_URL=database_url)
    first = Served(config, free_port(), env)
    second = None
    try:
        first.wait_ready()
        second = Served(config, free_port(), env)
        taken = second.wait_event("pid_file_taken", timeout_s=60)
        assert taken["owner"] == first.proc.pid
        assert f"kill -HUP {second.proc.pid}" in taken["hint"]
        assert second.stop() == 0
        assert first.pid_file.read_text().split("\n", 1)[0] == str(first.proc.pid)
        reload = cli(config, "reload", env=env)
        assert reload.returncode == 0, reload.stderr
        assert f"asked gateway {first.proc.pid} to reload" in reload.stdout
    finally:
        for served in (first, second):
            if served is not None and served.proc.poll() is None:
                served.proc.kill()
                served.proc.wait(30)


def test_ctrl_c_says_the_server_is_stopping(tmp_path: Path, database_url: str) -> None:
    """Ctrl-C printed nothing while the server waited up to shutdown_grace_s (30 s) for streams in flight:
    it looked hung, and a new operator pressed Ctrl-C again, cutting those streams off."""
    config = write_config(tmp_path, "http://127.0.0.1:9")
    served = Served(config, free_port(), clean_env(DATABASE_URL=database_url))
    try:
        served.wait_ready()
        with urllib.request.urlopen(f"{served.base}/health", timeout=10) as answer:  # the app is up
            assert answer.status == 200
        served.proc.send_signal(signal.SIGINT)
        assert served.proc.wait(30) == 0
        stopping = served.wait_event("stopping")
        assert stopping["in_flight"] == 0
        assert stopping["grace_s"] == 30
        assert "a second Ctrl-C stops at once" in stopping["hint"]
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait(30)


def test_serve_typed_from_another_directory_says_where_it_looked(tmp_path: Path) -> None:
    """`~/gateway/scripts/serve` from the home directory said only `gateway.yaml: cannot read (No such file or
    directory)`, although the file is right there in the checkout."""
    result = subprocess.run(
        [str(ROOT / "scripts" / "gateway"), "keys", "list"],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"gateway: config error: gateway.yaml: no such file in {tmp_path} "
        "(run from the checkout, or give --config FILE or GATEWAY_CONFIG=FILE)"
    )


def test_the_readmes_placeholder_key_is_warned_about_like_a_missing_one(tmp_path: Path, database_url: str) -> None:
    """`export ANTHROPIC_API_KEY=sk-ant-...` typed as the README shows it: the server started without a word, and
    every request then failed with the provider's refusal."""
    config = write_config(tmp_path, "http://127.0.0.1:9")
    served = Served(config, free_port(), clean_env(DATABASE_URL=database_url, ANTHROPIC_API_KEY="sk-ant-..."))
    try:
        warning = served.wait_event("provider_credentials_missing", timeout_s=60)
        assert warning["variable"] == "ANTHROPIC_API_KEY"
        assert "placeholder API key: ANTHROPIC_API_KEY is 'sk-ant-...'" in warning["problem"]
    finally:
        served.stop()
    check = cli(config, "config", "check", env=clean_env(ANTHROPIC_API_KEY="sk-ant-..."))
    assert "placeholder API key" in check.stderr


def test_a_venv_left_without_pip_by_an_interrupted_first_run_is_rebuilt(tmp_path: Path) -> None:
    """Ctrl-C during the first `./scripts/serve`, inside `python -m venv`, left .venv without pip; every later
    run then stopped at `No module named pip`. (The install itself is kept offline here, so it fails fast.)"""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    script = f"source scripts/_venv.sh && venv={shlex.quote(str(venv))} && ensure_venv runtime"
    env = clean_env(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(tmp_path), PIP_CONFIG_FILE="/dev/null")
    env.pop("PYTHONPATH", None)
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert f"recreating {venv}: it has no pip (an interrupted first run?)" in result.stderr
    assert "No module named pip" not in result.stderr
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--version"], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
