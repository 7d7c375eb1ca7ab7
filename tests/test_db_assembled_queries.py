"""The queries gateway/db.py assembles at run time with pypika, run against the real test database.

Each filter combination builds a differently shaped statement; every one must be SQL that PostgreSQL accepts
and must return exactly the rows the filters select, in the documented order. Values go in as $n
parameters, so a filter value that looks like SQL is only ever a value.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from gateway import db

UTC = UTC
ALICE, BOB = uuid.UUID(int=1), uuid.UUID(int=2)
MAR1, MAR2 = date(2026, 3, 1), date(2026, 3, 2)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


# --- DLP findings: day range (UTC, inclusive), user, detector, action, paging -----------------------------

# (label, created_at, user, detector, action); the label is stored as the finding's location
FINDINGS = [
    ("feb28-late", at("2026-02-28T23:59:59.999+00:00"), ALICE, "email", "audit"),
    ("mar1-first", at("2026-03-01T00:00:00+00:00"), ALICE, "email", "audit"),
    ("mar1-last", at("2026-03-01T23:59:59+00:00"), BOB, "aws_access_key", "block"),
    ("mar2-new-york", at("2026-03-01T23:30:00-05:00"), ALICE, "aws_access_key", "redact"),  # 04:30 UTC on Mar 2
    ("mar3-anonymous", at("2026-03-03T12:00:00+00:00"), None, "email", "block"),
]
NEWEST_FIRST = ["mar3-anonymous", "mar2-new-york", "mar1-last", "mar1-first", "feb28-late"]


@pytest.fixture
async def findings(pool: asyncpg.Pool) -> asyncpg.Pool:
    await pool.executemany(
        "INSERT INTO dlp_findings (created_at, request_id, user_id, route, alias, detector, action, location)"
        " VALUES ($1, 'r', $2, 'messages', 'claude-fast', $3, $4, $5)",
        [(created, user, detector, action, label) for label, created, user, detector, action in FINDINGS],
    )
    return pool


FINDING_FILTERS = [
    pytest.param({}, NEWEST_FIRST, id="no-filter"),
    pytest.param({"start": MAR1}, NEWEST_FIRST[:4], id="from"),
    pytest.param({"end": MAR1}, ["mar1-last", "mar1-first", "feb28-late"], id="to"),
    pytest.param({"start": MAR1, "end": MAR1}, ["mar1-last", "mar1-first"], id="one-day"),
    pytest.param({"start": MAR2, "end": MAR2}, ["mar2-new-york"], id="day-in-utc"),
    pytest.param({"start": date.min, "end": date.max}, NEWEST_FIRST, id="widest-days"),
    pytest.param({"user_id": ALICE}, ["mar2-new-york", "mar1-first", "feb28-late"], id="user"),
    pytest.param({"detector": "email"}, ["mar3-anonymous", "mar1-first", "feb28-late"], id="detector"),
    pytest.param({"action": "block"}, ["mar3-anonymous", "mar1-last"], id="action"),
    pytest.param(
        {"user_id": ALICE, "detector": "aws_access_key", "action": "redact"},
        ["mar2-new-york"],
        id="user-detector-action",
    ),
    pytest.param({"user_id": ALICE, "start": MAR1, "detector": "email"}, ["mar1-first"], id="user-from-detector"),
    pytest.param({"detector": "email' OR '1'='1"}, [], id="sql-in-a-value-is-a-value"),
    pytest.param({"limit": 2}, NEWEST_FIRST[:2], id="first-page"),
    pytest.param({"limit": 2, "offset": 2}, NEWEST_FIRST[2:4], id="second-page"),
    pytest.param({"limit": 2, "offset": 4}, NEWEST_FIRST[4:], id="last-page"),
    pytest.param({"limit": 2, "offset": 10}, [], id="past-the-end"),
    pytest.param({"action": "audit", "limit": 1, "offset": 1}, ["feb28-late"], id="filter-and-page"),
]


@pytest.mark.parametrize(("filters", "expected"), FINDING_FILTERS)
async def test_dlp_findings(findings: asyncpg.Pool, filters: dict[str, Any], expected: list[str]) -> None:
    rows = await db.dlp_findings(findings, **filters)
    assert [r["location"] for r in rows] == expected
    assert all(set(r) == {"id", "created_at", *db.DLP_FINDING_COLUMNS} for r in rows)


# --- a user's usage history: per UTC day and model, newest day first, paged ---------------------------------


@pytest.fixture
async def history(pool: asyncpg.Pool) -> asyncpg.Pool:
    key = await db.insert_key(pool, lookup_id="gk_hist", key_hash="x", name="h", is_admin=False)
    rows = [  # (created_at, user, alias, model, input, output, cost)
        (at("2026-02-28T23:59:00+00:00"), ALICE, "fast", "haiku", 7, 0, Decimal("0.7")),
        (at("2026-03-01T10:00:00+00:00"), ALICE, "fast", "haiku", 10, 1, Decimal("0.1")),
        (at("2026-03-01T11:00:00+00:00"), ALICE, "fast", "haiku", 20, 2, None),
        (at("2026-03-01T12:00:00+00:00"), ALICE, "premium", "opus", 5, 0, Decimal("0.5")),
        (at("2026-03-01T20:30:00-05:00"), ALICE, "fast", "haiku", 1, 0, Decimal("0.01")),  # 01:30 UTC on Mar 2
        (at("2026-03-01T12:00:00+00:00"), BOB, "fast", "haiku", 99, 0, Decimal(9)),
    ]
    await pool.executemany(
        "INSERT INTO usage_log (id, created_at, request_id, key_id, route, alias, provider, provider_model, status,"
        " input_tokens, output_tokens, cost_usd, latency_ms, streamed, user_id)"
        " VALUES (gen_random_uuid(), $1, 'r', $2, 'messages', $3, 'anthropic', $4, 200, $5, $6, $7, 1, false, $8)",
        [(t, key.id, alias, model, i, o, c, user) for t, user, alias, model, i, o, c in rows],
    )
    return pool


DAYS_NEWEST_FIRST = [
    (date(2026, 3, 2), "fast", "haiku", 1),
    (MAR1, "fast", "haiku", 2),
    (MAR1, "premium", "opus", 1),
    (date(2026, 2, 28), "fast", "haiku", 1),
]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        pytest.param({}, DAYS_NEWEST_FIRST, id="no-range"),
        pytest.param({"start": MAR1}, DAYS_NEWEST_FIRST[:3], id="from"),
        pytest.param({"end": MAR1}, DAYS_NEWEST_FIRST[1:], id="to"),
        pytest.param({"start": MAR1, "end": MAR1}, DAYS_NEWEST_FIRST[1:3], id="one-day"),
        pytest.param({"start": MAR2, "end": date.max}, DAYS_NEWEST_FIRST[:1], id="to-the-last-day"),
        pytest.param({"limit": 2, "offset": 1}, DAYS_NEWEST_FIRST[1:3], id="page"),
        pytest.param({"start": MAR1, "limit": 1, "offset": 2}, DAYS_NEWEST_FIRST[2:3], id="range-and-page"),
    ],
)
async def test_user_usage_history(
    history: asyncpg.Pool, filters: dict[str, Any], expected: list[tuple[Any, ...]]
) -> None:
    args = {"start": None, "end": None, "limit": 100, "offset": 0, **filters}
    rows = await db.user_usage_history(history, ALICE, **args)
    assert [(r["day"], r["alias"], r["provider_model"], r["requests"]) for r in rows] == expected


async def test_user_usage_history_sums_a_day(history: asyncpg.Pool) -> None:
    rows = await db.user_usage_history(history, ALICE, start=MAR1, end=MAR1, limit=1, offset=0)
    assert rows == [
        {
            "day": MAR1,
            "alias": "fast",
            "provider_model": "haiku",
            "requests": 2,
            "input_tokens": 30,
            "output_tokens": 3,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "cost_usd": Decimal("0.1"),
            "unpriced_requests": 1,  # the row without a price is counted, not summed as 0
        }
    ]


# --- the console's users: search, paging, the month's figures --------------------------------------------

PEOPLE = [  # (email, first, last), oldest first
    ("ann@example.com", "Ann", "Smith"),
    ("bo_b@example.com", "Bob", "Jones"),
    ("cara@example.com", "Cara", "Smithson"),
    ("dan100%@example.com", "Dan", "Brown"),
    ("gone@example.com", "Smith", "Gone"),  # deleted below
]


@pytest.fixture
async def people(pool: asyncpg.Pool) -> dict[str, uuid.UUID]:
    ids = {}
    for n, (email, first, last) in enumerate(PEOPLE):
        user, _ = await db.create_user(
            pool,
            email=email,
            firstname=first,
            lastname=last,
            claudecode_hmac=None,
            key=(f"gk_p{n}", "x"),
            actor=None,
        )
        ids[first] = user.id
        await pool.execute("UPDATE users SET created_at = $2 WHERE id = $1", user.id, at(f"2026-01-0{n + 1}T00:00Z"))
    await db.delete_user(pool, ids["Smith"], actor=None)
    return ids


@pytest.mark.parametrize(
    ("search", "limit", "offset", "expected", "total"),
    [
        pytest.param("", 10, 0, ["Dan", "Cara", "Bob", "Ann"], 4, id="everyone-newest-first"),
        pytest.param("", 2, 1, ["Cara", "Bob"], 4, id="a-page"),
        pytest.param("SMITH", 10, 0, ["Cara", "Ann"], 2, id="name-any-case-deleted-left-out"),
        pytest.param("ann s", 10, 0, ["Ann"], 1, id="first-and-last-name"),
        pytest.param("o_b", 10, 0, ["Bob"], 1, id="underscore-is-literal"),
        pytest.param("_", 10, 0, ["Bob"], 1, id="only-an-underscore"),
        pytest.param("100%", 10, 0, ["Dan"], 1, id="percent-is-literal"),
        pytest.param("%", 10, 0, ["Dan"], 1, id="only-a-percent"),
        pytest.param("smith", 1, 1, ["Ann"], 2, id="search-and-page"),
        pytest.param("nobody", 10, 0, [], 0, id="no-match"),
        pytest.param("x' OR 'a'='a", 10, 0, [], 0, id="sql-in-a-value-is-a-value"),
    ],
)
async def test_find_users(
    pool: asyncpg.Pool,
    people: dict[str, uuid.UUID],
    search: str,
    limit: int,
    offset: int,
    expected: list[str],
    total: int,
) -> None:
    rows, found = await db.find_users(
        pool,
        MAR1,
        search=search,
        limit=limit,
        offset=offset,
        default_tokens=1000,
        default_usd=Decimal(5),
    )
    assert ([r["firstname"] for r in rows], found) == (expected, total)
    assert all(r["limit_tokens"] == 1000 and r["limit_usd"] == Decimal(5) and r["tokens"] == 0 for r in rows)


async def _counters(pool: asyncpg.Pool, people: dict[str, uuid.UUID]) -> None:
    """This month: Ann 900 of 1000 tokens, Bob $4.50 of $5 on his key, Cara a little; Dan nothing."""
    keys = {
        r["user_id"]: r["id"] for r in await pool.fetch("SELECT id, user_id FROM api_keys WHERE user_id IS NOT NULL")
    }
    spent = {"Ann": (900, Decimal(1)), "Bob": (10, Decimal("4.5")), "Cara": (100, Decimal("0.2"))}
    for name, (tokens, usd) in spent.items():
        for scope, scope_id in (("user", str(people[name])), ("key", str(keys[people[name]]))):
            await pool.execute(
                "INSERT INTO usage_counters (scope, scope_id, month, tokens, cost_usd, requests)"
                " VALUES ($1, $2, $3, $4, $5, 1)",
                scope,
                scope_id,
                MAR1,
                tokens,
                usd,
            )


async def test_top_users_and_users_near_limit(pool: asyncpg.Pool, people: dict[str, uuid.UUID]) -> None:
    await _counters(pool, people)
    limits = {"default_tokens": 1000, "default_usd": Decimal(5)}
    top = await db.top_users(pool, MAR1, limit=2, **limits)
    assert [(r["firstname"], r["cost_usd"], r["tokens"]) for r in top] == [
        ("Bob", Decimal("4.5"), 10),
        ("Ann", Decimal(1), 900),
    ]
    near = await db.users_near_limit(pool, MAR1, ratio=0.8, **limits)
    assert [r["firstname"] for r in near] == ["Ann", "Bob"]  # 90 % of tokens, then 90 % of USD, by email
    assert await db.users_near_limit(pool, MAR1, ratio=0.95, **limits) == []
    assert await db.top_users(pool, date(2026, 4, 1), **limits) == []  # another month: nobody spent anything


# --- the audit trail: everyone's or one user's, paged ----------------------------------------------------


NEWEST_PEOPLE = ("Smith", "Dan", "Cara", "Bob", "Ann")


@pytest.mark.parametrize(
    ("who", "limit", "offset", "expected"),
    [
        pytest.param(
            None, 50, 0, ["Smith:deleted", *(f"{n}:created" for n in ("Smith", "Dan", "Cara", "Bob", "Ann"))], id="all"
        ),
        pytest.param(None, 2, 1, ["Smith:created", "Dan:created"], id="page"),
        pytest.param("Smith", 50, 0, ["Smith:deleted", "Smith:created"], id="one-user"),
        pytest.param("Smith", 1, 1, ["Smith:created"], id="one-user-page"),
        pytest.param("Ann", 1, 5, [], id="past-the-end"),
    ],
)
async def test_audit_page(
    pool: asyncpg.Pool,
    people: dict[str, uuid.UUID],
    who: str | None,
    limit: int,
    offset: int,
    expected: list[str],
) -> None:
    names = {v: k for k, v in people.items()}
    rows = await db.audit_page(pool, user_id=people[who] if who else None, limit=limit, offset=offset)
    entries, total = rows
    assert [f"{names[r['user_id']]}:{r['action']}" for r in entries] == expected
    assert total == (2 if who == "Smith" else 1 if who else len(PEOPLE) + 1)
