"""The `gateway` command.

gateway serve [--config gateway.yaml] [--host H] [--port 8000] [--workers N]
gateway migrate [--config gateway.yaml]
gateway config check [FILE]
gateway keys create --name NAME [--admin] [--quiet]
gateway keys list
gateway keys revoke ID
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from gateway import db
from gateway.config import ConfigError, GatewayConfig, default_config_path, load_config
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
    from gateway.server import serve

    return serve(cfg, host=args.host, port=args.port, workers=workers)


def cmd_reload(args: argparse.Namespace) -> int:
    """Make the running `gateway serve` re-read its config file (sends it SIGHUP)."""
    from gateway.server import pid_file_path

    cfg = _config(args)  # validate first: a bad file is refused here, before the server sees it
    path = pid_file_path(cfg)
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (FileNotFoundError, ValueError):
        raise UsageError(f"no running gateway found ({path} is missing or unreadable)") from None
    except ProcessLookupError:
        raise UsageError(f"the gateway recorded in {path} (pid {pid}) is not running") from None
    print(f"asked gateway {pid} to reload {cfg.source}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply the numbered files in sql/ that this database has not seen yet."""
    from gateway.services import database_url

    cfg = _config(args)

    async def run() -> int:
        dsn, _ = database_url(cfg)
        pool = await db.create_pool(dsn, min_size=1, max_size=1, statement_cache_size=cfg.database.statement_cache_size)
        try:
            async with pool.acquire() as conn:
                applied = await db.migrate(conn)
        finally:
            await pool.close()
        print("applied: " + ", ".join(applied) if applied else "database is up to date")
        return 0

    return _run(run())


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
    if any(not p.api_key for p in cfg.providers.values()):
        missing = ", ".join(n for n, p in cfg.providers.items() if not p.api_key)
        print(f"warning: no api_key for provider(s) {missing} (providers.NAME.api_key)", file=sys.stderr)
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    """Create a gateway key and print it once; only its bcrypt hash is stored."""
    from gateway.services import database_only

    cfg = _config(args)

    async def run() -> int:
        async with database_only(cfg) as pool:
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

    return _run(run())


def cmd_keys_list(args: argparse.Namespace) -> int:
    """List keys: id, name, admin, created, revoked (never a secret)."""
    from gateway.services import database_only

    cfg = _config(args)

    async def run() -> int:
        async with database_only(cfg) as pool:
            rows = await db.list_keys(pool)
        print(f"{'ID':>5}  {'NAME':<24} {'KEY':<22} {'ADMIN':<5}  {'CREATED':<20} REVOKED")
        for r in rows:
            revoked = r.revoked_at.strftime("%Y-%m-%d %H:%M") if r.revoked_at else "-"
            created = r.created_at.strftime("%Y-%m-%d %H:%M")
            admin = "yes" if r.is_admin else "no"
            print(f"{r.id:>5}  {r.name:<24} gw-{r.lookup_id}_… {admin:<5}  {created:<20} {revoked}")
        return 0

    return _run(run())


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    """Revoke a key by id; every gateway process refuses it within auth.cache_ttl_s seconds."""
    from gateway.services import database_only

    cfg = _config(args)

    async def run() -> int:
        async with database_only(cfg) as pool:
            done = await db.revoke_key(pool, args.id)
        if not done:
            raise UsageError(f"no active key with id {args.id} (see: gateway keys list)")
        print(f"revoked key {args.id}; running gateways refuse it within {cfg.auth.cache_ttl_s:g} s")
        return 0

    return _run(run())


# --- parser ------------------------------------------------------------------------------------------


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
    serve.add_argument("--port", type=int, help="port to listen on (default: server.port, 8000)")
    serve.add_argument("--workers", type=int, help="worker processes sharing the port (default: server.workers)")
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
        return int(args.func(args))
    except ConfigError as exc:
        print(f"gateway: config error: {exc}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    except (OSError, ConnectionError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
