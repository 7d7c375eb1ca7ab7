"""Gateway keys: format, the bcrypt-once cache, revocation bounds and the Claude Code token map."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from unittest.mock import patch

from gateway import bcrypt_executor, db, keys
from gateway.keys import ClaudeCodeTokens, KeyCache, generate_key, lookup_id_of

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def row_for(new: keys.NewKey, *, revoked: bool = False, key_id: int = 1) -> db.KeyRow:
    return db.KeyRow(key_id, new.lookup_id, new.key_hash, "alice", False, NOW, NOW if revoked else None)


def test_key_format_and_repr() -> None:
    new = generate_key(rounds=4)
    assert new.plaintext.startswith("gw-") and lookup_id_of(new.plaintext) == new.lookup_id
    assert len(new.plaintext.split("_", 1)[1]) >= 43  # 32 random bytes, base64url
    assert new.plaintext not in repr(new) and new.plaintext not in new.key_hash
    assert lookup_id_of("sk-ant-xyz") is None and lookup_id_of("gw-short_x") is None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_bcrypt_runs_once_then_the_row_is_reread_without_bcrypt_after_the_ttl() -> None:
    new, clock, loads = generate_key(rounds=4), Clock(), []

    async def load(lookup_id: str) -> db.KeyRow:
        loads.append(lookup_id)
        return row_for(new)

    cache = KeyCache(load, ttl_s=10, clock=clock)
    with patch.object(bcrypt_executor, "bcrypt_matches", wraps=bcrypt_executor.bcrypt_matches) as checks:
        for _ in range(5):
            assert (await cache.principal_for(new.plaintext)) is not None
        assert checks.call_count == 1 and len(loads) == 1
        clock.now = 11
        assert (await cache.principal_for(new.plaintext)) is not None
        assert checks.call_count == 1 and len(loads) == 2  # re-read, not re-hashed


async def test_revocation_elsewhere_takes_effect_after_the_ttl() -> None:
    new, clock, revoked = generate_key(rounds=4), Clock(), [False]

    async def load(lookup_id: str) -> db.KeyRow:
        return row_for(new, revoked=revoked[0])

    cache = KeyCache(load, ttl_s=10, clock=clock)
    assert await cache.principal_for(new.plaintext) is not None
    revoked[0] = True
    clock.now = 9.9
    assert await cache.principal_for(new.plaintext) is not None  # within the stated bound
    clock.now = 10.1
    assert await cache.principal_for(new.plaintext) is None


async def test_concurrent_first_uses_share_one_bcrypt() -> None:
    new = generate_key(rounds=4)

    async def load(lookup_id: str) -> db.KeyRow:
        await asyncio.sleep(0.01)
        return row_for(new)

    cache = KeyCache(load)
    with patch.object(bcrypt_executor, "bcrypt_matches", wraps=bcrypt_executor.bcrypt_matches) as checks:
        results = await asyncio.gather(*(cache.principal_for(new.plaintext) for _ in range(20)))
    assert all(r is not None for r in results) and checks.call_count == 1


async def test_an_eviction_during_the_read_is_not_undone_by_a_stale_row() -> None:
    new, reading, revoked = generate_key(rounds=4), asyncio.Event(), [False]
    release = asyncio.Event()

    async def load(lookup_id: str) -> db.KeyRow:
        stale = revoked[0]
        reading.set()
        await release.wait()
        return row_for(new, revoked=stale)

    cache = KeyCache(load)
    check = asyncio.create_task(cache.principal_for(new.plaintext))
    await reading.wait()  # the row (still live) is being read ...
    revoked[0] = True
    cache.evict_key(1)  # ... when this process revokes the key
    release.set()
    assert await check is None


async def test_claude_code_tokens_map_by_hmac_and_forget_misses_on_request() -> None:
    new, known = generate_key(rounds=4), {}
    secret = b"s" * 32

    async def load(token_hmac: bytes) -> db.KeyRow | None:
        return known.get(token_hmac)

    tokens = ClaudeCodeTokens(load, secret, negative_ttl_s=60)
    assert await tokens.principal_for("cc-token") is None
    known[keys.claudecode_hmac(secret, "cc-token")] = row_for(new)
    assert await tokens.principal_for("cc-token") is None  # the miss is remembered ...
    tokens.evict_all_unknown()  # ... until a user is created on this process
    principal = await tokens.principal_for("cc-token")
    assert principal is not None and principal.key_id == 1
