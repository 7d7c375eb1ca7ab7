"""The composition root: the long-lived things a running gateway holds (built once at startup, closed at shutdown),
and the request path built from them and one config (`build_request_path`, again at each reload).

Everything is wired here and only here: stages, the relay (with its metrics), providers, authentication. The
modules wired import none of this one, so the import graph has no circle (tests/test_import_graph.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import bcrypt
import structlog
from aiohttp import web

from gateway import db
from gateway.accounting.ledger import Ledger
from gateway.accounting.month_view import MonthView, utc_now
from gateway.accounting.partitions import keep_partitions
from gateway.accounting.spill import SpillDir
from gateway.authentication import Authentication
from gateway.client_address import ClientAddress
from gateway.config import GatewayConfig, ProviderConfig, RateLimitConfig
from gateway.dlp.findings import FindingsLog
from gateway.embedded_pg import EmbeddedPostgres, start_embedded_postgres
from gateway.keys import ClaudeCodeTokens, KeyCache, Principal
from gateway.metrics import Metrics
from gateway.pipeline import Next, Stage, chain
from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.base import Provider
from gateway.providers.openai_compat import OpenAICompatProvider
from gateway.rate_limits.limiter import Limiter, LocalLimiter
from gateway.rate_limits.overrides import RateLimitOverrides
from gateway.relays import Relay
from gateway.sso import SignIns, open_sign_ins
from gateway.stages.auth import Authenticate, EnvAdminKey
from gateway.stages.budget import CheckBudget, alias_of_requested, price_of_requested
from gateway.stages.dlp import PreventDataLoss
from gateway.stages.key_mapping import MapClaudeCodeKey
from gateway.stages.rate_limit import CheckRateLimit
from gateway.stages.route import RouteToProvider
from gateway.stages.usage_log import LogUsage
from gateway.throttle import AuthThrottle

log = structlog.get_logger("gateway")

PROVIDER_TYPES: dict[str, type[Any]] = {  # `type:` in gateway.yaml -> adapter
    "anthropic": AnthropicProvider,
    "openai": OpenAICompatProvider,
}


@dataclass
class Services:
    pool: asyncpg.Pool
    key_cache: KeyCache
    claudecode_tokens: ClaudeCodeTokens
    month_view: MonthView
    ledger: Ledger
    providers: dict[str, Provider]
    http: aiohttp.ClientSession
    env_admin: EnvAdminKey | None = None
    embedded: EmbeddedPostgres | None = None
    provider_configs: dict[str, ProviderConfig] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    extras: dict[str, Any] = field(default_factory=dict)
    rate_limiter: Limiter = field(default_factory=LocalLimiter)  # Redis when rate_limits.redis_url is set
    rate_limit_overrides: RateLimitOverrides | None = None
    background: list[asyncio.Task[None]] = field(default_factory=list)  # cancelled at close
    sign_ins: SignIns = field(default_factory=SignIns)  # single sign-on and caller JWTs (gateway/sso)

    def apply_config(self, cfg: GatewayConfig) -> None:
        """Take a reloaded config's providers, pricing and budget refresh; requests in flight keep theirs."""
        self.providers = {
            name: self.providers[name]
            if name in self.providers and self.provider_configs.get(name) == p
            else PROVIDER_TYPES[p.type](p, self.http)
            for name, p in cfg.providers.items()
        }
        self.provider_configs = dict(cfg.providers)
        self.ledger.price_for = cfg.price_for
        self.month_view.refresh_s = cfg.budgets.refresh_s

    async def aclose(self) -> None:
        for task in self.background:
            task.cancel()
        if self.rate_limit_overrides is not None:
            await self.rate_limit_overrides.close()
        await self.rate_limiter.aclose()
        await self.month_view.close()
        await self.ledger.close()
        for provider in self.providers.values():
            await provider.aclose()
        await self.http.close()
        await self.pool.close()


SERVICES = web.AppKey("services", Services)  # set on the application at startup


AUTH_STAGES = ("auth", "key_mapping")  # read headers only: run before the body is read, outside the chain


@dataclass(frozen=True, slots=True)
class RequestPath:
    """What a model route runs, built from one config: who is calling, then the chain of the other stages."""

    authenticate: Authentication  # auth -> key_mapping: headers only, before a slot is taken or the body read
    served: Next  # rate_limit -> budget -> dlp -> route -> usage_log -> relay, chained once


def build_request_path(cfg: GatewayConfig, svc: Services) -> RequestPath:
    """The request path, outermost first, filtered by `pipeline:` in gateway.yaml; the one place it is written:

        auth -> key_mapping -> [a slot, the body] -> rate_limit -> budget -> dlp -> route -> usage_log -> relay

    The first two read headers only, so the edge (gateway/edge.py) runs them before it takes a concurrency slot
    and reads the body; the rest are chained here, once, around the relay.
    """
    # Guesses are counted per (client address, credential); tokens in a table of their own, so a flood of
    # made-up tokens cannot push key guessers out of theirs.
    limit, client_address = cfg.server.auth_failures_per_minute, ClientAddress(cfg.server.trusted_proxies)
    mapping = "key_mapping" in cfg.pipeline
    authenticate = Authentication(
        Authenticate(
            svc.key_cache,
            defer_foreign=mapping,
            env_admin=svc.env_admin,
            throttle=AuthThrottle(limit),
            client_address=client_address,
            callers=svc.sign_ins.callers,
        ),
        MapClaudeCodeKey(svc.claudecode_tokens, throttle=AuthThrottle(limit), client_address=client_address)
        if mapping
        else None,
    )
    findings = _findings_log(svc)  # kept in Services.extras whether or not this config scans
    # A stage with nothing to do under this config (budgets not enforced, no DLP policy) is left out of the chain
    # rather than called to pass each request on: a coroutine and a call fewer per request.
    after_auth: dict[str, Stage | None] = {
        "rate_limit": CheckRateLimit(svc.rate_limiter, cfg.rate_limits, svc.rate_limit_overrides, svc.metrics),
        "budget": CheckBudget(
            svc.month_view, cfg.budgets, svc.metrics, price_of_requested(cfg), alias_of_requested(cfg)
        )
        if cfg.budgets.enforce
        else None,
        "dlp": PreventDataLoss(cfg.dlp, cfg.models, cfg.routing, svc.metrics, findings)
        if cfg.dlp.any_enabled()
        else None,
        "route": RouteToProvider(cfg.models, svc.providers, cfg.routing, cfg.providers),
        # innermost, so its `finally` sees the whole relayed response, stream included, and its final status
        "usage_log": LogUsage(svc.ledger),
    }
    stages = tuple(
        stage for name in cfg.pipeline if name not in AUTH_STAGES and (stage := after_auth[name]) is not None
    )
    return RequestPath(authenticate, chain(stages, Relay(svc.metrics)))


def _findings_log(svc: Services) -> FindingsLog:
    """The running gateway's one FindingsLog (kept in Services.extras, so a config reload keeps its tasks)."""
    if "dlp_findings" not in svc.extras:
        svc.extras["dlp_findings"] = FindingsLog(svc.pool)
    findings: FindingsLog = svc.extras["dlp_findings"]
    return findings


def database_url(cfg: GatewayConfig) -> tuple[str, EmbeddedPostgres | None]:
    """The configured database, or an embedded PostgreSQL started in `database.embedded_data_dir`."""
    if cfg.database.url:
        return cfg.database.url, None
    embedded = start_embedded_postgres(Path(cfg.database.embedded_data_dir))
    return embedded.dsn, embedded


async def open_services(
    cfg: GatewayConfig,
    *,
    dsn: str | None = None,
    run_migrations: bool = True,
    clock: Callable[[], datetime] | None = None,
) -> Services:
    """Connect to the database (migrating it), open the upstream session and start the usage flusher."""
    embedded = None
    if dsn is None:
        dsn, embedded = database_url(cfg)
    pool = await db.create_pool(
        dsn,
        min_size=cfg.database.pool_min,
        max_size=cfg.database.pool_max,
        statement_cache_size=cfg.database.statement_cache_size,
    )
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
    auth = cfg.auth
    key_cache = KeyCache(
        lambda lookup_id: db.find_key(pool, lookup_id), ttl_s=auth.cache_ttl_s, max_size=auth.cache_size
    )
    secret = auth.claudecode_secret or await db.setting(pool, "claudecode_hmac_secret", secrets.token_hex(32))
    tokens = ClaudeCodeTokens(
        lambda token_hmac: db.find_key_by_claudecode_hmac(pool, token_hmac),
        secret.encode(),
        ttl_s=auth.cache_ttl_s,
        max_size=auth.cache_size,
    )
    view = MonthView(pool, refresh_s=cfg.budgets.refresh_s, clock=clock or utc_now)
    await view.refresh()
    view.start()
    metrics = Metrics()
    ledger = Ledger(
        pool,
        cfg.price_for,
        view,
        metrics=metrics,
        flush_interval_ms=cfg.usage_log.flush_interval_ms,
        flush_rows=cfg.usage_log.flush_rows,
        max_queue_rows=cfg.usage_log.max_queue_rows,
        spill=SpillDir(Path(cfg.usage_log.spill_dir)),
    )
    ledger.start()
    metrics.gauge("gateway_usage_queue_rows", lambda: ledger.pending)
    metrics.gauge("gateway_db_pool_connections_idle", pool.get_idle_size)
    metrics.gauge("gateway_db_pool_connections_in_use", lambda: pool.get_size() - pool.get_idle_size())
    env_admin = await _env_admin_key(pool, auth.admin_key, auth.bcrypt_rounds) if auth.admin_key else None
    limits = cfg.rate_limits
    limiter = await _rate_limiter(limits, pool, metrics)
    overrides = RateLimitOverrides(pool, limits.overrides_refresh_s)
    await overrides.refresh()
    overrides.start()
    today = (lambda: clock().date()) if clock else (lambda: utc_now().date())
    partitions = asyncio.create_task(keep_partitions(pool, cfg.usage_log.retention_months, today=today))
    return Services(
        pool,
        key_cache,
        tokens,
        view,
        ledger,
        providers,
        http,
        env_admin,
        embedded,
        provider_configs=dict(cfg.providers),
        metrics=metrics,
        rate_limiter=limiter,
        rate_limit_overrides=overrides,
        background=[partitions],
        sign_ins=open_sign_ins(cfg.identity, http, pool, auth.cache_ttl_s),
    )


async def _rate_limiter(limits: RateLimitConfig, pool: asyncpg.Pool, metrics: Metrics) -> Limiter:
    """Redis when `rate_limits.redis_url` is set (shared by replicas), else counts in this process."""
    if not limits.redis_url:
        return LocalLimiter()
    # Imported only here, when it is used, not to dodge a cycle: the redis client costs about 6 MB of RSS per worker.
    from gateway.rate_limits.redis_limiter import RedisLimiter

    return RedisLimiter(
        limits.redis_url,
        # the database's own namespace after the prefix: gateways on different databases sharing one Redis
        # (staging beside production, prefix left at its default) would otherwise share key 1's counts
        prefix=limits.key_prefix + await db.setting(pool, "rate_limit_namespace", secrets.token_hex(4)) + ":",
        timeout_s=limits.redis_timeout_s,
        fail_closed=limits.fail == "closed",
        metrics=metrics,
    )


async def _env_admin_key(pool: asyncpg.Pool, key: str, rounds: int) -> EnvAdminKey | None:
    """GATEWAY_ADMIN_KEY gets a row of its own (named after a hash of the key) to carry its usage rows."""
    lookup_id = "env-" + hashlib.sha256(key.encode()).hexdigest()[:12]
    row = await db.find_key(pool, lookup_id)
    if row is None:
        key_hash = await asyncio.to_thread(lambda: bcrypt.hashpw(key.encode(), bcrypt.gensalt(rounds)).decode())
        row = await db.insert_key(pool, lookup_id=lookup_id, key_hash=key_hash, name="GATEWAY_ADMIN_KEY", is_admin=True)
    if row.revoked_at is not None:
        log.warning("env_admin_key_revoked", key_id=row.id, hint="unset GATEWAY_ADMIN_KEY or set a new one")
        return None
    return EnvAdminKey(key=key.encode(), principal=dataclasses.replace(Principal.from_row(row), from_env=True))
