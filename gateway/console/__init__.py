"""The web console at /console: usage to look at, users and keys to manage, for admins; each user's own month.

A sub-application, so its middlewares (sessions, error pages, security headers) run on /console only and the
API's request path pays nothing for it. Off with `console.enabled: false`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import aiohttp_session
import jinja2
import structlog
from aiohttp import web

from gateway import db
from gateway.app_keys import REQUEST_ID
from gateway.composition import SERVICES
from gateway.config import GatewayConfig
from gateway.console import actions, pages, sso
from gateway.console.session import VISITOR, CookieSessions, Page, page, sign_in, sign_in_form, sign_out
from gateway.edge import add_request_id, edge, error_edge
from gateway.roles import ADMIN_ONLY, ANYONE, MANAGERS, READERS, TEAM_READERS, Role

log = structlog.get_logger("gateway")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STATIC = Path(__file__).with_name("static")

# Scripts only from the gateway itself (one small file of ours); inline styles for pygal's SVG.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "Cache-Control": "no-store",  # pages can show a new key once; no copy may stay in a cache
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@web.middleware
async def error_pages(request: web.Request, handler: Handler) -> web.StreamResponse:
    """HTTP errors as console pages (redirects pass through), every answer with the security headers."""
    try:
        response = await handler(request)
    except db.UNAVAILABLE:  # asyncpg.PostgresConnectionError among them
        context = {"status": 503, "reason": "Service Unavailable", "who": request.get(VISITOR)}
        context["message"] = "The gateway cannot reach its database right now; try again in a moment."
        response = aiohttp_jinja2.render_template("error.html", request, context, status=503)
    except web.HTTPException as exc:
        if exc.status < 400:
            exc.headers.update(SECURITY_HEADERS)
            raise
        context = {
            "status": exc.status,
            "reason": exc.reason,
            "message": exc.text or exc.reason,
            "who": request.get(VISITOR),
        }
        response = aiohttp_jinja2.render_template("error.html", request, context, status=exc.status)
    except Exception:  # a bug of ours: logged whole, and still a page that may not be framed or cached
        log.exception("unhandled_error", request_id=request.get(REQUEST_ID), path=request.path)
        context = {"status": 500, "reason": "Internal Server Error", "who": request.get(VISITOR)}
        context["message"] = "Something went wrong in the gateway; the gateway's log has the details."
        response = aiohttp_jinja2.render_template("error.html", request, context, status=500)
    response.headers.update(SECURITY_HEADERS)
    return response


async def _template_globals(request: web.Request) -> dict[str, Any]:
    session = await aiohttp_session.get_session(request)
    sso_on = request.config_dict[SERVICES].sign_ins.people is not None  # "Sign in with SSO" on the sign-in page
    return {"flash": session.pop("flash", None), "path": request.path, "who": None, "sso": sso_on}


def _money(value: Any) -> str:
    return "—" if value is None else f"${Decimal(value):,.2f}"


def _number(value: Any) -> str:
    return "—" if value is None else f"{int(value):,}"


def _when(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True, slots=True)
class ConsolePage:
    method: str
    path: str  # under /console
    handler: Page
    roles: frozenset[Role]  # who may open (or post) it; a team_admin only for its own team's users


# Every signed-in page, with the roles it admits (tests/test_roles.py checks each page for every role).
PAGES: tuple[ConsolePage, ...] = (
    ConsolePage("GET", "/", pages.overview, READERS),
    ConsolePage("GET", "/users", pages.users, TEAM_READERS),
    ConsolePage("POST", "/users", actions.create_user, MANAGERS),
    ConsolePage("GET", "/users/{id}", pages.user, TEAM_READERS),
    ConsolePage("POST", "/users/{id}/regenerate", actions.regenerate, MANAGERS),
    ConsolePage("POST", "/users/{id}/limit", actions.raise_limit, MANAGERS),
    ConsolePage("POST", "/users/{id}/delete", actions.delete_user, MANAGERS),
    ConsolePage("GET", "/teams", pages.teams, TEAM_READERS),
    ConsolePage("GET", "/keys", pages.keys, ADMIN_ONLY),
    ConsolePage("POST", "/keys", actions.create_key, ADMIN_ONLY),
    ConsolePage("POST", "/keys/{id}/revoke", actions.revoke_key, ADMIN_ONLY),
    ConsolePage("GET", "/audit", pages.audit, READERS),
    ConsolePage("GET", "/config", pages.config, ADMIN_ONLY),
    ConsolePage("GET", "/me", pages.me, ANYONE),
)


def build_console(cfg: GatewayConfig, parent: web.Application) -> web.Application:
    """The /console sub-application; its session secret is read (or made) when the gateway starts."""
    sessions = CookieSessions(cfg.console)
    # error_edge first: the request id and the last word on a bug, as on every route but the model routes
    console = web.Application(middlewares=[error_edge, sessions.middleware(), error_pages])
    console.on_response_prepare.append(add_request_id)
    console[pages.CLOSED_DAYS] = pages.ClosedDays()
    console[sso.COOKIE_SESSIONS] = sessions
    aiohttp_jinja2.setup(
        console,
        loader=jinja2.PackageLoader("gateway.console", "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
        context_processors=[_template_globals],
        filters={"money": _money, "number": _number, "when": _when},
    )

    async def start(_: web.Application) -> None:
        await sessions.start(parent[SERVICES].pool)

    console.on_startup.append(start)
    r = console.router
    r.add_get("/sign-in", sign_in_form)
    r.add_post("/sign-in", sign_in)
    r.add_post("/sign-out", sign_out)
    sso.add_routes(r)
    for p in PAGES:
        guarded = page(p.roles)(p.handler)
        if p.method == "GET":
            r.add_get(p.path, guarded)  # HEAD too
        else:
            r.add_route(p.method, p.path, guarded)
    r.add_static("/static", STATIC)
    return console


def add_routes(app: web.Application, cfg: GatewayConfig) -> None:
    """Serve the console under /console unless `console.enabled` is false."""
    if not cfg.console.enabled:
        return

    async def to_console(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently("/console/")

    app.router.add_get("/console", edge(to_console))
    app.add_subapp("/console", build_console(cfg, app))
