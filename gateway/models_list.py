"""GET /v1/models: the configured aliases, in OpenAI's list format or Anthropic's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.config import ModelAlias
from gateway.error_shape import ErrorShape
from gateway.errors import UnknownModel

CREATED_AT = "2025-01-01T00:00:00Z"  # aliases have no release date; a fixed one keeps the list stable
CREATED_UNIX = 1735689600


def _openai_entry(alias: ModelAlias) -> dict[str, Any]:
    return {"id": alias.name, "object": "model", "created": CREATED_UNIX, "owned_by": f"gateway:{alias.provider}"}


def _anthropic_entry(alias: ModelAlias) -> dict[str, Any]:
    return {
        "type": "model",
        "id": alias.name,
        "display_name": f"{alias.name} ({alias.model})",
        "created_at": CREATED_AT,
    }


def list_models(
    aliases: Mapping[str, ModelAlias], dialect: ErrorShape, model_id: str | None = None
) -> tuple[dict[str, Any], int]:
    """The list (or one entry when `model_id` is given) and the HTTP status to answer with."""
    entry = _anthropic_entry if dialect is ErrorShape.ANTHROPIC else _openai_entry
    if model_id is not None:
        alias = aliases.get(model_id)
        if alias is not None:
            return entry(alias), 200
        unknown = UnknownModel(f"unknown model {model_id!r}; configured aliases: {', '.join(sorted(aliases))}")
        return unknown.render(dialect), unknown.status_for(dialect)
    data = [entry(a) for a in aliases.values()]
    if dialect is ErrorShape.ANTHROPIC:
        ids = [d["id"] for d in data]
        return {
            "data": data,
            "has_more": False,
            "first_id": ids[0] if ids else None,
            "last_id": ids[-1] if ids else None,
        }, 200
    return {"object": "list", "data": data}, 200
