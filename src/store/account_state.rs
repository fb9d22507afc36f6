//! Account state replicas share besides cooldowns: each account's newest plan windows
//! (the JSON of what a replica observed, with when) and the conversation → account map
//! (a conversation's fingerprint, a digest, → the account that answered it), so a
//! follow-up that lands on another replica runs on the same account.

use sqlx::Row;

use super::{sql, Store, StoreError};

/// How long a conversation's account is remembered in the store.
pub const CONVERSATION_ACCOUNT_TTL: i64 = 86_400;

/// One account's plan windows as a replica observed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedWindows {
    pub account: String,
    /// Unix seconds.
    pub observed_at: i64,
    /// The windows as JSON (`protocol::PlanWindows`).
    pub body: String,
}

impl Store {
    /// Writes an account's windows (kept only if observed later than the stored ones).
    pub async fn put_windows(&self, w: &SharedWindows) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO account_windows (account, observed_at, body) VALUES ($1, $2, $3) \
             ON CONFLICT (account) DO UPDATE SET observed_at = excluded.observed_at, \
             body = excluded.body WHERE excluded.observed_at > account_windows.observed_at",
        )
        .bind(&w.account)
        .bind(w.observed_at)
        .bind(&w.body)
        .execute(&self.pool)
        .await
        .map_err(sql("share plan windows"))?;
        Ok(())
    }

    /// Every account's newest windows (one row per account name ever observed).
    pub async fn shared_windows(&self) -> Result<Vec<SharedWindows>, StoreError> {
        let rows = sqlx::query("SELECT account, observed_at, body FROM account_windows")
            .fetch_all(&self.pool)
            .await
            .map_err(sql("read plan windows"))?;
        rows.iter()
            .map(|r| {
                Ok(SharedWindows {
                    account: r.try_get(0).map_err(sql("read plan windows"))?,
                    observed_at: r.try_get(1).map_err(sql("read plan windows"))?,
                    body: r.try_get(2).map_err(sql("read plan windows"))?,
                })
            })
            .collect()
    }

    /// Remembers that `account` answered the conversation `fingerprint` (hex) at `now`.
    pub async fn put_conversation_account(
        &self,
        fingerprint: &str,
        account: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO conversation_accounts (fingerprint, account, updated_at) \
             VALUES ($1, $2, $3) ON CONFLICT (fingerprint) DO UPDATE SET \
             account = excluded.account, updated_at = excluded.updated_at",
        )
        .bind(fingerprint)
        .bind(account)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(sql("share a conversation's account"))?;
        Ok(())
    }

    /// The account that answered `fingerprint` within [`CONVERSATION_ACCOUNT_TTL`].
    pub async fn conversation_account(
        &self,
        fingerprint: &str,
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT account FROM conversation_accounts WHERE fingerprint = $1 AND updated_at > $2",
        )
        .bind(fingerprint)
        .bind(now - CONVERSATION_ACCOUNT_TTL)
        .fetch_optional(&self.pool)
        .await
        .map_err(sql("read a conversation's account"))?;
        row.map(|r| r.try_get(0).map_err(sql("read a conversation's account")))
            .transpose()
    }

    /// Deletes map rows older than [`CONVERSATION_ACCOUNT_TTL`] (the hourly purge).
    pub async fn purge_conversation_accounts(&self, now: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM conversation_accounts WHERE updated_at <= $1")
            .bind(now - CONVERSATION_ACCOUNT_TTL)
            .execute(&self.pool)
            .await
            .map_err(sql("purge the conversation map"))?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn newer_windows_win_and_the_map_expires() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("a.db")).await.unwrap();
        let w = |at, body: &str| SharedWindows {
            account: "a".into(),
            observed_at: at,
            body: body.into(),
        };
        store.put_windows(&w(200, "new")).await.unwrap();
        store.put_windows(&w(100, "old")).await.unwrap();
        assert_eq!(store.shared_windows().await.unwrap(), [w(200, "new")]);

        store
            .put_conversation_account("ff", "b", 1_000)
            .await
            .unwrap();
        assert_eq!(
            store.conversation_account("ff", 1_001).await.unwrap(),
            Some("b".into())
        );
        assert_eq!(store.conversation_account("ee", 1_001).await.unwrap(), None);
        let later = 1_000 + CONVERSATION_ACCOUNT_TTL;
        assert_eq!(store.conversation_account("ff", later).await.unwrap(), None);
        assert_eq!(store.purge_conversation_accounts(later).await.unwrap(), 1);
    }
}
