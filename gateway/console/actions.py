"""The console's management actions (POST, CSRF-checked by the `page` guard), each audited with the acting identity.

Which role may post each is declared in the console's page table (gateway/console/__init__.py); a team_admin acts
only on the users of its own team (403 for any other) and never raises a limit above its team's.

They do what the management API does (gateway/admin.py) and evict the same caches, so a change takes effect at
once on this process and within `auth.cache_ttl_s` on the others. A new key is shown once, in the answer to the
POST itself (never in a URL, never stored), with ready-made client settings.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
from uuid import UUID

import aiohttp_jinja2
import aiohttp_session
import asyncpg
from aiohttp import web

from gateway import db
from gateway.app_keys import RUNTIME
from gateway.composition import SERVICES, Services
from gateway.console.pages import user_id_of
from gateway.console.session import Form, Visitor
from gateway.keys import KEY_PREFIX, claudecode_hmac, generate_key
from gateway.roles import Role

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_INCREMENT = 10**15
# Bidi embeddings, overrides and isolates: they make a name read backwards on every page that shows it.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class FormError(web.HTTPBadRequest):
    """A form field is missing or malformed; the message names it."""


def _field(form: Form, name: str, *, max_len: int = 200, required: bool = True) -> str:
    value = form.get(name, "")
    if not isinstance(value, str):
        raise FormError(text=f"'{name}' must be text")
    value = value.strip()
    if required and not value:
        raise FormError(text=f"'{name}' is required")
    if len(value) > max_len:
        raise FormError(text=f"'{name}' is longer than {max_len} characters")
    if "\x00" in value:  # PostgreSQL text cannot hold NUL
        raise FormError(text=f"'{name}' must not contain NUL characters")
    # Line breaks and escapes (ESC sequences reach the terminal of whoever runs `gateway keys list`), bidi tricks.
    if any(unicodedata.category(c) == "Cc" or c in BIDI_CONTROLS for c in value):
        raise FormError(text=f"'{name}' must not contain control characters (line breaks, escapes, bidi overrides)")
    return value


async def _flash(request: web.Request, message: str) -> None:
    (await aiohttp_session.get_session(request))["flash"] = message


def base_url(request: web.Request) -> str:
    """The gateway's address as the browser reached it (behind a TLS proxy: https)."""
    scheme = "https" if request.headers.get("X-Forwarded-Proto", "").lower() == "https" else request.scheme
    return f"{scheme}://{request.host}"


def _new_key(rounds: int) -> tuple[str, str, str]:
    new = generate_key(rounds)
    return new.plaintext, new.lookup_id, new.key_hash


def _shown(request: web.Request, who: Visitor, title: str, key: str, email: str | None) -> web.StreamResponse:
    context = {"who": who, "title": title, "key": key, "email": email, "base_url": base_url(request)}
    return aiohttp_jinja2.render_template("key_shown.html", request, context, status=201)


async def create_user(request: web.Request, who: Visitor) -> web.StreamResponse:
    """POST /console/users: a user and their first key (shown once); the Claude Code token is optional."""
    svc, cfg = request.config_dict[SERVICES], request.config_dict[RUNTIME].config
    form = await request.post()
    email = _field(form, "email", max_len=254)
    if not EMAIL.match(email):
        raise FormError(text=f"'email' is not an email address: {email!r}")
    token = _field(form, "claudecode_token", max_len=4096, required=False)
    if token and (token.startswith(KEY_PREFIX) or len(token) < 8):
        raise FormError(text="the Claude Code token must be the user's own token (8+ characters), not a gateway key")
    plaintext, lookup_id, key_hash = await asyncio.to_thread(_new_key, cfg.auth.bcrypt_rounds)
    try:
        await db.create_user(
            svc.pool,
            email=email,
            firstname=_field(form, "firstname"),
            lastname=_field(form, "lastname"),
            claudecode_hmac=claudecode_hmac(svc.claudecode_tokens.secret, token) if token else None,
            key=(lookup_id, key_hash),
            actor=who.actor,
            team_id=who.actor.team_id if who.actor.role is Role.TEAM_ADMIN else None,
        )
    except db.Conflict as exc:
        raise web.HTTPConflict(text=str(exc)) from None
    if token:
        svc.claudecode_tokens.evict_all_unknown()  # the token may have been refused a moment ago
    return _shown(request, who, f"User {email} created", plaintext, email)


async def regenerate(request: web.Request, who: Visitor) -> web.StreamResponse:
    """POST /console/users/{id}/regenerate: a new key (shown once), the old one refused; the reason is audited."""
    svc, cfg = request.config_dict[SERVICES], request.config_dict[RUNTIME].config
    user_id = await _managed_user(request, who)
    reason = _field(await request.post(), "reason", max_len=500)
    plaintext = ""

    async def new_key() -> tuple[str, str]:  # made while the user's row is locked: one regenerate at a time
        nonlocal plaintext
        plaintext, lookup_id, key_hash = await asyncio.to_thread(_new_key, cfg.auth.bcrypt_rounds)
        return lookup_id, key_hash

    try:
        done = await db.regenerate_user_key(svc.pool, user_id, new_key=new_key, reason=reason, actor=who.actor)
    except db.Conflict as exc:
        raise web.HTTPConflict(text=str(exc)) from None
    if done is None:
        raise web.HTTPNotFound(text="no such user")
    found, _, old_key_id = done
    _evict_user(svc, user_id, old_key_id)
    return _shown(request, who, f"New key for {found.email}", plaintext, found.email)


async def _managed_user(request: web.Request, who: Visitor) -> UUID:
    """The user in the path, when `who` may manage them (a team_admin: its own team's); 404 / 403 otherwise."""
    user_id = user_id_of(request)
    found = await db.get_user(request.config_dict[SERVICES].pool, user_id)
    if found is None:
        raise web.HTTPNotFound(text="no such user")
    if not who.actor.manages_team(found.team_id):
        raise web.HTTPForbidden(text="a team admin manages the users of their own team only")
    return user_id


def _evict_user(svc: Services, user_id: UUID, *key_ids: int | None) -> None:
    for key_id in key_ids:
        if key_id is not None:
            svc.key_cache.evict_key(key_id)
    svc.claudecode_tokens.evict_user(user_id)
    svc.key_cache.evict_user(user_id)
    if svc.sign_ins.callers is not None:  # caller JWTs remembered with the user's Principal
        svc.sign_ins.callers.evict_user(user_id)


async def raise_limit(request: web.Request, who: Visitor) -> web.StreamResponse:
    """POST /console/users/{id}/limit: add `increment` tokens to the user's monthly limit."""
    svc, cfg = request.config_dict[SERVICES], request.config_dict[RUNTIME].config
    user_id = await _managed_user(request, who)
    raw = _field(await request.post(), "increment", max_len=20).replace(",", "").replace("_", "")
    if not raw.isascii() or not raw.isdigit() or not 0 < int(raw) <= MAX_INCREMENT:
        raise FormError(text=f"'increment' must be a whole number of tokens from 1 to {MAX_INCREMENT:,}")
    try:
        new_limit = await db.increase_token_limit(
            svc.pool,
            user_id,
            int(raw),
            default_limit=cfg.budgets.monthly_token_limit,
            actor=who.actor,
            within_team_limit=who.actor.role is not Role.ADMIN,
        )
    except db.AboveTeamLimit as exc:
        raise web.HTTPForbidden(text=f"a team admin cannot raise a limit above the team's: {exc}") from None
    except asyncpg.NumericValueOutOfRangeError:
        raise FormError(text="the new limit would exceed the largest storable limit") from None
    if new_limit is None:
        raise web.HTTPNotFound(text="no such user")
    _evict_user(svc, user_id)  # cached principals carry the old limit
    await _flash(request, f"Monthly token limit raised to {new_limit:,}.")
    raise web.HTTPSeeOther(f"/console/users/{user_id}")


async def delete_user(request: web.Request, who: Visitor) -> web.StreamResponse:
    """POST /console/users/{id}/delete: revoke the user's keys and free their Claude Code token."""
    svc = request.config_dict[SERVICES]
    user_id = await _managed_user(request, who)
    revoked = await db.delete_user(svc.pool, user_id, actor=who.actor)
    if revoked is None:
        raise web.HTTPNotFound(text="no such user")
    _evict_user(svc, user_id, *revoked)
    await _flash(request, "User deleted; their key no longer works.")
    raise web.HTTPSeeOther("/console/users")


async def create_key(request: web.Request, who: Visitor) -> web.StreamResponse:
    """POST /console/keys: an admin or service key that belongs to no user (shown once)."""
    svc, cfg = request.config_dict[SERVICES], request.config_dict[RUNTIME].config
    form = await request.post()
    name = _field(form, "name", max_len=100)
    if name.lower().startswith("sso:"):  # SSO identities' key rows are named so (sql/015_sso.sql)
        raise FormError(text="a key's name must not start with 'sso:': such names are single sign-on identities'")
    is_admin = form.get("admin") == "on"
    plaintext, lookup_id, key_hash = await asyncio.to_thread(_new_key, cfg.auth.bcrypt_rounds)
    await db.create_service_key(
        svc.pool, lookup_id=lookup_id, key_hash=key_hash, name=name, is_admin=is_admin, actor=who.actor
    )
    return _shown(request, who, f"{'Admin' if is_admin else 'Service'} key {name!r} created", plaintext, None)


async def revoke_key(request: web.Request, who: Visitor) -> web.StreamResponse:
    """POST /console/keys/{id}/revoke: refused at once here, within auth.cache_ttl_s elsewhere."""
    svc = request.config_dict[SERVICES]
    raw = request.match_info["id"]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise web.HTTPNotFound(text="no such key")
    reason = _field(await request.post(), "reason", max_len=500, required=False) or None
    if int(raw) == who.key_id:
        raise FormError(text="this is the key you are signed in with: sign in with another admin key to revoke it")
    if not await db.revoke_service_key(svc.pool, int(raw), reason=reason, actor=who.actor):
        raise web.HTTPNotFound(text="no such key, or it belongs to a user (regenerate or delete the user instead)")
    svc.key_cache.evict_key(int(raw))
    await _flash(request, "Key revoked.")
    raise web.HTTPSeeOther("/console/keys")
