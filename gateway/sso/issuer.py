"""One OpenID issuer: its discovery document, its signing keys, and the check of a token it signed.

Keys are cached: a token whose `kid` is known costs one signature check and no request. An unknown `kid` means
the issuer rotated its keys (or the token is forged), so the JWKS is read again, at most once per
`jwks_min_refetch_s`; the new set replaces the old one, so a key the issuer dropped stops verifying then (or
after `jwks_cache_s` at the latest). The JWT checks themselves are PyJWT's: no hand-written crypto here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp
import jwt
import orjson
import structlog

from gateway.errors import ServiceUnavailable, Unauthenticated
from gateway.sso.config import IssuerSettings

log = structlog.get_logger("gateway.sso")

# Asymmetric algorithms only: an HS256 token "signed" with the issuer's public key (the classic confusion
# attack) and `alg: none` are refused before any key is looked at (RFC 8725 3.1).
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


def looks_like_jwt(token: str) -> bool:
    """Whether a credential is shaped like a JWS (three dot-separated parts, a JSON header): cheap, no decoding."""
    return token.startswith("eyJ") and token.count(".") == 2


def email_verified(claims: dict[str, Any]) -> bool:
    """Whether a token's `email` may name a person: not when the issuer says `email_verified: false` (an address
    typed in at the issuer that nobody confirmed, OpenID Connect Core 5.1). Absent: the issuer vouches for it."""
    return claims.get("email_verified", True) is True


def unverified_issuer(token: str) -> str | None:
    """The `iss` a token claims, unverified: only to pick which issuer should check it."""
    try:
        iss = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.PyJWTError:
        return None
    return iss if isinstance(iss, str) else None


class IssuerKeys:
    """Discovery and signing keys of one issuer, read over `http` (the gateway's shared client session)."""

    def __init__(
        self, settings: IssuerSettings, http: aiohttp.ClientSession, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings, self._http, self._clock = settings, http, clock
        self._metadata: dict[str, Any] | None = None
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def metadata(self) -> dict[str, Any]:
        """The issuer's /.well-known/openid-configuration (read once; its `issuer` must be the configured one)."""
        if self._metadata is None:
            url = self.settings.issuer + "/.well-known/openid-configuration"
            found = await self._get_json(url)
            if str(found.get("issuer", "")).rstrip("/") != self.settings.issuer:
                raise ServiceUnavailable(f"{url} names issuer {found.get('issuer')!r}, not {self.settings.issuer!r}")
            self._metadata = found
        return self._metadata

    async def endpoint(self, name: str) -> str:
        """A discovered endpoint URL (`authorization_endpoint`, `token_endpoint`, `jwks_uri`)."""
        url = (await self.metadata()).get(name)
        if not isinstance(url, str):
            raise ServiceUnavailable(f"the issuer {self.settings.issuer} does not publish {name}")
        return url

    def still_signs(self, kid: str | None) -> bool:
        """Whether a key verified before is still in the issuer's set (a refetch after a rotation drops old ones)."""
        return self._pick(kid) is not None

    async def verify(self, token: str, *, audience: str | Sequence[str], nonce: str | None = None) -> dict[str, Any]:
        """The claims of a token this issuer signed for `audience`; Unauthenticated (401) for any other token.

        Checked: the signature (a key from the issuer's JWKS, an asymmetric alg), `iss`, `aud`, `exp` (required),
        `iat`/`nbf` when present, and `nonce` when one is expected (the console's sign-in).
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise Unauthenticated(
                f"invalid token: algorithm {alg!r} is not accepted (allowed: {', '.join(ALGORITHMS)})"
            )
        key = await self._key(header.get("kid"))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=audience,
                issuer=self.settings.issuer,
                leeway=self.settings.leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from None
        if nonce is not None and claims.get("nonce") != nonce:
            raise Unauthenticated("invalid token: the nonce is not the one this sign-in sent")
        return claims

    async def _key(self, kid: Any) -> jwt.PyJWK:
        """The signing key `kid` names; an unknown one refetches the JWKS (rate-limited), then 401 if still unknown."""
        fresh = self._clock() - self._fetched_at < self.settings.jwks_cache_s
        if fresh and (key := self._pick(kid)) is not None:
            return key
        async with self._lock:  # concurrent misses fetch once
            since = self._clock() - self._fetched_at
            if since >= self.settings.jwks_cache_s or (
                since >= self.settings.jwks_min_refetch_s and self._pick(kid) is None
            ):
                await self._refresh_or_keep()
        if (key := self._pick(kid)) is None:
            raise Unauthenticated(f"invalid token: the issuer has no signing key {kid!r}")
        return key

    def _pick(self, kid: Any) -> jwt.PyJWK | None:
        if kid is None and len(self._keys) == 1:  # an issuer with one key may leave kid out
            return next(iter(self._keys.values()))
        return self._keys.get(kid) if isinstance(kid, str) else None

    async def _refresh_or_keep(self) -> None:
        """Refetch the keys; with the issuer unreachable, keep the ones we have (503 only when there are none)."""
        try:
            await self._refresh()
        except ServiceUnavailable as exc:
            if not self._keys:
                raise
            self._fetched_at = self._clock()  # try again after jwks_min_refetch_s / jwks_cache_s, not per request
            log.warning("sso_keys_kept", issuer=self.settings.issuer, error=exc.message)

    async def _refresh(self) -> None:
        document = await self._get_json(await self.endpoint("jwks_uri"))
        keys: dict[str, jwt.PyJWK] = {}
        for raw in document.get("keys", ()):
            if not isinstance(raw, Mapping) or raw.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK.from_dict(dict(raw))
            except jwt.PyJWTError:  # a key type PyJWT cannot use (an encryption key, say): not for us
                continue
            keys[str(raw.get("kid", ""))] = key
        self._keys, self._fetched_at = keys, self._clock()
        log.info("sso_keys_fetched", issuer=self.settings.issuer, kids=sorted(keys))

    async def _get_json(self, url: str) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=self.settings.http_timeout_s)
        try:
            # identity: the shared session does not decompress (it relays provider bytes untouched)
            async with self._http.get(url, timeout=timeout, headers={"Accept-Encoding": "identity"}) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise ServiceUnavailable(f"{url} answered {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ServiceUnavailable(f"the identity provider is unreachable ({url}: {exc!r})") from None
        try:
            found = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ServiceUnavailable(f"{url} did not answer JSON") from None
        if not isinstance(found, dict):
            raise ServiceUnavailable(f"{url} did not answer a JSON object")
        return found
