"""The long-lived things a running gateway holds, built once at startup and closed at shutdown."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import structlog

from gateway import db
from gateway.config import GatewayConfig
from gateway.embedded_pg import EmbeddedPostgres, start_embedded_postgres
from gateway.keys import KeyCache
from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.base import Provider
from gateway.usage import UsageLog

log = structlog.get_logger("gateway")

PROVIDER_TYPES: dict[str, type[Any]] = {"anthropic": AnthropicProvider}  # `type:` in gateway.yaml -> adapter


@dataclass
class Services:
    pool: asyncpg.Pool
    key_cache: KeyCache
    usage_log: UsageLog
    providers: dict[str, Provider]
    http: aiohttp.ClientSession
    embedded: EmbeddedPostgres | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    async def aclose(self) -> None:
        await self.usage_log.close()
        for provider in self.providers.values():
            await provider.aclose()
        await self.http.close()
        await self.pool.close()


def database_url(cfg: GatewayConfig) -> tuple[str, EmbeddedPostgres | None]:
    """The configured database, or an embedded PostgreSQL started in `database.embedded_data_dir`."""
    if cfg.database.url:
        return cfg.database.url, None
    embedded = start_embedded_postgres(Path(cfg.database.embedded_data_dir))
    return embedded.dsn, embedded


async def open_services(cfg: GatewayConfig, *, dsn: str | None = None, run_migrations: bool = True) -> Services:
    """Connect to the database (migrating it), open the upstream session and start the usage flusher."""
    embedded = None
    if dsn is None:
        dsn, embedded = database_url(cfg)
    pool = await db.create_pool(dsn, min_size=cfg.database.pool_min, max_size=cfg.database.pool_max)
    try:
        if run_migrations:
            async with pool.acquire() as conn:
                applied = await db.migrate(conn)
            if applied:
                log.info("migrations_applied", files=applied)
    except BaseException:
        await pool.close()
        raise
    http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True),
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
    )
    providers: dict[str, Provider] = {name: PROVIDER_TYPES[p.type](p, http) for name, p in cfg.providers.items()}
    key_cache = KeyCache(
        lambda lookup_id: db.find_key(pool, lookup_id), ttl_s=cfg.auth.cache_ttl_s, max_size=cfg.auth.cache_size
    )
    usage_log = UsageLog(
        pool, cfg.pricing, flush_interval_ms=cfg.usage_log.flush_interval_ms, flush_rows=cfg.usage_log.flush_rows
    )
    usage_log.start()
    return Services(pool, key_cache, usage_log, providers, http, embedded)


@contextlib.asynccontextmanager
async def database_only(cfg: GatewayConfig):  # type: ignore[no-untyped-def]
    """A migrated pool for CLI commands (keys, migrate): no upstream session, no flusher."""
    dsn, embedded = database_url(cfg)
    pool = await db.create_pool(dsn, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await db.migrate(conn)
        yield pool
    finally:
        await pool.close()
        if embedded is not None and embedded.started:
            embedded.stop()  # we started it for this command; a running `gateway serve` keeps its own
