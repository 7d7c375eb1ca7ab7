"""The management API's request bodies and query strings, declared once (pydantic v2): their limits live only here.

gateway/management.py attaches each model to its route; the route's guard parses the body and the query once
(`read_body`, `read_query`) and the handler takes the parsed value (`body_of`, `query_of`); gateway/openapi.py
documents the same models. Field names are the original design's contract (camelCase). A refusal is one line
naming the field, in the words this API always used: `'increment' must be a positive integer` (400
`{"error": "..."}`); a body declared as anything but JSON is a 415.

Types are checked strictly, as before: `true` is not a number, `"5"` is not an integer, `5.0` is not a count.
"""

from __future__ import annotations

import json
import re
import unicodedata
import uuid
from collections.abc import Callable
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, ClassVar, TypeVar

import orjson
from aiohttp import web
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)

from gateway.dlp import ACTIONS, DETECTOR_IDS
from gateway.errors import BadRequest, UnsupportedMediaType
from gateway.keys import KEY_PREFIX
from gateway.roles import Role

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_PAGE = 1000
MAX_OFFSET = 10**9
MAX_TEAM_ID = 2**63 - 1
MAX_TOKENS = 2**63 - 1
MAX_INCREMENT = 10**15
MAX_USD = Decimal("9999999999.9999")  # numeric(14, 4)
MAX_RATE = 2**31 - 1  # the rate-limit columns are PostgreSQL integers
KEY_ROLES = tuple(r.value for r in Role if r is not Role.USER)  # a management key's roles


class Body(BaseModel):
    """A JSON object body: unknown fields refused; `missing` words a required field's absence (default below)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    missing: ClassVar[dict[str, str]] = {}
    empty_ok: ClassVar[bool] = False  # whether no body at all reads as {}

    @classmethod
    def missing_message(cls, name: str) -> str:
        return cls.missing.get(name, f"'{name}' is required and must be a non-empty string")


class Query(BaseModel):
    """A query string's declared parameters; others are ignored (a cache-buster must not break a page)."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


# --- field rules: each raises ValueError with the whole message -----------------------------------------


def _named(check: Callable[[Any, str], Any], name: str | None = None) -> BeforeValidator:
    """`check(value, field name)` as a validator; `name` where the field's alias is not its Python name."""

    def run(value: Any, info: ValidationInfo) -> Any:
        return check(value, name or str(info.field_name))

    return BeforeValidator(run)


def _text(value: Any, name: str, max_len: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'{name}' is required and must be a non-empty string")
    if len(value) > max_len:
        raise ValueError(f"'{name}' is longer than {max_len} characters")
    if "\x00" in value:  # PostgreSQL text cannot hold NUL: refuse it here rather than fail in the INSERT
        raise ValueError(f"'{name}' must not contain NUL characters")
    return value.strip()


# Bidi embeddings, overrides and isolates, refused in names as the console's forms do (gateway/console/actions.py):
# they make a name read backwards on every page that shows it.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
SSO_PREFIX = "sso:"  # the names of SSO identities' key rows (sql/015_sso.sql): never a management key's


def _display_name(value: Any, name: str) -> str:
    """A team's or a management key's name: shown in the console, the audit and `gateway` CLI listings, so no
    control characters (line breaks, terminal escapes, bidi overrides)."""
    text = _text(value, name, 100)
    if any(unicodedata.category(c) == "Cc" or c in BIDI_CONTROLS for c in text):
        raise ValueError(f"'{name}' must not contain control characters (line breaks, escapes, bidi overrides)")
    return text


def _key_name(value: Any, name: str) -> str:
    text = _display_name(value, name)
    if text.lower().startswith(SSO_PREFIX):  # it would collide with, or stand in for, a person's identity row
        raise ValueError(f"'{name}' must not start with {SSO_PREFIX!r}: such names are SSO identities'")
    return text


def _email(value: Any, name: str) -> str:
    email = _text(value, name, 254)
    if not EMAIL.match(email):
        raise ValueError(f"'{name}' is not an email address: {email!r}")
    return email


def _claude_code_token(value: Any, name: str) -> str | None:
    """Optional (a user who works only in IDEs has none), but never empty, never a gateway key."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'{name}' must be a non-empty string, or left out for an IDE-only user")
    token = _text(value, name, 4096)
    if token.startswith(KEY_PREFIX):
        raise ValueError(f"'{name}' must be the user's Claude Code token, not a gateway key")
    if len(token) < 8:
        raise ValueError(f"'{name}' is too short to be a Claude Code token (8 characters minimum)")
    return token


def _team_id(value: Any, name: str) -> int | None:
    if value is not None and (type(value) is not int or not 0 < value <= MAX_TEAM_ID):
        raise ValueError(f"'{name}' must be a team id (a positive integer) or null")
    return value


def _increment(value: Any, name: str) -> int:
    if type(value) is not int or value <= 0:
        raise ValueError(f"'{name}' must be a positive integer")
    if value > MAX_INCREMENT:
        raise ValueError(f"'{name}' is too large")
    return value


def _reason(value: Any, name: str) -> str | None:
    if value is not None and (not isinstance(value, str) or "\x00" in value):
        raise ValueError(f"'{name}' must be a string without NUL characters")
    return value


def _rate(value: Any, name: str) -> int | None:
    if value is not None and (type(value) is not int or not 0 <= value <= MAX_RATE):
        raise ValueError(f"'{name}' must be null or an integer from 0 to {MAX_RATE}")
    return value


def _token_limit(value: Any, name: str) -> int | None:
    if value is not None and (type(value) is not int or not 0 <= value <= MAX_TOKENS):
        raise ValueError(f"'{name}' must be null (no team limit) or a whole number of tokens >= 0")
    return value


def _usd_limit(value: Any, name: str) -> Decimal | None:
    if value is None:
        return None
    try:
        amount = Decimal(str(value)) if type(value) in (int, float) else None
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite() or not 0 <= amount <= MAX_USD:
        raise ValueError(f"'{name}' must be null (no team limit) or a number of USD from 0 to {MAX_USD}")
    return amount.quantize(Decimal("0.0001"))


def _role(value: Any, name: str) -> Role:
    if value not in KEY_ROLES:
        raise ValueError(f"'{name}' must be one of {', '.join(KEY_ROLES)}")
    return Role(value)


def _page_number(low: int, high: int) -> Callable[[Any, str], int]:
    def check(value: Any, name: str) -> int:
        # ASCII digits only: str.isdigit() also accepts "²" and other digits int() refuses (a 500 before)
        text = str(value)
        if not (text.isascii() and text.isdigit() and len(text) <= 12) or not low <= int(text) <= high:
            raise ValueError(f"'{name}' must be an integer from {low} to {high}")
        return int(text)

    return check


def _day(value: Any, name: str) -> date:
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise ValueError(f"'{name}' must be a date like 2026-11-01") from None


def _user_id(value: Any, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise ValueError(f"'{name}' is not a user id: {value!r}") from None


def _member(allowed: tuple[str, ...]) -> Callable[[Any, str], str]:
    def check(value: Any, name: str) -> str:
        if value not in allowed:
            raise ValueError(f"'{name}' must be one of {', '.join(allowed)}")
        return str(value)

    return check


def _schema_of(kind: Any) -> WithJsonSchema:
    """The JSON schema of `kind`: a field that may be left out but, when given, must not be null."""
    return WithJsonSchema(TypeAdapter(kind).json_schema())


def _enum(values: tuple[str, ...]) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "enum": list(values)})


TeamId = Annotated[Annotated[int, Field(ge=1, le=MAX_TEAM_ID)] | None, _named(_team_id)]
PersonName = Annotated[str, Field(min_length=1, max_length=200), _named(lambda v, n: _text(v, n, 200))]
TeamName = Annotated[str, Field(min_length=1, max_length=100), _named(_display_name)]
KeyName = Annotated[str, Field(min_length=1, max_length=100), _named(_key_name)]
Rate = Annotated[Annotated[int, Field(ge=0, le=MAX_RATE)] | None, _named(_rate)]
TokenLimit = Annotated[
    Annotated[int, Field(ge=0, le=MAX_TOKENS)] | None,
    _named(_token_limit),
    Field(description="Tokens per UTC month for the whole team; null: no team limit."),
]
UsdLimit = Annotated[
    Decimal | None,
    _named(_usd_limit),
    WithJsonSchema({"type": ["number", "null"], "minimum": 0, "maximum": float(MAX_USD)}),
    Field(description="USD per UTC month for the whole team; null: no team limit."),
]


# --- bodies --------------------------------------------------------------------------------------------


class CreateUserRequest(Body):
    """POST /v1/user-api-keys."""

    teamId: TeamId = Field(
        None, description="The team the user joins (admin keys); a team_admin key's users always join its own team."
    )
    email: Annotated[str, Field(max_length=254, json_schema_extra={"format": "email"}), _named(_email)]
    claudecodeUserKey: Annotated[
        Annotated[str, Field(min_length=8, max_length=4096)] | None, _named(_claude_code_token)
    ] = Field(
        None,
        description="The user's Claude Code token (not a gateway key); stored only as an HMAC. Optional: omit it "
        "(or null) for a user who works only in IDEs.",
    )
    firstname: PersonName
    lastname: PersonName


class RegenerateRequest(Body):
    """POST /v1/user-api-keys/{id}/regenerate (the body is optional)."""

    empty_ok: ClassVar[bool] = True
    reason: Annotated[str | None, _named(_reason)] = Field(None, description="Kept in the audit log.")


class IncreaseTokenLimitRequest(Body):
    """POST /v1/user-api-keys/{id}/increase-token-limit."""

    missing: ClassVar[dict[str, str]] = {"increment": "'increment' must be a positive integer"}
    increment: Annotated[int, Field(ge=1, le=MAX_INCREMENT), _named(_increment)]


class MoveUserRequest(Body):
    """PUT /v1/user-api-keys/{id}/team."""

    missing: ClassVar[dict[str, str]] = {"teamId": "'teamId' is required: a team id, or null for no team"}
    teamId: TeamId = Field(description="The team the user moves to; null: no team.")


class CreateTeamRequest(Body):
    """POST /v1/teams."""

    name: TeamName
    monthlyTokenLimit: TokenLimit = None
    monthlyLimitUsd: UsdLimit = None


class UpdateTeamRequest(Body):
    """PATCH /v1/teams/{team}: only the fields given change (`model_fields_set`); null removes a limit."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})
    name: Annotated[str | None, _named(_display_name), _schema_of(TeamName)] = None  # null: 400
    monthlyTokenLimit: TokenLimit = None
    monthlyLimitUsd: UsdLimit = None

    @model_validator(mode="after")
    def _something(self) -> UpdateTeamRequest:
        if not self.model_fields_set:
            raise ValueError(f"give at least one of {', '.join(sorted(type(self).model_fields))}")
        return self


class CreateManagementKeyRequest(Body):
    """POST /v1/management-keys: a team_admin key needs its team, the others none."""

    missing: ClassVar[dict[str, str]] = {"role": f"'role' must be one of {', '.join(KEY_ROLES)}"}
    name: KeyName
    role: Annotated[Role, _named(_role), WithJsonSchema({"type": "string", "enum": list(KEY_ROLES)})]
    teamId: TeamId = None

    @model_validator(mode="after")
    def _team_for_team_admin(self) -> CreateManagementKeyRequest:
        if (self.role is Role.TEAM_ADMIN) != (self.teamId is not None):
            raise ValueError("'teamId' is required for a team_admin key, and only for one")
        return self


class RateLimitRequest(Body):
    """PUT /v1/rate-limits/{scope}/{id}: absent or null is the default from gateway.yaml; 0 is no limit."""

    requestsPerMinute: Rate = None
    tokensPerMinute: Rate = None
    inFlight: Rate = None


# --- queries -------------------------------------------------------------------------------------------


class Page(Query):
    """?limit=&offset=: one page of a list, newest first."""

    limit: Annotated[int, Field(ge=1, le=MAX_PAGE), _named(_page_number(1, MAX_PAGE))] = 100
    offset: Annotated[int, Field(ge=0, le=MAX_OFFSET), _named(_page_number(0, MAX_OFFSET))] = 0


class Days(Query):
    """?from=&to=: UTC days, both inclusive (also GET /v1/me/usage's query)."""

    start: Annotated[date | None, _named(_day, "from")] = Field(None, alias="from", description="First day, inclusive.")
    end: Annotated[date | None, _named(_day, "to")] = Field(None, alias="to", description="Last day, inclusive.")

    @model_validator(mode="after")
    def _in_order(self) -> Days:
        if self.start and self.end and self.start > self.end:
            raise ValueError("'from' is after 'to'")
        return self


class DaysPage(Days, Page):
    """?from=&to=&limit=&offset=: one page of a range of UTC days."""


class DlpQuery(DaysPage):
    """GET /v1/dlp-findings: filters on the user, the detector and the action taken."""

    userId: Annotated[uuid.UUID | None, _named(_user_id)] = Field(None, description="Only this user's findings.")
    detector: Annotated[str | None, _named(_member(DETECTOR_IDS)), _enum(DETECTOR_IDS)] = None
    action: Annotated[str | None, _named(_member(ACTIONS[:-1])), _enum(ACTIONS[:-1])] = None


# --- parsing -------------------------------------------------------------------------------------------

B = TypeVar("B", bound=Body)
Q = TypeVar("Q", bound=Query)
PARSED: web.RequestKey[BaseModel] = web.RequestKey("management_body", BaseModel)
PARSED_QUERY: web.RequestKey[BaseModel] = web.RequestKey("management_query", BaseModel)


def one_line(model: type[BaseModel], exc: ValidationError) -> str:
    """The first problem of `exc` as this API words it; an unknown field first, as it always was."""
    errors = exc.errors(include_url=False)
    if unknown := sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden"):
        allowed = ", ".join(sorted(f.alias or n for n, f in model.model_fields.items()))
        return f"unknown field {unknown[0]!r}; allowed: {allowed}"
    error = errors[0]
    if error["type"] == "missing" and issubclass(model, Body):
        return model.missing_message(str(error["loc"][0]))
    if error["type"] == "value_error":
        return str(error["ctx"]["error"])
    field = ".".join(str(p) for p in error["loc"])
    return f"'{field}': {error['msg']}" if field else str(error["msg"])


def _require_json_media_type(request: web.Request) -> None:
    """415 for a body declared as anything but JSON, as on the model routes (gateway.app.read_json_body).

    `curl -d` without `-H 'content-type: application/json'` sends application/x-www-form-urlencoded; taking
    that as JSON here but not on /v1/messages would teach a habit that fails there.
    """
    content_type = request.headers.get("Content-Type", "application/json")
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {content_type!r}")


def _once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's fields, 400 for one given twice: orjson keeps the last silently, and with
    `{"requestsPerMinute": 5, ..., "requestsPerMinute": null}` which one was meant is anyone's guess."""
    fields: dict[str, Any] = {}
    for name, value in pairs:
        if name in fields:
            raise BadRequest(f"field {name!r} is given more than once; send it once")
        fields[name] = value
    return fields


async def read_body(request: web.Request, model: type[B]) -> B:
    """The request's JSON object body as `model`. Raises BadRequest (400) with one line, UnsupportedMediaType (415)."""
    raw = await request.read()
    if not raw.strip():
        if model.empty_ok:
            return model()
        raise BadRequest("request body must be a JSON object")
    _require_json_media_type(request)  # only a body can be misread; aiohttp labels an empty POST octet-stream
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    try:
        json.loads(raw, object_pairs_hook=_once_each)  # valid JSON already: only a field given twice raises
    except RecursionError:  # orjson takes 1023 levels, the json module fewer than 1000
        raise BadRequest("request body is nested too deeply") from None
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise BadRequest(one_line(model, exc)) from None


def read_query(request: web.Request, model: type[Q]) -> Q:
    """The request's declared query parameters as `model` (the first value of each). Raises BadRequest (400)."""
    names = [f.alias or n for n, f in model.model_fields.items()]
    try:
        return model.model_validate({n: request.query[n] for n in names if n in request.query})
    except ValidationError as exc:
        raise BadRequest(one_line(model, exc)) from None


def body_of(request: web.Request, model: type[B]) -> B:
    """The body the route's guard parsed (gateway/management.py), as the handler's declared `model`."""
    body = request[PARSED]
    assert isinstance(body, model), f"the route declares {type(body).__name__}, the handler reads {model.__name__}"
    return body


def query_of(request: web.Request, model: type[Q]) -> Q:
    """The query the route's guard parsed (gateway/management.py), as the handler's declared `model`."""
    query = request[PARSED_QUERY]
    assert isinstance(query, model), f"the route declares {type(query).__name__}, the handler reads {model.__name__}"
    return query
