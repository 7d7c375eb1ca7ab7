"""Stage 1: who is calling. Verifies a gateway key from `Authorization: Bearer` or `x-api-key`.

Not a link of the stage chain: it reads headers only, so the model routes run it before reading the body, and
`/v1/models`, `/metrics`, `/v1/me`, the management API and the console's sign-in call the same check through
`gateway/authentication.py` (which adds the Claude Code token mapping of stage 2).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiohttp import web

from gateway.client_address import ClientAddress
from gateway.errors import Unauthenticated
from gateway.keys import KeyCache, Principal, lookup_id_of
from gateway.sso.callers import CallerTokens
from gateway.throttle import AuthThrottle


def presented_credential(headers: Mapping[str, str]) -> str | None:
    """The key a caller sent: `x-api-key` (Anthropic SDKs) or `Authorization: Bearer` (OpenAI SDKs)."""
    get = headers.get
    key = get("x-api-key")
    if key:
        return str(key).strip() or None
    auth = get("Authorization")
    if auth:
        scheme, _, token = str(auth).partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def _is_utf8(text: str) -> bool:
    """Whether a header value was valid UTF-8: aiohttp keeps other bytes as lone surrogates, which no hash takes."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class EnvAdminKey:
    """GATEWAY_ADMIN_KEY: an admin key that lives in the environment (its row in api_keys carries its usage)."""

    key: bytes = field(repr=False)
    principal: Principal


class Authenticate:
    """Refuse with 401 unless the caller presents a valid, unrevoked gateway key; reads headers only.

    A credential that is not shaped like a gateway key (a Claude Code token, say) is left for the
    key-mapping stage when the pipeline has one (`defer_foreign`), and refused here otherwise.
    A key verified recently is answered from memory; any other check is one guess, counted by `throttle`
    per (client address, key prefix) before it costs a query or a bcrypt (gateway/throttle.py).
    With `caller_jwt:` configured, a JWT is checked against that issuer instead (gateway/sso/callers.py).
    """

    def __init__(
        self,
        keys: KeyCache,
        *,
        defer_foreign: bool = True,
        env_admin: EnvAdminKey | None = None,
        throttle: AuthThrottle | None = None,
        client_address: ClientAddress | None = None,
        callers: CallerTokens | None = None,
    ) -> None:
        self._keys, self._defer_foreign, self._env_admin, self._callers = keys, defer_foreign, env_admin, callers
        self._throttle = throttle or AuthThrottle(20)
        self._client_address = client_address or ClientAddress()

    async def __call__(self, request: web.Request) -> tuple[str, Principal | None]:
        """(the credential presented, its principal); the principal is None for a credential not shaped like a
        gateway key when the key-mapping stage is to judge it (`defer_foreign`). Raises Unauthenticated (401)."""
        credential = presented_credential(request.headers)
        if credential is None:
            raise Unauthenticated("missing API key: send it as 'x-api-key: <key>' or 'Authorization: Bearer <key>'")
        if not credential.isascii() and not _is_utf8(credential):
            raise Unauthenticated("invalid API key: it is not valid UTF-8")
        if self._env_admin is not None and hmac.compare_digest(credential.encode(), self._env_admin.key):
            return credential, self._env_admin.principal
        if (lookup_id := lookup_id_of(credential)) is not None:
            return credential, self._keys.cached(credential) or await self._check(request, credential, lookup_id)
        if self._callers is not None and self._callers.accepts(credential):
            return credential, await self._callers.principal_for(credential)
        if not self._defer_foreign:
            raise Unauthenticated("invalid API key: gateway keys start with 'gw-'")
        return credential, None

    async def _check(self, request: web.Request, credential: str, lookup_id: str) -> Principal:
        """One counted guess: kept when the secret is wrong for a live key, withdrawn in every other outcome.

        Only guesses at live keys stay in the throttle's bounded table, so a flood of made-up prefixes (each a
        cheap indexed miss, then remembered) cannot push a real guesser's record out of it. A key verified
        before is no guess: a neighbour's guesses at its (public) prefix from the same address never refuse it.
        """
        if self._keys.verified_before(credential):
            if (principal := await self._keys.principal_for(credential)) is None:
                raise Unauthenticated("invalid or revoked API key")
            return principal
        subject = (self._client_address.guesser(request), lookup_id)
        earlier = self._throttle.attempt(subject)
        try:
            principal = await self._keys.principal_for(credential, priority=earlier)
        except asyncio.CancelledError:  # a hang-up: the check runs on without its caller, and its verdict counts
            self._keys.when_checked(credential, lambda: self._settle(subject, credential))
            raise
        except BaseException:  # 503 (database away, bcrypt saturated): no verdict, no count
            self._throttle.withdraw(subject)
            raise
        self._settle(subject, credential)
        if principal is None:
            raise Unauthenticated("invalid or revoked API key")
        return principal

    def _settle(self, subject: tuple[str, str], credential: str) -> None:
        """Keep the guess counted only if it was a wrong secret for a live key (no such key: nothing to guess at)."""
        if not self._keys.guessed_a_secret(credential):
            self._throttle.withdraw(subject)
