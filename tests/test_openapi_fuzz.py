"""The OpenAPI document (gateway/openapi.py) against the running gateway: it matches the routes, fuzzing finds no 5xx.

Every operation is fuzzed by schemathesis (positive cases, and negative ones where a body or a typed
parameter can be made invalid) with a real key set by an auth provider. Each answer must be a documented
status, never a 5xx, a 2xx must match its schema, and a 4xx must carry the route's error shape:
Anthropic's on /v1/messages*, OpenAI's on the OpenAI routes, `{"error": "..."}` on /v1/user-api-keys.

The gateway runs on the test's event loop; schemathesis calls it with `requests` (blocking), so each run
of cases happens in a worker thread while the loop keeps serving.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import pytest
import requests
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, Case, CheckContext, GenerationMode, Response
from schemathesis.auths import AuthContext, AuthStorage

from gateway import db, openapi
from gateway.app import build_app
from gateway.management import ROUTES, Route
from tests.conftest import gateway_config

MAX_EXAMPLES = 40  # per operation, valid and invalid cases mixed: bounded for CI (the module runs in < 60 s)
SMOKE_EXAMPLES = 5  # per operation for the refusals (no key; a user key where an admin key is needed)
ALIASES = ("claude-fast", "claude-quality")  # from tests/conftest.py's config; claude-quality can think

SCHEMA = schemathesis.openapi.from_dict(json.loads(openapi.served_bytes()))  # a copy: schemathesis may change it
# The real key comes from the auth provider below; random values for the security headers would only ever 401.
SCHEMA.config.generation.update(with_security_parameters=False)
SCHEMA.config.max_stream_events = 100_000  # read every SSE stream to its end, never cut it short
OPERATIONS: list[APIOperation] = [result.ok() for result in SCHEMA.get_all_operations()]

MakeKey = Callable[..., Awaitable[tuple[str, db.KeyRow]]]


MANAGEMENT_PATHS = (
    "/v1/user-api-keys",
    "/v1/dlp-findings",
    "/v1/rate-limits",
    "/v1/teams",
    "/v1/management-keys",
    "/v1/audit",
)  # management keys (an admin key admits them all), errors as {"error": "..."}


def is_management(operation: APIOperation) -> bool:
    return operation.path.startswith(MANAGEMENT_PATHS)


def needs_admin(operation: APIOperation) -> bool:
    return is_management(operation) or operation.path == "/metrics"


def is_secured(operation: APIOperation) -> bool:
    return operation.definition.raw.get("security", SCHEMA.raw_schema["security"]) != []


def can_be_invalid(operation: APIOperation) -> bool:
    """Whether negative cases exist: a body, or a parameter typed beyond "any string"."""
    params = [*operation.path_parameters, *operation.query]
    return bool(operation.body) or any(set(p.definition["schema"]) - {"type", "examples"} for p in params)


def modes_for(operation: APIOperation) -> tuple[GenerationMode, ...]:
    if can_be_invalid(operation):
        return (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    return (GenerationMode.POSITIVE,)


# --- what an answer must look like ---------------------------------------------------------------


def expected_error_shape(path: str, sent_headers: Any) -> str:
    """The error dialect of a route, as gateway/app.py's `dialect_of` and the management API decide it."""
    if path.startswith(MANAGEMENT_PATHS):
        return "plain"
    if path.startswith("/v1/messages"):
        return "anthropic"
    if path.startswith("/v1/models") and ("anthropic-version" in sent_headers or "x-api-key" in sent_headers):
        return "anthropic"
    if path.startswith("/v1/me") and "x-api-key" in sent_headers:
        return "anthropic"
    return "openai"


def shape_problem(shape: str, body: Any) -> str | None:
    """What is wrong with an error body for `shape`, or None when it is right."""
    if shape == "plain":
        ok = isinstance(body, dict) and isinstance(body.get("error"), str)
        return None if ok else 'expected {"error": "<message>"}'
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return "expected an `error` object with a string `message`"
    if shape == "anthropic":
        ok = body.get("type") == "error" and isinstance(error.get("type"), str)
        return None if ok else 'expected {"type": "error", "error": {"type", "message"}}'
    if not isinstance(error.get("type"), str) or not {"param", "code"} <= set(error):
        return 'expected {"error": {"message", "type", "param", "code"}}'
    return None


def no_server_error_and_dialect_shape(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """No 5xx ever (the fake upstream is local and healthy), and every 4xx in its route's error shape."""
    status = response.status_code
    if status >= 500:
        raise AssertionError(f"{status} from the gateway: {response.content[:2000]!r}")
    assert not response.stream_cut_short, "the event stream did not end"
    if status < 400:
        return None
    shape = expected_error_shape(case.operation.path, response.request.headers)
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{status} body is not JSON: {response.content[:2000]!r}") from None
    if problem := shape_problem(shape, body):
        raise AssertionError(f"{status} body is not in the {shape} error shape ({problem}): {body!r}")
    return None


CHECKS = [
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
    no_server_error_and_dialect_shape,
]


@pytest.mark.parametrize(
    ("shape", "body", "ok"),
    [
        pytest.param("plain", {"error": "no user with id 1"}, True, id="plain"),
        pytest.param("plain", {"error": {"message": "m"}}, False, id="plain-got-object"),
        pytest.param("anthropic", {"type": "error", "error": {"type": "not_found_error", "message": "m"}}, True),
        pytest.param("anthropic", {"error": {"message": "m", "type": "t", "param": None, "code": None}}, False),
        pytest.param("openai", {"error": {"message": "m", "type": "t", "param": None, "code": None}}, True),
        pytest.param("openai", {"error": {"message": "m", "type": "t"}}, False, id="openai-no-param-code"),
        pytest.param("openai", {"type": "error", "error": {"type": "t", "message": "m"}}, False),
        pytest.param("openai", ["not", "an", "object"], False, id="openai-list"),
    ],
)
def test_shape_problem(shape: str, body: Any, ok: bool) -> None:
    assert (shape_problem(shape, body) is None) is ok


# --- running the cases ---------------------------------------------------------------------------


def key_auth(key: str | None) -> AuthStorage:
    """An auth provider sending `key` the way each route's SDKs do: x-api-key to Anthropic routes, Bearer else."""
    storage = AuthStorage()

    @storage.auth(refresh_interval=None, retry_on=[])
    class GatewayKey:
        def get(self, case: Case, ctx: AuthContext) -> str | None:
            return key

        def set(self, case: Case, data: str | None, ctx: AuthContext) -> None:
            if data is None:
                return
            header = ("x-api-key", data) if case.operation.path.startswith("/v1/messages") else None
            name, value = header or ("Authorization", f"Bearer {data}")
            case.headers = {**(case.headers or {}), name: value}

    return storage


def steer(case: Case, data: st.DataObject, user_id: str) -> None:
    """Mostly put in a model alias or the real user id, so cases get past the 404s into the handlers.

    The known values come first, so a failing case shrinks towards them: its reproduction names a real alias.
    """
    if not is_management(case.operation) and isinstance(case.body, dict):
        model = data.draw(st.sampled_from((*ALIASES, None)), label="model")
        if model is not None:
            case.body["model"] = model
    for name, known in (("id", (user_id,)), ("model_id", ALIASES)):
        if name in (case.path_parameters or {}):
            value = data.draw(st.sampled_from((*known, None)), label=name)
            if value is not None:
                case.path_parameters[name] = value


def run_cases(
    operation: APIOperation,
    modes: Sequence[GenerationMode],
    base_url: str,
    *,
    key: str | None,
    user_id: str,
    max_examples: int,
    expect_status: int | None = None,
) -> None:
    """Fuzz one operation (blocking: run it in a thread); a failing check fails the test with a minimal case."""
    auth = key_auth(key)
    strategy = st.one_of(*(operation.as_strategy(generation_mode=mode, auth_storage=auth) for mode in modes))
    session = requests.Session()

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,  # the same cases on every run: CI does not flake, a failure reproduces locally
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    @given(case=strategy, data=st.data())
    def fuzz(case: Case, data: st.DataObject) -> None:
        steer(case, data, user_id)
        response = case.call(base_url=base_url, session=session, timeout=30)
        case.validate_response(response, checks=CHECKS)
        if expect_status is not None:
            assert response.status_code == expect_status, f"{response.status_code}: {response.text[:500]}"

    with session:
        fuzz()


@pytest.fixture
async def user_id(make_user: MakeKey) -> str:
    """A real user for the {id} routes to find (steer() puts it in about half the cases)."""
    _, row = await make_user("fuzz@example.com")
    return str(row.user_id)


@pytest.mark.parametrize("operation", [pytest.param(op, id=op.label) for op in OPERATIONS])
async def test_fuzz_operation(operation: APIOperation, gateway: TestServer, make_key: MakeKey, user_id: str) -> None:
    """Valid and invalid requests with a real key (an admin key where one is needed): never a 5xx."""
    key, _ = await make_key("fuzz-admin" if needs_admin(operation) else "fuzz-user", admin=needs_admin(operation))
    base_url = str(gateway.make_url(""))
    await asyncio.to_thread(
        run_cases, operation, modes_for(operation), base_url, key=key, user_id=user_id, max_examples=MAX_EXAMPLES
    )


REFUSALS = [
    *(pytest.param(op, "user key", 403, id=f"{op.label}-user key") for op in OPERATIONS if needs_admin(op)),
    *(pytest.param(op, "no key", 401, id=f"{op.label}-no key") for op in OPERATIONS if is_secured(op)),
]


@pytest.mark.parametrize(("operation", "caller", "status"), REFUSALS)
async def test_fuzz_refusal(
    operation: APIOperation, caller: str, status: int, gateway: TestServer, make_key: MakeKey, user_id: str
) -> None:
    """Valid requests without a key get 401, and a user key where an admin key is needed 403, in the route's shape."""
    key = (await make_key("fuzz-user"))[0] if caller == "user key" else None
    base_url = str(gateway.make_url(""))
    await asyncio.to_thread(
        run_cases,
        operation,
        (GenerationMode.POSITIVE,),
        base_url,
        key=key,
        user_id=user_id,
        max_examples=SMOKE_EXAMPLES,
        expect_status=status,
    )


# --- the document and the routes -----------------------------------------------------------------


def served_routes(app: web.Application) -> set[tuple[str, str]]:
    # aiohttp adds a HEAD route beside every GET; only HEAD / is part of the contract (Claude Code probes it).
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
        and (route.method != "HEAD" or route.resource.canonical == "/")
        and route.method != "*"  # a model path's 405 for any other method (gateway/edge.py), no operation
        and not route.resource.canonical.startswith("/console")  # the web console: HTML pages, not the API
    }


def test_the_document_is_valid_openapi() -> None:
    SCHEMA.validate()  # against the OpenAPI 3.1 meta-schema; the error names the offending path


def test_every_route_is_documented_and_every_documented_operation_is_served() -> None:
    app = build_app(gateway_config("http://127.0.0.1:9"))
    documented = {(op.method.upper(), op.path) for op in OPERATIONS}
    served = served_routes(app)
    assert served - documented == set(), "routes missing from the OpenAPI document"
    assert documented - served == set(), "operations in the OpenAPI document that no route serves"


@pytest.mark.parametrize("route", [pytest.param(r, id=f"{r.method} {r.path}") for r in ROUTES])
def test_every_management_route_declares_its_input_and_is_documented_from_it(route: Route) -> None:
    """A route's body and query come from its declared models (a route that reads one declares it), and the
    document's operation states them and the route's roles."""
    takes_body = route.method in ("POST", "PUT", "PATCH")
    assert (route.body is not None) is takes_body, f"{route.method} {route.path}: declare its body model"
    assert (route.query is not None) is (route.handler.__name__ in PAGED), f"{route.path}: declare its query model"
    operation = openapi.document()["paths"][route.path][route.method.lower()]
    assert operation["x-roles"] == sorted(role.value for role in route.roles)
    schemas = openapi.document()["components"]["schemas"]
    if route.body is not None:
        ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        documented = schemas[ref.rsplit("/", 1)[1]]
        assert set(documented["properties"]) == {f.alias or n for n, f in route.body.model_fields.items()}
        assert documented["additionalProperties"] is False
    else:
        assert "requestBody" not in operation
    query = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
    declared = {f.alias or n for n, f in route.query.model_fields.items()} if route.query else set()
    assert query == declared


PAGED = {"usage_history", "dlp_findings", "audit"}  # the handlers that read a query string


async def test_openapi_json_is_served_without_a_key(gateway: TestServer) -> None:
    async with aiohttp.ClientSession() as session, session.get(gateway.make_url("/openapi.json")) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert await resp.json() == openapi.document()
