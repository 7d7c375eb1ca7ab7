"""The management API (/v1/user-api-keys) against a running gateway and a real PostgreSQL.

Users are created through the API, then used the way a user would use them: their gateway key and their
Claude Code token (Bearer and x-api-key) on /v1/messages. Secrets are checked where they must not be:
in the database (only hashes) and in every answer but the create and regenerate ones.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import re
import secrets
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestServer

from gateway import db
from tests.conftest import GatewayFactory, flushed_usage
from tests.fakes.upstream import FakeUpstream

MakeKey = Callable[..., Awaitable[tuple[str, db.KeyRow]]]

API = "/v1/user-api-keys"
MESSAGE = {"model": "claude-fast", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
DEFAULT_TOKEN_LIMIT = 10_000_000  # budgets.monthly_token_limit's default; tests/conftest.py does not change it
ENV_ADMIN_KEY = "x" * 40
CREATE_RESPONSE = {"id", "email", "firstname", "lastname", "apiKey", "claudecodeUserKey", "aigatewayUserKey"}
REGENERATE_RESPONSE = {
    "id",
    "email",
    "firstname",
    "lastname",
    "apiKey",
    "newApiKey",
    "claudecodeUserKey",
    "aigatewayUserKey",
}
TIMESTAMPS = {"createdAt", "updatedAt"}
_emails = itertools.count(1)


# --- helpers -----------------------------------------------------------------------------------------


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def x_api_key(credential: str) -> dict[str, str]:
    return {"x-api-key": credential}


def cc_token() -> str:
    """A token shaped like the one Claude Code sends (an OAuth token); any non-gateway string would do."""
    return "sk-ant-oat01-" + secrets.token_urlsafe(32)


async def call(
    server: TestServer,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    *,
    json: Any = None,
    data: bytes | None = None,
) -> tuple[int, Any]:
    """One request; the body parsed as JSON when it is JSON."""
    payload: dict[str, Any] = {"json": json} if json is not None else {"data": data}
    if data is not None and not any(k.lower() == "content-type" for k in headers or {}):
        headers = {**(headers or {}), "Content-Type": "application/json"}  # as a JSON client sends it
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, server.make_url(path), headers=headers or {}, **payload) as r,
    ):
        raw = await r.read()
        try:
            return r.status, orjson.loads(raw)
        except orjson.JSONDecodeError:
            return r.status, raw


async def message(server: TestServer, headers: dict[str, str], model: str = "claude-fast") -> int:
    """POST /v1/messages with a credential; returns the status."""
    status, _ = await call(server, "POST", "/v1/messages", headers, json={**MESSAGE, "model": model})
    return status


def user_fields(**overrides: str) -> dict[str, str]:
    n = next(_emails)
    return {
        "email": f"user{n}@example.com",
        "firstname": "Ada",
        "lastname": f"Lovelace{n}",
        "claudecodeUserKey": cc_token(),
        **overrides,
    }


async def create_user(server: TestServer, admin: dict[str, str], **overrides: str) -> dict[str, Any]:
    status, body = await call(server, "POST", API, admin, json=user_fields(**overrides))
    assert status == 201, body
    return body  # type: ignore[no-any-return]


def parse_time(value: str) -> datetime:
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value)


def strings_in(value: Any) -> Iterator[tuple[str, str]]:
    """Every (field name, string value) pair in a JSON document, at any depth."""
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, str):
                yield k, v
            yield from strings_in(v)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


HASH_LOOKING = re.compile(r"^\$2[aby]\$|^[0-9a-f]{64}$|^[A-Za-z0-9+/_-]{43}=?$")
SECRET_FIELD = re.compile(r"hash|hmac|secret|apikey|userkey", re.IGNORECASE)


def assert_no_secrets(document: Any, *plaintexts: str) -> None:
    """No key, token or hash in an answer: by value, by shape, and by field name."""
    assert "gw-" not in orjson.dumps(document).decode()
    for name, value in strings_in(document):
        assert not SECRET_FIELD.search(name), name
        assert not HASH_LOOKING.search(value), (name, value)
        for plaintext in plaintexts:
            assert plaintext not in value, name
    for plaintext in plaintexts:
        assert plaintext not in orjson.dumps(document).decode()


def assert_error(body: Any, fragment: str) -> None:
    """This API's error shape: `{"error": "<a sentence>"}`."""
    assert isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str), body
    assert fragment in body["error"], body["error"]


async def every_stored_text(pool: asyncpg.Pool) -> str:
    """Every row of every table, as text: where a plaintext secret must never turn up."""
    tables = await pool.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    dump = []
    for t in tables:
        for row in await pool.fetch(f'SELECT * FROM "{t["tablename"]}"'):
            dump.extend(v.decode("latin-1") if isinstance(v, bytes) else str(v) for v in row.values())
    return "\n".join(dump)


async def live_key_id(pool: asyncpg.Pool, user_id: str) -> int:
    return int(
        await pool.fetchval("SELECT id FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL", uuid.UUID(user_id))
    )


async def audit(pool: asyncpg.Pool, user_id: str) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT * FROM key_audit WHERE user_id = $1 ORDER BY id", uuid.UUID(user_id))
    return [dict(r) for r in rows]


@pytest.fixture
async def admin_row(make_key: MakeKey) -> tuple[str, db.KeyRow]:
    return await make_key("ops", admin=True)


@pytest.fixture
def admin(admin_row: tuple[str, db.KeyRow]) -> dict[str, str]:
    return bearer(admin_row[0])


# --- create ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "configured_secret",
    [
        pytest.param(None, id="secret-generated-into-gateway_settings"),
        pytest.param("a-configured-claude-code-hmac-secret", id="secret-from-auth.claudecode_secret"),
    ],
)
async def test_create_answers_plaintext_once_and_stores_only_hashes(
    make_gateway: GatewayFactory,
    pool: asyncpg.Pool,
    admin_row: tuple[str, db.KeyRow],
    configured_secret: str | None,
) -> None:
    server = await make_gateway(auth={"claudecode_secret": configured_secret} if configured_secret else {})
    token = cc_token()
    sent = user_fields(email="Grace.Hopper@example.com", firstname="Grace", lastname="Hopper", claudecodeUserKey=token)
    status, body = await call(server, "POST", API, bearer(admin_row[0]), json=sent)

    assert status == 201, body
    assert set(body) == CREATE_RESPONSE | TIMESTAMPS
    assert (body["email"], body["firstname"], body["lastname"]) == ("Grace.Hopper@example.com", "Grace", "Hopper")
    assert body["claudecodeUserKey"] == token
    assert body["apiKey"].startswith("gw-") and body["aigatewayUserKey"] == body["apiKey"]
    assert parse_time(body["createdAt"]) == parse_time(body["updatedAt"])
    uuid.UUID(body["id"])

    user = await pool.fetchrow("SELECT * FROM users WHERE id = $1", uuid.UUID(body["id"]))
    for column, value in user.items():
        stored = value if isinstance(value, bytes) else str(value).encode()
        assert token.encode() not in stored, column
    generated = await pool.fetchval("SELECT value FROM gateway_settings WHERE name = 'claudecode_hmac_secret'")
    assert (generated is None) == (configured_secret is not None)
    secret = (configured_secret or generated).encode()
    assert user["claudecode_key_hmac"] == hmac.new(secret, token.encode(), hashlib.sha256).digest()

    everything = await every_stored_text(pool)
    assert token not in everything and body["apiKey"] not in everything
    key = await pool.fetchrow("SELECT * FROM api_keys WHERE user_id = $1", user["id"])
    assert (key["name"], key["is_admin"], key["revoked_at"]) == ("Grace.Hopper@example.com", False, None)
    [created] = await audit(pool, body["id"])
    assert (created["action"], created["actor_key_id"], created["new_key_id"]) == (
        "created",
        admin_row[1].id,
        key["id"],
    )


@pytest.mark.parametrize(
    ("credential", "headers"),
    [
        pytest.param("apiKey", x_api_key, id="gateway-key-x-api-key"),
        pytest.param("apiKey", bearer, id="gateway-key-bearer"),
        pytest.param("claudecodeUserKey", bearer, id="claude-code-token-bearer"),
        pytest.param("claudecodeUserKey", x_api_key, id="claude-code-token-x-api-key"),
    ],
)
async def test_each_credential_of_a_new_user_is_that_user(
    gateway: TestServer,
    pool: asyncpg.Pool,
    admin: dict[str, str],
    credential: str,
    headers: Callable[[str], dict[str, str]],
) -> None:
    user = await create_user(gateway, admin)
    await create_user(gateway, admin)  # someone else, so a mix-up would show
    assert await message(gateway, headers(user[credential])) == 200
    [row] = await flushed_usage(gateway, pool)
    assert row["user_id"] == uuid.UUID(user["id"])
    assert row["key_id"] == await live_key_id(pool, user["id"])
    assert row["status"] == 200


@pytest.mark.parametrize(
    ("second", "field"),
    [
        pytest.param({"claudecodeUserKey": "same"}, "claudecodeUserKey", id="same-claude-code-token"),
        pytest.param({"email": "ada@example.com"}, "email", id="same-email"),
        pytest.param({"email": "ADA@Example.COM"}, "email", id="same-email-other-case"),
        pytest.param({"email": "  ada@example.com "}, "email", id="same-email-padded"),
    ],
)
async def test_a_taken_email_or_token_is_409_and_leaves_nothing_behind(
    gateway: TestServer, pool: asyncpg.Pool, admin: dict[str, str], second: dict[str, str], field: str
) -> None:
    token = cc_token()
    first = await create_user(gateway, admin, email="ada@example.com", claudecodeUserKey=token)
    clash = {k: token if v == "same" else v for k, v in second.items()}
    status, body = await call(gateway, "POST", API, admin, json=user_fields(**clash))
    assert status == 409
    assert_error(body, f"a user with this {field} already exists")
    assert await pool.fetchval("SELECT count(*) FROM users") == 1
    assert await pool.fetchval("SELECT count(*) FROM api_keys WHERE user_id IS NOT NULL") == 1
    assert await message(gateway, bearer(token)) == 200  # the first user keeps the token
    assert [row["user_id"] for row in await flushed_usage(gateway, pool)] == [uuid.UUID(first["id"])]


VALID = {"email": "ada@example.com", "firstname": "Ada", "lastname": "Lovelace", "claudecodeUserKey": "cc-token-1234"}


def without(name: str) -> dict[str, str]:
    return {k: v for k, v in VALID.items() if k != name}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        pytest.param(b"{not json", "not valid JSON", id="malformed-json"),
        pytest.param(b"", "must be a JSON object", id="empty-body"),
        pytest.param(b"[]", "must be a JSON object", id="array"),
        pytest.param(b'"ada@example.com"', "must be a JSON object", id="string"),
        pytest.param(b"null", "must be a JSON object", id="null"),
        pytest.param(b"42", "must be a JSON object", id="number"),
        pytest.param(without("email"), "'email' is required", id="email-missing"),
        pytest.param({**VALID, "email": ""}, "'email' is required", id="email-empty"),
        pytest.param({**VALID, "email": 7}, "'email' is required and must be a non-empty string", id="email-number"),
        pytest.param({**VALID, "email": "ada"}, "'email' is not an email address", id="email-no-at"),
        pytest.param({**VALID, "email": "ada@example"}, "'email' is not an email address", id="email-no-dot"),
        pytest.param({**VALID, "email": "@example.com"}, "'email' is not an email address", id="email-no-local"),
        pytest.param({**VALID, "email": "a da@example.com"}, "'email' is not an email address", id="email-space"),
        pytest.param({**VALID, "email": "a@b@example.com"}, "'email' is not an email address", id="email-two-ats"),
        pytest.param({**VALID, "email": "a" * 250 + "@x.io"}, "'email' is longer than", id="email-too-long"),
        pytest.param(without("firstname"), "'firstname' is required", id="firstname-missing"),
        pytest.param({**VALID, "firstname": "   "}, "'firstname' is required", id="firstname-blank"),
        pytest.param({**VALID, "firstname": None}, "'firstname' is required", id="firstname-null"),
        pytest.param(without("lastname"), "'lastname' is required", id="lastname-missing"),
        pytest.param({**VALID, "lastname": ["x"]}, "'lastname' is required", id="lastname-list"),
        pytest.param({**VALID, "firstname": "Ad\x00a"}, "'firstname' must not contain NUL", id="firstname-nul"),
        pytest.param({**VALID, "claudecodeUserKey": ""}, "'claudecodeUserKey' must be a non-empty", id="token-empty"),
        pytest.param({**VALID, "claudecodeUserKey": 7}, "or left out for an IDE-only user", id="token-number"),
        pytest.param({**VALID, "claudecodeUserKey": "short"}, "too short", id="token-too-short"),
        pytest.param(
            {**VALID, "claudecodeUserKey": "gw-0123456789abcdef_secret"}, "not a gateway key", id="token-is-gw-key"
        ),
        pytest.param({**VALID, "role": "admin"}, "unknown field 'role'", id="unknown-field"),
        pytest.param({**VALID, "claudeCodeUserKey": "x" * 20}, "unknown field 'claudeCodeUserKey'", id="field-case"),
    ],
)
async def test_bad_create_body_is_400_with_a_clear_message(
    gateway: TestServer, pool: asyncpg.Pool, admin: dict[str, str], body: bytes | dict[str, Any], fragment: str
) -> None:
    if isinstance(body, bytes):
        status, answer = await call(gateway, "POST", API, {**admin, "Content-Type": "application/json"}, data=body)
    else:
        status, answer = await call(gateway, "POST", API, admin, json=body)
    assert status == 400
    assert_error(answer, fragment)
    assert await pool.fetchval("SELECT count(*) FROM users") == 0


# --- who may call it ---------------------------------------------------------------------------------


def endpoints(user_id: str) -> list[tuple[str, str, Any]]:
    """Every management endpoint with a body it would accept."""
    return [
        ("POST", API, user_fields()),
        ("GET", API, None),
        ("GET", f"{API}/usage", None),
        ("GET", f"{API}/{user_id}/usage-history", None),
        ("POST", f"{API}/{user_id}/regenerate", {"reason": "test"}),
        ("POST", f"{API}/{user_id}/increase-token-limit", {"increment": 5}),
        ("DELETE", f"{API}/{user_id}", None),
    ]


@pytest.mark.parametrize(
    ("credential", "status", "fragment"),
    [
        pytest.param("none", 401, "missing API key", id="no-key"),
        pytest.param("basic", 401, "missing API key", id="basic-auth"),
        pytest.param("unknown-gateway-key", 401, "invalid or revoked", id="unknown-gateway-key"),
        pytest.param("unregistered-token", 401, "neither a gateway key nor", id="unregistered-token"),
        pytest.param("revoked-admin-key", 401, "invalid or revoked", id="revoked-admin-key"),
        pytest.param("wrong-env-admin-key", 401, "neither a gateway key nor", id="wrong-env-admin-key"),
        pytest.param("user-key", 403, "needs an admin key", id="user-key"),
        pytest.param("apiKey", 403, "needs an admin key", id="api-created-user-key"),
        pytest.param("claudecodeUserKey", 403, "needs an admin key", id="user-claude-code-token"),
    ],
)
async def test_only_admins_may_manage_users(
    make_gateway: GatewayFactory,
    pool: asyncpg.Pool,
    make_key: MakeKey,
    admin: dict[str, str],
    credential: str,
    status: int,
    fragment: str,
) -> None:
    server = await make_gateway(auth={"admin_key": ENV_ADMIN_KEY})
    user = await create_user(server, admin)
    revoked, revoked_row = await make_key("old-admin", admin=True)
    await db.revoke_key(pool, revoked_row.id)
    headers = {
        "none": {},
        "basic": {"Authorization": "Basic YWRtaW46YWRtaW4="},
        "unknown-gateway-key": bearer("gw-0123456789abcdef_nope"),
        "unregistered-token": bearer("not-a-key-at-all"),
        "revoked-admin-key": bearer(revoked),
        "wrong-env-admin-key": bearer("y" * 40),
        "user-key": bearer((await make_key("bob"))[0]),
        "apiKey": bearer(user["apiKey"]),
        "claudecodeUserKey": bearer(user["claudecodeUserKey"]),
    }[credential]

    for method, path, body in endpoints(user["id"]):
        answer_status, answer = await call(server, method, path, headers, json=body)
        assert answer_status == status, (method, path, answer)
        assert_error(answer, fragment)
    assert await pool.fetchval("SELECT count(*) FROM users WHERE deleted_at IS NULL") == 1
    assert [a["action"] for a in await audit(pool, user["id"])] == ["created"]
    assert await message(server, x_api_key(user["apiKey"])) == 200


@pytest.mark.parametrize("headers", [bearer, x_api_key], ids=["bearer", "x-api-key"])
async def test_gateway_admin_key_from_config_is_an_admin(
    make_gateway: GatewayFactory, pool: asyncpg.Pool, headers: Callable[[str], dict[str, str]]
) -> None:
    server = await make_gateway(auth={"admin_key": ENV_ADMIN_KEY})
    user = await create_user(server, headers(ENV_ADMIN_KEY))
    status, listed = await call(server, "GET", API, headers(ENV_ADMIN_KEY))
    assert status == 200 and [u["id"] for u in listed] == [user["id"]]
    env_key_id = await pool.fetchval("SELECT id FROM api_keys WHERE name = 'GATEWAY_ADMIN_KEY'")
    assert [a["actor_key_id"] for a in await audit(pool, user["id"])] == [env_key_id]


# --- ids that do not exist ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "user_id",
    [
        pytest.param(str(uuid.uuid4()), id="unknown-uuid"),
        pytest.param("not-a-uuid", id="not-a-uuid"),
        pytest.param("42", id="number"),
        pytest.param("deleted", id="deleted-user"),
    ],
)
async def test_an_unknown_user_is_404_on_every_endpoint_with_an_id(
    gateway: TestServer, pool: asyncpg.Pool, admin: dict[str, str], user_id: str
) -> None:
    bystander = await create_user(gateway, admin)
    if user_id == "deleted":
        user_id = (await create_user(gateway, admin))["id"]
        assert (await call(gateway, "DELETE", f"{API}/{user_id}", admin))[0] == 200
    with_id = [(m, p, b) for m, p, b in endpoints(user_id) if user_id in p]
    assert len(with_id) == 4
    for method, path, body in with_id:
        status, answer = await call(gateway, method, path, admin, json=body)
        assert status == 404, (method, path, answer)
        assert_error(answer, "no user with id")
    assert [a["action"] for a in await audit(pool, bystander["id"])] == ["created"]


# --- delete ------------------------------------------------------------------------------------------


async def test_delete_stops_the_keys_at_once_and_frees_the_email_and_token(
    gateway: TestServer, pool: asyncpg.Pool, admin_row: tuple[str, db.KeyRow], admin: dict[str, str]
) -> None:
    user = await create_user(gateway, admin, email="ada@example.com")
    other = await create_user(gateway, admin)
    credentials = [x_api_key(user["apiKey"]), bearer(user["claudecodeUserKey"]), x_api_key(user["claudecodeUserKey"])]
    for headers in credentials:  # warm every cache on this process first
        assert await message(gateway, headers) == 200

    status, body = await call(gateway, "DELETE", f"{API}/{user['id']}", admin)
    assert (status, body) == (200, {"success": True})
    for headers in credentials:
        assert await message(gateway, headers) == 401
    assert await message(gateway, bearer(other["claudecodeUserKey"])) == 200
    for path in (API, f"{API}/usage"):
        assert [u["id"] for u in (await call(gateway, "GET", path, admin))[1]] == [other["id"]]
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL", uuid.UUID(user["id"])
        )
        == 0
    )
    deleted = (await audit(pool, user["id"]))[-1]
    assert (deleted["action"], deleted["actor_key_id"]) == ("deleted", admin_row[1].id)

    again = await create_user(
        gateway, admin, email="ADA@example.com", claudecodeUserKey=user["claudecodeUserKey"]
    )  # the token was refused a moment ago on this process: it must work at once now
    assert again["id"] != user["id"]
    before = len(await flushed_usage(gateway, pool))
    assert await message(gateway, bearer(user["claudecodeUserKey"])) == 200
    assert await message(gateway, x_api_key(user["apiKey"])) == 401
    new_rows = (await flushed_usage(gateway, pool))[before:]
    assert [r["user_id"] for r in new_rows] == [uuid.UUID(again["id"])]


async def test_delete_reaches_a_second_gateway_within_the_cache_ttl(
    make_gateway: GatewayFactory, admin: dict[str, str]
) -> None:
    ttl = 0.3
    first, second = await make_gateway(auth={"cache_ttl_s": ttl}), await make_gateway(auth={"cache_ttl_s": ttl})
    user = await create_user(first, admin)
    credentials = [x_api_key(user["apiKey"]), bearer(user["claudecodeUserKey"]), x_api_key(user["claudecodeUserKey"])]
    for headers in credentials:
        assert await message(second, headers) == 200  # the second gateway now holds every credential in its cache

    assert (await call(first, "DELETE", f"{API}/{user['id']}", admin))[0] == 200
    for headers in credentials:
        assert await message(first, headers) == 401
    await asyncio.sleep(ttl * 1.5)
    for headers in credentials:
        assert await message(second, headers) == 401


# --- regenerate --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param({"reason": "laptop stolen"}, "laptop stolen", id="with-reason"),
        pytest.param(None, None, id="no-body"),
        pytest.param({}, None, id="empty-object"),
        pytest.param({"reason": None}, None, id="null-reason"),
    ],
)
async def test_regenerate_replaces_the_key_keeps_the_mapping_and_records_why(
    gateway: TestServer,
    pool: asyncpg.Pool,
    admin_row: tuple[str, db.KeyRow],
    admin: dict[str, str],
    body: dict[str, Any] | None,
    reason: str | None,
) -> None:
    user = await create_user(gateway, admin)
    old_key_id = await live_key_id(pool, user["id"])
    for headers in (x_api_key(user["apiKey"]), bearer(user["claudecodeUserKey"])):
        assert await message(gateway, headers) == 200  # cached on this process before the change
    raw = b"" if body is None else orjson.dumps(body)

    status, new = await call(gateway, "POST", f"{API}/{user['id']}/regenerate", admin, data=raw)

    assert status == 200, new
    assert set(new) == REGENERATE_RESPONSE | TIMESTAMPS
    assert {k: new[k] for k in ("id", "email", "firstname", "lastname", "createdAt")} == {
        k: user[k] for k in ("id", "email", "firstname", "lastname", "createdAt")
    }
    assert parse_time(new["updatedAt"]) > parse_time(user["updatedAt"])
    assert new["newApiKey"].startswith("gw-") and new["newApiKey"] != user["apiKey"]
    assert new["aigatewayUserKey"] == new["newApiKey"]
    assert new["claudecodeUserKey"] is None  # stored only as an HMAC: the mapping is kept, the plaintext is gone

    new_key_id = await live_key_id(pool, user["id"])
    assert new_key_id != old_key_id
    assert await message(gateway, x_api_key(user["apiKey"])) == 401
    before = len(await flushed_usage(gateway, pool))
    for headers in (
        x_api_key(new["newApiKey"]),
        bearer(user["claudecodeUserKey"]),
        x_api_key(user["claudecodeUserKey"]),
    ):
        assert await message(gateway, headers) == 200
    rows = (await flushed_usage(gateway, pool))[before:]
    assert {(r["key_id"], r["user_id"]) for r in rows} == {(new_key_id, uuid.UUID(user["id"]))}

    regenerated = (await audit(pool, user["id"]))[-1]
    assert regenerated["action"] == "regenerated"
    assert (regenerated["reason"], regenerated["actor_key_id"]) == (reason, admin_row[1].id)
    assert (regenerated["old_key_id"], regenerated["new_key_id"]) == (old_key_id, new_key_id)
    assert abs(regenerated["created_at"] - datetime.now(UTC)) < timedelta(seconds=30)
    assert new["newApiKey"] not in await every_stored_text(pool)


async def test_concurrent_regenerates_never_answer_with_a_key_that_does_not_work(
    make_gateway: GatewayFactory, admin: dict[str, str]
) -> None:
    # Real bcrypt cost for the new key (the lock is held while it is made), so the calls overlap for certain.
    gateway = await make_gateway(auth={"bcrypt_rounds": 10})
    user = await create_user(gateway, admin)
    url = f"{API}/{user['id']}/regenerate"
    answers = await asyncio.gather(*(call(gateway, "POST", url, admin) for _ in range(4)))
    keys = [body["newApiKey"] for status, body in answers if status == 200]
    assert keys and sorted(status for status, _ in answers) == [200] * len(keys) + [409] * (4 - len(keys))
    assert all("already in progress" in body["error"] for status, body in answers if status == 409)
    assert [await message(gateway, x_api_key(key)) for key in keys] == [200] * len(keys)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        pytest.param(b'{"reason": 5}', "'reason' must be a string", id="reason-number"),
        pytest.param(b'{"reason": ["a"]}', "'reason' must be a string", id="reason-list"),
        pytest.param(b'{"reason": "a\\u0000b"}', "without NUL characters", id="reason-nul"),
        pytest.param(b'{"why": "x"}', "unknown field 'why'", id="unknown-field"),
        pytest.param(b"{oops", "not valid JSON", id="malformed-json"),
        pytest.param(b'["reason"]', "must be a JSON object", id="array"),
        pytest.param(b"null", "must be a JSON object", id="null"),
    ],
)
async def test_bad_regenerate_body_is_400_and_changes_nothing(
    gateway: TestServer, pool: asyncpg.Pool, admin: dict[str, str], raw: bytes, fragment: str
) -> None:
    user = await create_user(gateway, admin)
    status, body = await call(gateway, "POST", f"{API}/{user['id']}/regenerate", admin, data=raw)
    assert status == 400
    assert_error(body, fragment)
    assert await message(gateway, x_api_key(user["apiKey"])) == 200
    assert [a["action"] for a in await audit(pool, user["id"])] == ["created"]


async def test_regenerate_reaches_a_second_gateway_within_the_cache_ttl(
    make_gateway: GatewayFactory, pool: asyncpg.Pool, admin: dict[str, str]
) -> None:
    ttl = 0.3
    first, second = await make_gateway(auth={"cache_ttl_s": ttl}), await make_gateway(auth={"cache_ttl_s": ttl})
    user = await create_user(first, admin)
    for headers in (x_api_key(user["apiKey"]), bearer(user["claudecodeUserKey"])):
        assert await message(second, headers) == 200

    status, new = await call(first, "POST", f"{API}/{user['id']}/regenerate", admin, json={"reason": "rotation"})
    assert status == 200
    await asyncio.sleep(ttl * 1.5)
    assert await message(second, x_api_key(user["apiKey"])) == 401
    assert await message(second, x_api_key(new["newApiKey"])) == 200
    assert await message(second, bearer(user["claudecodeUserKey"])) == 200
    await flushed_usage(first, pool)
    last = (await flushed_usage(second, pool))[-1]
    assert last["key_id"] == await live_key_id(pool, user["id"])


# --- increase-token-limit ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budgets", "default"),
    [
        pytest.param({}, DEFAULT_TOKEN_LIMIT, id="default-limit"),
        pytest.param({"monthly_token_limit": 5000}, 5000, id="configured-limit"),
    ],
)
async def test_increase_token_limit_adds_to_the_default_then_to_itself(
    make_gateway: GatewayFactory,
    pool: asyncpg.Pool,
    admin_row: tuple[str, db.KeyRow],
    admin: dict[str, str],
    budgets: dict[str, int],
    default: int,
) -> None:
    server = await make_gateway(budgets=budgets)
    user, bystander = await create_user(server, admin), await create_user(server, admin)
    path = f"{API}/{user['id']}/increase-token-limit"

    assert await call(server, "POST", path, admin, json={"increment": 500}) == (
        200,
        {"id": user["id"], "newLimit": default + 500},
    )
    assert await call(server, "POST", path, admin, json={"increment": 250}) == (
        200,
        {"id": user["id"], "newLimit": default + 750},
    )
    listed = {u["id"]: u["limitToken"] for u in (await call(server, "GET", API, admin))[1]}
    assert listed == {user["id"]: default + 750, bystander["id"]: default}
    raised = [a for a in await audit(pool, user["id"]) if a["action"] == "token_limit_increased"]
    assert [(a["reason"], a["actor_key_id"]) for a in raised] == [("+500", admin_row[1].id), ("+250", admin_row[1].id)]


async def test_increase_token_limit_lets_a_user_over_the_limit_in_again_at_once(
    make_gateway: GatewayFactory, upstream: FakeUpstream, admin: dict[str, str]
) -> None:
    server = await make_gateway(budgets={"monthly_token_limit": 100})
    upstream.usage(input_tokens=150, output_tokens=5)
    user = await create_user(server, admin)
    credentials = [x_api_key(user["apiKey"]), bearer(user["claudecodeUserKey"])]
    assert await message(server, credentials[0]) == 200  # 0 of 100 used: let through, uses 155
    for headers in credentials:
        assert await message(server, headers) == 429  # both credentials now cached with the old limit

    status, body = await call(
        server, "POST", f"{API}/{user['id']}/increase-token-limit", admin, json={"increment": 1000}
    )
    assert (status, body["newLimit"]) == (200, 1100)
    for headers in credentials:
        assert await message(server, headers) == 200


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        pytest.param(b'{"increment": 0}', "'increment' must be a positive integer", id="zero"),
        pytest.param(b'{"increment": -1}', "'increment' must be a positive integer", id="negative"),
        pytest.param(b'{"increment": 1.5}', "'increment' must be a positive integer", id="fraction"),
        pytest.param(b'{"increment": 5.0}', "'increment' must be a positive integer", id="float-whole"),
        pytest.param(b'{"increment": "5"}', "'increment' must be a positive integer", id="string"),
        pytest.param(b'{"increment": true}', "'increment' must be a positive integer", id="true"),
        pytest.param(b'{"increment": null}', "'increment' must be a positive integer", id="null"),
        pytest.param(b"{}", "'increment' must be a positive integer", id="missing"),
        pytest.param(b'{"increment": 10000000000000000}', "'increment' is too large", id="too-large"),
        pytest.param(b'{"increment": 5, "limit": 9}', "unknown field 'limit'", id="unknown-field"),
        pytest.param(b"", "must be a JSON object", id="empty-body"),
        pytest.param(b"5", "must be a JSON object", id="bare-number"),
        pytest.param(b"{increment: 5}", "not valid JSON", id="malformed-json"),
    ],
)
async def test_bad_increment_is_400_and_changes_nothing(
    gateway: TestServer, pool: asyncpg.Pool, admin: dict[str, str], raw: bytes, fragment: str
) -> None:
    user = await create_user(gateway, admin)
    status, body = await call(gateway, "POST", f"{API}/{user['id']}/increase-token-limit", admin, data=raw)
    assert status == 400
    assert_error(body, fragment)
    assert await pool.fetchval("SELECT limit_tokens FROM users WHERE id = $1", uuid.UUID(user["id"])) is None


# --- list --------------------------------------------------------------------------------------------


async def test_list_shows_every_live_user_and_no_secret(
    gateway: TestServer, pool: asyncpg.Pool, admin: dict[str, str]
) -> None:
    users = [await create_user(gateway, admin) for _ in range(3)]
    assert (await call(gateway, "DELETE", f"{API}/{users[1]['id']}", admin))[0] == 200
    regenerated = (await call(gateway, "POST", f"{API}/{users[2]['id']}/regenerate", admin))[1]

    status, listed = await call(gateway, "GET", API, admin)

    assert status == 200
    assert [u["id"] for u in listed] == [users[0]["id"], users[2]["id"]]  # oldest first
    for shown, created in zip(listed, (users[0], users[2]), strict=True):
        assert {k: shown[k] for k in ("email", "firstname", "lastname", "createdAt")} == {
            k: created[k] for k in ("email", "firstname", "lastname", "createdAt")
        }
    plaintexts = [u[k] for u in users for k in ("apiKey", "claudecodeUserKey")] + [regenerated["newApiKey"]]
    hashes = [r["key_hash"] for r in await pool.fetch("SELECT key_hash FROM api_keys")]
    hmacs = [r["claudecode_key_hmac"] for r in await pool.fetch("SELECT claudecode_key_hmac FROM users")]
    hmac_texts = [h.hex() for h in hmacs if h] + [base64.b64encode(h).decode() for h in hmacs if h]
    assert_no_secrets(listed, *plaintexts, *hashes, *hmac_texts)


# --- usage -------------------------------------------------------------------------------------------


def usage_row(key_id: int, user_id: uuid.UUID, at: datetime, **fields: Any) -> dict[str, Any]:
    """A usage_log row, as the flusher writes it, for a request at `at`."""
    return {
        "id": uuid.uuid4(),
        "created_at": at,
        "request_id": "backdated",
        "key_id": key_id,
        "user_id": user_id,
        "route": "messages",
        "alias": "claude-fast",
        "provider": "anthropic",
        "provider_model": "claude-haiku-4-5",
        "status": 200,
        "input_tokens": 40,
        "output_tokens": 4,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "cost_usd": Decimal("0.00006"),
        "latency_ms": 12.5,
        "ttfb_ms": None,
        "streamed": False,
        "cache_write_5m_tokens": 0,  # sql/005_billing.sql
        "cache_write_1h_tokens": 0,
        "web_search_requests": 0,
        "usage_estimated": False,
        "team_id": None,  # sql/011_teams_and_roles.sql
        **fields,
    }


async def insert_rows_directly(pool: asyncpg.Pool, rows: list[dict[str, Any]]) -> None:
    """Rows straight into usage_log, past the flusher (so usage_counters does not count them)."""
    columns = db.USAGE_COLUMNS
    placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    await pool.executemany(
        f"INSERT INTO usage_log ({', '.join(columns)}) VALUES ({placeholders})",
        [tuple(r[c] for c in columns) for r in rows],
    )


def tokens_of(row: dict[str, Any]) -> int:
    return sum(row[c] for c in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"))


async def test_usage_totals_this_month_per_user_match_the_usage_rows(
    gateway: TestServer, upstream: FakeUpstream, pool: asyncpg.Pool, admin: dict[str, str]
) -> None:
    ada, bob, idle = [await create_user(gateway, admin) for _ in range(3)]
    upstream.usage(input_tokens=120, output_tokens=7, cache_read_input_tokens=30)
    assert await message(gateway, x_api_key(ada["apiKey"])) == 200
    assert await message(gateway, bearer(ada["claudecodeUserKey"]), "claude-quality") == 200
    assert await message(gateway, x_api_key(ada["claudecodeUserKey"]), "claude-unpriced") == 200
    assert await message(gateway, bearer(bob["claudecodeUserKey"])) == 200
    rows = await flushed_usage(gateway, pool)
    last_month = datetime.now(UTC).replace(day=1) - timedelta(days=3)
    earlier = usage_row(await live_key_id(pool, ada["id"]), uuid.UUID(ada["id"]), last_month)
    await db.insert_usage(pool, [tuple(earlier[c] for c in db.USAGE_COLUMNS)])  # counted for last month only

    status, usage = await call(gateway, "GET", f"{API}/usage", admin)

    assert status == 200
    assert [u["id"] for u in usage] == [ada["id"], bob["id"], idle["id"]]
    for shown, user in zip(usage, (ada, bob, idle), strict=True):
        mine = [r for r in rows if r["user_id"] == uuid.UUID(user["id"])]
        assert {k: shown[k] for k in ("email", "firstname", "lastname", "createdAt", "updatedAt")} == {
            k: user[k] for k in ("email", "firstname", "lastname", "createdAt", "updatedAt")
        }
        assert shown["totalTokens"] == sum(tokens_of(r) for r in mine)
        assert shown["requestCount"] == len(mine)
        assert shown["totalCostUsd"] == float(sum((r["cost_usd"] or Decimal(0) for r in mine), Decimal(0)))
        assert (shown["limitUsd"], shown["overLimit"]) == (100.0, False)
    assert (usage[0]["requestCount"], usage[2]["totalTokens"], usage[2]["totalCostUsd"]) == (3, 0, 0.0)
    assert_no_secrets(usage, *(u[k] for u in (ada, bob, idle) for k in ("apiKey", "claudecodeUserKey")))


@pytest.mark.parametrize(
    ("budgets", "over_limit"),
    [
        pytest.param({}, False, id="well-within"),
        pytest.param({"monthly_token_limit": 156}, False, id="one-token-left"),
        pytest.param({"monthly_token_limit": 155}, True, id="tokens-exactly-used-up"),
        pytest.param({"monthly_token_limit": 100}, True, id="tokens-over"),
        pytest.param({"monthly_limit_usd": 0.0001}, True, id="dollars-over"),
    ],
)
async def test_usage_says_whether_a_user_is_over_a_limit(
    make_gateway: GatewayFactory,
    upstream: FakeUpstream,
    pool: asyncpg.Pool,
    admin: dict[str, str],
    budgets: dict[str, Any],
    over_limit: bool,
) -> None:
    server = await make_gateway(budgets=budgets)
    upstream.usage(input_tokens=150, output_tokens=5)  # 155 tokens, $0.000175 on claude-haiku-4-5
    user = await create_user(server, admin)
    assert await message(server, bearer(user["claudecodeUserKey"])) == 200
    await flushed_usage(server, pool)
    [shown] = (await call(server, "GET", f"{API}/usage", admin))[1]
    assert (shown["totalTokens"], shown["overLimit"]) == (155, over_limit)
    assert shown["limitUsd"] == budgets.get("monthly_limit_usd", 100.0)


# --- usage history -----------------------------------------------------------------------------------

TODAY = 0  # days ago; the other days are rows written straight into usage_log


async def history_fixture(
    server: TestServer, upstream: FakeUpstream, pool: asyncpg.Pool, admin: dict[str, str]
) -> tuple[dict[str, Any], date, list[dict[str, Any]]]:
    """A user with requests today (two models) and backdated rows 3 and 10 days ago; another user beside them."""
    user, other = await create_user(server, admin), await create_user(server, admin)
    upstream.usage(input_tokens=100, output_tokens=10)
    for headers, model in [
        (x_api_key(user["apiKey"]), "claude-fast"),
        (bearer(user["claudecodeUserKey"]), "claude-fast"),
        (x_api_key(user["claudecodeUserKey"]), "claude-quality"),
        (bearer(other["claudecodeUserKey"]), "claude-fast"),
    ]:
        assert await message(server, headers, model) == 200
    await flushed_usage(server, pool)
    today = datetime.now(UTC).date()
    key_id, user_id = await live_key_id(pool, user["id"]), uuid.UUID(user["id"])

    def at(days_ago: int, hour: int) -> datetime:
        return datetime.combine(today - timedelta(days=days_ago), datetime.min.time(), UTC).replace(hour=hour)

    await insert_rows_directly(
        pool,
        [
            usage_row(key_id, user_id, at(3, 1)),
            usage_row(key_id, user_id, at(3, 23), input_tokens=7, cost_usd=Decimal("0.00001")),
            usage_row(key_id, user_id, at(3, 9), alias="claude-quality", provider_model="claude-sonnet-4-5"),
            usage_row(key_id, user_id, at(3, 9), alias="claude-unpriced", provider_model="x", cost_usd=None),
            usage_row(key_id, user_id, at(10, 0), cache_read_tokens=900, cache_write_tokens=11),
            usage_row(await live_key_id(pool, other["id"]), uuid.UUID(other["id"]), at(3, 5)),
        ],
    )
    mine = [r for r in await db.usage_rows(pool) if r["user_id"] == user_id]
    return user, today, mine


def expected_history(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The history the API should answer for these rows: per UTC day and model, newest day first."""
    groups: dict[tuple[date, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["created_at"].astimezone(UTC).date(), r["alias"], r["provider_model"])].append(r)
    entries = []
    for (day, alias, provider_model), group in sorted(groups.items(), key=lambda g: (-g[0][0].toordinal(), g[0][1:])):
        costs = [r["cost_usd"] for r in group if r["cost_usd"] is not None]
        entries.append(
            {
                "date": day.isoformat(),
                "model": alias,
                "providerModel": provider_model,
                "requestCount": len(group),
                "inputTokens": sum(r["input_tokens"] for r in group),
                "outputTokens": sum(r["output_tokens"] for r in group),
                "cacheReadTokens": sum(r["cache_read_tokens"] for r in group),
                "cacheWriteTokens": sum(r["cache_write_tokens"] for r in group),
                "totalTokens": sum(tokens_of(r) for r in group),
                "costUsd": float(sum(costs, Decimal(0))) if costs else None,
                "unpricedRequests": len(group) - len(costs),
            }
        )
    return entries


@pytest.mark.parametrize(
    ("start", "end", "days"),
    [
        pytest.param(None, None, [TODAY, 3, 10], id="everything"),
        pytest.param(3, None, [TODAY, 3], id="from-inclusive"),
        pytest.param(None, 3, [3, 10], id="to-inclusive"),
        pytest.param(3, 3, [3], id="one-day"),
        pytest.param(10, 4, [10], id="range"),
        pytest.param(2, 1, [], id="empty-range"),
        pytest.param(TODAY, TODAY, [TODAY], id="today"),
    ],
)
async def test_usage_history_per_day_and_model_newest_first_within_from_and_to(
    gateway: TestServer,
    upstream: FakeUpstream,
    pool: asyncpg.Pool,
    admin: dict[str, str],
    start: int | None,
    end: int | None,
    days: list[int],
) -> None:
    user, today, rows = await history_fixture(gateway, upstream, pool, admin)
    query = {
        name: (today - timedelta(days=ago)).isoformat()
        for name, ago in (("from", start), ("to", end))
        if ago is not None
    }
    wanted_days = {today - timedelta(days=ago) for ago in days}

    status, body = await call(
        gateway, "GET", f"{API}/{user['id']}/usage-history?" + "&".join(f"{k}={v}" for k, v in query.items()), admin
    )

    assert status == 200
    assert body["userId"] == user["id"]
    expected = expected_history([r for r in rows if r["created_at"].astimezone(UTC).date() in wanted_days])
    assert body["history"] == expected
    assert sorted({e["date"] for e in expected}, reverse=True) == sorted(
        (d.isoformat() for d in wanted_days), reverse=True
    )
    assert body["nextOffset"] is None
    assert_no_secrets(body, user["apiKey"], user["claudecodeUserKey"])


async def test_usage_history_pages_with_limit_offset_and_next_offset(
    gateway: TestServer, upstream: FakeUpstream, pool: asyncpg.Pool, admin: dict[str, str]
) -> None:
    user, _, rows = await history_fixture(gateway, upstream, pool, admin)
    everything = expected_history(rows)
    assert len(everything) == 6

    pages, offset = [], 0
    while offset is not None:
        status, page = await call(gateway, "GET", f"{API}/{user['id']}/usage-history?limit=1&offset={offset}", admin)
        assert status == 200 and (page["limit"], page["offset"]) == (1, offset)
        pages.append(page["history"])
        offset = page["nextOffset"]
    assert pages == [[entry] for entry in everything]  # the last full page says there is no next one

    status, page = await call(gateway, "GET", f"{API}/{user['id']}/usage-history?limit=2&offset=4", admin)
    assert (page["history"], page["nextOffset"]) == (everything[4:6], None)
    status, page = await call(gateway, "GET", f"{API}/{user['id']}/usage-history?limit=4&offset=1", admin)
    assert (page["history"], page["nextOffset"]) == (everything[1:5], 5)
    status, page = await call(gateway, "GET", f"{API}/{user['id']}/usage-history?offset=50", admin)
    assert (status, page["history"], page["nextOffset"]) == (200, [], None)


async def test_usage_history_of_a_user_without_usage_is_empty(gateway: TestServer, admin: dict[str, str]) -> None:
    user = await create_user(gateway, admin)
    status, body = await call(gateway, "GET", f"{API}/{user['id']}/usage-history", admin)
    assert (status, body["userId"], body["history"], body["nextOffset"]) == (200, user["id"], [], None)


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        pytest.param("from=2026-13-01", "'from' must be a date", id="from-not-a-date"),
        pytest.param("to=yesterday", "'to' must be a date", id="to-not-a-date"),
        pytest.param("from=", "'from' must be a date", id="from-empty"),
        pytest.param("from=2026-03-02&to=2026-03-01", "'from' is after 'to'", id="from-after-to"),
        pytest.param("limit=-1", "'limit' must be an integer", id="limit-negative"),
        pytest.param("limit=abc", "'limit' must be an integer", id="limit-not-a-number"),
        pytest.param("limit=1001", "'limit' must be an integer from 1 to 1000", id="limit-too-large"),
        pytest.param("limit=0", "'limit' must be an integer from 1 to 1000", id="limit-zero"),
        pytest.param("offset=-5", "'offset' must be an integer", id="offset-negative"),
        pytest.param("offset=1.5", "'offset' must be an integer", id="offset-fraction"),
        # str.isdigit() accepts these; int() does not (they were a 500)
        pytest.param("limit=%C2%B2", "'limit' must be an integer", id="limit-superscript-two"),
        pytest.param("offset=%E2%91%A0", "'offset' must be an integer", id="offset-circled-one"),
        pytest.param("limit=%D9%A3", "'limit' must be an integer", id="limit-arabic-indic-three"),
        pytest.param("offset=" + "9" * 5000, "'offset' must be an integer", id="offset-5000-digits"),
    ],
)
async def test_bad_usage_history_query_is_400(
    gateway: TestServer, admin: dict[str, str], query: str, fragment: str
) -> None:
    user = await create_user(gateway, admin)
    status, body = await call(gateway, "GET", f"{API}/{user['id']}/usage-history?{query}", admin)
    assert status == 400
    assert_error(body, fragment)


async def test_a_bug_behind_the_management_api_is_a_500_in_its_own_error_shape(
    gateway: TestServer, admin: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(db, "list_users", broken)
    status, body = await call(gateway, "GET", API, admin)
    assert status == 500
    assert_error(body, "internal gateway error")
