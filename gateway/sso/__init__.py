"""Single sign-on (OpenID Connect) for people, and JWTs from a company's issuer for callers (issue 21).

config.py   the `sso:` and `caller_jwt:` sections of gateway.yaml (pydantic models)
issuer.py   one issuer: discovery, its signing keys (cached, refetched on an unknown kid) and token checks
people.py   claims -> role, team and Actor; the console's authorization-code flow with PKCE
callers.py  a caller's JWT on the model routes -> the gateway user's Principal
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
import asyncpg

from gateway import db
from gateway.sso.callers import CallerTokens
from gateway.sso.config import IdentityConfig
from gateway.sso.issuer import IssuerKeys
from gateway.sso.people import PeopleSignIn


@dataclass(frozen=True, slots=True)
class SignIns:
    """The two ways in that gateway.yaml may turn on; None where its section is absent."""

    people: PeopleSignIn | None = None
    callers: CallerTokens | None = None


def open_sign_ins(cfg: IdentityConfig, http: aiohttp.ClientSession, pool: asyncpg.Pool, ttl_s: float) -> SignIns:
    """Build both at startup (no request yet: discovery and keys are read on first use, then cached).

    `ttl_s` (auth.cache_ttl_s) bounds how long a verified caller token answers from memory, as for keys.
    """
    people = PeopleSignIn(cfg.sso, IssuerKeys(cfg.sso, http), http) if cfg.sso else None
    callers = None
    if cfg.caller_jwt:
        same = people is not None and people.keys.settings.issuer == cfg.caller_jwt.issuer
        keys = people.keys if same and people else IssuerKeys(cfg.caller_jwt, http)  # one key cache per issuer
        callers = CallerTokens(cfg.caller_jwt, keys, lambda email: db.user_key_by_email(pool, email), ttl_s=ttl_s)
    return SignIns(people, callers)
