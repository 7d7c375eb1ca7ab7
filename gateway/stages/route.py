"""Stage 4: turn the `model` a caller sent into a provider and the provider's real model id.

An alias from gateway.yaml wins; otherwise `routing.rules` are tried in order (Claude Code sends dated
`claude-*haiku*` ids for background work), then `routing.default`; anything else is a 404 naming the aliases.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping

from gateway.config import ModelAlias, ProviderConfig, RoutingConfig
from gateway.errors import BadRequest, UnknownModel
from gateway.pipeline import Exchange, Next, Target
from gateway.providers.base import Provider
from gateway.retry_policy import DeploymentHealth

MAX_MODEL_ID = 256
MAX_REMEMBERED_IDS = 1024  # distinct non-alias model ids whose route is kept (bounded: ids come from callers)


class RouteToProvider:
    """Resolve `model` against aliases, then routing rules, then the default alias."""

    def __init__(
        self,
        aliases: Mapping[str, ModelAlias],
        providers: Mapping[str, Provider],
        routing: RoutingConfig,
        provider_configs: Mapping[str, ProviderConfig],
    ) -> None:
        self._providers, self._configs = providers, provider_configs
        self._health: dict[tuple[str, str], DeploymentHealth] = {}
        self._targets = {name: self._target(alias) for name, alias in aliases.items()}
        self._rules = [(re.compile(fnmatch.translate(r.match)), r) for r in routing.rules]
        self._default = self._targets[routing.default] if routing.default else None
        self._routed: dict[str, Target] = {}
        self._known = ", ".join(sorted(aliases))

    def _target(self, alias: ModelAlias) -> Target:
        fallbacks = tuple(self._deployment(alias, d.provider, d.model) for d in alias.fallbacks)
        return self._deployment(alias, alias.provider, alias.model, fallbacks)

    def _deployment(self, alias: ModelAlias, provider: str, model: str, fallbacks: tuple[Target, ...] = ()) -> Target:
        retries = self._configs[provider].retries
        health = self._health.setdefault((provider, model), DeploymentHealth(retries))
        return Target(alias, self._providers[provider], model, retries, health, fallbacks)

    async def __call__(self, ex: Exchange, call_next: Next) -> None:
        model = ex.body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("'model' is required and must be a string naming a model alias", param="model")
        if len(model) > MAX_MODEL_ID or not model.isprintable():
            raise BadRequest(f"'model' must be printable and at most {MAX_MODEL_ID} characters", param="model")
        target = self._targets.get(model) or self._routed.get(model) or self._route(model)
        if target is None:
            raise UnknownModel(f"unknown model {model!r}; configured aliases: {self._known}")
        ex.target = target
        await call_next(ex)

    def _route(self, model: str) -> Target | None:
        target = self._default
        for pattern, rule in self._rules:
            if pattern.match(model):
                if rule.alias is not None:
                    target = self._targets[rule.alias]
                else:
                    assert rule.provider is not None
                    # the caller's id as sent (the provider judges it), not validated as gateway.yaml's aliases are
                    alias = ModelAlias.model_construct(name=model, provider=rule.provider, model=model)
                    target = self._target(alias)
                break
        if target is not None and len(self._routed) < MAX_REMEMBERED_IDS:
            self._routed[model] = target
        return target
