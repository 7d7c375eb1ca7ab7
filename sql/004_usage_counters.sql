-- Month-to-date usage per user and per key, updated in the same transaction that stores usage rows, by
-- increments (no read-modify-write), so budget checks never sum the whole usage table.
CREATE TABLE usage_counters (
    scope        text    NOT NULL CHECK (scope IN ('user', 'key')),
    scope_id     text    NOT NULL,                 -- users.id or api_keys.id
    month        date    NOT NULL,                 -- first day of the UTC calendar month
    tokens       bigint  NOT NULL DEFAULT 0,
    cost_usd     numeric(18, 8) NOT NULL DEFAULT 0,
    requests     bigint  NOT NULL DEFAULT 0,
    unpriced     bigint  NOT NULL DEFAULT 0,       -- requests whose cost is unknown (no price for the model)
    PRIMARY KEY (month, scope, scope_id)
);
