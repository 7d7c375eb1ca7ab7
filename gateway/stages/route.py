"""Stage 4: turn the alias in `model` into a provider and the provider's real model id."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.config import ModelAlias
from gateway.errors import BadRequest, UnknownModel
from gateway.pipeline import Exchange, Next, Target
from gateway.providers.base import Provider


class RouteToProvider:
    """Resolve `model` against the aliases of gateway.yaml; 404 naming the configured aliases otherwise."""

    def __init__(self, aliases: Mapping[str, ModelAlias], providers: Mapping[str, Provider]) -> None:
        self._targets = {
            name: Target(alias=alias, provider=providers[alias.provider], provider_model=alias.model)
            for name, alias in aliases.items()
        }
        self._known = ", ".join(sorted(aliases))

    async def __call__(self, ex: Exchange, call_next: Next) -> None:
        model = ex.body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("'model' is required and must be a string naming a model alias", param="model")
        target = self._targets.get(model)
        if target is None:
            raise UnknownModel(f"unknown model {model!r}; configured aliases: {self._known}")
        ex.target = target
        await call_next(ex)
