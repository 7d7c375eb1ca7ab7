"""The processes under test: fake upstream, floor, gateway (and LiteLLM), each a subprocess on loopback.

CPU time and RSS are read from /proc, for the process and every descendant (the workers of
`gateway serve --workers N` are forked children).
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "bench"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
LITELLM_KEY = "sk-master-1234"
BUDGET_ENV = ("ENFORCE_BUDGETS", "DEFAULT_MONTHLY_LIMIT_USD", "DEFAULT_MONTHLY_TOKEN_LIMIT")  # would beat the file
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says what failed and where its log is."""


@dataclass(slots=True)
class Server:
    """A running subprocess that answers HTTP on `url`."""

    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    ready_s: float = 0.0  # from spawn to the first 200 from its health route

    def cpu_seconds(self) -> float:
        """User + system CPU of the process and its descendants so far."""
        return sum(_cpu_seconds(pid) for pid in process_tree(self.proc.pid))

    def worker_rss_mb(self) -> list[float]:
        """RSS of each serving process: the children when it forked workers, else the process itself."""
        tree = process_tree(self.proc.pid)
        workers = tree[1:] or tree
        return [_rss_bytes(pid) / 2**20 for pid in workers]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to its process group if it has not exited within STOP_TIMEOUT_S."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: start_new_session below
            self.proc.wait()


# --- /proc -------------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name (which may hold spaces): [state, ppid, ...]."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rfind(")") + 2 :].split()


def _cpu_seconds(pid: int) -> float:
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0.0  # exited between listing and reading
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14 and 15 of stat)


def _rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except OSError:
        return 0


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants, root first."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, ppid in parents.items() if ppid in frontier]
        tree += frontier
    return tree


def machine() -> str:
    """The CPU model (/proc/cpuinfo) and how many cores this process may use, e.g. "AMD EPYC, 2 cores"."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    model = next((ln.partition(":")[2].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    return f"{model}, {len(os.sched_getaffinity(0))} cores"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages (/proc/loadavg, as `uptime` prints them)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# --- starting ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(
    name: str,
    argv: list[str],
    port: int,
    log_dir: Path,
    *,
    health: str,
    env: dict[str, str],
    unset: Sequence[str] = (),
    cwd: Path = REPO,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> Server:
    """Start `argv` in `cwd` and wait until GET `health` answers 200; `ready_s` says how long that took.

    Its stdout and stderr go to `<log_dir>/<name>.log` (the gateway's JSON log lines included).
    """
    log = log_dir / f"{name}.log"
    child_env = {k: v for k, v in os.environ.items() if k not in unset} | env
    started = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=cwd, env=child_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(name, f"http://127.0.0.1:{port}", proc, log)
    try:
        _wait_ready(server, port, health, ready_timeout_s)
    except BaseException:
        server.stop()
        raise
    server.ready_s = time.perf_counter() - started
    return server


def _wait_ready(server: Server, port: int, path: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (code := server.proc.poll()) is not None:
            raise BenchError(f"{server.name} exited with status {code} before it was ready:\n{log_tail(server.log)}")
        if _answers_200(port, path):
            return
        time.sleep(0.005)
    raise BenchError(f"{server.name} was not ready within {timeout_s:g} s:\n{log_tail(server.log)}")


def _answers_200(port: int, path: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def start_fake(log_dir: Path) -> Server:
    """The project's fake upstream (tests/fakes/upstream.py), no latency, five SSE deltas per stream."""
    port = free_port()
    argv = [sys.executable, "-m", "tests.fakes.upstream", "--port", str(port)]
    env = {"FAKE_LATENCY_MS": "0", "FAKE_CHUNKS": "5", "FAKE_CHUNK_DELAY_MS": "0"}
    return spawn("fake", argv, port, log_dir, health="/health", env=env)


def start_floor(upstream: str, log_dir: Path) -> Server:
    port = free_port()
    argv = [sys.executable, str(BENCH_DIR / "floor.py"), "--port", str(port), "--upstream", upstream]
    return spawn("floor", argv, port, log_dir, health="/health", env={})


# --- the gateway -------------------------------------------------------------------------------------


def gateway_command(tree: Path | None = None) -> list[str]:
    """The gateway's CLI: this checkout's `gateway` console script (else the one on PATH), or, for another
    source tree, `python -m gateway` run with that tree as its working directory (first on sys.path)."""
    if tree is not None:
        return [sys.executable, "-m", "gateway"]
    beside = Path(sys.executable).parent / "gateway"
    if beside.exists():
        return [str(beside)]
    if found := shutil.which("gateway"):
        return [found]
    return [sys.executable, "-m", "gateway.cli"]


LOG_LEVEL_PRODUCTION = "info"  # gateway.yaml's default (`${LOG_LEVEL:-info}`): one JSON line per request
LOG_LEVEL_QUIET = "warning"  # the per-request line filtered out, to show what it costs


def write_gateway_config(
    path: Path, *, dsn: str, upstream: str, log_level: str = LOG_LEVEL_PRODUCTION, tree: Path | None = None
) -> Path:
    """`tree`'s gateway.yaml (this repo's by default), pointed at the fake upstream and the bench database.

    Logging is as production runs it: JSON lines at `log_level` through the gateway's own handler (stderr, which
    `spawn` sends to the server's log file); at "info" that is one line per request, at "warning" none.
    Metrics are always collected, bcrypt keeps the file's rounds.
    """
    doc: dict[str, Any] = yaml.safe_load(((tree or REPO) / "gateway.yaml").read_text())
    doc["server"] = {**doc.get("server", {}), "host": "127.0.0.1"}
    doc["database"] = {**doc.get("database", {}), "url": dsn}
    provider = doc["providers"]["anthropic"]
    doc["providers"]["anthropic"] = {**provider, "base_url": upstream, "api_key": "bench-upstream-key"}
    doc["logging"] = {"format": "json", "level": log_level}
    # Budgets stay enforced (the check runs on every request) with limits no run reaches: the Claude Code
    # body costs ~$0.02 at the fake's token counts, so the default $100 a month would end a run in 429s.
    doc["budgets"] = {**doc.get("budgets", {}), "monthly_limit_usd": 10**9, "monthly_token_limit": 10**15}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def create_key(config: Path) -> str:
    """A real gateway key, made the way an operator makes one (this also migrates the database)."""
    argv = [*gateway_command(), "keys", "create", "--config", str(config), "--name", "bench", "--quiet"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        raise BenchError(f"`gateway keys create` failed ({done.returncode}):\n{done.stderr.strip()}")
    return done.stdout.strip().splitlines()[-1]


def gateway_argv(config: Path, port: int, *, workers: int = 1, tree: Path | None = None) -> list[str]:
    """`gateway serve` on `port` with `config`, from this checkout or from `tree`."""
    return [*gateway_command(tree), "serve", "--config", str(config), "--port", str(port), "--workers", str(workers)]


def start_gateway(
    config: Path, log_dir: Path, *, workers: int = 1, name: str = "gateway", tree: Path | None = None
) -> Server:
    """`gateway serve` from this checkout, or from the source tree `tree` (another revision, see bench/trees.py)."""
    port = free_port()
    argv = gateway_argv(config, port, workers=workers, tree=tree)
    return spawn(name, argv, port, log_dir, health="/health", env={}, unset=BUDGET_ENV, cwd=tree or REPO)


def gateway_revision(tree: Path = REPO) -> str:
    """The commit the gateway runs from, `-dirty` when the work tree has changes (others may be editing)."""
    argv = ["git", "-C", str(tree), "describe", "--always", "--dirty"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


# --- LiteLLM, for comparison -------------------------------------------------------------------------


# LiteLLM's proxy reads these; the gateway's benchmark environment may hold them for itself. With DATABASE_URL
# set, LiteLLM 1.108 wants its Prisma database and exits before it is ready ("the prisma CLI is neither on PATH
# nor importable"): the comparison is against LiteLLM without a database, as shared/tools/litellm_config.yaml.
LITELLM_UNSET = ("DATABASE_URL", "DIRECT_URL", "LITELLM_MASTER_KEY", "STORE_MODEL_IN_DB", "REDIS_HOST", "REDIS_URL")
LITELLM_BIN_ENV = "LITELLM_BIN"


def litellm_command() -> list[str] | None:
    """The `litellm` proxy executable: $LITELLM_BIN, else beside this interpreter, else on PATH; None if none.

    It need not be importable here: LiteLLM is best installed in a venv of its own (750 MB, and it pins
    versions of aiohttp, openai and others that the gateway's venv should not be moved to).
    """
    if path := os.environ.get(LITELLM_BIN_ENV):
        return [path]
    beside = Path(sys.executable).parent / "litellm"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("litellm")
    return [found] if found else None


def litellm_installed() -> bool:
    return litellm_command() is not None


def litellm_spawn_args(upstream: str, log_dir: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """argv and extra environment of a LiteLLM proxy without a database, `claude-fast` routed to the fake."""
    command = litellm_command()
    if command is None:
        raise BenchError(f"litellm not found: set {LITELLM_BIN_ENV}, or pip install 'litellm[proxy]'")
    config = log_dir / "litellm_config.yaml"
    model = {"model": "anthropic/claude-3-5-haiku-20241022", "api_base": upstream, "api_key": "fake-upstream-key"}
    doc = {"model_list": [{"model_name": "claude-fast", "litellm_params": model}]}
    config.write_text(yaml.safe_dump({**doc, "general_settings": {"master_key": LITELLM_KEY}}))
    argv = [*command, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    return argv, {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}  # its price list from the wheel, not the network


def start_litellm(upstream: str, log_dir: Path) -> Server:
    """A LiteLLM proxy without a database, `claude-fast` routed to the fake (as shared/tools/litellm_config.yaml)."""
    port = free_port()
    argv, env = litellm_spawn_args(upstream, log_dir, port)
    return spawn("litellm", argv, port, log_dir, health="/health/liveliness", env=env, unset=LITELLM_UNSET)
