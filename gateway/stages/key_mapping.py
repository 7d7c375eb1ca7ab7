"""Stage 2: the token a user's Claude Code already sends stands for that user's gateway key.

Claude Code sends one fixed token (`ANTHROPIC_AUTH_TOKEN` as Bearer, or `ANTHROPIC_API_KEY` as x-api-key).
An admin registers it as the user's `claudecodeUserKey`; from then on a request presenting it is that
user's gateway key in every respect: same budget, same usage rows.
"""

from __future__ import annotations

from gateway.errors import Unauthenticated
from gateway.keys import ClaudeCodeTokens
from gateway.pipeline import Exchange, Next


class MapClaudeCodeKey:
    """Authenticate a credential the auth stage did not recognise as a mapped Claude Code token."""

    def __init__(self, tokens: ClaudeCodeTokens) -> None:
        self._tokens = tokens

    async def __call__(self, ex: Exchange, call_next: Next) -> None:
        if ex.principal is None:
            assert ex.credential is not None  # Authenticate refuses requests without one
            ex.principal = await self._tokens.principal_for(ex.credential)
            if ex.principal is None:
                raise Unauthenticated("invalid API key: neither a gateway key nor a registered Claude Code token")
        await call_next(ex)
