"""Console sign-in: an admin (or user) key exchanged once for an encrypted session cookie, CSRF tokens, guards.

The key is posted once in a form, checked by the same auth stages as any API call (throttle included), and never
stored: the cookie (encrypted and signed with Fernet by aiohttp-session, HttpOnly, SameSite=Strict, Secure over
TLS) holds a random session id whose SHA-256 is a row in console_sessions, ending `console.session_max_age_s` after
sign-in. Every page reads that row with its key, so signing out, a revoked key or a deleted user ends the session
at once, and a copied cookie is worthless after any of them. Every form carries the session's CSRF token; a POST without
it gets 403 (SameSite=Strict already keeps other sites' forms from sending the cookie; the token is the second
lock, and the only one for browsers without SameSite).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Mapping, Set
from dataclasses import dataclass
from typing import cast
from uuid import UUID

import aiohttp_jinja2
import aiohttp_session
import asyncpg
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.typedefs import Handler, Middleware
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography.fernet import Fernet
from multidict import CIMultiDict, MultiDictProxy

from gateway import db
from gateway.app_keys import RUNTIME
from gateway.composition import SERVICES
from gateway.config import ConsoleConfig
from gateway.error_shape import ErrorShape
from gateway.errors import Forbidden, GatewayError
from gateway.keys import Principal
from gateway.roles import Actor, Role
from gateway.sso.people import team_of

COOKIE = "gateway_console"
SIGN_IN = "/console/sign-in"
MAX_FORM_BYTES = 64 * 1024
FORWARDING = ("X-Forwarded-For", "Forwarded")  # what gateway.client_address reads behind a trusted proxy
SECRET_SETTING = "console_session_secret"  # gateway_settings row: one secret for every worker and replica


@dataclass(frozen=True, slots=True)
class Visitor:
    """Who is signed in: the key's id and what it may do (read from the database on every page)."""

    key_id: int
    name: str
    is_admin: bool
    user_id: UUID | None
    csrf: str
    actor: Actor  # the role (and a team_admin's team) pages check, and the identity audit rows name


VISITOR = web.RequestKey("console_visitor", Visitor)
Form = MultiDictProxy[str | bytes | bytearray | web.FileField]  # what request.post() returns
Page = Callable[[web.Request, Visitor], Awaitable[web.StreamResponse]]


class CookieSessions:
    """The cookie storages, made at startup once the secret is known (it may live in the database)."""

    def __init__(self, cfg: ConsoleConfig) -> None:
        self._cfg = cfg
        self._plain: EncryptedCookieStorage | None = None
        self._tls: EncryptedCookieStorage | None = None
        self.fernet: Fernet | None = None  # also seals the single sign-on flow's cookie (gateway/console/sso.py)

    async def start(self, pool: asyncpg.Pool) -> None:
        secret = self._cfg.session_secret or await db.setting(pool, SECRET_SETTING, secrets.token_hex(32))
        self.fernet = fernet = Fernet(base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest()))
        self._plain, self._tls = self._storage(fernet, secure=False), self._storage(fernet, secure=True)

    def _storage(self, fernet: Fernet, *, secure: bool) -> EncryptedCookieStorage:
        return EncryptedCookieStorage(
            fernet,
            cookie_name=COOKIE,
            max_age=self._cfg.session_max_age_s,
            path="/console",
            secure=secure,
            httponly=True,
            samesite="Strict",
        )

    def storage_for(self, request: web.Request) -> EncryptedCookieStorage:
        assert self._plain is not None and self._tls is not None, "CookieSessions.start() runs at startup"
        mode = self._cfg.secure_cookie
        # Behind a TLS proxy the gateway sees plain HTTP; the proxy's X-Forwarded-Proto tells. A forged header
        # only makes the forger's own cookie Secure.
        tls = request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"
        return self._tls if mode == "true" or (mode == "auto" and tls) else self._plain

    def middleware(self) -> Middleware:
        @web.middleware
        async def sessions(request: web.Request, handler: Handler) -> web.StreamResponse:
            return await aiohttp_session.session_middleware(self.storage_for(request))(request, handler)

        return sessions


def csrf_token(session: aiohttp_session.Session) -> str:
    """The session's CSRF token, made on first use."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return str(session["csrf"])


async def check_csrf(request: web.Request, session: aiohttp_session.Session) -> Form:
    """The posted form, once its `csrf` field matches the session's token; 403 otherwise (413 for a huge body).

    Console forms are small, and sign-in is open to anyone: a body over MAX_FORM_BYTES is refused before it is read.
    """
    if request.content_length is None or request.content_length > MAX_FORM_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_FORM_BYTES, actual_size=request.content_length or 0)
    try:
        form = await request.post()
    # No multipart boundary, broken part headers, bytes that are not UTF-8, an unknown charset.
    except (ValueError, LookupError, BadHttpMessage) as exc:
        raise web.HTTPBadRequest(text=f"the form could not be read: {exc}") from None
    sent = form.get("csrf")
    expected = session.get("csrf")
    # As bytes: compare_digest refuses str with non-ASCII characters (TypeError), and a forged token may have them.
    if not isinstance(sent, str) or not expected or not hmac.compare_digest(sent.encode(), str(expected).encode()):
        raise web.HTTPForbidden(text="CSRF token missing or wrong: reload the page and try again")
    return form


async def visitor(request: web.Request) -> Visitor | None:
    """The signed-in visitor, or None (no session, an expired one, or its key revoked since)."""
    session = await aiohttp_session.get_session(request)
    sid = session.get("sid")
    if not isinstance(sid, str):
        return None
    pool = request.config_dict[SERVICES].pool
    row = await db.console_session_key(pool, _hash(sid))
    if row is None:
        session.invalidate()
        return None
    if session.get("sso") and (person := await db.console_session_sso(pool, _hash(sid))) is not None:
        try:
            team = await team_of(pool, Role(person.role), person.team)
        except Forbidden:  # a team_admin whose team is gone: signed out; signing in again says why
            session.invalidate()
            return None
        actor = Actor(person.subject, Role(person.role), team, row.user_id, key_id=row.id)
        return Visitor(row.id, person.subject, actor.role is Role.ADMIN, row.user_id, csrf_token(session), actor)
    return Visitor(row.id, row.name, row.is_admin, row.user_id, csrf_token(session), Principal.from_row(row).actor)


def page(roles: Set[Role]) -> Callable[[Page], Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    """Guard a console handler: no session -> the sign-in page; a POST needs the CSRF token; a role not in `roles`
    gets 403. The roles come from the console's page table (gateway/console/__init__.py)."""

    def wrap(handler: Page) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def guarded(request: web.Request) -> web.StreamResponse:
            who = await visitor(request)
            if who is None:
                raise web.HTTPSeeOther(SIGN_IN)
            if request.method == "POST":
                await check_csrf(request, await aiohttp_session.get_session(request))
            if not who.actor.may(roles):
                others = sorted(r.value for r in roles if r is not Role.ADMIN)
                context = {"who": who, "others": others}
                return aiohttp_jinja2.render_template("forbidden.html", request, context, status=403)
            request[VISITOR] = who
            return await handler(request, who)

        return guarded

    return wrap


def landing_page(role: Role) -> str:
    """Where a person lands after signing in: the first page their role may open (the overview for those who read
    everything, a team_admin's users, anyone else their own page)."""
    if role in (Role.ADMIN, Role.VIEWER):
        return "/console/"
    return "/console/users" if role is Role.TEAM_ADMIN else "/console/me"


async def sign_in_form(request: web.Request) -> web.StreamResponse:
    """GET /console/sign-in: the form (already signed in: straight to the console)."""
    if (who := await visitor(request)) is not None:
        raise web.HTTPSeeOther(landing_page(who.actor.role))
    session = await aiohttp_session.get_session(request)
    return aiohttp_jinja2.render_template("sign_in.html", request, {"csrf": csrf_token(session), "error": None})


async def sign_in(request: web.Request) -> web.StreamResponse:
    """POST /console/sign-in: check the key as the API would, then start a fresh session holding its id."""
    session = await aiohttp_session.get_session(request)
    form = await check_csrf(request, session)
    key = form.get("key")
    try:
        principal = await _authenticate(request, key.strip() if isinstance(key, str) else "")
    except GatewayError as err:
        context = {"csrf": csrf_token(session), "error": err.message}
        return aiohttp_jinja2.render_template(
            "sign_in.html", request, context, status=err.status_for(ErrorShape.OPENAI)
        )
    sid = secrets.token_urlsafe(32)
    max_age = request.config_dict[RUNTIME].config.console.session_max_age_s
    await db.start_console_session(request.config_dict[SERVICES].pool, _hash(sid), principal.key_id, max_age)
    session = await aiohttp_session.new_session(request)  # a new cookie on sign-in: no fixation
    session["sid"] = sid
    csrf_token(session)
    raise web.HTTPSeeOther(landing_page(principal.actor.role))


@dataclass(frozen=True, slots=True)
class _PostedKey:
    """What the auth stages read of a request (its address and headers), with the posted key as the header.

    A stand-in, because aiohttp cannot clone a request whose body (the form) was read.
    """

    remote: str | None
    headers: CIMultiDict[str]
    forwarded: tuple[Mapping[str, str], ...]


async def _authenticate(request: web.Request, key: str) -> Principal:
    """The auth stages (throttle, bcrypt once, Claude Code token mapping) run on the posted key as a header.

    The forwarding headers come along: behind a trusted proxy the throttle counts guesses per client, as on the
    API, not per proxy (where one guesser would lock every admin out of the console).
    """
    headers = CIMultiDict((name, value) for name in FORWARDING for value in request.headers.getall(name, ()))
    headers["Authorization"] = f"Bearer {key}"
    stand_in = _PostedKey(request.remote, headers, request.forwarded)
    principal: Principal = await request.config_dict[RUNTIME].authenticate(cast(web.Request, stand_in))
    return principal


async def sign_out(request: web.Request) -> web.StreamResponse:
    """POST /console/sign-out: forget the session (CSRF-checked, so no other site can sign anyone out)."""
    session = await aiohttp_session.get_session(request)
    await check_csrf(request, session)
    sid = session.get("sid")
    session.invalidate()  # first: with the database away this browser still forgets the cookie (the page is a 503)
    if isinstance(sid, str):
        await db.end_console_session(request.config_dict[SERVICES].pool, _hash(sid))
    raise web.HTTPSeeOther(SIGN_IN)


def _hash(sid: str) -> bytes:
    return hashlib.sha256(sid.encode()).digest()
