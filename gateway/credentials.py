"""Which providers lack the gateway's own API key, named with the environment variable that would supply it.

Without it every call fails upstream with the provider's 401, which users read as a fault in their gateway key;
`gateway serve` warns at start, and `gateway config check` / `gateway reload` warn about the server's variables.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from gateway.config import GatewayConfig, ProviderConfig

# The variable each provider type reads in the shipped gateway.yaml, when the file does not say.
DEFAULT_VARIABLES = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
# OpenAI-compatible servers elsewhere (vLLM, Ollama, llama.cpp) often need no key; api.openai.com always does.
_KEYLESS_OK = {"openai"}
_OPENAI_HOST = "api.openai.com"
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True, slots=True)
class MissingKey:
    provider: str
    variable: str  # e.g. "ANTHROPIC_API_KEY"
    placeholder: str = ""  # the key is a documentation placeholder such as `sk-ant-...` (shown: it is no secret)

    def describe(self, whose: str = "") -> str:
        """One line: `provider 'anthropic' has no API key: set ANTHROPIC_API_KEY ...`."""
        where = f" in {whose}" if whose else ""
        if self.placeholder:
            return (
                f"provider {self.provider!r} has a placeholder API key: {self.variable} is {self.placeholder!r}"
                f"{where}, as written in the README; every request routed to it will fail (set {self.variable} "
                "to the real key)"
            )
        return (
            f"provider {self.provider!r} has no API key: {self.variable} is unset or empty{where}; every request "
            f"routed to it will fail (set {self.variable}, or providers.{self.provider}.api_key in gateway.yaml)"
        )


def missing_keys(cfg: GatewayConfig) -> list[MissingKey]:
    """The providers that need an API key and have none, in declaration order."""
    raw = _raw_providers(cfg.source)
    return [
        MissingKey(name, _variable(p, raw.get(name)), p.api_key if _is_placeholder(p.api_key) else "")
        for name, p in cfg.providers.items()
        if (not p.api_key or _is_placeholder(p.api_key)) and _needs_key(p)
    ]


def _is_placeholder(key: str) -> bool:
    """`export ANTHROPIC_API_KEY=sk-ant-...` copied as written: no provider key ends in an ellipsis."""
    return key.endswith(("...", "…"))


def _needs_key(p: ProviderConfig) -> bool:
    if p.type not in _KEYLESS_OK:
        return True
    return urlsplit(p.base_url).hostname == _OPENAI_HOST


def _variable(p: ProviderConfig, raw_spec: Any) -> str:
    """The variable `api_key: ${VAR:-}` reads in the file, or the provider type's usual one."""
    raw_key = raw_spec.get("api_key") if isinstance(raw_spec, dict) else None
    if isinstance(raw_key, str) and (match := _VARIABLE.search(raw_key)):
        return match.group(1)
    return DEFAULT_VARIABLES.get(p.type, "the provider's API key variable")


def _raw_providers(source: str) -> Mapping[str, Any]:
    """providers: as written in the file, before ${VAR} expansion; empty when there is no readable file."""
    try:
        doc = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    providers = doc.get("providers") if isinstance(doc, dict) else None
    return providers if isinstance(providers, dict) else {}
