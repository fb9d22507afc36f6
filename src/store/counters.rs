//! Per-key limit counters in the store, so replicas enforce a key's limits together:
//! requests and tokens per UTC minute, tokens per UTC day, and requests running at once
//! (one lease row per running request, with an expiry so a replica that dies does not
//! hold its slots). The same fixed windows as the per-replica limiter (`limits`), which
//! stays the fallback when the store does not answer in time.
//!
//! Each check is a few short statements; the request counter is one conditional upsert
//! (`ON CONFLICT … DO UPDATE … WHERE … RETURNING`), so two replicas cannot both take the
//! last request of a minute.

use sqlx::Row;

use super::{as_i64, sql, Store, StoreError};

/// A key's limits as the store checks them (None: no such limit).
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyLimits {
    pub concurrent: Option<u64>,
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub tokens_per_day: Option<u64>,
}

/// What the cluster has used of a key's windows (after this request, when admitted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyUsage {
    pub requests_minute: u64,
    pub tokens_minute: u64,
    pub tokens_day: u64,
}

/// The store's verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Admitted(KeyUsage),
    /// `concurrent`, `requests_per_minute`, `tokens_per_minute` or `tokens_per_day`.
    Refused(&'static str),
}

fn windows(now: i64) -> (i64, i64) {
    (now.div_euclid(60) * 60, now.div_euclid(86_400) * 86_400)
}

fn max_or_unbounded(v: Option<u64>) -> i64 {
    v.map(as_i64).unwrap_or(i64::MAX)
}

impl Store {
    /// Admits a request of `key` at `now` against the cluster's counters. With a
    /// concurrency limit, `lease` (unique per request) holds a slot until
    /// [`Store::release_lease`] or `lease_until` (Unix seconds).
    pub async fn admit_key(
        &self,
        key: &str,
        limits: KeyLimits,
        lease: &str,
        lease_until: i64,
        now: i64,
    ) -> Result<Admission, StoreError> {
        let what = "check a key's limits";
        let (minute, day) = windows(now);
        let tokens_day: i64 = sqlx::query(
            "SELECT tokens FROM key_counters WHERE key_name = $1 AND win = 'day' AND start_at = $2",
        )
        .bind(key)
        .bind(day)
        .fetch_optional(&self.pool)
        .await
        .map_err(sql(what))?
        .map(|r| r.try_get(0))
        .transpose()
        .map_err(sql(what))?
        .unwrap_or(0);
        if tokens_day >= max_or_unbounded(limits.tokens_per_day) {
            return Ok(Admission::Refused("tokens_per_day"));
        }
        if let Some(max) = limits.concurrent {
            sqlx::query("INSERT INTO key_leases (lease, key_name, expires_at) VALUES ($1, $2, $3)")
                .bind(lease)
                .bind(key)
                .bind(lease_until)
                .execute(&self.pool)
                .await
                .map_err(sql(what))?;
            let running: i64 = sqlx::query(
                "SELECT CAST(COUNT(*) AS BIGINT) FROM key_leases WHERE key_name = $1 AND expires_at > $2",
            )
            .bind(key)
            .bind(now)
            .fetch_one(&self.pool)
            .await
            .map_err(sql(what))?
            .try_get(0)
            .map_err(sql(what))?;
            if running > as_i64(max) {
                self.release_lease(lease).await?;
                return Ok(Admission::Refused("concurrent"));
            }
        }
        let row = sqlx::query(
            "INSERT INTO key_counters (key_name, win, start_at, requests, tokens) \
             VALUES ($1, 'minute', $2, 1, 0) \
             ON CONFLICT (key_name, win, start_at) DO UPDATE SET requests = key_counters.requests + 1 \
             WHERE key_counters.requests < $3 AND key_counters.tokens < $4 \
             RETURNING requests, tokens",
        )
        .bind(key)
        .bind(minute)
        .bind(max_or_unbounded(limits.requests_per_minute))
        .bind(max_or_unbounded(limits.tokens_per_minute))
        .fetch_optional(&self.pool)
        .await
        .map_err(sql(what))?;
        let Some(row) = row else {
            if limits.concurrent.is_some() {
                self.release_lease(lease).await?;
            }
            // Which of the two: read the minute's row.
            let r = sqlx::query(
                "SELECT requests FROM key_counters WHERE key_name = $1 AND win = 'minute' AND start_at = $2",
            )
            .bind(key)
            .bind(minute)
            .fetch_one(&self.pool)
            .await
            .map_err(sql(what))?;
            let requests: i64 = r.try_get(0).map_err(sql(what))?;
            return Ok(Admission::Refused(
                if requests >= max_or_unbounded(limits.requests_per_minute) {
                    "requests_per_minute"
                } else {
                    "tokens_per_minute"
                },
            ));
        };
        let requests: i64 = row.try_get(0).map_err(sql(what))?;
        let tokens: i64 = row.try_get(1).map_err(sql(what))?;
        Ok(Admission::Admitted(KeyUsage {
            requests_minute: requests.max(0) as u64,
            tokens_minute: tokens.max(0) as u64,
            tokens_day: tokens_day.max(0) as u64,
        }))
    }

    /// Gives a running request's concurrency slot back.
    pub async fn release_lease(&self, lease: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM key_leases WHERE lease = $1")
            .bind(lease)
            .execute(&self.pool)
            .await
            .map_err(sql("release a key's slot"))?;
        Ok(())
    }

    /// Counts the tokens an answer of `key` reported at `now` in its minute and day.
    pub async fn add_key_tokens(&self, key: &str, tokens: u64, now: i64) -> Result<(), StoreError> {
        let (minute, day) = windows(now);
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(sql("count a key's tokens"))?;
        for (win, start) in [("minute", minute), ("day", day)] {
            sqlx::query(
                "INSERT INTO key_counters (key_name, win, start_at, requests, tokens) \
                 VALUES ($1, $2, $3, 0, $4) \
                 ON CONFLICT (key_name, win, start_at) DO UPDATE SET tokens = key_counters.tokens + excluded.tokens",
            )
            .bind(key)
            .bind(win)
            .bind(start)
            .bind(as_i64(tokens))
            .execute(&mut *tx)
            .await
            .map_err(sql("count a key's tokens"))?;
        }
        tx.commit().await.map_err(sql("count a key's tokens"))
    }

    /// Deletes counters of windows that ended and leases that expired before `now`.
    pub async fn purge_counters(&self, now: i64) -> Result<(), StoreError> {
        let (_, day) = windows(now);
        sqlx::query("DELETE FROM key_counters WHERE start_at < $1")
            .bind(day - 86_400)
            .execute(&self.pool)
            .await
            .map_err(sql("purge key counters"))?;
        sqlx::query("DELETE FROM key_leases WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(sql("purge key leases"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counters_refuse_past_each_limit_and_leases_free_slots() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("c.db")).await.unwrap();
        let l = KeyLimits {
            requests_per_minute: Some(2),
            ..KeyLimits::default()
        };
        let now = 6_000;
        let a = store.admit_key("k", l, "l1", now + 60, now).await.unwrap();
        assert_eq!(
            a,
            Admission::Admitted(KeyUsage {
                requests_minute: 1,
                ..KeyUsage::default()
            })
        );
        store.admit_key("k", l, "l2", now + 60, now).await.unwrap();
        assert_eq!(
            store.admit_key("k", l, "l3", now, now).await.unwrap(),
            Admission::Refused("requests_per_minute")
        );
        // The next minute has room; other keys are apart.
        assert!(matches!(
            store
                .admit_key("k", l, "l4", now + 120, now + 60)
                .await
                .unwrap(),
            Admission::Admitted(_)
        ));
        assert!(matches!(
            store
                .admit_key("other", l, "l5", now + 60, now)
                .await
                .unwrap(),
            Admission::Admitted(_)
        ));
        // Tokens: the day's count refuses once reached.
        let t = KeyLimits {
            tokens_per_day: Some(100),
            tokens_per_minute: Some(50),
            ..KeyLimits::default()
        };
        store.add_key_tokens("t", 60, now).await.unwrap();
        assert_eq!(
            store.admit_key("t", t, "l6", now + 60, now).await.unwrap(),
            Admission::Refused("tokens_per_minute")
        );
        store.add_key_tokens("t", 40, now + 60).await.unwrap();
        assert_eq!(
            store
                .admit_key("t", t, "l7", now + 200, now + 120)
                .await
                .unwrap(),
            Admission::Refused("tokens_per_day")
        );
        // Concurrency: a slot per lease until released or expired.
        let c = KeyLimits {
            concurrent: Some(1),
            ..KeyLimits::default()
        };
        assert!(matches!(
            store.admit_key("c", c, "c1", now + 600, now).await.unwrap(),
            Admission::Admitted(_)
        ));
        assert_eq!(
            store.admit_key("c", c, "c2", now + 600, now).await.unwrap(),
            Admission::Refused("concurrent")
        );
        store.release_lease("c1").await.unwrap();
        assert!(matches!(
            store.admit_key("c", c, "c3", now + 5, now).await.unwrap(),
            Admission::Admitted(_)
        ));
        // c3 expired: its slot is free without a release.
        assert!(matches!(
            store
                .admit_key("c", c, "c4", now + 600, now + 10)
                .await
                .unwrap(),
            Admission::Admitted(_)
        ));
        store.purge_counters(now + 3 * 86_400).await.unwrap();
    }
}
