"""Console sign-in through OpenID Connect: authorization code with PKCE (S256), `state` and `nonce` checked.

GET /console/sso/start makes a state, a nonce and a PKCE verifier, seals them (Fernet, the session cookie's key)
into a short-lived cookie of their own, and sends the browser to the issuer. That cookie is SameSite=Lax, not
Strict like the session's: the issuer's redirect back is a cross-site navigation, on which a browser sends Lax
cookies only. GET /console/sso/callback refuses a missing or foreign flow, a `state` that is not the one sent
(a forged callback: CSRF on the sign-in), and an ID token whose nonce, issuer, audience, expiry or signature is
wrong; then it starts a console session as /console/sign-in does, holding the person's role and team. It answers
with a page that moves on to the console itself: the session cookie is SameSite=Strict, and a redirect chain that
began at the issuer would not carry it.
"""

from __future__ import annotations

import hmac
import secrets

import aiohttp_jinja2
import aiohttp_session
import orjson
from aiohttp import web
from cryptography.fernet import Fernet, InvalidToken

from gateway import db
from gateway.app_keys import RUNTIME
from gateway.composition import SERVICES
from gateway.console.session import SIGN_IN, CookieSessions, _hash, csrf_token, landing_page
from gateway.error_shape import ErrorShape
from gateway.errors import GatewayError
from gateway.sso.people import PeopleSignIn, identity_of, key_of, pkce_pair, team_of

FLOW_COOKIE = "gateway_sso_flow"
FLOW_PATH = "/console/sso"
FLOW_MAX_AGE_S = 600  # a sign-in at the issuer must finish within ten minutes
COOKIE_SESSIONS = web.AppKey("console_cookie_sessions", CookieSessions)


def _people(request: web.Request) -> PeopleSignIn:
    people = request.config_dict[SERVICES].sign_ins.people
    if people is None:
        raise web.HTTPNotFound(text="single sign-on is not configured (the sso: section of gateway.yaml)")
    return people


def _fernet(request: web.Request) -> Fernet:
    fernet = request.config_dict[COOKIE_SESSIONS].fernet
    assert fernet is not None, "CookieSessions.start() runs at startup"
    return fernet


async def _refused(request: web.Request, message: str, status: int) -> web.StreamResponse:
    """The sign-in page again, saying why; the flow cookie is dropped (a new attempt starts a new flow)."""
    session = await aiohttp_session.get_session(request)
    context = {"csrf": csrf_token(session), "error": f"Single sign-on failed: {message}"}
    response = aiohttp_jinja2.render_template("sign_in.html", request, context, status=status)
    response.del_cookie(FLOW_COOKIE, path=FLOW_PATH)
    return response


async def sso_start(request: web.Request) -> web.StreamResponse:
    """GET /console/sso/start: off to the issuer, with a fresh state, nonce and PKCE challenge."""
    people = _people(request)
    state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    verifier, challenge = pkce_pair()
    try:
        url = await people.authorization_url(state, nonce, challenge)
    except GatewayError as err:  # the issuer's discovery document is unreachable
        return await _refused(request, err.message, err.status_for(ErrorShape.OPENAI))
    sealed = _fernet(request).encrypt(orjson.dumps({"state": state, "nonce": nonce, "verifier": verifier}))
    response = web.HTTPSeeOther(url)
    tls = request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"
    response.set_cookie(
        FLOW_COOKIE, sealed.decode(), max_age=FLOW_MAX_AGE_S, path=FLOW_PATH, httponly=True, samesite="Lax", secure=tls
    )
    raise response


def _flow(request: web.Request) -> dict[str, str] | None:
    """The flow this browser started here (None: no cookie, a forged or an expired one)."""
    sealed = request.cookies.get(FLOW_COOKIE)
    if not sealed:
        return None
    try:
        flow = orjson.loads(_fernet(request).decrypt(sealed.encode(), ttl=FLOW_MAX_AGE_S))
    except (InvalidToken, orjson.JSONDecodeError):
        return None
    return (
        flow
        if isinstance(flow, dict) and all(isinstance(flow.get(k), str) for k in ("state", "nonce", "verifier"))
        else None
    )


async def sso_callback(request: web.Request) -> web.StreamResponse:
    """GET /console/sso/callback?code=...&state=...: check, exchange, map, and start the console session."""
    people = _people(request)
    flow, query = _flow(request), request.query
    if flow is None:
        return await _refused(request, "this sign-in was not started from this browser, or took too long", 400)
    if "error" in query:
        return await _refused(
            request, f"the identity provider said {query.get('error_description') or query['error']}", 401
        )
    state, code = query.get("state", ""), query.get("code", "")
    if not hmac.compare_digest(state.encode(), flow["state"].encode()):
        return await _refused(request, "the state parameter is not the one this sign-in sent", 400)
    pool = request.config_dict[SERVICES].pool
    try:
        claims = await people.claims_for_code(code, flow["verifier"], flow["nonce"])
        person = identity_of(people.cfg, claims)
        await team_of(pool, person.role, person.team)  # a team_admin without a live team is refused here
    except GatewayError as err:
        return await _refused(request, err.message, err.status_for(ErrorShape.OPENAI))
    row = await key_of(pool, person)
    sid = secrets.token_urlsafe(32)
    max_age = min(request.config_dict[RUNTIME].config.console.session_max_age_s, people.cfg.session_max_age_s)
    sso = db.SsoSession(person.subject, person.role.value, person.team)
    await db.start_console_session(pool, _hash(sid), row.id, max_age, sso=sso)
    session = await aiohttp_session.new_session(request)  # a new cookie on sign-in: no fixation
    session["sid"], session["sso"] = sid, True
    csrf_token(session)
    target = landing_page(person.role)
    response = aiohttp_jinja2.render_template("signed_in.html", request, {"target": target, "who": None})
    response.del_cookie(FLOW_COOKIE, path=FLOW_PATH)
    return response


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/sso/start", sso_start)
    router.add_get("/sso/callback", sso_callback)


__all__ = ["COOKIE_SESSIONS", "SIGN_IN", "add_routes"]
