"""Who is calling: one function from a request's headers to its Principal, or a 401.

The model routes call it before reading the body; `/v1/models`, `/metrics`, `/v1/me`, the management API and
the console's sign-in call the same function, so every door checks a key the same way (throttle, bcrypt once,
the Claude Code token mapping). Built by the composition root from `pipeline:` (key_mapping may be left out).
"""

from __future__ import annotations

from aiohttp import web

from gateway.keys import Principal
from gateway.stages.auth import Authenticate
from gateway.stages.key_mapping import MapClaudeCodeKey


class Authentication:
    """A gateway key (stage 1, gateway/stages/auth.py), else a registered Claude Code token (stage 2)."""

    def __init__(self, keys: Authenticate, tokens: MapClaudeCodeKey | None) -> None:
        self._keys, self._tokens = keys, tokens

    async def __call__(self, request: web.Request) -> Principal:
        """The caller's principal; raises Unauthenticated (401), or ServiceUnavailable (503, database away)."""
        credential, principal = await self._keys(request)
        if principal is None:
            assert self._tokens is not None  # Authenticate defers only when the key-mapping stage is configured
            principal = await self._tokens(request, credential)
        return principal
