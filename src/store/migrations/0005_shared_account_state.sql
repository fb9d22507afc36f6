-- Plan windows and the conversation -> account map shared by replicas (issue 25): the
-- newest windows any replica observed per account, and which account answered a
-- conversation so far (a digest of the tenant and the messages; no text), so a follow-up
-- on another replica stays on it. Map rows older than a day are purged.
CREATE TABLE account_windows (
    account TEXT NOT NULL PRIMARY KEY,
    observed_at BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE conversation_accounts (
    fingerprint TEXT NOT NULL PRIMARY KEY,
    account TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX conversation_accounts_updated ON conversation_accounts (updated_at);
