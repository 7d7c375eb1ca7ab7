-- Gateway keys. The plaintext key is never stored: `lookup_id` is its public part (one indexed lookup),
-- `key_hash` the bcrypt hash of the whole key.
CREATE TABLE api_keys (
    id           bigserial PRIMARY KEY,
    lookup_id    text        NOT NULL UNIQUE,
    key_hash     text        NOT NULL,
    name         text        NOT NULL,
    is_admin     boolean     NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
