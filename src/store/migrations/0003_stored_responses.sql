-- Stored responses and threads shared by replicas (issue 25): what `previous_response_id`,
-- `item_reference` and a thread's `continue` name, per tenant (the API key's digest), as
-- the JSON the response store writes (used_at: Unix milliseconds); the output items
-- point at their response.
CREATE TABLE stored_responses (
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    used_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, kind, id)
);
CREATE INDEX stored_responses_used ON stored_responses (tenant, used_at);
CREATE TABLE stored_items (
    tenant TEXT NOT NULL,
    item_id TEXT NOT NULL,
    response_id TEXT NOT NULL,
    PRIMARY KEY (tenant, item_id)
);
