"""`gateway serve`: prepare the database once, then run one or more worker processes on one port."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import sys
from pathlib import Path

import structlog
from aiohttp import web

from gateway import db, instance
from gateway.app import build_app
from gateway.composition import database_url
from gateway.config import GatewayConfig
from gateway.credentials import missing_keys
from gateway.embedded_pg import DataDirBusy, lock_data_dir
from gateway.instance import InstanceError, database_label
from gateway.keys import generate_key
from gateway.logs import configure_logging

log = structlog.get_logger("gateway")


async def prepare_database(cfg: GatewayConfig, dsn: str, label: str = "") -> str | None:
    """Migrate, and on an empty key table create a first admin key; returns its plaintext (shown once)."""
    pool = await instance.open_pool(
        dsn, label or "in DATABASE_URL", max_size=1, statement_cache_size=cfg.database.statement_cache_size
    )
    try:
        async with pool.acquire() as conn:
            applied = await db.migrate(conn)
        if applied:
            log.info("migrations_applied", files=applied)
        if await db.list_keys(pool):
            return None
        new = generate_key(cfg.auth.bcrypt_rounds)
        await db.insert_key(pool, lookup_id=new.lookup_id, key_hash=new.key_hash, name="first-admin", is_admin=True)
        return new.plaintext
    finally:
        await pool.close()


def _print_first_key(key: str, host: str, port: int) -> None:
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    print(
        f"\nFirst admin key (shown once; `./scripts/gateway keys create --name NAME --admin` makes more admin keys,\n"
        f"without --admin a user key):\n\n    {key}\n\n"
        f"Try it:\n    curl {base}/v1/messages -H 'x-api-key: {key}' -H 'content-type: application/json' \\\n"
        f'      -d \'{{"model":"claude-fast","max_tokens":64,"messages":[{{"role":"user","content":"hi"}}]}}\'\n',
        flush=True,
    )


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we ship for
        return
    uvloop.install()


def _listen_socket(host: str, port: int, *, reuse_port: bool, listen: bool = True) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(1024)
    sock.setblocking(False)
    return sock


def _run_worker(cfg: GatewayConfig, dsn: str, sock: socket.socket) -> None:
    _install_uvloop()
    app = build_app(cfg, dsn=dsn, reload_on_sighup=True)
    web.run_app(
        app,
        sock=sock,
        access_log=None,
        print=None,
        handle_signals=True,
        shutdown_timeout=cfg.server.shutdown_grace_s,  # in-flight requests and streams may finish
        handler_cancellation=True,  # a client gone mid-stream cancels its upstream request at once
        max_line_size=cfg.server.max_header_bytes,
        max_field_size=cfg.server.max_header_bytes,
    )


def serve(cfg: GatewayConfig, *, host: str | None = None, port: int | None = None, workers: int | None = None) -> int:
    """Run the gateway until SIGINT/SIGTERM. Several workers share the port via SO_REUSEPORT.

    Raises InstanceError (one line for the CLI) when the embedded data dir is taken by another gateway, the
    database cannot be opened, or the address is in use.
    """
    configure_logging(cfg.logging)
    host = host or cfg.server.host
    port = cfg.server.port if port is None else port
    workers = workers or cfg.server.workers
    data_dir = Path(cfg.database.embedded_data_dir)
    try:  # before the embedded server starts: a second gateway must not even attach to it
        claim = None if cfg.database.url else lock_data_dir(data_dir, f"pid {os.getpid()}, port {port}")
    except DataDirBusy as exc:
        raise InstanceError(str(exc)) from None
    embedded = None
    pid_file = None
    try:
        # Bound before the database is touched: a port in use must not cost the first admin key, made and
        # then never shown. Listening waits for the migrations, so nobody connects to a server not yet ready.
        sock = _listen_or_explain(host, port, reuse_port=workers > 1, listen=False)
        port = sock.getsockname()[1]
        dsn, embedded = database_url(cfg)
        first_key = asyncio.run(prepare_database(cfg, dsn, database_label(cfg)))
        _listen_or_explain_bound(sock, host, port)
        if claim is not None:
            claim.describe(f"pid {os.getpid()}, port {port}")
        log.info(
            "listening",
            url=f"http://{host}:{port}",
            workers=workers,
            config=cfg.source,
            database=database_label(cfg),
        )
        for missing in missing_keys(cfg):  # every call would fail upstream with a 401 that looks like the caller's
            log.warning(
                "provider_credentials_missing",
                provider=missing.provider,
                variable=missing.variable,
                problem=missing.describe(),
            )
        if first_key:
            _print_first_key(first_key, host, port)
        _until_serving_signals()
        pid_file = _record_or_warn(cfg, port)
        if workers == 1:
            _run_worker(cfg, dsn, sock)
            return 0
        return _supervise(cfg, dsn, sock, workers)
    finally:
        if pid_file is not None:
            instance.forget(pid_file)
        if embedded is not None:
            embedded.stop()  # ours while we hold the data dir, even when an earlier run left it running
        if claim is not None:
            claim.release()


def _record_or_warn(cfg: GatewayConfig, port: int) -> Path | None:
    """The pid file serves `gateway reload` and the CLI's which-database check; a server that cannot write it
    (a read-only checkout, the image's root-owned /app) still serves, and says how to reload without it."""
    other = instance.running(cfg)
    if other is not None and other.pid != os.getpid():
        # A second server of this checkout on a database of its own (DATABASE_URL, as the refusal of a second
        # embedded one advises) took the file over and deleted it at exit: the first became unreachable.
        log.warning(
            "pid_file_taken",
            path=str(instance.pid_file_path(cfg)),
            owner=other.pid,
            hint=f"`gateway reload` reaches pid {other.pid}, not this server; reload it with kill -HUP {os.getpid()}",
        )
        return None
    try:
        return instance.record(cfg, port)
    except OSError as exc:
        log.warning(
            "pid_file_unwritable",
            path=str(instance.pid_file_path(cfg)),
            problem=exc.strerror or str(exc),
            hint=f"`gateway reload` cannot find this server; reload it with kill -HUP {os.getpid()}",
        )
        return None


def _until_serving_signals() -> None:
    """From the pid file on, until the app installs its own handlers: a reload is ignored, a stop cleans up.

    `gateway reload` may read the pid file at once, and SIGHUP's default action ends a process; a SIGTERM in
    that window would otherwise skip the `finally` that stops the embedded server and removes the pid file.
    """
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_now)


def _exit_now(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _listen_or_explain(host: str, port: int, *, reuse_port: bool, listen: bool = True) -> socket.socket:
    try:
        return _listen_socket(host, port, reuse_port=reuse_port, listen=listen)
    except OSError as exc:
        raise _cannot_listen(exc, host, port) from None


def _listen_or_explain_bound(sock: socket.socket, host: str, port: int) -> None:
    """Start listening on a socket bound earlier; SO_REUSEADDR lets two sockets bind while neither listens."""
    try:
        sock.listen(1024)
    except OSError as exc:
        raise _cannot_listen(exc, host, port) from None


def _cannot_listen(exc: OSError, host: str, port: int) -> InstanceError:
    if exc.errno == errno.EADDRINUSE:
        return InstanceError(
            f"cannot listen on {host}:{port}: the address is already in use (another gateway or program); "
            f"pick another port with --port {port + 1 if port else 8001} (or PORT=..., server.port in "
            "gateway.yaml), or stop what holds it"
        )
    return InstanceError(f"cannot listen on {host}:{port}: {exc.strerror} (see --host, GATEWAY_HOST)")


def pid_file_path(cfg: GatewayConfig) -> Path:
    """Where `gateway serve` records its pid for `gateway reload`: beside the embedded data dir."""
    return instance.pid_file_path(cfg)


def _supervise(cfg: GatewayConfig, dsn: str, sock: socket.socket, workers: int) -> int:
    """Fork `workers` children, each with its own SO_REUSEPORT socket; forward signals; wait for them.

    One socket per worker lets the kernel spread new connections evenly; a single shared socket lets the
    busiest worker win most accepts.
    """
    host, port = sock.getsockname()[:2]
    sock.close()  # the parent must not hold a listening socket: the kernel would queue connections on it
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                _run_worker(cfg, dsn, _listen_socket(host, port, reuse_port=True))
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)  # each worker reloads its own config
    status = 0
    for child in children:
        _, code = os.waitpid(child, 0)
        status = status or os.waitstatus_to_exitcode(code)
    sys.stdout.flush()
    return status
