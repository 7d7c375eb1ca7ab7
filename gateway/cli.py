"""The `gateway` command.

From a checkout, `./scripts/gateway ARGS` runs it from .venv (made on first use).

gateway serve [--config gateway.yaml] [--host H] [--port 8000] [--workers N]
gateway migrate [--config gateway.yaml]
gateway reload
gateway config check [FILE]
gateway keys create --name NAME [--admin] [--quiet]
gateway keys list
gateway keys revoke ID
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from gateway import db, instance
from gateway.config import ConfigError, GatewayConfig, default_config_path, load_config
from gateway.credentials import missing_keys
from gateway.embedded_pg import EmbeddedPostgresError, data_dir_locked, start_embedded_postgres
from gateway.instance import InstanceError, database_label
from gateway.keys import generate_key


class UsageError(Exception):
    """A command-line mistake; printed as one line, exit status 2."""


def _config(args: argparse.Namespace) -> GatewayConfig:
    return load_config(args.config or default_config_path())


def _run(coro: Coroutine[Any, Any, int]) -> int:
    return asyncio.run(coro)


# --- commands ----------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    """Start the gateway (migrating the database first)."""
    cfg = _config(args)
    workers = args.workers or cfg.server.workers
    if workers > 1 and not os.environ.get("GATEWAY_METRICS_DIR"):
        # Each worker shares its figures there; whichever answers a scrape adds them all up.
        os.environ["GATEWAY_METRICS_DIR"] = tempfile.mkdtemp(prefix="gateway-metrics-")
    # Imported here, not to dodge a cycle: the server (aiohttp, the whole app) is loaded only by `gateway serve`,
    # so `gateway keys ...` and the other quick commands start without it.
    from gateway.server import serve

    return serve(cfg, host=args.host, port=args.port, workers=workers)


def cmd_reload(args: argparse.Namespace) -> int:
    """Make the running `gateway serve` re-read its config file (sends it SIGHUP)."""
    shell_cfg = _config(args)
    server = instance.running(shell_cfg)
    path = instance.pid_file_path(shell_cfg)
    if server is None:
        raise UsageError(f"no running gateway found ({path} is missing, or its process has ended)")
    # Validate as the server will read it: with the server's environment (${VAR}s), not this shell's.
    server_env = instance.environ_of(server.pid)
    cfg = load_config(shell_cfg.source, server_env) if server_env is not None else shell_cfg
    _warn_missing_keys(cfg, "the running gateway's environment" if server_env is not None else "this shell")
    os.kill(server.pid, signal.SIGHUP)
    print(f"asked gateway {server.pid} to reload {cfg.source}")
    return 0


def _warn_missing_keys(cfg: GatewayConfig, whose: str) -> None:
    for missing in missing_keys(cfg):
        print(f"warning: {missing.describe(whose)}", file=sys.stderr)


def _config_environment(cfg: GatewayConfig) -> tuple[dict[str, str] | None, str]:
    """The environment the running gateway of this checkout has, if any, else None (this shell's counts)."""
    server = instance.running(cfg)
    env = instance.environ_of(server.pid) if server is not None else None
    if server is None or env is None:
        return None, "this shell (no running gateway found to ask)"
    return env, f"the running gateway's environment (pid {server.pid})"


@contextlib.contextmanager
def _database(cfg: GatewayConfig) -> Iterator[str]:
    """The DSN a command opens, named on stderr first; an embedded server started just for it is stopped after.

    Refuses the embedded database while this checkout's running gateway serves from another one: a key
    written there would never be seen by the server.
    """
    label = database_label(cfg)
    warning = instance.check_same_database(cfg)
    print(f"gateway: database {label}", file=sys.stderr)
    if warning:
        print(warning, file=sys.stderr)
    if cfg.database.url:
        yield cfg.database.url
        return
    data_dir = Path(cfg.database.embedded_data_dir)
    server = start_embedded_postgres(data_dir)
    try:
        yield server.dsn
    finally:
        if server.started and not data_dir_locked(data_dir):  # a `gateway serve` that attached keeps it
            server.stop()


@contextlib.asynccontextmanager
async def _pool(dsn: str, cfg: GatewayConfig) -> AsyncIterator[asyncpg.Pool]:
    """A migrated pool for one command."""
    pool = await instance.open_pool(dsn, database_label(cfg))
    try:
        async with pool.acquire() as conn:
            await db.migrate(conn)
        yield pool
    finally:
        await pool.close()


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply the numbered files in sql/ that this database has not seen yet."""
    cfg = _config(args)

    async def run(dsn: str) -> int:
        pool = await instance.open_pool(
            dsn, database_label(cfg), max_size=1, statement_cache_size=cfg.database.statement_cache_size
        )
        try:
            async with pool.acquire() as conn:
                applied = await db.migrate(conn)
        finally:
            await pool.close()
        print("applied: " + ", ".join(applied) if applied else "database is up to date")
        return 0

    with _database(cfg) as dsn:
        return _run(run(dsn))


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate a config file and print the aliases it resolves to."""
    cfg = load_config(args.file or args.config or default_config_path())
    print(f"{cfg.source}: ok")
    for alias in cfg.models.values():
        provider = cfg.providers[alias.provider]
        price = "" if alias.model in cfg.pricing else "  (no price: cost recorded as unknown)"
        print(f"  {alias.name:<20} -> {alias.provider}:{alias.model}  [{provider.base_url}]{price}")
    for model in cfg.unpriced_models():
        print(f"warning: pricing.{model} is missing: requests to it are logged with an unknown cost", file=sys.stderr)
    # Which environment counts: the running gateway's, when there is one; `${VAR}`s are its, not this shell's.
    env, whose = _config_environment(cfg)
    _warn_missing_keys(load_config(cfg.source, env) if env is not None else cfg, whose)
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    """Create a gateway key and print it once; only its bcrypt hash is stored."""
    cfg = _config(args)

    async def run(dsn: str) -> int:
        async with _pool(dsn, cfg) as pool:
            new = generate_key(cfg.auth.bcrypt_rounds)
            row = await db.insert_key(
                pool, lookup_id=new.lookup_id, key_hash=new.key_hash, name=args.name, is_admin=args.admin
            )
        if args.quiet:
            print(new.plaintext)
        else:
            kind = "admin key" if row.is_admin else "key"
            print(f"created {kind} {row.id} ({row.name}); it is shown only now:\n{new.plaintext}")
        return 0

    with _database(cfg) as dsn:
        return _run(run(dsn))


def cmd_keys_list(args: argparse.Namespace) -> int:
    """List keys: id, name, admin, created, revoked (never a secret)."""
    cfg = _config(args)

    async def run(dsn: str) -> int:
        async with _pool(dsn, cfg) as pool:
            rows = await db.list_keys(pool)
        print(f"{'ID':>5}  {'NAME':<24} {'KEY':<22} {'ADMIN':<5}  {'CREATED':<20} REVOKED")
        for r in rows:
            revoked = r.revoked_at.strftime("%Y-%m-%d %H:%M") if r.revoked_at else "-"
            created = r.created_at.strftime("%Y-%m-%d %H:%M")
            admin = "yes" if r.is_admin else "no"
            print(f"{r.id:>5}  {r.name:<24} gw-{r.lookup_id}_… {admin:<5}  {created:<20} {revoked}")
        return 0

    with _database(cfg) as dsn:
        return _run(run(dsn))


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    """Revoke a key by id; every gateway process refuses it within auth.cache_ttl_s seconds."""
    cfg = _config(args)

    async def run(dsn: str) -> int:
        async with _pool(dsn, cfg) as pool:
            done = await db.revoke_key(pool, args.id)
        if not done:
            raise UsageError(f"no active key with id {args.id} (see: gateway keys list)")
        print(f"revoked key {args.id}; running gateways refuse it within {cfg.auth.cache_ttl_s:g} s")
        return 0

    with _database(cfg) as dsn:
        return _run(run(dsn))


# --- parser ------------------------------------------------------------------------------------------


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _port(text: str) -> int:
    """`--port`: 0..65535 (0: any free port); out of range, bind() raised an OverflowError traceback."""
    port = _integer(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (0-65535)")
    return port


def _positive(text: str) -> int:
    """`--workers`: 0 read as "the config's value" and a negative count started no worker and exited 0."""
    number = _integer(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {number}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="A fast AI gateway in front of Anthropic.")
    parser.add_argument("--config", help="path to gateway.yaml (default: $GATEWAY_CONFIG or ./gateway.yaml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], parent: Any = sub) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=func.__doc__, description=func.__doc__)
        p.add_argument("--config", default=argparse.SUPPRESS, help="path to gateway.yaml")
        p.set_defaults(func=func)
        return p

    serve = command("serve", cmd_serve)
    serve.add_argument("--host", help="address to listen on (default: server.host)")
    serve.add_argument("--port", type=_port, help="port to listen on (default: server.port, 8000)")
    serve.add_argument("--workers", type=_positive, help="worker processes sharing the port (default: server.workers)")
    command("migrate", cmd_migrate)
    command("reload", cmd_reload)

    config = sub.add_parser("config", help="configuration commands").add_subparsers(dest="sub", required=True)
    check = command("check", cmd_config_check, config)
    check.add_argument("file", nargs="?", help="config file to check (default: the --config file)")

    keys = sub.add_parser("keys", help="create, list and revoke gateway keys").add_subparsers(dest="sub", required=True)
    create = command("create", cmd_keys_create, keys)
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument("--admin", action="store_true", help="allow the management API (/v1/user-api-keys)")
    create.add_argument("--quiet", action="store_true", help="print only the key (for scripts)")
    command("list", cmd_keys_list, keys)
    revoke = command("revoke", cmd_keys_revoke, keys)
    revoke.add_argument("id", type=int, help="key id (from gateway keys list)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not hasattr(args, "config"):
        args.config = None
    try:
        status = int(args.func(args))
        sys.stdout.flush()  # here, not at exit: a reader gone early (`| head`) is then caught below
        return status
    except BrokenPipeError:
        # `gateway keys list | head -1`: the reader has what it wanted; nothing to report. Python would
        # otherwise complain again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except ConfigError as exc:
        print(f"gateway: config error: {exc}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    except (InstanceError, EmbeddedPostgresError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    except (OSError, ConnectionError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
