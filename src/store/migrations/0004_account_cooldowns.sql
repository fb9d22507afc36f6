-- Account cooldowns shared by replicas (issue 25): the latest reset one replica's
-- verdict (a usage limit, …) took an account out until, so every replica skips it.
CREATE TABLE account_cooldowns (
    account TEXT NOT NULL PRIMARY KEY,
    until_at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
