-- A ledger row may stand for several requests (issue 24 round 3): failures that used no
-- tokens and are alike in everything but their request id (a client retrying against a
-- closed health gate, a key over its limit, the same bad request) are counted in one row
-- per second, so a flood of refusals costs the store a row per second, not one per request.
ALTER TABLE usage_ledger ADD COLUMN requests BIGINT NOT NULL DEFAULT 1;
