"""Usage rows for the console tests, in db.USAGE_COLUMNS order whatever columns later migrations add."""

from __future__ import annotations

from typing import Any

from gateway import db


def as_usage_row(values: dict[str, Any]) -> tuple[Any, ...]:
    """`values` in db.USAGE_COLUMNS order; a column it does not name gets its table default (counts 0, flags false)."""

    def default(column: str) -> Any:
        if column.endswith(("_tokens", "_requests")):
            return 0
        return False if column == "usage_estimated" else None

    return tuple(values[c] if c in values else default(c) for c in db.USAGE_COLUMNS)
