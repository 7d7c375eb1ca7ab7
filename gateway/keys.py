"""Gateway keys: how they look, how they are stored, and the in-process cache that makes checking them cheap.

A key reads `gw-<lookup id>_<secret>`: the lookup id (8 random bytes, hex) finds the row with one indexed
query; the secret (32 random bytes, base64url) is what bcrypt protects. Only the lookup id and the bcrypt
hash of the whole key are stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol, TypeVar
from uuid import UUID

import bcrypt
import structlog

from gateway import db
from gateway.bcrypt_executor import BcryptExecutor
from gateway.errors import ServiceUnavailable
from gateway.roles import Actor, Role

log = structlog.get_logger("gateway.keys")
T = TypeVar("T")

KEY_PREFIX = "gw-"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key that authenticated the request, its user and their limits (no secret)."""

    key_id: int
    lookup_id: str
    name: str
    is_admin: bool
    user_id: UUID | None = None
    token_limit: int | None = None  # the user's monthly token limit (None: the configured default)
    usd_limit: Decimal | None = None  # the key's monthly USD limit (None: the configured default)
    role: Role | None = None  # a management key's role; None: a user's or a service key
    role_team_id: int | None = None  # the team a team_admin key administers
    team_id: int | None = None  # the team of the key's user, where its usage counts
    team_token_limit: int | None = None  # that team's monthly limits (None: no team limit of that kind)
    team_usd_limit: Decimal | None = None
    from_env: bool = False  # GATEWAY_ADMIN_KEY

    @classmethod
    def from_row(cls, row: db.KeyRow) -> Principal:
        return cls(
            key_id=row.id,
            lookup_id=row.lookup_id,
            name=row.name,
            is_admin=row.is_admin,
            user_id=row.user_id,
            token_limit=row.limit_tokens,
            usd_limit=row.monthly_limit_usd,
            role=Role.ADMIN if row.is_admin else Role(row.role) if row.role else None,
            role_team_id=row.role_team_id,
            team_id=row.team_id,
            team_token_limit=row.team_limit_tokens,
            team_usd_limit=row.team_limit_usd,
        )

    @property
    def actor(self) -> Actor:
        """The identity this key acts as on the management API and the console (roles.py).

        A management key has its role (a team_admin its team); any other key is a `user`, of its user's team.
        """
        subject = "env:GATEWAY_ADMIN_KEY" if self.from_env else f"key:{self.key_id}"
        if self.role is not None:
            team = self.role_team_id if self.role is Role.TEAM_ADMIN else None
            return Actor(subject, self.role, team, self.user_id, key_id=self.key_id)
        return Actor(subject, Role.USER, self.team_id, self.user_id, key_id=self.key_id)


@dataclass(frozen=True, slots=True)
class NewKey:
    plaintext: str
    lookup_id: str
    key_hash: str

    def __repr__(self) -> str:
        return f"NewKey(lookup_id={self.lookup_id!r}, plaintext='gw-…')"


def generate_key(rounds: int = 12) -> NewKey:
    lookup_id = secrets.token_hex(8)
    plaintext = f"{KEY_PREFIX}{lookup_id}_{secrets.token_urlsafe(32)}"
    key_hash = bcrypt.hashpw(plaintext.encode(), bcrypt.gensalt(rounds)).decode()
    return NewKey(plaintext=plaintext, lookup_id=lookup_id, key_hash=key_hash)


def lookup_id_of(key: str) -> str | None:
    """The public part of a well-formed gateway key, or None when `key` is not one."""
    if not key.startswith(KEY_PREFIX):
        return None
    lookup_id, sep, secret = key[len(KEY_PREFIX) :].partition("_")
    if not sep or len(lookup_id) != 16 or not secret:
        return None
    return lookup_id


def fingerprint(key: str) -> bytes:
    """Cache key for a presented credential: never keep the plaintext in memory longer than the request."""
    return hashlib.sha256(key.encode()).digest()


@dataclass(slots=True)
class _Verified:
    principal: Principal
    key_hash: str
    expires_at: float


class KeyCache:
    """Verify each gateway key with bcrypt once, then answer from memory.

    bcrypt is slow on purpose (~250 ms at 12 rounds), so a verified key's verdict is kept, keyed by
    sha256(key), for `ttl_s`. When it expires, the row is read again (no bcrypt: the stored hash is
    compared to the one verified), so a key revoked by another process stops working within `ttl_s`.
    A revocation on this process evicts at once.

    A refused key (unknown prefix, revoked, or a wrong secret) is remembered by the same digest, i.e. by
    (prefix, secret), for `negative_ttl_s`: a client retrying it costs a dict lookup, not a query and a bcrypt.
    bcrypt itself runs on `bcrypt`'s few threads (see gateway/bcrypt_executor.py), never the shared pool.
    """

    def __init__(
        self,
        load: Callable[[str], Awaitable[db.KeyRow | None]],
        *,
        ttl_s: float = 10.0,
        negative_ttl_s: float = 30.0,
        max_size: int = 10_000,
        bcrypt: BcryptExecutor | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load, self._ttl, self._negative_ttl, self._max, self._clock = load, ttl_s, negative_ttl_s, max_size, clock
        self._bcrypt = bcrypt or BcryptExecutor()
        self._verified: OrderedDict[bytes, _Verified] = OrderedDict()
        # digest -> (until when it is refused unchecked, whether it was a wrong secret for a live key)
        self._refused: OrderedDict[bytes, tuple[float, bool]] = OrderedDict()
        self._pending: dict[bytes, asyncio.Future[Principal | None]] = {}
        self._evictions = 0

    def cached(self, key: str) -> Principal | None:
        """The principal of a key verified within `ttl_s`, from memory alone (no I/O, no throttle needed)."""
        hit = self._verified.get(fingerprint(key))
        return hit.principal if hit is not None and hit.expires_at > self._clock() else None

    def verified_before(self, key: str) -> bool:
        """Whether `key` passed bcrypt here and was not refused since (its verdict may have expired).

        Checking it again is a row read and a hash comparison, never a bcrypt: no guess, nothing to throttle.
        """
        return fingerprint(key) in self._verified

    async def principal_for(self, key: str, *, priority: int = 0) -> Principal | None:
        """The principal a gateway key stands for, or None if the key is unknown, wrong or revoked.

        `priority` orders the bcrypt queue (lower first): the attempts this key's (client, prefix) already made.
        Raises ServiceUnavailable (503) when the database is away for a never-seen key or bcrypt is saturated.
        """
        fp = fingerprint(key)
        hit = self._verified.get(fp)
        if hit is not None and hit.expires_at > self._clock():
            return hit.principal
        if (refused := self._refused.get(fp)) is not None and refused[0] > self._clock():
            return None
        # Single flight: fifty requests arriving together with a new key run one bcrypt, not fifty.
        if (pending := self._pending.get(fp)) is not None:
            return await asyncio.shield(pending)
        task = asyncio.ensure_future(self._verify(key, fp, hit, priority))
        self._pending[fp] = task
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                self._pending.pop(fp, None)
            else:
                task.add_done_callback(lambda _: self._pending.pop(fp, None))

    async def _verify(self, key: str, fp: bytes, hit: _Verified | None, priority: int) -> Principal | None:
        now = self._clock()
        lookup_id = lookup_id_of(key)
        if lookup_id is None:
            return None
        try:
            row = await _read_settled(self, lambda: self._load(lookup_id))
        except db.UNAVAILABLE as exc:
            return self._while_database_away(fp, hit, exc)
        if row is None or row.revoked_at is not None:
            self._verified.pop(fp, None)
            self._refuse(fp, wrong_secret=False)
            return None
        same_hash = hit is not None and hmac.compare_digest(hit.key_hash, row.key_hash)
        if not same_hash and not await self._bcrypt.check(key, row.key_hash, priority=priority):
            self._refuse(fp, wrong_secret=True)
            return None
        principal = Principal.from_row(row)
        self._remember(fp, _Verified(principal, row.key_hash, now + self._ttl))
        return principal

    def when_checked(self, key: str, then: Callable[[], None]) -> None:
        """Call `then` once the check of `key` in progress has ended (at once if none is): its callers may be gone,
        but the check runs on, and its verdict (see `guessed_a_secret`) still counts."""
        pending = self._pending.get(fingerprint(key))
        if pending is None:
            then()
        else:
            pending.add_done_callback(lambda _: then())

    def guessed_a_secret(self, key: str) -> bool:
        """Whether `key` was refused as a wrong secret for a live key (not an unknown or revoked prefix)."""
        refused = self._refused.get(fingerprint(key))
        return refused is not None and refused[1]

    def _refuse(self, fp: bytes, *, wrong_secret: bool) -> None:
        self._refused[fp] = (self._clock() + self._negative_ttl, wrong_secret)
        self._refused.move_to_end(fp)
        while len(self._refused) > self._max:
            self._refused.popitem(last=False)

    def _while_database_away(self, fp: bytes, hit: _Verified | None, exc: BaseException) -> Principal | None:
        """A key verified before keeps working; one never seen cannot be checked: 503, not 401."""
        if hit is None:
            raise ServiceUnavailable("cannot verify this key now: the gateway's database is unreachable") from exc
        log.warning("key_check_from_cache", reason="database unreachable", key=hit.principal.lookup_id)
        self._remember(fp, _Verified(hit.principal, hit.key_hash, self._clock() + self._ttl))
        return hit.principal

    def _remember(self, fp: bytes, verdict: _Verified) -> None:
        self._verified[fp] = verdict
        self._verified.move_to_end(fp)
        while len(self._verified) > self._max:
            self._verified.popitem(last=False)

    def evict_key(self, key_id: int) -> None:
        """Forget every cached verdict for one key (called when this process revokes it)."""
        self._evictions += 1
        for fp in [fp for fp, v in self._verified.items() if v.principal.key_id == key_id]:
            del self._verified[fp]

    def evict_user(self, user_id: UUID) -> None:
        """Forget every cached verdict for one user's keys (their limits or keys changed on this process)."""
        self._evictions += 1
        for fp in [fp for fp, v in self._verified.items() if v.principal.user_id == user_id]:
            del self._verified[fp]

    def __len__(self) -> int:
        return len(self._verified)


class _Evicting(Protocol):
    _evictions: int


async def _read_settled(cache: _Evicting, read: Callable[[], Awaitable[T]]) -> T:
    """Read a row; if this process evicted anything meanwhile (a revocation), read it again.

    Otherwise a read that began before the revocation could put the revoked key back in the cache.
    """
    while True:
        evictions = cache._evictions
        row = await read()
        if evictions == cache._evictions:
            return row


def claudecode_hmac(secret: bytes, token: str) -> bytes:
    """The stored form of a Claude Code token: HMAC-SHA256 under the server secret (one indexed lookup)."""
    return hmac.new(secret, token.encode(), hashlib.sha256).digest()


class ClaudeCodeTokens:
    """Map the token a user's Claude Code sends to that user's live gateway key, cached like KeyCache.

    No bcrypt here: the HMAC is exact and keyed, so the lookup itself is the check. Unknown tokens are
    remembered briefly too, so a client retrying a wrong token does not cost a query per request.
    """

    def __init__(
        self,
        load: Callable[[bytes], Awaitable[db.KeyRow | None]],
        secret: bytes,
        *,
        ttl_s: float = 10.0,
        negative_ttl_s: float = 1.0,
        max_size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load, self.secret, self._clock = load, secret, clock
        self._ttl, self._negative_ttl, self._max = ttl_s, negative_ttl_s, max_size
        self._known: OrderedDict[bytes, tuple[Principal | None, float]] = OrderedDict()
        self._evictions = 0

    def cached(self, token: str) -> Principal | None:
        """The principal of a token mapped within `ttl_s`, from memory alone (no I/O, no throttle needed)."""
        hit = self._known.get(fingerprint(token))
        return hit[0] if hit is not None and hit[1] > self._clock() else None

    async def principal_for(self, token: str) -> Principal | None:
        fp = fingerprint(token)
        hit = self._known.get(fp)
        now = self._clock()
        if hit is not None and hit[1] > now:
            return hit[0]
        token_hmac = claudecode_hmac(self.secret, token)
        try:
            row = await _read_settled(self, lambda: self._load(token_hmac))
        except db.UNAVAILABLE as exc:
            if hit is None or hit[0] is None:
                raise ServiceUnavailable("cannot check this token now: the gateway's database is unreachable") from exc
            self._known[fp] = (hit[0], now + self._ttl)  # known before: keeps working from the cache
            return hit[0]
        principal = Principal.from_row(row) if row is not None else None
        self._known[fp] = (principal, now + (self._ttl if principal else self._negative_ttl))
        self._known.move_to_end(fp)
        while len(self._known) > self._max:
            self._known.popitem(last=False)
        return principal

    def evict_user(self, user_id: UUID) -> None:
        """Forget every cached mapping to one user (called when this process deletes or rekeys them)."""
        self._evictions += 1
        for fp in [fp for fp, (p, _) in self._known.items() if p is not None and p.user_id == user_id]:
            del self._known[fp]

    def evict_all_unknown(self) -> None:
        """Forget cached misses (a user was just created on this process: their token must work at once)."""
        self._evictions += 1
        for fp in [fp for fp, (p, _) in self._known.items() if p is None]:
            del self._known[fp]
