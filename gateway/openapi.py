"""The OpenAPI 3.1 document served at /openapi.json, built once when the app is built.

Two sources, merged:

- `gateway/openapi_static.json`: what is not declared in code: the model routes' shapes (the providers' wire
  formats: /v1/messages, /v1/chat/completions, /v1/responses, /v1/models), the probes, /v1/me*, and each
  management operation's summary, path parameters and answers.
- gateway/management.py's `ROUTES` with the models of gateway/management_schemas.py: every management
  operation's `x-roles`, request body and query parameters. Their limits are written only in those models, so
  the document cannot drift from what the handlers accept. A route missing from the static file still appears,
  with the answers every management operation has.

tests/test_openapi_fuzz.py checks that the document and the served routes match, and fuzzes every operation.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import orjson

from gateway.management import ROUTES, Route
from gateway.management_schemas import Body, Days, Query

STATIC = Path(__file__).with_name("openapi_static.json")
REF = "#/components/schemas/{model}"
_PLAIN_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/PlainError"}}}
_ANSWERS = {  # every management operation's refusals, unless the static file words them for the operation
    "400": "Invalid body, field or query parameter; the message names it.",
    "401": "No key, or an unknown or revoked key.",
    "403": "The key's role does not admit this endpoint (see x-roles), or a team_admin key acting outside its team.",
    "413": "Body over `server.max_body_bytes`.",
    "415": "Content-Type is not application/json.",
    "429": "Too many failed authentications from this address; retry after Retry-After seconds.",
    "503": "The gateway is at its concurrency limit, or its database is unreachable; retry shortly.",
}


@functools.cache
def document() -> dict[str, Any]:
    """The whole document, built on the first call (callers must not change it)."""
    doc: dict[str, Any] = orjson.loads(STATIC.read_bytes())
    schemas = doc["components"]["schemas"]
    for route in ROUTES:
        operation = doc["paths"].setdefault(route.path, {}).setdefault(route.method.lower(), _new_operation(route))
        _declare(operation, route, schemas)
    my_usage = doc["paths"]["/v1/me/usage"]["get"]  # gateway/me.py: the one self-service query
    my_usage["parameters"] = _worded_as(my_usage.get("parameters", []), query_parameters(Days))
    return doc


def _worded_as(static: list[dict[str, Any]], declared: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The declared parameters, each with the static file's description where it has one (me.py's defaults)."""
    words = {p["name"]: p["description"] for p in static if "description" in p}
    return [p | ({"description": words[p["name"]]} if p["name"] in words else {}) for p in declared]


def _new_operation(route: Route) -> dict[str, Any]:
    summary = (route.handler.__doc__ or route.handler.__name__).strip().splitlines()[0]
    return {
        "operationId": route.handler.__name__,
        "tags": ["management"],
        "summary": summary,
        "security": [{"ApiKeyHeader": []}, {"Bearer": []}],
        "responses": {"200": {"description": "Done.", "content": {"application/json": {"schema": {}}}}},
    }


def _declare(operation: dict[str, Any], route: Route, schemas: dict[str, Any]) -> None:
    """Add the route's roles, body and query to its operation, and the standard refusals it can answer."""
    operation["x-roles"] = sorted(role.value for role in route.roles)
    refusals = ["401", "403", "429", "503"]
    if route.body is not None:
        operation["requestBody"] = _request_body(route.body, schemas)
        refusals += ["400", "413", "415"]
    if route.query is not None:
        operation["parameters"] = [*operation.get("parameters", []), *query_parameters(route.query)]
        refusals.append("400")
    responses = operation["responses"]
    for status in refusals:
        responses.setdefault(status, {"description": _ANSWERS[status], "content": _PLAIN_ERROR})


def _request_body(model: type[Body], schemas: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=REF)
    schemas.update({name: _untitled(s) for name, s in schema.pop("$defs", {}).items()})
    schemas[model.__name__] = _untitled(schema)
    content = {"application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}}
    return {"required": not model.empty_ok, "content": content}


def query_parameters(model: type[Query]) -> list[dict[str, Any]]:
    """A query model as OpenAPI parameters: `?limit=` is absent or a value, never null (null branches dropped)."""
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", ()))
    parameters = []
    for name, field in _untitled(schema)["properties"].items():
        if "default" in field and field["default"] is None:  # absent means none: nothing to show
            del field["default"]
        description = field.pop("description", None)
        parameter = {"name": name, "in": "query", "required": name in required, "schema": _non_null(field)}
        parameters.append(parameter | ({"description": description} if description else {}))
    return parameters


def _non_null(schema: dict[str, Any]) -> dict[str, Any]:
    """`{"anyOf": [{"type": "string", "format": "date"}, {"type": "null"}]}` -> `{"type": "string", ...}`."""
    options = [s for s in schema.get("anyOf", ()) if s != {"type": "null"}]
    if len(options) != 1:
        return schema
    rest = {k: v for k, v in schema.items() if k != "anyOf"}
    return {**options[0], **rest}


def _untitled(schema: Any) -> Any:
    """The schema without pydantic's generated `title`s ("Teamid"): noise in a document read by people."""
    if isinstance(schema, list):
        return [_untitled(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _untitled(v) for k, v in schema.items() if k not in ("title", "properties")}
    if "properties" in schema:
        out["properties"] = {name: _untitled(s) for name, s in schema["properties"].items()}
    return out


def served_bytes() -> bytes:
    """The document as the body of GET /openapi.json."""
    return orjson.dumps(document())
