"""The management API's declared bodies (gateway/management_schemas.py): every refusal names its field in one line,
and the route's guard parses the body before the handler runs, refusing a field given twice on every route."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from pydantic import BaseModel, ValidationError

from gateway import db
from gateway.management import ROUTES, Route
from gateway.management_schemas import (
    Body,
    CreateManagementKeyRequest,
    CreateTeamRequest,
    CreateUserRequest,
    DaysPage,
    DlpQuery,
    IncreaseTokenLimitRequest,
    MoveUserRequest,
    Page,
    RateLimitRequest,
    RegenerateRequest,
    UpdateTeamRequest,
    one_line,
)

MakeKey = Callable[..., Awaitable[tuple[str, db.KeyRow]]]

VALID: dict[type[BaseModel], dict[str, Any]] = {  # one accepted input per model; each field is spoiled in turn
    CreateUserRequest: {
        "email": "ada@example.com",
        "firstname": "Ada",
        "lastname": "L",
        "teamId": 1,
        "claudecodeUserKey": "sk-ant-oat01-abcdef",
    },
    RegenerateRequest: {"reason": "lost"},
    IncreaseTokenLimitRequest: {"increment": 5},
    MoveUserRequest: {"teamId": None},
    CreateTeamRequest: {"name": "Platform", "monthlyTokenLimit": 10, "monthlyLimitUsd": 2.5},
    UpdateTeamRequest: {"name": "Platform", "monthlyTokenLimit": None, "monthlyLimitUsd": 1},
    CreateManagementKeyRequest: {"name": "ci", "role": "team_admin", "teamId": 3},
    RateLimitRequest: {"requestsPerMinute": 60, "tokensPerMinute": None, "inFlight": 0},
    Page: {"limit": "10", "offset": "20"},
    DaysPage: {"from": "2026-11-01", "to": "2026-11-30", "limit": "10", "offset": "0"},
    DlpQuery: {"from": "2026-11-01", "userId": "0b0e3a4c-5d6e-4f70-8a9b-0c1d2e3f4a5b", "detector": "email"},
}
SPOILED = ([1], {"x": 1}, True, "\x00", 1.5, "not-a-value")


def test_every_declared_model_has_a_valid_example() -> None:
    declared = {m for r in ROUTES for m in (r.body, r.query) if m is not None}
    assert declared <= set(VALID), f"add an example to VALID for {declared - set(VALID)}"
    for model, example in VALID.items():
        model.model_validate(example)


@pytest.mark.parametrize(
    ("model", "field"), [pytest.param(m, f, id=f"{m.__name__}.{f}") for m, example in VALID.items() for f in example]
)
def test_every_refusal_is_one_line_naming_the_field(model: type[BaseModel], field: str) -> None:
    """Each spoiled value either passes (it is valid there) or is refused with one line that names the field."""
    refused = 0
    for bad in SPOILED:
        try:
            model.model_validate({**VALID[model], field: bad})
        except ValidationError as exc:
            message = one_line(model, exc)
            assert f"'{field}'" in message and "\n" not in message, message
            refused += 1
    assert refused >= 3, f"{model.__name__}.{field} took {len(SPOILED) - refused} of {len(SPOILED)} spoiled values"


@pytest.mark.parametrize("model", [m for m in VALID if issubclass(m, Body)], ids=lambda m: m.__name__)
def test_an_unknown_field_is_refused_with_the_allowed_ones(model: type[Body]) -> None:
    with pytest.raises(ValidationError) as caught:
        model.model_validate({**VALID[model], "extra": 1})
    allowed = ", ".join(sorted(VALID[model]))
    assert one_line(model, caught.value) == f"unknown field 'extra'; allowed: {allowed}"


BODY_ROUTES = [pytest.param(r, id=f"{r.method} {r.path}") for r in ROUTES if r.body is not None]


@pytest.mark.parametrize("route", BODY_ROUTES)
async def test_a_field_given_twice_is_refused_on_every_body_route(
    route: Route, gateway: TestServer, make_key: MakeKey
) -> None:
    """orjson keeps the last of two equal keys silently; which one was meant is anyone's guess: 400 naming it."""
    admin, _ = await make_key("admin", admin=True)
    assert route.body is not None
    field = next(iter(VALID[route.body]))
    raw = f'{{"{field}": 1, "{field}": 2}}'.encode()
    path = route.path.format(id="1", team="1", key="1", scope="key")  # parsed before the handler looks them up
    headers = {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(route.method, gateway.make_url(path), data=raw, headers=headers) as resp,
    ):
        assert resp.status == 400
        assert await resp.json() == {"error": f"field {field!r} is given more than once; send it once"}
