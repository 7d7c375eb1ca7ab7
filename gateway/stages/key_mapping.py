"""Stage 2: a Claude Code token stands for its user's gateway key.

Until the users issue lands this stage only enforces that someone was authenticated: a credential the
auth stage did not recognise as a gateway key maps to nobody, so it is refused here.
"""

from __future__ import annotations

from gateway.errors import Unauthenticated
from gateway.pipeline import Exchange, Next


class MapClaudeCodeKey:
    """Authenticate a non-gateway credential (a user's Claude Code token) as that user's gateway key."""

    async def __call__(self, ex: Exchange, call_next: Next) -> None:
        if ex.principal is None:
            raise Unauthenticated("invalid API key: not a gateway key and not mapped to a user")
        await call_next(ex)
