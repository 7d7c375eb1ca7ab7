"""Who may do what on the management API and the console: roles, and the acting identity.

Roles attach to people (single sign-on identities) and to management keys (issue 21):

- `admin`: everything.
- `team_admin`: the users and limits of their own team, within the team's budget; nothing else.
- `viewer`: reads usage and audit everywhere; changes nothing.
- `user`: their own usage, and regenerating their own key.
"""

from __future__ import annotations

import enum
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
