"""Who may do what on the management API and the console: roles, and the acting identity.

Roles attach to people (single sign-on identities) and to management keys (issue 21):

- `admin`: everything.
- `team_admin`: the users and limits of their own team, within the team's budget; nothing else.
- `viewer`: reads usage and audit everywhere; changes nothing.
- `user`: their own usage, and regenerating their own key.
"""

from __future__ import annotations

import enum
from collections.abc import Set
from dataclasses import dataclass
from uuid import UUID


class Role(enum.StrEnum):
    ADMIN = "admin"
    TEAM_ADMIN = "team_admin"
    VIEWER = "viewer"
    USER = "user"


@dataclass(frozen=True, slots=True)
class Actor:
    """The identity acting on the management API or the console, as audit entries name it.

    `subject` is stable and human-readable: `key:<api_keys.id>` for a management key, `sso:<email or sub>` for a
    person signed in through OpenID Connect, `env:GATEWAY_ADMIN_KEY` for the environment's admin key.
    `team_id` is the team a `team_admin` administers (and, for anyone, the team they belong to, if any);
    `user_id` is the gateway user this identity is, when it is one.
    """

    subject: str
    role: Role
    team_id: int | None = None
    user_id: UUID | None = None
    key_id: int | None = None  # the api_keys row it acted with, when it is a key (audit rows keep the link)

    def may(self, allowed: Set[Role]) -> bool:
        """Whether this identity's role is one of `allowed` (an endpoint's or a page's declared roles)."""
        return self.role in allowed

    def manages_team(self, team_id: int | None) -> bool:
        """Whether it may change the users and limits of `team_id`: an admin any, a team_admin only its own."""
        return self.role is Role.ADMIN or (
            self.role is Role.TEAM_ADMIN and team_id is not None and team_id == self.team_id
        )

    def reads_team(self, team_id: int | None) -> bool:
        """Whether it may read `team_id`'s users and usage: admin and viewer all, a team_admin its own."""
        return self.role is Role.VIEWER or self.manages_team(team_id)


# What an endpoint or a page declares it needs (gateway/management.py, gateway/console/__init__.py).
ADMIN_ONLY: frozenset[Role] = frozenset({Role.ADMIN})
MANAGERS: frozenset[Role] = frozenset({Role.ADMIN, Role.TEAM_ADMIN})  # a team_admin within its own team
READERS: frozenset[Role] = frozenset({Role.ADMIN, Role.VIEWER})  # usage and audit everywhere
TEAM_READERS: frozenset[Role] = frozenset({Role.ADMIN, Role.VIEWER, Role.TEAM_ADMIN})  # a team_admin: its team
USER_ONLY: frozenset[Role] = frozenset({Role.USER})  # a user's own key (regenerate it)
ANYONE: frozenset[Role] = frozenset(Role)
