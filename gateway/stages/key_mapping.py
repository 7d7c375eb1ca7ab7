"""Stage 2: the token a user's Claude Code already sends stands for that user's gateway key.

Claude Code sends one fixed token (`ANTHROPIC_AUTH_TOKEN` as Bearer, or `ANTHROPIC_API_KEY` as x-api-key).
An admin registers it as the user's `claudecodeUserKey`; from then on a request presenting it is that
user's gateway key in every respect: same budget, same usage rows.
"""

from __future__ import annotations

from aiohttp import web

from gateway.client_address import ClientAddress
from gateway.errors import Unauthenticated
from gateway.keys import ClaudeCodeTokens, Principal, fingerprint
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

    async def __call__(self, request: web.Request, token: str) -> Principal:
        """The principal whose registered Claude Code token `token` is; raises Unauthenticated (401) otherwise."""
        return self._tokens.cached(token) or await self._check(request, token)

    async def _check(self, request: web.Request, token: str) -> Principal:
        subject = (self._client_address.guesser(request), fingerprint(token)[:12])
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
