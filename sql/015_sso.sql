-- Single sign-on (issue 21). A console session started through OpenID Connect records who signed in and the role
-- and team their claims mapped to; the key it points at is the person's own gateway key (their email is a
-- gateway user's) or their SSO identity's key, a row in api_keys named 'sso:<subject>' whose secret was thrown
-- away at creation: it cannot authenticate, but gives the person's actions an actor_key_id in the audit trail.
ALTER TABLE console_sessions
    ADD COLUMN sso_subject text,
    ADD COLUMN sso_role    text,
    ADD COLUMN sso_team    text;

CREATE UNIQUE INDEX api_keys_sso_identity ON api_keys (name)
    WHERE user_id IS NULL AND revoked_at IS NULL AND name LIKE 'sso:%';
