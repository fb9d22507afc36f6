//! Account cooldowns in the store: one replica's verdict that an account is out until a
//! reset (a usage limit, …) is written here, and every replica reads the cooldowns still
//! running on a short poll (`state.poll_interval`), so none rediscovers it with a failed
//! request. A later reset replaces an earlier one, never the other way.

use sqlx::Row;

use super::{as_i64, sql, Store, StoreError};

/// A cooldown as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedCooldown {
    pub account: String,
    /// Unix seconds.
    pub until: u64,
    pub kind: String,
    /// The verdict's (redacted) message, as the status shows it.
    pub message: String,
}

impl Store {
    /// Writes a cooldown (kept only if it ends later than the stored one).
    pub async fn put_cooldown(&self, c: &SharedCooldown, now: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO account_cooldowns (account, until_at, kind, message, updated_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (account) DO UPDATE SET until_at = excluded.until_at, \
             kind = excluded.kind, message = excluded.message, updated_at = excluded.updated_at \
             WHERE excluded.until_at > account_cooldowns.until_at",
        )
        .bind(&c.account)
        .bind(as_i64(c.until))
        .bind(&c.kind)
        .bind(&c.message)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(sql("share a cooldown"))?;
        Ok(())
    }

    /// The cooldowns running at `now`.
    pub async fn active_cooldowns(&self, now: i64) -> Result<Vec<SharedCooldown>, StoreError> {
        let rows = sqlx::query(
            "SELECT account, until_at, kind, message FROM account_cooldowns WHERE until_at > $1",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(sql("read cooldowns"))?;
        rows.iter()
            .map(|r| {
                let until: i64 = r.try_get(1).map_err(sql("read cooldowns"))?;
                Ok(SharedCooldown {
                    account: r.try_get(0).map_err(sql("read cooldowns"))?,
                    until: until.max(0) as u64,
                    kind: r.try_get(2).map_err(sql("read cooldowns"))?,
                    message: r.try_get(3).map_err(sql("read cooldowns"))?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn later_cooldowns_win_and_ended_ones_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("c.db")).await.unwrap();
        let c = |until| SharedCooldown {
            account: "a".into(),
            until,
            kind: "usage_limit".into(),
            message: "m".into(),
        };
        store.put_cooldown(&c(200), 100).await.unwrap();
        store.put_cooldown(&c(150), 100).await.unwrap();
        assert_eq!(store.active_cooldowns(100).await.unwrap(), [c(200)]);
        store.put_cooldown(&c(300), 100).await.unwrap();
        assert_eq!(store.active_cooldowns(250).await.unwrap(), [c(300)]);
        assert!(store.active_cooldowns(300).await.unwrap().is_empty());
    }
}
