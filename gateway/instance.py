"""The running `gateway serve` of a checkout, as other commands see it, and the database each command opens.

`gateway serve` records itself in `gateway.pid` beside the embedded data dir (`./.gateway/gateway.pid`):

    12345                                               the pid: kill -HUP "$(head -1 .gateway/gateway.pid)"
    port=8000
    database=embedded at /srv/gw/.gateway/pgdata        or: database=postgres@db.internal:5432/gateway

`gateway reload` signals that pid; `gateway keys …` and `gateway migrate` read the database line, so that a
shell without DATABASE_URL does not quietly write keys into the embedded database while the server uses
another one. Every command that opens a database names it on stderr first.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import asyncpg

from gateway import db
from gateway.config import GatewayConfig
from gateway.processes import is_running


class InstanceError(Exception):
    """A command cannot go on for a reason outside its arguments (database, port, a running gateway).

    The CLI prints the message as one line and exits 1: it says what is wrong and what to change.
    """


@dataclass(frozen=True, slots=True)
class RunningGateway:
    """What a live `gateway serve` recorded about itself."""

    pid: int
    port: int | None
    database: str  # database_label() of the database it serves from

    @property
    def embedded(self) -> bool:
        return self.database.startswith("embedded at ")


def pid_file_path(cfg: GatewayConfig) -> Path:
    """Where `gateway serve` records itself: beside the embedded data dir, whichever database it uses."""
    return Path(cfg.database.embedded_data_dir).parent / "gateway.pid"


def database_label(cfg: GatewayConfig) -> str:
    """The database a command opens, for people: `embedded at /abs/.gateway/pgdata` or `user@host:port/db`.

    Never the password; an embedded path is absolute so that two checkouts' labels never look alike.
    """
    if not cfg.database.url:
        return f"embedded at {Path(cfg.database.embedded_data_dir).expanduser().resolve()}"
    return url_label(cfg.database.url)


def url_label(url: str) -> str:
    """`postgresql://gw:<password>@db:5432/gateway?sslmode=require` -> `gw@db:5432/gateway` (a socket dir as host)."""
    parts = urlsplit(url)
    query = dict(p.partition("=")[::2] for p in parts.query.split("&") if p)
    host = parts.hostname or unquote(query.get("host", "")) or "localhost"
    port = parts.port or query.get("port") or 5432
    user = f"{unquote(parts.username)}@" if parts.username else ""
    return f"{user}{host}:{port}/{unquote(parts.path.lstrip('/')) or (parts.username or 'postgres')}"


def record(cfg: GatewayConfig, port: int) -> Path:
    """Write this process's pid file (replacing one whose gateway is gone); returns its path."""
    path = pid_file_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)  # O_CREAT's mode applies only to a new file
    with open(tmp, "x", opener=lambda name, flags: os.open(name, flags, 0o600)) as f:  # 0600: ours alone
        f.write(f"{os.getpid()}\nport={port}\ndatabase={database_label(cfg)}\n")
    tmp.replace(path)  # whole or not at all: a reader never sees half a file
    return path


def forget(path: Path) -> None:
    """Remove the pid file at shutdown, unless another gateway has written its own there since."""
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().split("\n", 1)[0]) == os.getpid():
            path.unlink()


def running(cfg: GatewayConfig) -> RunningGateway | None:
    """The live gateway recorded in the pid file, or None (no file, an unreadable one, or its process is gone)."""
    try:
        lines = pid_file_path(cfg).read_text().splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return None
    if not is_running(pid) or not _is_gateway(pid):
        return None
    fields = dict(line.partition("=")[::2] for line in lines[1:])
    port = int(fields["port"]) if fields.get("port", "").isdigit() else None
    return RunningGateway(pid, port, fields.get("database", ""))


def _is_gateway(pid: int) -> bool:
    """Whether `pid` runs the gateway: after a crash and a reboot the recorded pid may belong to anything."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no /proc (macOS): liveness is all there is to go on
    except OSError:
        return True
    return b"gateway" in cmdline


def environ_of(pid: int) -> dict[str, str] | None:
    """The environment `pid` was started with (Linux /proc), or None where it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}


def check_same_database(cfg: GatewayConfig) -> str | None:
    """Refuse to open the embedded database while this checkout's running gateway serves from another one.

    With a URL the operator chose the database; then only a warning (returned) says the server uses another.
    """
    server = running(cfg)
    if server is None or server.database == database_label(cfg):
        return None
    if cfg.database.url:
        return (
            f"warning: the gateway running here (pid {server.pid}, port {server.port}) uses {server.database}, "
            f"not this database; it will not see what this command changes"
        )
    raise InstanceError(
        f"the gateway running here (pid {server.pid}, port {server.port}) uses the database {server.database}, "
        f"but this command would open the embedded one ({database_label(cfg)}): set DATABASE_URL as the server "
        "has it (or run the command with the server's --config)"
    )


async def open_pool(
    dsn: str, label: str, *, min_size: int = 1, max_size: int = 2, statement_cache_size: int = 100
) -> asyncpg.Pool:
    """A pool on the database, or InstanceError naming it: no traceback for a database that is not there.

    `statement_cache_size`: 0 behind PgBouncer in transaction mode (database.statement_cache_size).
    """
    try:
        return await db.create_pool(
            dsn, min_size=min_size, max_size=max_size, statement_cache_size=statement_cache_size
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise InstanceError(
            f"cannot open the database {label}: {exc} (is it running, and is DATABASE_URL or database.url right?)"
        ) from None
