-- Teams, roles on management keys, the team on every usage row, and the acting identity on every audit row
-- (issue 21).

-- A team: a name and monthly limits (NULL: no team limit of that kind). Deleted teams are kept (deleted_at), so
-- usage rows and audit entries that name them still read; the name is free again for a new team.
CREATE TABLE teams (
    id            bigserial      PRIMARY KEY,
    name          text           NOT NULL,
    limit_tokens  bigint         CHECK (limit_tokens >= 0),
    limit_usd     numeric(14, 4) CHECK (limit_usd >= 0),
    created_at    timestamptz    NOT NULL DEFAULT now(),
    updated_at    timestamptz    NOT NULL DEFAULT now(),
    deleted_at    timestamptz
);
CREATE UNIQUE INDEX teams_name_live ON teams (lower(name)) WHERE deleted_at IS NULL;

-- A user belongs to at most one team.
ALTER TABLE users ADD COLUMN team_id bigint REFERENCES teams (id);
CREATE INDEX users_team ON users (team_id) WHERE team_id IS NOT NULL AND deleted_at IS NULL;

-- Management keys carry a role; a team_admin key names its team. NULL role: a user's key or a service key.
ALTER TABLE api_keys
    ADD COLUMN role    text   CHECK (role IN ('admin', 'team_admin', 'viewer')),
    ADD COLUMN team_id bigint REFERENCES teams (id),
    ADD CONSTRAINT api_keys_team_admin_has_team CHECK ((role = 'team_admin') = (team_id IS NOT NULL));
UPDATE api_keys SET role = 'admin' WHERE is_admin;

-- The team the request was made for, as it was at that moment: a user moving to another team takes none of
-- the month's history along. Added to the partitioned table, so every partition gets it.
ALTER TABLE usage_log ADD COLUMN team_id bigint;
CREATE INDEX usage_log_team_time ON usage_log (team_id, created_at) WHERE team_id IS NOT NULL;

-- Month-to-date counters per team, beside those per user and per key.
ALTER TABLE usage_counters DROP CONSTRAINT usage_counters_scope_check;
ALTER TABLE usage_counters ADD CONSTRAINT usage_counters_scope_check CHECK (scope IN ('user', 'key', 'team'));

-- Who did it: roles.Actor.subject (key:<id>, sso:<email>, env:GATEWAY_ADMIN_KEY). actor_key_id stays for keys.
ALTER TABLE key_audit ADD COLUMN actor text;
ALTER TABLE gateway_audit
    ADD COLUMN actor   text,
    ADD COLUMN team_id bigint REFERENCES teams (id),
    ADD COLUMN target  text;                             -- what else it was done to (rate-limit:user:<id>, ...)
UPDATE key_audit SET actor = 'key:' || actor_key_id WHERE actor_key_id IS NOT NULL;
UPDATE gateway_audit SET actor = 'key:' || actor_key_id WHERE actor_key_id IS NOT NULL;

CREATE OR REPLACE VIEW audit_trail AS
SELECT 'user:' || a.id AS id, a.created_at, a.action, a.reason, a.actor_key_id, a.user_id,
       coalesce(a.new_key_id, a.old_key_id) AS target_key_id, a.actor, NULL::bigint AS team_id, NULL::text AS target
FROM key_audit a
UNION ALL
SELECT 'key:' || g.id, g.created_at, g.action, g.reason, g.actor_key_id, NULL::uuid, g.target_key_id, g.actor,
       g.team_id, g.target
FROM gateway_audit g;
