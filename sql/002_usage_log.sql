-- One row per request that reached the routing stage. Written in batches by the usage flusher; `id` is
-- made in the gateway process so a batch replayed after a failure is never counted twice.
CREATE TABLE usage_log (
    id                  uuid        PRIMARY KEY,
    created_at          timestamptz NOT NULL,
    request_id          text        NOT NULL,
    key_id              bigint      NOT NULL REFERENCES api_keys (id),
    route               text        NOT NULL,           -- messages | chat_completions
    alias               text        NOT NULL,           -- what the caller asked for
    provider            text        NOT NULL,
    provider_model      text        NOT NULL,
    status              integer     NOT NULL,           -- HTTP status sent to the caller (499: client went away)
    input_tokens        integer     NOT NULL DEFAULT 0,
    output_tokens       integer     NOT NULL DEFAULT 0,
    cache_read_tokens   integer     NOT NULL DEFAULT 0,
    cache_write_tokens  integer     NOT NULL DEFAULT 0,
    cost_usd            numeric(16, 8),                 -- NULL: the model has no price in gateway.yaml
    latency_ms          real        NOT NULL,
    ttfb_ms             real,
    streamed            boolean     NOT NULL
);
CREATE INDEX usage_log_key_time ON usage_log (key_id, created_at);
CREATE INDEX usage_log_time ON usage_log (created_at);
