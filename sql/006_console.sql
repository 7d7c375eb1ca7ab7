-- The console's reading tables. usage_daily holds one row per UTC day, key, route, alias and provider model,
-- incremented in the same transaction that stores usage rows (db.insert_usage), so console pages sum a few
-- thousand rollup rows instead of millions of usage_log rows. The key decides the user (a key belongs to one
-- user for life), so user_id is carried along, not part of the key; NULL for admin and service keys.
CREATE TABLE usage_daily (
    day                 date    NOT NULL,
    key_id              bigint  NOT NULL,
    user_id             uuid,
    route               text    NOT NULL,
    alias               text    NOT NULL,
    provider_model      text    NOT NULL,
    requests            bigint  NOT NULL DEFAULT 0,
    errors              bigint  NOT NULL DEFAULT 0,        -- status >= 400 (499: the client went away)
    input_tokens        bigint  NOT NULL DEFAULT 0,
    output_tokens       bigint  NOT NULL DEFAULT 0,
    cache_read_tokens   bigint  NOT NULL DEFAULT 0,
    cache_write_tokens  bigint  NOT NULL DEFAULT 0,
    cost_usd            numeric(18, 8) NOT NULL DEFAULT 0, -- priced rows only
    unpriced            bigint  NOT NULL DEFAULT 0,        -- rows whose cost is unknown (no price for the model)
    estimated           bigint  NOT NULL DEFAULT 0,        -- rows whose usage was estimated (usage_estimated)
    PRIMARY KEY (day, key_id, route, alias, provider_model)
);
CREATE INDEX usage_daily_user_day ON usage_daily (user_id, day) WHERE user_id IS NOT NULL;
CREATE INDEX usage_daily_key_day ON usage_daily (key_id, day);

-- Latency per UTC day as a histogram (bucket = width_bucket(latency_ms, db.LATENCY_BOUNDS_MS)), so p50/p95 per
-- day come from a few dozen rows.
CREATE TABLE usage_latency_daily (
    day       date    NOT NULL,
    bucket    integer NOT NULL,
    requests  bigint  NOT NULL,
    PRIMARY KEY (day, bucket)
);

-- Management actions that have no user (gateway keys created or revoked from the console); user actions stay
-- in key_audit. The audit_trail view reads both.
CREATE TABLE gateway_audit (
    id            bigserial   PRIMARY KEY,
    action        text        NOT NULL,                   -- key_created | key_revoked
    reason        text,
    actor_key_id  bigint      REFERENCES api_keys (id),
    target_key_id bigint      REFERENCES api_keys (id),
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE VIEW audit_trail AS
SELECT 'user:' || a.id AS id, a.created_at, a.action, a.reason, a.actor_key_id, a.user_id,
       coalesce(a.new_key_id, a.old_key_id) AS target_key_id
FROM key_audit a
UNION ALL
SELECT 'key:' || g.id, g.created_at, g.action, g.reason, g.actor_key_id, NULL::uuid, g.target_key_id
FROM gateway_audit g;

-- Console sign-ins. The cookie carries a random session id (encrypted); only its SHA-256 is stored, and signing
-- out deletes the row, so a copied cookie is worthless after sign-out, expiry or the key's revocation.
CREATE TABLE console_sessions (
    id_hash     bytea       PRIMARY KEY,
    key_id      bigint      NOT NULL REFERENCES api_keys (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);

-- Rollups of the usage already stored before this migration. `usage_estimated` is counted where that column
-- exists (it comes with the billing-estimates migration); dynamic SQL, so this file runs either way.
DO $$
DECLARE
    estimated text := CASE WHEN EXISTS (
        SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'usage_log' AND column_name = 'usage_estimated'
    ) THEN 'count(*) FILTER (WHERE usage_estimated)' ELSE '0' END;
BEGIN
    EXECUTE format($sql$
        INSERT INTO usage_daily (day, key_id, user_id, route, alias, provider_model, requests, errors, input_tokens,
                                 output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, unpriced, estimated)
        SELECT (created_at AT TIME ZONE 'UTC')::date, key_id, max(user_id::text)::uuid, route, alias, provider_model,
               count(*), count(*) FILTER (WHERE status >= 400), sum(input_tokens), sum(output_tokens),
               sum(cache_read_tokens), sum(cache_write_tokens), coalesce(sum(cost_usd), 0),
               count(*) - count(cost_usd), %s
        FROM usage_log
        GROUP BY 1, 2, 4, 5, 6
    $sql$, estimated);
END $$;

INSERT INTO usage_latency_daily (day, bucket, requests)
SELECT (created_at AT TIME ZONE 'UTC')::date,
       width_bucket(latency_ms, ARRAY[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000,
                                      100000, 200000, 600000]::real[]),
       count(*)
FROM usage_log
GROUP BY 1, 2;
