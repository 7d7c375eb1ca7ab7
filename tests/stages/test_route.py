"""RouteToProvider: aliases, routing rules for real model ids, the default, and the 404."""

from __future__ import annotations

from typing import Any
from unittest.mock import MagicMock

import pytest

from gateway.config import parse_config
from gateway.error_shape import ErrorShape
from gateway.errors import BadRequest, UnknownModel
from gateway.pipeline import Exchange
from gateway.stages.route import RouteToProvider

CONFIG: dict[str, Any] = {
    "providers": {"anthropic": {"base_url": "https://api.anthropic.com"}},
    "models": {
        "claude-fast": {"provider": "anthropic", "model": "claude-haiku-4-5"},
        "claude-premium": {"provider": "anthropic", "model": "claude-opus-4-5"},
    },
    "routing": {
        "rules": [
            {"match": "claude-*haiku*", "alias": "claude-fast"},
            {"match": "claude-*opus*", "alias": "claude-premium"},
            {"match": "claude-*", "provider": "anthropic"},
        ]
    },
}


def stage(**routing: Any) -> RouteToProvider:
    cfg = parse_config({**CONFIG, "routing": {**CONFIG["routing"], **routing}}, {})
    return RouteToProvider(cfg.models, {"anthropic": MagicMock(name="anthropic")}, cfg.routing, cfg.providers)


def exchange(model: Any) -> Exchange:
    return Exchange(ErrorShape.ANTHROPIC, "messages", MagicMock(), b"", {"model": model}, "rid")


async def passed(ex: Exchange) -> None:
    return None


@pytest.mark.parametrize(
    ("model", "alias", "provider_model"),
    [
        pytest.param("claude-fast", "claude-fast", "claude-haiku-4-5", id="alias"),
        pytest.param("claude-haiku-4-5-20251001", "claude-fast", "claude-haiku-4-5", id="background-haiku"),
        pytest.param("claude-opus-4-8", "claude-premium", "claude-opus-4-5", id="claude-code-default"),
        pytest.param("claude-sonnet-4-5", "claude-sonnet-4-5", "claude-sonnet-4-5", id="passthrough"),
    ],
)
async def test_resolves(model: str, alias: str, provider_model: str) -> None:
    ex = exchange(model)
    await stage()(ex, passed)
    assert ex.target is not None
    assert (ex.target.alias.name, ex.target.provider_model) == (alias, provider_model)


async def test_a_passed_through_id_is_not_checked_as_config() -> None:
    """A caller's id goes upstream as sent (the provider answers for it); gateway.yaml's rule that a `model:` is
    not blank must not turn a blank id from a caller into a 500."""
    ex = exchange("   ")
    await stage(rules=[{"match": "*", "provider": "anthropic"}])(ex, passed)
    assert ex.target is not None and (ex.target.alias.name, ex.target.provider_model) == ("   ", "   ")


async def test_unknown_model_lists_aliases() -> None:
    with pytest.raises(UnknownModel, match="unknown model 'gpt-4o'; configured aliases: claude-fast, claude-premium"):
        await stage()(exchange("gpt-4o"), passed)


async def test_default_alias_takes_the_rest() -> None:
    ex = exchange("gpt-4o")
    await stage(default="claude-fast")(ex, passed)
    assert ex.target is not None and ex.target.provider_model == "claude-haiku-4-5"


@pytest.mark.parametrize("model", [None, 5, "", ["claude-fast"]])
async def test_model_must_be_a_string(model: Any) -> None:
    with pytest.raises(BadRequest, match="'model' is required"):
        await stage()(exchange(model), passed)
