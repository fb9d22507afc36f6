-- The usage ledger: one row per API request (issue 23).
CREATE TABLE usage_ledger (
    at BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    key_name TEXT NOT NULL,
    model TEXT NOT NULL,
    served_model TEXT NOT NULL,
    account TEXT NOT NULL,
    api TEXT NOT NULL,
    streamed BIGINT NOT NULL,
    status BIGINT NOT NULL,
    kind TEXT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cache_read_tokens BIGINT NOT NULL,
    cache_creation_tokens BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    ttft_ms BIGINT,
    round TEXT
);
CREATE INDEX usage_ledger_at ON usage_ledger (at);
