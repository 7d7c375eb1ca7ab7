"""gateway.yaml parsing: defaults, interpolation, env overrides, and one clear line for every mistake."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
MINIMAL: dict[str, Any] = {
    "providers": {"anthropic": {"base_url": "https://api.anthropic.com", "api_key": "k"}},
    "models": {"claude-fast": {"provider": "anthropic", "model": "claude-haiku-4-5"}},
}


def with_(**sections: Any) -> dict[str, Any]:
    return {**MINIMAL, **sections}


@pytest.mark.parametrize(
    "path", [ROOT / "gateway.yaml", *sorted((ROOT / "config").glob("*.yaml"))], ids=lambda p: p.name
)
def test_shipped_files_are_valid(path: Path) -> None:
    env = {"ANTHROPIC_API_KEY": "sk-test", "DATABASE_URL": "postgresql://db/gateway"}
    cfg = load_config(path, env)
    assert "claude-fast" in cfg.models
    assert cfg.unpriced_models() == []


def test_defaults_and_interpolation() -> None:
    raw = with_(server={"port": "${PORT:-8123}"})
    cfg = parse_config(raw, {})
    assert cfg.server.port == 8123 and cfg.server.max_body_bytes == 32 * 1024 * 1024
    assert parse_config(raw, {"PORT": "9000"}).server.port == 9000
    proxies = parse_config({**raw, "server": {"trusted_proxies": ["127.0.0.1", "10.1.2.3/8"]}}, {}).server
    assert proxies.trusted_proxies == ("127.0.0.1/32", "10.0.0.0/8") and cfg.server.trusted_proxies == ()
    assert cfg.pipeline == ("auth", "key_mapping", "rate_limit", "budget", "dlp", "route", "usage_log")


def test_model_env_override_in_the_shipped_file() -> None:
    cfg = load_config(ROOT / "gateway.yaml", {"CLAUDE_FAST_MODEL": "claude-haiku-9"})
    assert cfg.models["claude-fast"].model == "claude-haiku-9"
    assert cfg.unpriced_models() == ["claude-haiku-9"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({}, (True, 100.0, 10_000_000), id="file"),
        pytest.param({"ENFORCE_BUDGETS": "false"}, (False, 100.0, 10_000_000), id="enforce"),
        pytest.param({"DEFAULT_MONTHLY_LIMIT_USD": "12.5"}, (True, 12.5, 10_000_000), id="usd"),
        pytest.param({"DEFAULT_MONTHLY_TOKEN_LIMIT": "77"}, (True, 100.0, 77), id="tokens"),
    ],
)
def test_budget_env_overrides_the_file(env: dict[str, str], expected: tuple[Any, ...]) -> None:
    raw = with_(budgets={"enforce": True, "monthly_limit_usd": 100, "monthly_token_limit": 10_000_000})
    b = parse_config(raw, env).budgets
    assert (b.enforce, b.monthly_limit_usd, b.monthly_token_limit) == expected


@pytest.mark.parametrize(
    ("raw", "env", "message"),
    [
        pytest.param(with_(serverr={}), {}, "serverr: unknown key", id="unknown-top-level"),
        pytest.param(with_(server={"prot": 1}), {}, "server.prot: unknown key", id="unknown-nested"),
        pytest.param(with_(server={"port": "eighty"}), {}, "server.port: expected int", id="wrong-type"),
        pytest.param(with_(server={"port": 70000}), {}, "server.port: 70000 is not a TCP port", id="port-range"),
        pytest.param(
            with_(server={"trusted_proxies": ["10.0.0.0/8", "nginx.local"]}),
            {},
            "server.trusted_proxies: 'nginx.local' is not an address or CIDR",
            id="trusted-proxy-not-a-cidr",
        ),
        pytest.param(
            with_(server={"trusted_proxies": 10}), {}, "server.trusted_proxies: expected a list", id="trusted-proxies"
        ),
        pytest.param(
            with_(models={"claude-fast": {"provider": "antropic", "model": "m"}}),
            {},
            "models.claude-fast.provider: 'antropic' is not a declared provider (anthropic)",
            id="missing-provider",
        ),
        pytest.param(
            with_(providers={"anthropic": {"base_url": "https://x", "api_key": "${ANTHROPIC_API_KEY}"}}),
            {},
            "providers.anthropic.api_key: environment variable ANTHROPIC_API_KEY is not set",
            id="missing-env",
        ),
        pytest.param(
            with_(providers={"anthropic": {"base_url": "ftp://x"}}), {}, "is not an http(s) URL", id="bad-url"
        ),
        pytest.param(
            with_(providers={"a": {"type": "cohere", "base_url": "https://x"}}), {}, "is not a provider type", id="type"
        ),
        pytest.param(with_(models={}), {}, "models: declare at least one", id="no-models"),
        pytest.param(
            with_(pricing={"m": {"input": 1, "output": 1, "cache_write": 1}}),
            {},
            "pricing.m.cache_read: required",
            id="price",
        ),
        pytest.param(with_(budgets={"enforce": "maybe"}), {}, "budgets.enforce: expected true or false", id="bool"),
        pytest.param(with_(pipeline=["route", "auth"]), {}, "stages must keep the order", id="order"),
        pytest.param(with_(pipeline=["auth"]), {}, "stage 'route' is required", id="required-stage"),
        pytest.param(with_(pipeline=["auth", "cache", "route"]), {}, "unknown stage 'cache'", id="unknown-stage"),
        pytest.param(with_(auth={"admin_key": "short"}), {}, "at least 32 characters", id="admin-key"),
        pytest.param(with_(logging={"format": "xml"}), {}, "logging.format", id="log-format"),
        pytest.param(
            with_(models={"a": {"provider": "anthropic", "model": "m", "thinking_budgets": {"huge": 1}}}),
            {},
            "models.a.thinking_budgets.huge: unknown key",
            id="effort",
        ),
        pytest.param(
            with_(models={"a": {"provider": "anthropic", "model": "m", "thinking_budgets": {"low": 512}}}),
            {},
            "models.a.thinking_budgets.low: Anthropic's extended thinking needs at least 1024, got 512",
            id="budget-under-anthropic-minimum",
        ),
    ],
)
def test_bad_config_is_one_line_naming_the_key(raw: dict[str, Any], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(raw, env)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", {})
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(bad, {})


def test_provider_api_key_never_appears_in_repr() -> None:
    cfg = parse_config(with_(providers={"anthropic": {"base_url": "https://x", "api_key": "sk-secret-123"}}), {})
    assert "sk-secret-123" not in repr(cfg)


@pytest.mark.parametrize(
    ("routing", "message"),
    [
        pytest.param({"rules": [{"match": "x*"}]}, "give exactly one of alias", id="neither"),
        pytest.param({"rules": [{"match": "x*", "alias": "nope"}]}, "routing.rules[0].alias: 'nope'", id="alias"),
        pytest.param({"rules": [{"match": "x*", "provider": "p"}]}, "routing.rules[0].provider: 'p'", id="provider"),
        pytest.param({"default": "nope"}, "routing.default: 'nope' is not a model alias", id="default"),
    ],
)
def test_bad_routing(routing: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(with_(routing=routing), {})


def test_dated_model_ids_take_their_family_price() -> None:
    cfg = load_config(ROOT / "gateway.yaml", {})
    assert cfg.price_for("claude-haiku-4-5-20251001") == cfg.pricing["claude-haiku-4-5"]
    assert cfg.price_for("claude-haiku-4") is None


def test_fallbacks_must_share_the_primary_provider_type() -> None:
    raw = with_(
        providers={
            "anthropic": {"base_url": "https://api.anthropic.com"},
            "local": {"type": "openai", "base_url": "http://127.0.0.1:11434/v1"},
        },
        models={"a": {"provider": "anthropic", "model": "m", "fallbacks": [{"provider": "local", "model": "llama"}]}},
    )
    with pytest.raises(ConfigError, match=r"models\.a\.fallbacks\[0\]\.provider: 'local' is of type 'openai'"):
        parse_config(raw, {})


@pytest.mark.parametrize(
    ("raw", "line"),
    [
        pytest.param(
            with_(providers={"anthropic": {"base_url": "https://x", "timeouts": {"conect": 5}}}),
            "providers.anthropic.timeouts.conect: unknown key (allowed: connect, first_byte, idle)",
            id="unknown-key-lists-the-allowed",
        ),
        pytest.param(
            with_(providers={"anthropic": {"base_url": "https://x", "name": "other"}}),
            "providers.anthropic.name: unknown key (allowed: api_key, base_url, retries, timeouts, type)",
            id="name-is-the-key",
        ),
        pytest.param(with_(server={"port": True}), "server.port: expected int, got True", id="bool-is-no-number"),
        pytest.param(
            with_(server={"workers": "0"}), "server.workers: must be positive, got 0", id="env-string-checked"
        ),
        pytest.param(
            with_(
                models={
                    "claude-fast": {"provider": "anthropic", "model": "m", "fallbacks": [{"provider": "anthropic"}]}
                }
            ),
            "models.claude-fast.fallbacks[0].model: required",
            id="path-through-a-list",
        ),
        pytest.param(
            with_(dlp={"aliases": {"claude-fast": {"detectors": {"emial": {"action": "block"}}}}}),
            "dlp.aliases.claude-fast.detectors.emial: unknown key (allowed: anthropic_key,",
            id="unknown-mapping-key",
        ),
        pytest.param(
            with_(console={"secure_cookie": "Maybe"}), "console.secure_cookie: 'maybe' is not one of", id="lower"
        ),
        pytest.param(["server"], "expected a mapping, got list", id="not-a-mapping"),
        pytest.param(  # a misspelt key is named, not reported as the key it was meant to be ("required")
            with_(pricing={"claude-haiku-4-5": {"input": 1, "output": 5, "cache_write": 1.25, "cahce_read": 0.1}}),
            "pricing.claude-haiku-4-5.cahce_read: unknown key (allowed: cache_read,",
            id="misspelt-required-key",
        ),
        pytest.param(  # NaN compares false with every spend: the monthly cap would never be reached
            with_(budgets={"monthly_limit_usd": "nan"}),
            "budgets.monthly_limit_usd: must be 0 or more, got nan",
            id="nan-is-no-limit",
        ),
        pytest.param(
            with_(providers={"anthropic": {"base_url": "https://x", "retries": {"max_backoff_s": -3}}}),
            "providers.anthropic.retries.max_backoff_s: must be 0 or more, got -3.0",
            id="negative-seconds",
        ),
        pytest.param(  # YAML's !!binary: pydantic would read the bytes as text
            with_(server={"host": b"hello"}), "server.host: expected str, got b'hello'", id="binary-is-no-text"
        ),
    ],
)
def test_error_lines_name_the_path_and_the_rule(raw: Any, line: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(raw, {})
    assert str(err.value).startswith(line)


def test_null_means_the_default_and_yaml_booleans_are_read_as_before() -> None:
    cfg = parse_config(with_(server={"port": None}, console=None, metrics={"require_admin": "off"}), {})
    assert (cfg.server.port, cfg.console.enabled, cfg.metrics.require_admin) == (8000, True, False)
    assert parse_config(with_(console={"secure_cookie": False}), {}).console.secure_cookie == "false"
    assert (
        parse_config(with_(dlp={"detectors": {"email": {"action": False}}}), {}).dlp.detectors["email"].action == "off"
    )


def test_no_secret_appears_in_any_repr() -> None:
    secrets = ("sk-upstream-123", "a" * 40, "b" * 40, "c" * 40, "dbpassword")
    raw = with_(
        providers={"anthropic": {"base_url": "https://x", "api_key": secrets[0]}},
        auth={"admin_key": secrets[1], "claudecode_secret": secrets[2]},
        console={"session_secret": secrets[3]},
        database={"url": f"postgresql://gw:{secrets[4]}@db/gw"},
    )
    cfg = parse_config(raw, {})
    shown = repr(cfg) + str(cfg) + repr(cfg.auth) + repr(cfg.database) + repr(cfg.providers)
    assert not [s for s in secrets if s in shown]
    assert cfg.auth.admin_key == secrets[1]  # kept, only not shown


def test_sections_are_frozen_and_compare_by_value() -> None:
    """Hot reload compares each section of the old and new config to say which need a restart; usage pricing
    caches by Price (hashable)."""
    one, two = parse_config(MINIMAL, {}), parse_config(MINIMAL, {})
    assert one.server == two.server and one.providers == two.providers and one.models == two.models
    assert parse_config(with_(server={"port": 9}), {}).server != one.server
    with pytest.raises(ValueError, match="frozen"):
        one.server.port = 1  # type: ignore[misc]
    price = {"input": 1, "output": 2, "cache_write": 1.25, "cache_read": 0.1}
    a, b = (parse_config(with_(pricing={"m": price}), {}).pricing["m"] for _ in range(2))
    assert a == b and hash(a) == hash(b) and a.cache_write_1h_price == 2.0
