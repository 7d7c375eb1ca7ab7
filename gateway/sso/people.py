"""People signing in through OpenID Connect: claims -> role and team -> Actor, and the issuer's side of the flow.

The role comes from `sso.role_claim` (a string or a list, e.g. Keycloak's `groups`) through the `sso.roles` map;
when several values map, the strongest role wins (admin > team_admin > viewer > user). Nobody mapped gets
`sso.default_role`, or is refused when there is none. The team is the `sso.team_claim` value, resolved to a team
id by `resolve_team`.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import asyncpg

from gateway import db
from gateway.errors import Forbidden, ServiceUnavailable, Unauthenticated
from gateway.keys import Principal, generate_key
from gateway.roles import Actor, Role
from gateway.sso.config import SsoConfig
from gateway.sso.issuer import IssuerKeys, email_verified, looks_like_jwt, unverified_issuer

STRENGTH = (Role.ADMIN, Role.TEAM_ADMIN, Role.VIEWER, Role.USER)  # strongest first


@dataclass(frozen=True, slots=True)
class Identity:
    """What verified claims say about a person: `subject` (`sso:<email or sub>`), their email, role and team name."""

    subject: str
    email: str | None
    role: Role
    team: str | None


def identity_of(cfg: SsoConfig, claims: dict[str, Any]) -> Identity:
    """The one mapping from verified claims to a person (console and management API alike); 403 when unmapped."""
    raw = claims.get(cfg.role_claim)
    values = [raw] if isinstance(raw, str) else [v for v in raw if isinstance(v, str)] if isinstance(raw, list) else []
    mapped = {cfg.roles[v] for v in values if v in cfg.roles}
    role = next((r for r in STRENGTH if r in mapped), cfg.default_role)
    if not email_verified(claims):  # an unconfirmed address names nobody: not a gateway user, not the audit subject
        claims = {k: v for k, v in claims.items() if k != "email"}
    named = claims.get(cfg.subject_claim) or claims.get("sub")
    if cfg.subject_claim == "email" and named == claims.get("email") and isinstance(named, str):
        named = named.lower()  # emails match in any case here (users, caller JWTs): one person, one identity
    if role is None:
        raise Forbidden(
            f"{named!r} signed in, but no {cfg.role_claim!r} value of theirs ({', '.join(values) or 'none'}) maps to a "
            "gateway role (sso.roles in gateway.yaml) and there is no sso.default_role"
        )
    email = claims.get("email")
    team = claims.get(cfg.team_claim) if cfg.team_claim else None
    if any(isinstance(v, str) and "\x00" in v for v in (named, email, team)):  # PostgreSQL text cannot hold one
        raise Unauthenticated("invalid token: a claim naming the person or their team holds a NUL character")
    return Identity(
        f"sso:{named}", email if isinstance(email, str) else None, role, team if isinstance(team, str) else None
    )


async def resolve_team(pool: asyncpg.Pool, team: str | None) -> int | None:
    """The id of the live team named `team` (from `sso.team_claim`, any case), or None when absent or unknown."""
    if not team:
        return None
    row = await db.team_by_name(pool, team)
    return row.id if row else None


async def team_of(pool: asyncpg.Pool, role: Role, team: str | None) -> int | None:
    """The id of a person's team (resolve_team); Forbidden (403) for a team_admin whose team claim names no live team.

    Such a team_admin (the team renamed or deleted since, or a typo at the issuer) has no team to be limited to:
    read as "no team filter", they would list and add users everywhere.
    """
    team_id = await resolve_team(pool, team)
    if role is Role.TEAM_ADMIN and team_id is None:
        named = (
            f"team claim {team!r} names no gateway team (renamed or deleted since?)" if team else "has no team claim"
        )
        raise Forbidden(f"this team_admin's {named}: fix the claim at the identity provider, or the team's name here")
    return team_id


async def actor_of(pool: asyncpg.Pool, person: Identity) -> Actor:
    """The Actor a signed-in person is: their role, their team's id, and their gateway user when their email is one.

    Raises Forbidden (403) for a team_admin without a live team (team_of).
    """
    team_id = await team_of(pool, person.role, person.team)
    row = await db.user_key_by_email(pool, person.email) if person.email else None
    return Actor(person.subject, person.role, team_id, row.user_id if row else None)


async def key_of(pool: asyncpg.Pool, person: Identity) -> db.KeyRow:
    """The key row a person's console session and audit entries point at: their own gateway key, or their identity's."""
    if person.email and (row := await db.user_key_by_email(pool, person.email)) is not None:
        return row

    def unusable() -> tuple[str, str]:  # its plaintext is dropped here: this key can never authenticate
        new = generate_key(rounds=4)  # 256 random bits stand behind it; bcrypt's cost adds nothing
        return new.lookup_id, new.key_hash

    return await db.sso_identity_key(pool, person.subject, unusable)


async def principal_of(pool: asyncpg.Pool, person: Identity) -> Principal:
    """A person on the management API, as the handlers' Principal: their key row, admin when their role is admin."""
    row = await key_of(pool, person)
    principal = Principal.from_row(row)
    return Principal(
        principal.key_id,
        principal.lookup_id,
        person.subject,
        person.role is Role.ADMIN,
        principal.user_id,
        principal.token_limit,
        principal.usd_limit,
    )


def client_secret_basic(client_id: str, secret: str) -> str:
    """The Authorization header of client_secret_basic: both parts form-urlencoded first (RFC 6749 2.3.1)."""
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def pkce_pair() -> tuple[str, str]:
    """A PKCE code verifier and its S256 challenge (RFC 7636 4.1-4.2)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


async def person_from_bearer(people: PeopleSignIn | None, token: str | None) -> Identity | None:
    """The person a management-API Bearer token from the SSO issuer names; None for any other credential (a key).

    401 for a token from that issuer that fails a check, 403 for a person no claim maps to a role.
    """
    if people is None or token is None or not looks_like_jwt(token) or unverified_issuer(token) != people.cfg.issuer:
        return None
    return identity_of(people.cfg, await people.claims_for_bearer(token))


class PeopleSignIn:
    """The issuer's side of the console sign-in: the authorization URL, the code exchange, the ID token check."""

    def __init__(self, cfg: SsoConfig, keys: IssuerKeys, http: aiohttp.ClientSession) -> None:
        self.cfg, self.keys, self._http = cfg, keys, http

    async def authorization_url(self, state: str, nonce: str, challenge: str) -> str:
        query = {
            "response_type": "code",
            "client_id": self.cfg.client_id,
            "redirect_uri": self.cfg.redirect_url,
            "scope": " ".join(self.cfg.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        return f"{await self.keys.endpoint('authorization_endpoint')}?{urlencode(query)}"

    async def claims_for_code(self, code: str, verifier: str, nonce: str) -> dict[str, Any]:
        """Exchange the code (client_secret_basic + the PKCE verifier), then check the ID token; 401 if bad."""
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.cfg.redirect_url}
        form["code_verifier"] = verifier
        auth = client_secret_basic(self.cfg.client_id, self.cfg.client_secret.get_secret_value())
        url = await self.keys.endpoint("token_endpoint")
        timeout = aiohttp.ClientTimeout(total=self.cfg.http_timeout_s)
        headers = {"Accept-Encoding": "identity", "Accept": "application/json", "Authorization": auth}
        try:
            async with self._http.post(url, data=form, timeout=timeout, headers=headers) as resp:
                body = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ServiceUnavailable(f"the identity provider's token endpoint failed ({exc!r})") from None
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("id_token"), str):
            error = body.get("error_description") or body.get("error") if isinstance(body, dict) else None
            raise Unauthenticated(f"the identity provider refused the sign-in code ({status}: {error})")
        return await self.keys.verify(body["id_token"], audience=self.cfg.client_id, nonce=nonce)

    async def claims_for_bearer(self, token: str) -> dict[str, Any]:
        """A person's ID token (aud = client_id) or access token (aud = sso.api_audience) on the management API."""
        audiences = [self.cfg.client_id, *([self.cfg.api_audience] if self.cfg.api_audience else [])]
        return await self.keys.verify(token, audience=audiences)
