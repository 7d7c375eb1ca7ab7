"""The sections of gateway.yaml that stand alone: no rule of theirs names another section.

Each model is one mapping of the file, its fields the keys with their types, defaults and rules (the types are
in gateway/config_types.py); README "Configuration" explains each key. Import them from gateway.config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from pydantic import BeforeValidator, Field, model_validator

from gateway.config_types import (
    Bool,
    DetectorId,
    Float,
    Int,
    Lower,
    Networks,
    NonEmpty,
    NonNegative,
    PhoneRegions,
    Port,
    Positive,
    PositiveFloat,
    Regex,
    Secret,
    Section,
    Str,
    each_of,
    one_of,
    rule,
)
from gateway.config_yaml import ConfigError
from gateway.dlp import ACTIONS, NATIONAL_ID_COUNTRIES

MAX_RETENTION_MONTHS = 1200  # 100 years; "keep forever" is 0. Beyond ~24,000 the cut-off month is before year 1,
# which date() refuses: the partition keeper would stop for good, and no month ahead would be made again.
RETENTION = f"must be 0 (keep everything) to {MAX_RETENTION_MONTHS}, got {{v}}"
DATABASE_URL = "not a postgresql:// URL (e.g. postgresql://gateway:PASSWORD@db:5432/gateway)"  # never echoed
REDIS_URL = "{v!r} is not a redis://, rediss:// or unix:// URL"


class ServerConfig(Section):
    host: NonEmpty = "127.0.0.1"
    port: Port = 8000
    max_body_bytes: Positive = 32 * 1024 * 1024  # Claude Code sends 78 KB+ per turn; images can be MBs
    workers: Positive = 1
    max_concurrency: Positive = 1000  # requests in progress per worker; beyond it a clean 503
    body_timeout_s: PositiveFloat = 60.0  # a body must arrive within this (slow clients hold a slot otherwise)
    max_header_bytes: Positive = 16384  # per header line; Claude Code's anthropic-beta list is long
    shutdown_grace_s: Float = 30.0  # on SIGTERM, how long in-flight requests and streams may finish
    auth_failures_per_minute: Positive = 20  # failed guesses at one key from one client address before 429s
    # Reverse proxies whose X-Forwarded-For / Forwarded name the client (CIDRs, e.g. "127.0.0.1/32"); none: the peer
    trusted_proxies: Networks = ()


class DatabaseConfig(Section):
    # empty: start the embedded PostgreSQL in embedded_data_dir; never in a repr (it may hold a password)
    url: Annotated[Str, rule(lambda v: not v or v.startswith(("postgresql://", "postgres://")), DATABASE_URL)] = Field(
        default="", repr=False
    )
    embedded_data_dir: NonEmpty = "./.gateway/pgdata"
    pool_min: NonNegative = 1
    pool_max: Positive = 10
    statement_cache_size: NonNegative = 100  # asyncpg's prepared-statement cache; 0 behind PgBouncer (transaction)

    @model_validator(mode="after")
    def _pool_fits(self) -> DatabaseConfig:  # asyncpg's ValueError came only at start, as a traceback
        if self.pool_min > self.pool_max:
            raise ConfigError(f"database.pool_min: {self.pool_min} is more than pool_max ({self.pool_max})")
        return self


class BudgetConfig(Section):
    enforce: Bool = True
    monthly_limit_usd: Float = 100.0  # per gateway key
    monthly_token_limit: Int = 10_000_000  # per user
    refresh_s: PositiveFloat = 2.0  # how often each process re-reads every process's usage counters
    max_in_flight_per_user: Positive | None = None  # requests one user may have in progress per process; None: any


class AuthConfig(Section):
    cache_ttl_s: PositiveFloat = 10.0  # bound on how long a revoked key keeps working on another process
    cache_size: Positive = 10_000
    bcrypt_rounds: Annotated[Int, rule(lambda v: 4 <= v <= 31, "{v} is outside bcrypt's 4..31")] = 12
    admin_key: Secret = Field(default="", repr=False)  # GATEWAY_ADMIN_KEY: an admin key given by the environment
    claudecode_secret: Str = Field(default="", repr=False)  # HMAC key for Claude Code tokens; "": generated once


class UsageLogConfig(Section):
    flush_interval_ms: Positive = 200
    flush_rows: Positive = 500
    max_queue_rows: Positive = 50_000  # rows held in memory while the database is away; beyond: the spill dir
    spill_dir: NonEmpty = "./.gateway/usage-spill"
    # >0: drop usage_log's monthly partitions older than this many whole months
    retention_months: Annotated[Int, rule(lambda v: 0 <= v <= MAX_RETENTION_MONTHS, RETENTION)] = 0


class RateLimit(Section):
    """Limits for one key or user; 0 means no limit of that kind."""

    requests_per_minute: NonNegative = 0  # in any sliding 60 s
    tokens_per_minute: NonNegative = 0  # input + cache-write + output tokens, settled after each request
    in_flight: NonNegative = 0  # requests being served at once

    @property
    def any(self) -> bool:
        return bool(self.requests_per_minute or self.tokens_per_minute or self.in_flight)


class RateLimitConfig(Section):
    # empty: counted in each process (per-process limits)
    redis_url: Annotated[
        Str, rule(lambda v: not v or v.startswith(("redis://", "rediss://", "unix://")), REDIS_URL)
    ] = ""
    fail: Annotated[Str, one_of(("open", "closed"))] = "open"  # what a request gets while Redis cannot be reached
    redis_timeout_s: PositiveFloat = 0.25  # per Redis call; a slower answer counts as Redis being away
    key_prefix: Str = "gw:rl:"  # Redis key prefix (several gateways may share one Redis)
    overrides_refresh_s: PositiveFloat = 5.0  # how often each process re-reads the management API's overrides
    key: RateLimit = RateLimit()  # default for every gateway key
    user: RateLimit = RateLimit()  # default for every user (shared by all of the user's keys)


class MetricsConfig(Section):
    require_admin: Bool = True  # GET /metrics on the main port needs an admin key
    port: Port = 0  # >0: also serve /metrics, without auth, on metrics.host:port (keep it private)
    host: Str = "127.0.0.1"


class LoggingConfig(Section):
    format: Annotated[Str, one_of(("json", "console", "auto"))] = "auto"  # auto: console on a terminal, else json
    level: Annotated[Lower, one_of(("debug", "info", "warning", "error"))] = "info"


class DetectorRule(Section):
    """One DLP detector's handling: `action` (block | redact | audit | off; None: inherit) and allowlist regexes."""

    # YAML 1.1 reads a bare `off` (the documented action) as false
    action: Annotated[Str, BeforeValidator(lambda v: "off" if v is False else v), one_of(ACTIONS)] | None = None
    allow: tuple[Regex, ...] = ()


class DlpPolicy(Section):
    """An alias's DLP settings over the section's: on or off (None: the section's `enabled`), detector rules."""

    enabled: Bool | None = None
    detectors: Mapping[DetectorId, DetectorRule] = Field(default_factory=dict)


class DlpConfig(Section):
    """gateway.yaml `dlp:`: off by default; README "Data-loss prevention" explains each key."""

    enabled: Bool = False  # for every alias without its own `enabled`
    bypass_roles: Annotated[tuple[str, ...], each_of(("admin", "user"))] = ()  # may send `x-gateway-dlp: off`
    national_ids: Annotated[tuple[str, ...], each_of(NATIONAL_ID_COUNTRIES)] = ()  # whose id numbers are looked for
    phone_regions: PhoneRegions = ("US",)  # how numbers without +country code are read
    detectors: Mapping[DetectorId, DetectorRule] = Field(default_factory=dict)
    aliases: Mapping[Str, DlpPolicy] = Field(default_factory=dict)  # keys: model aliases (checked by GatewayConfig)

    def any_enabled(self) -> bool:
        return self.enabled or any(p.enabled for p in self.aliases.values())


class ConsoleConfig(Section):
    """The web console at /console (gateway/console/)."""

    enabled: Bool = True
    session_max_age_s: Positive = 8 * 3600  # a console session ends this long after sign-in
    session_secret: Secret = Field(default="", repr=False)  # encrypts session cookies; "": generated once, in the db
    # auto: Secure when the request came over TLS (or X-Forwarded-Proto: https)
    secure_cookie: Annotated[Lower, one_of(("auto", "true", "false"))] = "auto"
