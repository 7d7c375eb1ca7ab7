-- Data-loss prevention findings: what kind of sensitive value a request held, where, and what the gateway did.
-- Never the value itself: a findings table must not become the place the secrets leak from.
CREATE TABLE dlp_findings (
    id           bigserial   PRIMARY KEY,
    created_at   timestamptz NOT NULL DEFAULT now(),
    request_id   text        NOT NULL,
    key_id       bigint      REFERENCES api_keys (id),
    user_id      uuid,
    route        text        NOT NULL,                 -- messages | count_tokens | chat_completions | responses
    alias        text        NOT NULL,                 -- the model the caller asked for
    detector     text        NOT NULL,                 -- e.g. aws_access_key, email, national_id_de
    action       text        NOT NULL CHECK (action IN ('block', 'redact', 'audit')),
    location     text        NOT NULL,                 -- e.g. messages[3].content[1], input[0].content[0]
    occurrences  integer     NOT NULL DEFAULT 1
);
CREATE INDEX dlp_findings_time ON dlp_findings (created_at);
CREATE INDEX dlp_findings_user_time ON dlp_findings (user_id, created_at) WHERE user_id IS NOT NULL;
