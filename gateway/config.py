"""gateway.yaml, parsed once into frozen objects.

`load_config(path, environ)` is the only reader of the file and of the environment variables it names.
Values may use `${VAR}` (the variable must be set) and `${VAR:-default}`. Every problem is reported as one
`ConfigError` line naming the YAML path, e.g. `models.claude-fast.provider: 'antropic' is not a declared
provider (anthropic)`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import yaml

from gateway.dlp import ACTIONS, DETECTOR_IDS, NATIONAL_ID_COUNTRIES

# the only order they can run in
PIPELINE_STAGES = ("auth", "key_mapping", "rate_limit", "budget", "dlp", "route", "usage_log")
REQUIRED_STAGES = frozenset({"auth", "route"})
PROVIDER_TYPES = frozenset({"anthropic", "openai"})


class ConfigError(Exception):
    """gateway.yaml (or the environment it reads) is unusable; the message names the key and the problem."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 32 * 1024 * 1024  # Claude Code sends 78 KB+ per turn; images can be MBs
    workers: int = 1
    max_concurrency: int = 1000  # requests in progress per worker; beyond it a clean 503
    body_timeout_s: float = 60.0  # a body must arrive within this (slow clients hold a slot otherwise)
    max_header_bytes: int = 16384  # per header line; Claude Code's anthropic-beta list is long
    shutdown_grace_s: float = 30.0  # on SIGTERM, how long in-flight requests and streams may finish
    auth_failures_per_minute: int = 20  # failed guesses at one key from one client address before it gets 429s
    # Reverse proxies whose X-Forwarded-For / Forwarded name the client (CIDRs, e.g. "127.0.0.1/32"); none: the peer
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str = ""  # empty: start the embedded PostgreSQL in embedded_data_dir
    embedded_data_dir: str = "./.gateway/pgdata"
    pool_min: int = 1
    pool_max: int = 10
    statement_cache_size: int = 100  # asyncpg's prepared-statement cache; 0 behind PgBouncer (transaction mode)


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float = 10.0
    first_byte_s: float = 600.0  # Anthropic may think for minutes before the first byte of a long reply
    idle_s: float = 300.0  # longest silence allowed between two chunks of a stream


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    type: str
    base_url: str
    api_key: str = field(repr=False)
    timeouts: Timeouts = Timeouts()
    retries: Retries = field(default_factory=lambda: Retries())


@dataclass(frozen=True, slots=True)
class Retries:
    """How hard to try one deployment before the alias's next one: exponential backoff with full jitter."""

    attempts: int = 3  # tries per deployment, the first included
    backoff_s: float = 0.5  # first delay; doubles each retry
    max_backoff_s: float = 8.0
    budget_s: float = 30.0  # total time a request may spend retrying (Retry-After included), all deployments
    cooldown_after: int = 3  # consecutive failed requests that put a deployment to rest ...
    cooldown_s: float = 30.0  # ... for this long (unless every deployment of the alias is resting)


@dataclass(frozen=True, slots=True)
class Deployment:
    """One place an alias can be served: a provider and its model id."""

    provider: str
    model: str


@dataclass(frozen=True, slots=True)
class ModelAlias:
    name: str
    provider: str
    model: str
    default_max_tokens: int = 4096  # for OpenAI callers that send no max_tokens (Anthropic requires one)
    thinking_budgets: Mapping[str, int] = field(default_factory=dict)  # OpenAI reasoning_effort -> budget
    fallbacks: tuple[Deployment, ...] = ()  # tried in order when the primary fails (after its retries)
    auto_cache: bool = False  # add Anthropic cache_control breakpoints to OpenAI-dialect requests (Cursor, Codex)
    structured_outputs: bool = True  # the model has output_config.format; false: a forced tool call stands in


@dataclass(frozen=True, slots=True)
class RouteRule:
    """A model id that is not an alias: `match` (shell pattern) goes to `alias`, or to `provider` unchanged."""

    match: str
    alias: str | None = None
    provider: str | None = None


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    rules: tuple[RouteRule, ...] = ()
    default: str | None = None  # alias for any other model id; None: 404 listing the aliases


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens; web searches in USD per 1,000 searches.

    `cache_write` prices 5-minute cache writes (Anthropic: 1.25x input), `cache_write_1h` 1-hour ones
    (Anthropic: 2x input, the default when unset).
    """

    input: float
    output: float
    cache_write: float
    cache_read: float
    cache_write_1h: float | None = None
    web_search_per_1k: float = 10.0  # Anthropic's list price for its web search tool

    @property
    def cache_write_1h_price(self) -> float:
        return self.cache_write_1h if self.cache_write_1h is not None else 2 * self.input


@dataclass(frozen=True, slots=True)
class BudgetConfig:
    enforce: bool = True
    monthly_limit_usd: float = 100.0  # per gateway key
    monthly_token_limit: int = 10_000_000  # per user
    refresh_s: float = 2.0  # how often each process re-reads every process's usage counters
    max_in_flight_per_user: int | None = None  # requests one user may have in progress per process; None: any


@dataclass(frozen=True, slots=True)
class AuthConfig:
    cache_ttl_s: float = 10.0  # bound on how long a revoked key keeps working on another process
    cache_size: int = 10_000
    bcrypt_rounds: int = 12
    admin_key: str = field(default="", repr=False)  # GATEWAY_ADMIN_KEY: an admin key given by the environment
    claudecode_secret: str = field(default="", repr=False)  # HMAC key for Claude Code tokens; "": generated once


@dataclass(frozen=True, slots=True)
class UsageLogConfig:
    flush_interval_ms: int = 200
    flush_rows: int = 500
    max_queue_rows: int = 50_000  # rows held in memory while the database is away; beyond: the spill dir
    spill_dir: str = "./.gateway/usage-spill"
    retention_months: int = 0  # >0: drop usage_log's monthly partitions older than this many whole months


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Limits for one key or user; 0 means no limit of that kind."""

    requests_per_minute: int = 0  # in any sliding 60 s
    tokens_per_minute: int = 0  # input + cache-write + output tokens, settled after each request
    in_flight: int = 0  # requests being served at once

    @property
    def any(self) -> bool:
        return bool(self.requests_per_minute or self.tokens_per_minute or self.in_flight)


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    redis_url: str = ""  # empty: counted in each process (per-process limits)
    fail: str = "open"  # open | closed: what a request gets while Redis cannot be reached
    redis_timeout_s: float = 0.25  # per Redis call; a slower answer counts as Redis being away
    key_prefix: str = "gw:rl:"  # Redis key prefix (several gateways may share one Redis)
    overrides_refresh_s: float = 5.0  # how often each process re-reads the management API's overrides
    key: RateLimit = RateLimit()  # default for every gateway key
    user: RateLimit = RateLimit()  # default for every user (shared by all of the user's keys)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    require_admin: bool = True  # GET /metrics on the main port needs an admin key
    port: int = 0  # >0: also serve /metrics, without auth, on metrics.host:port (keep it private)
    host: str = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    format: str = "auto"  # json | console | auto (console on a terminal, json otherwise)
    level: str = "info"


@dataclass(frozen=True, slots=True)
class DetectorRule:
    """One DLP detector's handling: `action` (block | redact | audit | off; None: inherit) and allowlist regexes."""

    action: str | None = None
    allow: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DlpPolicy:
    """An alias's DLP settings over the section's: on or off (None: the section's `enabled`), detector rules."""

    enabled: bool | None = None
    detectors: Mapping[str, DetectorRule] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DlpConfig:
    """gateway.yaml `dlp:`: off by default; README "Data-loss prevention" explains each key."""

    enabled: bool = False  # for every alias without its own `enabled`
    bypass_roles: tuple[str, ...] = ()  # roles that may send `x-gateway-dlp: off` (admin | user)
    national_ids: tuple[str, ...] = ()  # countries whose national id numbers are looked for
    phone_regions: tuple[str, ...] = ("US",)  # how numbers without +country code are read
    detectors: Mapping[str, DetectorRule] = field(default_factory=dict)
    aliases: Mapping[str, DlpPolicy] = field(default_factory=dict)

    def any_enabled(self) -> bool:
        return self.enabled or any(p.enabled for p in self.aliases.values())


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    """The web console at /console (gateway/console/)."""

    enabled: bool = True
    session_max_age_s: int = 8 * 3600  # a console session ends this long after sign-in
    session_secret: str = field(default="", repr=False)  # encrypts session cookies; "": generated once, in the db
    secure_cookie: str = "auto"  # auto: Secure when the request came over TLS (or X-Forwarded-Proto: https)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    server: ServerConfig
    database: DatabaseConfig
    providers: Mapping[str, ProviderConfig]
    models: Mapping[str, ModelAlias]
    pricing: Mapping[str, Price]
    budgets: BudgetConfig
    auth: AuthConfig
    usage_log: UsageLogConfig
    logging: LoggingConfig
    pipeline: tuple[str, ...]
    metrics: MetricsConfig = MetricsConfig()
    routing: RoutingConfig = RoutingConfig()
    dlp: DlpConfig = DlpConfig()
    rate_limits: RateLimitConfig = RateLimitConfig()
    source: str = "<defaults>"
    console: ConsoleConfig = ConsoleConfig()

    def unpriced_models(self) -> list[str]:
        """Provider models an alias routes to that have no price: their cost is recorded as unknown."""
        return sorted({a.model for a in self.models.values() if self.price_for(a.model) is None})

    def price_for(self, model: str) -> Price | None:
        """The model's price; a dated id (claude-haiku-4-5-20251001) takes its family's (claude-haiku-4-5)."""
        if model in self.pricing:
            return self.pricing[model]
        family = max((m for m in self.pricing if model.startswith(m + "-")), key=len, default=None)
        return self.pricing[family] if family else None


# --- environment interpolation ----------------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(value: str, environ: Mapping[str, str], where: str) -> str:
    """Replace `${VAR}` and `${VAR:-default}` in one YAML string."""

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ and (environ[name] != "" or default is None):
            return environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: environment variable {name} is not set (write ${{{name}:-default}} for a default)")

    if "${" in _VAR.sub("", value):  # `${NAME` unclosed, `${NAME-x}`, `${A:-${B}}`: else sent on as a literal key
        raise ConfigError(f"{where}: a `${{` that is not ${{VAR}} or ${{VAR:-default}} (VAR: letters, digits, _)")
    return _VAR.sub(substitute, value)


def _interpolate_tree(node: Any, environ: Mapping[str, str], where: str) -> Any:
    if isinstance(node, str):
        return interpolate(node, environ, where)
    if isinstance(node, dict):
        return {k: _interpolate_tree(v, environ, f"{where}.{k}" if where else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate_tree(v, environ, f"{where}[{i}]") for i, v in enumerate(node)]
    return node


# --- typed readers: each names the YAML path in its error -------------------------------------------

T = TypeVar("T")
Number = TypeVar("Number", int, float)


def _section(raw: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        path = f"{where}.{unknown[0]}" if where else str(unknown[0])
        raise ConfigError(f"{path}: unknown key (allowed: {', '.join(sorted(allowed))})")
    return raw


def _get(spec: dict[str, Any], key: str, where: str, kind: type[T], default: T | None = None) -> T:
    """Read `key` as `kind`, coercing strings (env values are strings) and naming the path on failure."""
    path = f"{where}.{key}" if where else key
    if key not in spec or spec[key] is None:
        if default is None:
            raise ConfigError(f"{path}: required")
        return default
    value = spec[key]
    try:
        if kind is bool:
            return cast(T, _as_bool(value, path))  # kind is bool, so T is bool
        if kind in (int, float) and isinstance(value, bool):
            raise ValueError
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        if kind is str and not isinstance(value, str | int | float):
            raise ValueError
        return cast(Callable[[Any], T], kind)(value)  # int, float, str, ...: each converts one value
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: expected {kind.__name__}, got {value!r}") from None


def _non_empty(value: str, path: str, *, has_default: bool = True) -> str:
    """An empty string where a name or a path belongs: `host: ''` listened on every interface, `model: ''` (an
    unset `${CLAUDE_FAST_MODEL:-}`) failed every request upstream, an empty directory meant the checkout's root."""
    if not value.strip():
        raise ConfigError(f"{path}: empty" + (" (leave the key out for the default)" if has_default else ""))
    return value


def _as_bool(value: Any, path: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"{path}: expected true or false, got {value!r}")


MIN_THINKING_BUDGET = 1024  # thinking.budget_tokens >= 1024 (platform.claude.com, extended thinking)


def _positive(value: Number, path: str) -> Number:
    if value <= 0:
        raise ConfigError(f"{path}: must be positive, got {value!r}")
    return value


# --- sections ----------------------------------------------------------------------------------------


def _server(raw: Any) -> ServerConfig:
    allowed = {"host", "port", "max_body_bytes", "workers", "max_concurrency", "body_timeout_s", "max_header_bytes"}
    s = _section(raw, "server", allowed | {"shutdown_grace_s", "auth_failures_per_minute", "trusted_proxies"})
    d = ServerConfig()
    port = _get(s, "port", "server", int, d.port)
    if not 0 <= port <= 65535:
        raise ConfigError(f"server.port: {port} is not a TCP port")
    return ServerConfig(
        host=_non_empty(_get(s, "host", "server", str, d.host), "server.host"),
        port=port,
        max_body_bytes=_positive(_get(s, "max_body_bytes", "server", int, d.max_body_bytes), "server.max_body_bytes"),
        workers=_positive(_get(s, "workers", "server", int, d.workers), "server.workers"),
        max_concurrency=_positive(
            _get(s, "max_concurrency", "server", int, d.max_concurrency), "server.max_concurrency"
        ),
        body_timeout_s=_positive(_get(s, "body_timeout_s", "server", float, d.body_timeout_s), "server.body_timeout_s"),
        max_header_bytes=_positive(
            _get(s, "max_header_bytes", "server", int, d.max_header_bytes), "server.max_header_bytes"
        ),
        shutdown_grace_s=_get(s, "shutdown_grace_s", "server", float, d.shutdown_grace_s),
        auth_failures_per_minute=_positive(
            _get(s, "auth_failures_per_minute", "server", int, d.auth_failures_per_minute),
            "server.auth_failures_per_minute",
        ),
        trusted_proxies=_networks(s.get("trusted_proxies"), "server.trusted_proxies"),
    )


def _networks(raw: Any, where: str) -> tuple[str, ...]:
    """A list of CIDRs (or single addresses), each checked with ipaddress; a comma-separated string from the env."""
    if raw is None:
        return ()
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple):
        raise ConfigError(f"{where}: expected a list of CIDRs like 10.0.0.0/8, got {type(raw).__name__}")
    networks = []
    for item in items:
        try:
            networks.append(str(ipaddress.ip_network(str(item).strip(), strict=False)))
        except ValueError:
            raise ConfigError(f"{where}: {item!r} is not an address or CIDR (e.g. 10.0.0.0/8, ::1/128)") from None
        if networks[-1].endswith("/0"):  # every peer a proxy: any client could name itself in X-Forwarded-For
            raise ConfigError(f"{where}: {item!r} trusts every address; list your proxies' addresses (e.g. 10.0.0.0/8)")
    return tuple(networks)


def _database(raw: Any) -> DatabaseConfig:
    s = _section(raw, "database", {"url", "embedded_data_dir", "pool_min", "pool_max", "statement_cache_size"})
    d = DatabaseConfig()
    url = _get(s, "url", "database", str, d.url)
    if url and not url.startswith(("postgresql://", "postgres://")):  # never echoed: it may hold a password
        raise ConfigError("database.url: not a postgresql:// URL (e.g. postgresql://gateway:PASSWORD@db:5432/gateway)")
    pool_min = _non_negative(_get(s, "pool_min", "database", int, d.pool_min), "database.pool_min")
    pool_max = _positive(_get(s, "pool_max", "database", int, d.pool_max), "database.pool_max")
    if pool_min > pool_max:  # asyncpg's ValueError surfaced only at start, as a traceback
        raise ConfigError(f"database.pool_min: {pool_min} is more than pool_max ({pool_max})")
    return DatabaseConfig(
        url=url,
        embedded_data_dir=_non_empty(
            _get(s, "embedded_data_dir", "database", str, d.embedded_data_dir), "database.embedded_data_dir"
        ),
        pool_min=pool_min,
        pool_max=pool_max,
        statement_cache_size=_non_negative(
            _get(s, "statement_cache_size", "database", int, d.statement_cache_size), "database.statement_cache_size"
        ),
    )


def _timeouts(raw: Any, where: str) -> Timeouts:
    s = _section(raw, where, {"connect", "first_byte", "idle"})
    d = Timeouts()
    return Timeouts(
        connect_s=_positive(_get(s, "connect", where, float, d.connect_s), f"{where}.connect"),
        first_byte_s=_positive(_get(s, "first_byte", where, float, d.first_byte_s), f"{where}.first_byte"),
        idle_s=_positive(_get(s, "idle", where, float, d.idle_s), f"{where}.idle"),
    )


def _providers(raw: Any) -> dict[str, ProviderConfig]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("providers: declare at least one provider (e.g. anthropic)")
    providers = {}
    for name, spec_raw in raw.items():
        where = f"providers.{name}"
        spec = _section(spec_raw, where, {"type", "base_url", "api_key", "timeouts", "retries"})
        kind = _get(spec, "type", where, str, "anthropic")
        if kind not in PROVIDER_TYPES:
            raise ConfigError(f"{where}.type: {kind!r} is not a provider type ({', '.join(sorted(PROVIDER_TYPES))})")
        base_url = _get(spec, "base_url", where, str).rstrip("/")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.base_url: {base_url!r} is not an http(s) URL")
        providers[str(name)] = ProviderConfig(
            name=str(name),
            type=kind,
            base_url=base_url,
            api_key=_get(spec, "api_key", where, str, ""),
            timeouts=_timeouts(spec.get("timeouts"), f"{where}.timeouts"),
            retries=_retries(spec.get("retries"), f"{where}.retries"),
        )
    return providers


def _retries(raw: Any, where: str) -> Retries:
    s = _section(raw, where, {"attempts", "backoff_s", "max_backoff_s", "budget_s", "cooldown_after", "cooldown_s"})
    d = Retries()
    return Retries(
        attempts=_positive(_get(s, "attempts", where, int, d.attempts), f"{where}.attempts"),
        backoff_s=_get(s, "backoff_s", where, float, d.backoff_s),
        max_backoff_s=_get(s, "max_backoff_s", where, float, d.max_backoff_s),
        budget_s=_get(s, "budget_s", where, float, d.budget_s),
        cooldown_after=_positive(_get(s, "cooldown_after", where, int, d.cooldown_after), f"{where}.cooldown_after"),
        cooldown_s=_get(s, "cooldown_s", where, float, d.cooldown_s),
    )


def _fallbacks(raw: Any, where: str, providers: Mapping[str, ProviderConfig]) -> tuple[Deployment, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: expected a list of {{provider, model}}")
    deployments = []
    for i, item in enumerate(raw):
        spec = _section(item, f"{where}[{i}]", {"provider", "model"})
        provider = _get(spec, "provider", f"{where}[{i}]", str)
        if provider not in providers:
            known = ", ".join(sorted(providers))
            raise ConfigError(f"{where}[{i}].provider: {provider!r} is not a declared provider ({known})")
        model = _non_empty(_get(spec, "model", f"{where}[{i}]", str), f"{where}[{i}].model", has_default=False)
        deployments.append(Deployment(provider=provider, model=model))
    return tuple(deployments)


def _same_provider_type(alias: ModelAlias, providers: Mapping[str, ProviderConfig]) -> None:
    """A fallback speaks the primary's wire format: the relay chosen for the alias must serve every deployment."""
    kind = providers[alias.provider].type
    for i, fallback in enumerate(alias.fallbacks):
        if providers[fallback.provider].type != kind:
            raise ConfigError(
                f"models.{alias.name}.fallbacks[{i}].provider: {fallback.provider!r} is of type "
                f"{providers[fallback.provider].type!r}, the primary {alias.provider!r} of type {kind!r}"
            )


def _models(raw: Any, providers: Mapping[str, ProviderConfig]) -> dict[str, ModelAlias]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("models: declare at least one model alias")
    aliases = {}
    for name, spec_raw in raw.items():
        where = f"models.{name}"
        allowed = {"provider", "model", "default_max_tokens", "thinking_budgets", "fallbacks", "auto_cache"}
        allowed |= {"structured_outputs"}
        spec = _section(spec_raw, where, allowed)
        provider = _get(spec, "provider", where, str)
        if provider not in providers:
            known = ", ".join(sorted(providers))
            raise ConfigError(f"{where}.provider: {provider!r} is not a declared provider ({known})")
        budgets_raw = _section(
            spec.get("thinking_budgets"),
            f"{where}.thinking_budgets",
            {"minimal", "low", "medium", "high", "xhigh", "max"},
        )
        budgets = {
            effort: _positive(
                _get(budgets_raw, effort, f"{where}.thinking_budgets", int), f"{where}.thinking_budgets.{effort}"
            )
            for effort in budgets_raw
        }
        for effort, budget in budgets.items():  # else every reasoning request is refused upstream, as the caller's 400
            if providers[provider].type == "anthropic" and budget < MIN_THINKING_BUDGET:
                path = f"{where}.thinking_budgets.{effort}"
                raise ConfigError(
                    f"{path}: Anthropic's extended thinking needs at least {MIN_THINKING_BUDGET}, got {budget}"
                )
        aliases[str(name)] = ModelAlias(
            name=str(name),
            provider=provider,
            model=_non_empty(_get(spec, "model", where, str), f"{where}.model", has_default=False),
            default_max_tokens=_positive(
                _get(spec, "default_max_tokens", where, int, 4096), f"{where}.default_max_tokens"
            ),
            thinking_budgets=budgets,
            fallbacks=_fallbacks(spec.get("fallbacks"), f"{where}.fallbacks", providers),
            auto_cache=_get(spec, "auto_cache", where, bool, False),
            structured_outputs=_get(spec, "structured_outputs", where, bool, True),
        )
        _same_provider_type(aliases[str(name)], providers)
    return aliases


def _pricing(raw: Any) -> dict[str, Price]:
    prices = {}
    for model, spec_raw in (raw or {}).items():
        where = f"pricing.{model}"
        optional = {"cache_write_1h", "web_search_per_1k"}
        spec = _section(spec_raw, where, {"input", "output", "cache_write", "cache_read", *optional})
        values = {k: _get(spec, k, where, float) for k in ("input", "output", "cache_write", "cache_read")}
        values |= {k: _get(spec, k, where, float) for k in optional if k in spec}
        for key, value in values.items():
            if value < 0:
                raise ConfigError(f"{where}.{key}: a price cannot be negative")
        prices[str(model)] = Price(**values)
    return prices


def _budgets(raw: Any) -> BudgetConfig:
    s = _section(
        raw, "budgets", {"enforce", "monthly_limit_usd", "monthly_token_limit", "refresh_s", "max_in_flight_per_user"}
    )
    d = BudgetConfig()
    in_flight = s.get("max_in_flight_per_user")
    return BudgetConfig(
        max_in_flight_per_user=None
        if in_flight is None
        else _positive(_get(s, "max_in_flight_per_user", "budgets", int), "budgets.max_in_flight_per_user"),
        refresh_s=_positive(_get(s, "refresh_s", "budgets", float, d.refresh_s), "budgets.refresh_s"),
        enforce=_get(s, "enforce", "budgets", bool, d.enforce),
        monthly_limit_usd=_get(s, "monthly_limit_usd", "budgets", float, d.monthly_limit_usd),
        monthly_token_limit=_get(s, "monthly_token_limit", "budgets", int, d.monthly_token_limit),
    )


def _auth(raw: Any) -> AuthConfig:
    s = _section(raw, "auth", {"cache_ttl_s", "cache_size", "bcrypt_rounds", "admin_key", "claudecode_secret"})
    d = AuthConfig()
    rounds = _get(s, "bcrypt_rounds", "auth", int, d.bcrypt_rounds)
    if not 4 <= rounds <= 31:
        raise ConfigError(f"auth.bcrypt_rounds: {rounds} is outside bcrypt's 4..31")
    return AuthConfig(
        cache_ttl_s=_positive(_get(s, "cache_ttl_s", "auth", float, d.cache_ttl_s), "auth.cache_ttl_s"),
        cache_size=_positive(_get(s, "cache_size", "auth", int, d.cache_size), "auth.cache_size"),
        bcrypt_rounds=rounds,
        admin_key=_admin_key(_get(s, "admin_key", "auth", str, "")),
        claudecode_secret=_get(s, "claudecode_secret", "auth", str, ""),
    )


def _admin_key(key: str) -> str:
    if key and len(key) < 32:
        raise ConfigError("auth.admin_key: an admin key needs at least 32 characters (try: openssl rand -hex 32)")
    return key


def _usage_log(raw: Any) -> UsageLogConfig:
    s = _section(
        raw, "usage_log", {"flush_interval_ms", "flush_rows", "max_queue_rows", "spill_dir", "retention_months"}
    )
    d = UsageLogConfig()
    return UsageLogConfig(
        flush_interval_ms=_positive(
            _get(s, "flush_interval_ms", "usage_log", int, d.flush_interval_ms), "usage_log.flush_interval_ms"
        ),
        flush_rows=_positive(_get(s, "flush_rows", "usage_log", int, d.flush_rows), "usage_log.flush_rows"),
        max_queue_rows=_positive(
            _get(s, "max_queue_rows", "usage_log", int, d.max_queue_rows), "usage_log.max_queue_rows"
        ),
        spill_dir=_non_empty(_get(s, "spill_dir", "usage_log", str, d.spill_dir), "usage_log.spill_dir"),
        retention_months=_retention_months(_get(s, "retention_months", "usage_log", int, d.retention_months)),
    )


MAX_RETENTION_MONTHS = 1200  # 100 years; "keep forever" is 0. Beyond ~24,000 the cut-off month is before year 1,
# which date() refuses: the partition keeper would stop for good, and no month ahead would be made again.


def _retention_months(value: int) -> int:
    if not 0 <= value <= MAX_RETENTION_MONTHS:
        raise ConfigError(
            f"usage_log.retention_months: must be 0 (keep everything) to {MAX_RETENTION_MONTHS}, got {value}"
        )
    return value


def _non_negative(value: int, where: str) -> int:
    if value < 0:
        raise ConfigError(f"{where}: must be 0 or more, got {value}")
    return value


def _rate_limit(raw: Any, where: str) -> RateLimit:
    names = ("requests_per_minute", "tokens_per_minute", "in_flight")
    s = _section(raw, where, set(names))
    return RateLimit(**{n: _non_negative(_get(s, n, where, int, 0), f"{where}.{n}") for n in names})


def _rate_limits(raw: Any) -> RateLimitConfig:
    allowed = {"redis_url", "fail", "redis_timeout_s", "key_prefix", "overrides_refresh_s", "key", "user"}
    s = _section(raw, "rate_limits", allowed)
    d = RateLimitConfig()
    fail = _get(s, "fail", "rate_limits", str, d.fail)
    if fail not in ("open", "closed"):
        raise ConfigError(f"rate_limits.fail: {fail!r} is not one of open, closed")
    redis_url = _get(s, "redis_url", "rate_limits", str, d.redis_url)
    if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"rate_limits.redis_url: {redis_url!r} is not a redis://, rediss:// or unix:// URL")
    return RateLimitConfig(
        redis_url=redis_url,
        fail=fail,
        redis_timeout_s=_positive(
            _get(s, "redis_timeout_s", "rate_limits", float, d.redis_timeout_s), "rate_limits.redis_timeout_s"
        ),
        key_prefix=_get(s, "key_prefix", "rate_limits", str, d.key_prefix),
        overrides_refresh_s=_positive(
            _get(s, "overrides_refresh_s", "rate_limits", float, d.overrides_refresh_s),
            "rate_limits.overrides_refresh_s",
        ),
        key=_rate_limit(s.get("key"), "rate_limits.key"),
        user=_rate_limit(s.get("user"), "rate_limits.user"),
    )


def _metrics(raw: Any) -> MetricsConfig:
    s = _section(raw, "metrics", {"require_admin", "port", "host"})
    d = MetricsConfig()
    port = _get(s, "port", "metrics", int, d.port)
    if not 0 <= port <= 65535:
        raise ConfigError(f"metrics.port: {port} is not a TCP port")
    return MetricsConfig(
        require_admin=_get(s, "require_admin", "metrics", bool, d.require_admin),
        port=port,
        host=_get(s, "host", "metrics", str, d.host),
    )


def _logging(raw: Any) -> LoggingConfig:
    s = _section(raw, "logging", {"format", "level"})
    fmt = _get(s, "format", "logging", str, "auto")
    if fmt not in ("json", "console", "auto"):
        raise ConfigError(f"logging.format: {fmt!r} is not one of json, console, auto")
    level = _get(s, "level", "logging", str, "info").lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"logging.level: {level!r} is not one of debug, info, warning, error")
    return LoggingConfig(format=fmt, level=level)


def _console(raw: Any) -> ConsoleConfig:
    s = _section(raw, "console", {"enabled", "session_max_age_s", "session_secret", "secure_cookie"})
    d = ConsoleConfig()
    secure = _get(s, "secure_cookie", "console", str, d.secure_cookie).lower()
    if secure not in ("auto", "true", "false"):
        raise ConfigError(f"console.secure_cookie: {secure!r} is not one of auto, true, false")
    secret = _get(s, "session_secret", "console", str, "")
    if secret and len(secret) < 32:
        raise ConfigError("console.session_secret: needs at least 32 characters (try: openssl rand -hex 32)")
    max_age = _get(s, "session_max_age_s", "console", int, d.session_max_age_s)
    return ConsoleConfig(
        enabled=_get(s, "enabled", "console", bool, d.enabled),
        session_max_age_s=_positive(max_age, "console.session_max_age_s"),
        session_secret=secret,
        secure_cookie=secure,
    )


def _routing(raw: Any, models: Mapping[str, ModelAlias], providers: Mapping[str, ProviderConfig]) -> RoutingConfig:
    s = _section(raw, "routing", {"rules", "default"})
    rules_raw = s.get("rules") or []
    if not isinstance(rules_raw, list):
        raise ConfigError("routing.rules: expected a list of {match, alias | provider}")
    rules = []
    for i, rule_raw in enumerate(rules_raw):
        where = f"routing.rules[{i}]"
        rule = _section(rule_raw, where, {"match", "alias", "provider"})
        match = _get(rule, "match", where, str)
        alias, provider = rule.get("alias"), rule.get("provider")
        if (alias is None) == (provider is None):
            raise ConfigError(f"{where}: give exactly one of alias (map to it) or provider (pass through unchanged)")
        if alias is not None and alias not in models:
            raise ConfigError(f"{where}.alias: {alias!r} is not a model alias ({', '.join(sorted(models))})")
        if provider is not None and provider not in providers:
            raise ConfigError(
                f"{where}.provider: {provider!r} is not a declared provider ({', '.join(sorted(providers))})"
            )
        rules.append(RouteRule(match=match, alias=alias, provider=provider))
    default = s.get("default")
    if default is not None and default not in models:
        raise ConfigError(f"routing.default: {default!r} is not a model alias ({', '.join(sorted(models))})")
    return RoutingConfig(rules=tuple(rules), default=default)


def _pipeline(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return PIPELINE_STAGES
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise ConfigError("pipeline: expected a list of stage names")
    for name in raw:
        if name not in PIPELINE_STAGES:
            raise ConfigError(f"pipeline: unknown stage {name!r} (stages: {', '.join(PIPELINE_STAGES)})")
    if missing := sorted(REQUIRED_STAGES - set(raw)):
        raise ConfigError(f"pipeline: stage {missing[0]!r} is required")
    if list(raw) != [s for s in PIPELINE_STAGES if s in raw]:
        raise ConfigError(f"pipeline: stages must keep the order {' -> '.join(PIPELINE_STAGES)}")
    return tuple(raw)


def _dlp_rules(raw: Any, where: str) -> dict[str, DetectorRule]:
    rules = {}
    for detector, spec_raw in _section(raw, where, set(DETECTOR_IDS)).items():
        path = f"{where}.{detector}"
        spec = _section(spec_raw, path, {"action", "allow"})
        action = spec.get("action")
        if action is False:  # YAML 1.1 reads a bare `off` (the documented action) as false
            action = "off"
        if action is not None and action not in ACTIONS:
            raise ConfigError(f"{path}.action: {action!r} is not one of {', '.join(ACTIONS)}")
        allow = spec.get("allow") or []
        if not isinstance(allow, list) or not all(isinstance(a, str) for a in allow):
            raise ConfigError(f"{path}.allow: expected a list of regular expressions")
        for i, pattern in enumerate(allow):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"{path}.allow[{i}]: {pattern!r} is not a regular expression ({exc})") from None
        rules[str(detector)] = DetectorRule(action=action, allow=tuple(allow))
    return rules


def _dlp_list(
    spec: dict[str, Any], key: str, allowed: tuple[str, ...] | None, default: tuple[str, ...]
) -> tuple[str, ...]:
    value = spec.get(key)
    if value is None:
        return default
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"dlp.{key}: expected a list of names")
    for item in value:
        if allowed is not None and item not in allowed:
            raise ConfigError(f"dlp.{key}: {item!r} is not one of {', '.join(allowed)}")
        if allowed is None and not re.fullmatch(r"[A-Z]{2}", item):
            raise ConfigError(f"dlp.{key}: {item!r} is not a two-letter region code such as US or GB")
    if allowed is None and value:
        import phonenumbers  # only here: its region list (UK is no region, GB is), metadata loaded lazily

        if unknown := [item for item in value if item not in phonenumbers.SUPPORTED_REGIONS]:
            raise ConfigError(f"dlp.{key}: {unknown[0]!r} is not a region libphonenumber knows (the UK is GB)")
    return tuple(value)


def _dlp(raw: Any, models: Mapping[str, ModelAlias], pipeline: tuple[str, ...]) -> DlpConfig:
    allowed = {"enabled", "bypass_roles", "national_ids", "phone_regions", "detectors", "aliases"}
    s = _section(raw, "dlp", allowed)
    aliases = {}
    for name, spec_raw in _section(s.get("aliases"), "dlp.aliases", set(models)).items():
        spec = _section(spec_raw, f"dlp.aliases.{name}", {"enabled", "detectors"})
        enabled = _get(spec, "enabled", f"dlp.aliases.{name}", bool, True) if "enabled" in spec else None
        rules = _dlp_rules(spec.get("detectors"), f"dlp.aliases.{name}.detectors")
        aliases[str(name)] = DlpPolicy(enabled=enabled, detectors=rules)
    dlp = DlpConfig(
        enabled=_get(s, "enabled", "dlp", bool, False),
        bypass_roles=_dlp_list(s, "bypass_roles", ("admin", "user"), ()),
        national_ids=_dlp_list(s, "national_ids", NATIONAL_ID_COUNTRIES, ()),
        phone_regions=_dlp_list(s, "phone_regions", None, ("US",)),
        detectors=_dlp_rules(s.get("detectors"), "dlp.detectors"),
        aliases=aliases,
    )
    if dlp.any_enabled() and "dlp" not in pipeline:
        raise ConfigError("dlp: enabled, but `pipeline:` leaves out the dlp stage (add it between budget and route)")
    return dlp


# The original design's variables win over whatever gateway.yaml says, so ops can change a limit without a file.
BUDGET_ENV = {
    "ENFORCE_BUDGETS": "enforce",
    "DEFAULT_MONTHLY_LIMIT_USD": "monthly_limit_usd",
    "DEFAULT_MONTHLY_TOKEN_LIMIT": "monthly_token_limit",
}


def _budget_env_overrides(raw: Any, environ: Mapping[str, str]) -> Any:
    overrides = {key: environ[var] for var, key in BUDGET_ENV.items() if environ.get(var, "") != ""}
    if not overrides:
        return raw
    return {**(raw if isinstance(raw, dict) else {}), **overrides}


TOP_LEVEL = {
    "server",
    "database",
    "providers",
    "models",
    "routing",
    "pricing",
    "budgets",
    "auth",
    "usage_log",
    "logging",
    "metrics",
    "pipeline",
    "dlp",
    "console",
    "rate_limits",
}


def parse_config(raw: Any, environ: Mapping[str, str], source: str = "<memory>") -> GatewayConfig:
    """Validate an already-loaded YAML document; `environ` fills the `${VAR}` references."""
    doc = _section(raw, "", TOP_LEVEL) if raw is not None else {}
    doc = _interpolate_tree(doc, environ, "")
    doc["budgets"] = _budget_env_overrides(doc.get("budgets"), environ)
    providers = _providers(doc.get("providers"))
    models = _models(doc.get("models"), providers)
    return GatewayConfig(
        server=_server(doc.get("server")),
        database=_database(doc.get("database")),
        providers=providers,
        models=models,
        routing=_routing(doc.get("routing"), models, providers),
        pricing=_pricing(doc.get("pricing")),
        budgets=_budgets(doc.get("budgets")),
        auth=_auth(doc.get("auth")),
        usage_log=_usage_log(doc.get("usage_log")),
        logging=_logging(doc.get("logging")),
        pipeline=_pipeline(doc.get("pipeline")),
        metrics=_metrics(doc.get("metrics")),
        dlp=_dlp(doc.get("dlp"), models, _pipeline(doc.get("pipeline"))),
        rate_limits=_rate_limits(doc.get("rate_limits")),
        source=source,
        console=_console(doc.get("console")),
    )


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with the same key twice.

    YAML 1.2 requires keys to be unique, but PyYAML keeps the last one silently: a second `models:` pasted
    at the end of gateway.yaml would replace every alias above it without a word.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` may be overridden by the keys beside it; that is its purpose
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, list | dict):
                    continue  # unhashable: SafeConstructor reports it
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping",
                        node.start_mark,
                        f"duplicate key {key!r} (first at line {seen[key].start_mark.line + 1})",
                        key_node.start_mark,
                    )
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def default_config_path(environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get("GATEWAY_CONFIG", "gateway.yaml"))


def load_config(path: Path | str | None = None, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read and validate gateway.yaml; raises ConfigError with one line naming the key and the problem."""
    environ = os.environ if environ is None else environ
    path = Path(path) if path is not None else default_config_path(environ)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        if path.is_absolute():
            raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
        # `~/gateway/scripts/serve` typed from the home directory: the path is relative to where one stands.
        raise ConfigError(
            f"{path}: no such file in {Path.cwd()} "
            "(run from the checkout, or give --config FILE or GATEWAY_CONFIG=FILE)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line} is not UTF-8 (byte {exc.object[exc.start]:#04x})") from None
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader that refuses duplicate keys
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(exc, "problem", exc)).split())  # one line, as every config error
        raise ConfigError(f"{path}:{where} is not valid YAML ({problem})") from None
    return parse_config(raw, environ, source=str(path))
