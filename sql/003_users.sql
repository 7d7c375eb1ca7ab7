-- Users, their keys, the Claude Code token mapping, token limits and an audit trail of key changes.
CREATE TABLE users (
    id                  uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    email               text        NOT NULL,
    firstname           text        NOT NULL,
    lastname            text        NOT NULL,
    -- HMAC-SHA256(server secret, the token the user's Claude Code sends): found with one indexed lookup,
    -- never stored in plaintext. NULL once the user is deleted, so the token can be mapped again.
    claudecode_key_hmac bytea       UNIQUE,
    limit_tokens        bigint,                          -- monthly token limit; NULL: budgets.monthly_token_limit
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    deleted_at          timestamptz
);
CREATE UNIQUE INDEX users_email_live ON users (lower(email)) WHERE deleted_at IS NULL;

ALTER TABLE api_keys
    ADD COLUMN user_id           uuid REFERENCES users (id),
    ADD COLUMN monthly_limit_usd numeric(14, 4);          -- NULL: budgets.monthly_limit_usd
CREATE UNIQUE INDEX api_keys_one_live_per_user ON api_keys (user_id) WHERE user_id IS NOT NULL AND revoked_at IS NULL;

CREATE TABLE key_audit (
    id            bigserial   PRIMARY KEY,
    user_id       uuid        NOT NULL REFERENCES users (id),
    action        text        NOT NULL,                   -- created | regenerated | deleted | token_limit_increased
    reason        text,
    actor_key_id  bigint      REFERENCES api_keys (id),   -- the admin key that did it
    old_key_id    bigint      REFERENCES api_keys (id),
    new_key_id    bigint      REFERENCES api_keys (id),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX key_audit_user ON key_audit (user_id, created_at);

-- Values the gateway generates once and keeps (the mapping HMAC secret when none is configured).
CREATE TABLE gateway_settings (
    name   text PRIMARY KEY,
    value  text NOT NULL
);

ALTER TABLE usage_log ADD COLUMN user_id uuid;
CREATE INDEX usage_log_user_time ON usage_log (user_id, created_at) WHERE user_id IS NOT NULL;
