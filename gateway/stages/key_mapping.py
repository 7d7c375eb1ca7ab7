"""Stage 2: the token a user's Claude Code already sends stands for that user's gateway key.

Claude Code sends one fixed token (`ANTHROPIC_AUTH_TOKEN` as Bearer, or `ANTHROPIC_API_KEY` as x-api-key).
An admin registers it as the user's `claudecodeUserKey`; from then on a request presenting it is that
user's gateway key in every respect: same budget, same usage rows.
"""

from __future__ import annotations

from gateway.client_address import ClientAddress
from gateway.errors import Unauthenticated
from gateway.keys import ClaudeCodeTokens, Principal, fingerprint
from gateway.pipeline import Exchange, Next
from gateway.throttle import AuthThrottle


class MapClaudeCodeKey:
    """Authenticate a credential the auth stage did not recognise as a mapped Claude Code token.

    A token not mapped recently is one guess, counted per (client address, token fingerprint) like a key.
    """

    def __init__(
        self,
        tokens: ClaudeCodeTokens,
        *,
        throttle: AuthThrottle | None = None,
        client_address: ClientAddress | None = None,
    ) -> None:
        self._tokens = tokens
        self._throttle = throttle or AuthThrottle(20)
        self._client_address = client_address or ClientAddress()

    async def __call__(self, ex: Exchange, call_next: Next) -> None:
        if ex.principal is None:
            assert ex.credential is not None  # Authenticate refuses requests without one
            ex.principal = self._tokens.cached(ex.credential) or await self._check(ex, ex.credential)
        await call_next(ex)

    async def _check(self, ex: Exchange, token: str) -> Principal:
        subject = (self._client_address.guesser(ex.request), fingerprint(token)[:12])
        self._throttle.attempt(subject)
        try:
            principal = await self._tokens.principal_for(token)
        except BaseException:  # 503 (database away) or a hang-up: no verdict, no count
            self._throttle.withdraw(subject)
            raise
        if principal is None:
            raise Unauthenticated("invalid API key: neither a gateway key nor a registered Claude Code token")
        self._throttle.withdraw(subject)
        return principal
