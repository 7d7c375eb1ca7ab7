"""gateway.yaml, parsed once into frozen pydantic models: each section's keys, types, defaults and rules.

`load_config(path, environ)` is the only reader of the file and of the environment variables it names.
Values may use `${VAR}` (the variable must be set) and `${VAR:-default}`. Every problem is reported as one
`ConfigError` line naming the YAML path, e.g. `models.claude-fast.provider: 'antropic' is not a declared
provider (anthropic)`.

    config.py           GatewayConfig (the whole file), the routing sections, the rules that join sections
    config_sections.py  the sections that stand alone (server, database, budgets, auth, dlp, rate_limits, ...)
    config_types.py     the value types and their rules (Positive, Port, NonEmpty, ...)
    config_yaml.py      the document: YAML without duplicate keys, ${VAR}, pydantic's errors as one line

A new section is one Section model (in its feature's module or in config_sections.py) and one field below.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, PrivateAttr, model_validator

from gateway.config_sections import AuthConfig as AuthConfig
from gateway.config_sections import BudgetConfig as BudgetConfig
from gateway.config_sections import ConsoleConfig as ConsoleConfig
from gateway.config_sections import DatabaseConfig as DatabaseConfig
from gateway.config_sections import DetectorRule as DetectorRule
from gateway.config_sections import DlpConfig as DlpConfig
from gateway.config_sections import DlpPolicy as DlpPolicy
from gateway.config_sections import LoggingConfig as LoggingConfig
from gateway.config_sections import MetricsConfig as MetricsConfig
from gateway.config_sections import RateLimit as RateLimit
from gateway.config_sections import RateLimitConfig as RateLimitConfig
from gateway.config_sections import ServerConfig as ServerConfig
from gateway.config_sections import UsageLogConfig as UsageLogConfig
from gateway.config_types import (
    PIPELINE_STAGES,
    BaseUrl,
    Bool,
    Cost,
    Effort,
    Float,
    Given,
    Pipeline,
    Positive,
    PositiveFloat,
    Section,
    Str,
    one_of,
    rule,
)
from gateway.config_yaml import ConfigError as ConfigError
from gateway.config_yaml import allowed_keys, interpolate_tree, read_yaml, validate
from gateway.sso.config import CallerJwtConfig, IdentityConfig, SsoConfig, with_client_secret

PROVIDER_TYPES = ("anthropic", "openai")
MIN_THINKING_BUDGET = 1024  # thinking.budget_tokens >= 1024 (platform.claude.com, extended thinking)


class Timeouts(Section):
    connect_s: PositiveFloat = Field(default=10.0, alias="connect")
    first_byte_s: PositiveFloat = Field(default=600.0, alias="first_byte")  # Anthropic may think for minutes first
    idle_s: PositiveFloat = Field(default=300.0, alias="idle")  # longest silence allowed between two chunks


class Retries(Section):
    """How hard to try one deployment before the alias's next one: exponential backoff with full jitter."""

    attempts: Positive = 3  # tries per deployment, the first included
    backoff_s: Float = 0.5  # first delay; doubles each retry
    max_backoff_s: Float = 8.0
    budget_s: Float = 30.0  # total time a request may spend retrying (Retry-After included), all deployments
    cooldown_after: Positive = 3  # consecutive failed requests that put a deployment to rest ...
    cooldown_s: Float = 30.0  # ... for this long (unless every deployment of the alias is resting)


class ProviderConfig(Section):
    name: str  # the key it is declared under
    type: Annotated[Str, one_of(PROVIDER_TYPES, "a provider type")] = "anthropic"
    base_url: BaseUrl
    api_key: Str = Field(default="", repr=False)
    timeouts: Timeouts = Timeouts()
    retries: Retries = Retries()


class Deployment(Section):
    """One place an alias can be served: a provider and its model id."""

    provider: Str
    model: Given


class ModelAlias(Section):
    name: str  # the key it is declared under
    provider: Str
    model: Given
    default_max_tokens: Positive = 4096  # for OpenAI callers that send no max_tokens (Anthropic requires one)
    thinking_budgets: Mapping[Effort, Positive] = Field(default_factory=dict)  # OpenAI reasoning_effort -> budget
    fallbacks: tuple[Deployment, ...] = ()  # tried in order when the primary fails (after its retries)
    auto_cache: Bool = False  # add Anthropic cache_control breakpoints to OpenAI-dialect requests (Cursor, Codex)
    structured_outputs: Bool = True  # the model has output_config.format; false: a forced tool call stands in


class RouteRule(Section):
    """A model id that is not an alias: `match` (shell pattern) goes to `alias`, or to `provider` unchanged."""

    match: Str
    alias: Str | None = None
    provider: Str | None = None

    @model_validator(mode="after")
    def _one_target(self) -> RouteRule:
        if (self.alias is None) == (self.provider is None):
            raise ValueError("give exactly one of alias (map to it) or provider (pass through unchanged)")
        return self


class RoutingConfig(Section):
    rules: tuple[RouteRule, ...] = ()
    default: Str | None = None  # alias for any other model id; None: 404 listing the aliases


class Price(Section):
    """USD per million tokens; web searches in USD per 1,000 searches.

    `cache_write` prices 5-minute cache writes (Anthropic: 1.25x input), `cache_write_1h` 1-hour ones
    (Anthropic: 2x input, the default when unset).
    """

    input: Cost
    output: Cost
    cache_write: Cost
    cache_read: Cost
    cache_write_1h: Cost | None = None
    web_search_per_1k: Cost = 10.0  # Anthropic's list price for its web search tool

    @property
    def cache_write_1h_price(self) -> float:
        return self.cache_write_1h if self.cache_write_1h is not None else 2 * self.input


class GatewayConfig(Section):
    """The whole of gateway.yaml; `source` is the file it was read from."""

    server: ServerConfig = ServerConfig()
    database: DatabaseConfig = DatabaseConfig()
    providers: Annotated[Mapping[Str, ProviderConfig], rule(bool, "declare at least one provider (e.g. anthropic)")]
    models: Annotated[Mapping[Str, ModelAlias], rule(bool, "declare at least one model alias")]
    routing: RoutingConfig = RoutingConfig()
    pricing: Mapping[Str, Price] = Field(default_factory=dict)
    budgets: BudgetConfig = BudgetConfig()
    auth: AuthConfig = AuthConfig()
    usage_log: UsageLogConfig = UsageLogConfig()
    logging: LoggingConfig = LoggingConfig()
    pipeline: Pipeline = PIPELINE_STAGES
    metrics: MetricsConfig = MetricsConfig()
    dlp: DlpConfig = DlpConfig()
    rate_limits: RateLimitConfig = RateLimitConfig()
    console: ConsoleConfig = ConsoleConfig()
    sso: SsoConfig | None = None  # people signing in with OpenID Connect (gateway/sso/config.py)
    caller_jwt: CallerJwtConfig | None = None  # callers presenting the company's JWTs on the model routes
    _source: str = PrivateAttr(default="<defaults>")

    @property
    def source(self) -> str:
        return self._source

    @property
    def identity(self) -> IdentityConfig:
        """Both identity sections together: what a reload compares and gateway/sso opens."""
        return IdentityConfig(sso=self.sso, caller_jwt=self.caller_jwt)

    @model_validator(mode="before")
    @classmethod
    def _named(cls, data: Any) -> Any:
        """Each provider and alias carries the key it is declared under as its `name` (not a key of its own)."""
        for section in ("providers", "models"):
            items = data.get(section) if isinstance(data, dict) else None
            if not isinstance(items, dict) or not items:  # `models: {}` or left out: "declare at least one"
                data = {**data, section: {}} if isinstance(data, dict) and items is None else data
                continue
            if named := [k for k, v in items.items() if isinstance(v, dict) and "name" in v]:
                raise ConfigError(
                    f"{section}.{named[0]}.name: unknown key (allowed: {allowed_keys(cls, [section, 0])})"
                )
            specs = {k: {**(v or {}), "name": str(k)} if isinstance(v, dict | None) else v for k, v in items.items()}
            data = {**data, section: specs}
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> GatewayConfig:
        """Rules that join sections, each a ConfigError naming the path (pydantic lets it through)."""
        for name, alias in self.models.items():
            self._check_alias(name, alias)
        aliases = ", ".join(sorted(self.models))
        for i, route in enumerate(self.routing.rules):
            if route.alias is not None and route.alias not in self.models:
                raise ConfigError(f"routing.rules[{i}].alias: {route.alias!r} is not a model alias ({aliases})")
            if route.provider is not None:
                self._provider_type(route.provider, f"routing.rules[{i}].provider")
        if self.routing.default is not None and self.routing.default not in self.models:
            raise ConfigError(f"routing.default: {self.routing.default!r} is not a model alias ({aliases})")
        if unknown := sorted(set(self.dlp.aliases) - set(self.models)):
            raise ConfigError(f"dlp.aliases.{unknown[0]}: unknown key (allowed: {aliases})")
        if self.dlp.any_enabled() and "dlp" not in self.pipeline:
            raise ConfigError(
                "dlp: enabled, but `pipeline:` leaves out the dlp stage (add it between budget and route)"
            )
        if self.sso and self.caller_jwt and self.sso.issuer == self.caller_jwt.issuer:
            # One audience for both: a developer's model-route token would be a person's management-API token (an
            # admin's, for an admin), and a person's ID or management token would call the models.
            shared = {"sso.api_audience": self.sso.api_audience, "sso.client_id": self.sso.client_id}
            if clash := next((name for name, aud in shared.items() if aud == self.caller_jwt.audience), None):
                raise ConfigError(
                    f"caller_jwt.audience: {self.caller_jwt.audience!r} is also {clash}; the same issuer's tokens "
                    "for the model routes and for people need different audiences"
                )
        return self

    def _provider_type(self, provider: str, where: str) -> str:
        if provider not in self.providers:
            raise ConfigError(f"{where}: {provider!r} is not a declared provider ({', '.join(sorted(self.providers))})")
        return self.providers[provider].type

    def _check_alias(self, name: str, alias: ModelAlias) -> None:
        kind = self._provider_type(alias.provider, f"models.{name}.provider")
        for effort, budget in alias.thinking_budgets.items():  # else every reasoning request is refused upstream
            if kind == "anthropic" and budget < MIN_THINKING_BUDGET:
                raise ConfigError(
                    f"models.{name}.thinking_budgets.{effort}: Anthropic's extended thinking needs at least "
                    f"{MIN_THINKING_BUDGET}, got {budget}"
                )
        for i, fallback in enumerate(alias.fallbacks):  # the relay chosen for the alias must serve every deployment
            if (other := self._provider_type(fallback.provider, f"models.{name}.fallbacks[{i}].provider")) != kind:
                raise ConfigError(
                    f"models.{name}.fallbacks[{i}].provider: {fallback.provider!r} is of type {other!r}, "
                    f"the primary {alias.provider!r} of type {kind!r}"
                )

    def unpriced_models(self) -> list[str]:
        """Provider models an alias routes to that have no price: their cost is recorded as unknown."""
        return sorted({a.model for a in self.models.values() if self.price_for(a.model) is None})

    def price_for(self, model: str) -> Price | None:
        """The model's price; a dated id (claude-haiku-4-5-20251001) takes its family's (claude-haiku-4-5)."""
        if model in self.pricing:
            return self.pricing[model]
        family = max((m for m in self.pricing if model.startswith(m + "-")), key=len, default=None)
        return self.pricing[family] if family else None


# The original design's variables win over whatever gateway.yaml says, so ops can change a limit without a file.
BUDGET_ENV = {
    "ENFORCE_BUDGETS": "enforce",
    "DEFAULT_MONTHLY_LIMIT_USD": "monthly_limit_usd",
    "DEFAULT_MONTHLY_TOKEN_LIMIT": "monthly_token_limit",
}


def parse_config(raw: Any, environ: Mapping[str, str], source: str = "<memory>") -> GatewayConfig:
    """Validate an already-loaded YAML document; `environ` fills the `${VAR}` references. Raises ConfigError."""
    doc = interpolate_tree({} if raw is None else raw, environ)
    if overrides := {key: environ[var] for var, key in BUDGET_ENV.items() if environ.get(var, "") != ""}:
        budgets = doc.get("budgets") if isinstance(doc, dict) else None
        doc = {**doc, "budgets": {**(budgets if isinstance(budgets, dict) else {}), **overrides}}
    cfg = validate(GatewayConfig, doc)
    if cfg.sso is not None:  # the client secret lives in the environment, never in the file
        try:
            cfg = cfg.model_copy(update={"sso": with_client_secret(cfg.sso, environ)})
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    cfg._source = source
    return cfg


def default_config_path(environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get("GATEWAY_CONFIG", "gateway.yaml"))


def load_config(path: Path | str | None = None, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read and validate gateway.yaml; raises ConfigError with one line naming the key and the problem."""
    environ = os.environ if environ is None else environ
    path = Path(path) if path is not None else default_config_path(environ)
    return parse_config(read_yaml(path), environ, source=str(path))
