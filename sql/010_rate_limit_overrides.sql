-- Per-key and per-user rate limits set through the management API (/v1/rate-limits); a NULL field means
-- "the default from gateway.yaml's rate_limits section", 0 means "no limit of this kind".
CREATE TABLE IF NOT EXISTS rate_limit_overrides (
    scope               text        NOT NULL CHECK (scope IN ('key', 'user')),
    scope_id            text        NOT NULL,           -- api_keys.id or users.id
    requests_per_minute integer     CHECK (requests_per_minute >= 0),
    tokens_per_minute   integer     CHECK (tokens_per_minute >= 0),
    in_flight           integer     CHECK (in_flight >= 0),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, scope_id)
);
