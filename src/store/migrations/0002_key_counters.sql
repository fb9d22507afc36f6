-- Per-key limit counters shared by replicas (issue 25): one row per key, window
-- (`minute`, `day`) and the window's start (Unix seconds); and one lease per request
-- running under a key with a concurrency limit, expiring on its own if its replica dies.
CREATE TABLE key_counters (
    key_name TEXT NOT NULL,
    win TEXT NOT NULL,
    start_at BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    tokens BIGINT NOT NULL,
    PRIMARY KEY (key_name, win, start_at)
);
CREATE TABLE key_leases (
    lease TEXT NOT NULL PRIMARY KEY,
    key_name TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX key_leases_key ON key_leases (key_name, expires_at);
