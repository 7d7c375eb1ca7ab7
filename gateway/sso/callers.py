"""JWTs for callers: a Bearer token from the configured issuer and audience authenticates as a gateway user.

The user is the one whose email is the token's `user_claim` (caller_jwt.user_claim in gateway.yaml); the request
then carries that user's Principal (their key's id, limits and usage rows) exactly as if their key had been sent.
A verified token is remembered by its SHA-256 until it expires (at most `ttl_s`), so the hot path pays one dict
lookup; the issuer is asked for keys only when a token names one the gateway has not seen (see issuer.py).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from uuid import UUID

import jwt

from gateway import db
from gateway.errors import ServiceUnavailable, Unauthenticated
from gateway.keys import Principal, fingerprint
from gateway.sso.config import CallerJwtConfig
from gateway.sso.issuer import IssuerKeys, email_verified, looks_like_jwt, unverified_issuer


class CallerTokens:
    """Turn a caller's JWT into the Principal of the gateway user it names; Unauthenticated (401) otherwise."""

    def __init__(
        self,
        cfg: CallerJwtConfig,
        keys: IssuerKeys,
        find_user_key: Callable[[str], Awaitable[db.KeyRow | None]],
        *,
        ttl_s: float = 10.0,
        max_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cfg, self._keys, self._find = cfg, keys, find_user_key
        self._ttl_s, self._max_size, self._clock = ttl_s, max_size, clock
        self._verified: OrderedDict[bytes, tuple[Principal, float, str | None]] = OrderedDict()

    def accepts(self, token: str) -> bool:
        """Whether `token` is this issuer's to judge: a JWT remembered, or one naming this issuer as `iss` (unverified).

        A JWT-shaped credential from anyone else (a registered Claude Code token, say) is left to the other stages.
        """
        if not looks_like_jwt(token):
            return False
        return fingerprint(token) in self._verified or unverified_issuer(token) == self._keys.settings.issuer

    def evict_user(self, user_id: UUID) -> None:
        """Forget the tokens remembered for a user: their limits, team or key changed, or they were deleted.

        A scan of at most `max_size` entries, on a management change only (never on the hot path).
        """
        for digest in [d for d, (principal, _, _) in self._verified.items() if principal.user_id == user_id]:
            del self._verified[digest]

    async def principal_for(self, token: str) -> Principal:
        """The Principal of the user the token names (cached until min(exp, now + ttl_s))."""
        digest = fingerprint(token)
        now = self._clock()
        # A remembered token stops answering once its key left the issuer's set (a rotation seen since).
        if (hit := self._verified.get(digest)) is not None and hit[1] > now and self._keys.still_signs(hit[2]):
            return hit[0]
        claims = await self._keys.verify(token, audience=self._cfg.audience)
        user = claims.get(self._cfg.user_claim)
        if not isinstance(user, str) or not user or "\x00" in user:  # PostgreSQL text cannot hold a NUL
            raise Unauthenticated(f"invalid token: it has no {self._cfg.user_claim!r} claim naming a gateway user")
        if self._cfg.user_claim == "email" and not email_verified(claims):
            raise Unauthenticated("invalid token: its email is not verified (email_verified: false) at the issuer")
        try:
            row = await self._find(user)
        except db.UNAVAILABLE:  # a 503 in the caller's dialect, as for a key never seen (gateway/keys.py)
            raise ServiceUnavailable("cannot check this token now: the gateway's database is unreachable") from None
        if row is None:
            raise Unauthenticated(f"invalid token: {user!r} is not a gateway user with a live key")
        principal = Principal.from_row(row)
        kid = jwt.get_unverified_header(token).get("kid")  # verified above: the header parses
        self._verified[digest] = (principal, min(float(claims["exp"]), now + self._ttl_s), kid)
        if len(self._verified) > self._max_size:
            self._verified.popitem(last=False)
        return principal
