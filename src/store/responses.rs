//! Stored responses and threads in the store, so a follow-up (`previous_response_id`,
//! `item_reference`, a thread's `continue`) finds them on any replica. The response
//! store (`response_store`) keeps its per-replica cache and writes through to here; the
//! body is its JSON, opaque to this module. The bounds are the cache's, over the whole
//! table: at most `max_entries` rows and `max_bytes` of bodies; past them the least
//! recently used row of the tenant holding the most goes first, and a row unused for
//! the idle timeout is not found (and purged).

use sqlx::Row;

use super::{as_i64, sql, Store, StoreError};

/// The table's bounds and the idle timeout (milliseconds: `used_at` is Unix ms, as
/// precise as the cache's timeout).
#[derive(Debug, Clone, Copy)]
pub struct StoredBounds {
    pub max_entries: u64,
    pub max_bytes: u64,
    pub idle_ms: i64,
}

/// One stored response or thread to write.
#[derive(Debug)]
pub struct StoredRow<'a> {
    pub tenant: &'a str,
    /// `response` or `thread`.
    pub kind: &'a str,
    pub id: &'a str,
    pub body: &'a str,
    pub bytes: u64,
    pub item_ids: &'a [String],
}

impl Store {
    /// Writes (or replaces) a stored response, then evicts past the bounds.
    pub async fn put_stored(
        &self,
        row: &StoredRow<'_>,
        bounds: StoredBounds,
        now: i64,
    ) -> Result<(), StoreError> {
        let what = "store a response";
        let mut tx = self.pool.begin().await.map_err(sql(what))?;
        sqlx::query(
            "INSERT INTO stored_responses (tenant, kind, id, body, bytes, used_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (tenant, kind, id) DO UPDATE SET body = excluded.body, \
             bytes = excluded.bytes, used_at = excluded.used_at",
        )
        .bind(row.tenant)
        .bind(row.kind)
        .bind(row.id)
        .bind(row.body)
        .bind(as_i64(row.bytes))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(sql(what))?;
        for item in row.item_ids {
            sqlx::query(
                "INSERT INTO stored_items (tenant, item_id, response_id) VALUES ($1, $2, $3) \
                 ON CONFLICT (tenant, item_id) DO UPDATE SET response_id = excluded.response_id",
            )
            .bind(row.tenant)
            .bind(item)
            .bind(row.id)
            .execute(&mut *tx)
            .await
            .map_err(sql(what))?;
        }
        tx.commit().await.map_err(sql(what))?;
        self.evict_stored(bounds, now).await
    }

    /// Deletes idle rows, then the least recently used row of the fullest tenant while
    /// the table is past a bound (a few rows per call: each write evicts for itself).
    async fn evict_stored(&self, bounds: StoredBounds, now: i64) -> Result<(), StoreError> {
        let what = "evict stored responses";
        sqlx::query("DELETE FROM stored_responses WHERE used_at < $1")
            .bind(now - bounds.idle_ms)
            .execute(&self.pool)
            .await
            .map_err(sql(what))?;
        for _ in 0..16 {
            let r = sqlx::query(
                "SELECT CAST(COUNT(*) AS BIGINT), CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM stored_responses",
            )
            .fetch_one(&self.pool)
            .await
            .map_err(sql(what))?;
            let (count, bytes): (i64, i64) = (
                r.try_get(0).map_err(sql(what))?,
                r.try_get(1).map_err(sql(what))?,
            );
            let by_count = count > as_i64(bounds.max_entries);
            if !by_count && bytes <= as_i64(bounds.max_bytes) {
                return Ok(());
            }
            let order = if by_count { "COUNT(*)" } else { "SUM(bytes)" };
            let fullest: String = sqlx::query(&format!(
                "SELECT tenant FROM stored_responses GROUP BY tenant ORDER BY {order} DESC LIMIT 1"
            ))
            .fetch_one(&self.pool)
            .await
            .map_err(sql(what))?
            .try_get(0)
            .map_err(sql(what))?;
            let oldest = sqlx::query(
                "SELECT kind, id FROM stored_responses WHERE tenant = $1 ORDER BY used_at LIMIT 1",
            )
            .bind(&fullest)
            .fetch_one(&self.pool)
            .await
            .map_err(sql(what))?;
            let (kind, id): (String, String) = (
                oldest.try_get(0).map_err(sql(what))?,
                oldest.try_get(1).map_err(sql(what))?,
            );
            sqlx::query("DELETE FROM stored_responses WHERE tenant = $1 AND kind = $2 AND id = $3")
                .bind(&fullest)
                .bind(&kind)
                .bind(&id)
                .execute(&self.pool)
                .await
                .map_err(sql(what))?;
            sqlx::query("DELETE FROM stored_items WHERE tenant = $1 AND response_id = $2")
                .bind(&fullest)
                .bind(&id)
                .execute(&self.pool)
                .await
                .map_err(sql(what))?;
        }
        Ok(())
    }

    /// The body of the `kind` row `id` of `tenant`, if stored and not idle (its use
    /// renews it).
    pub async fn get_stored(
        &self,
        tenant: &str,
        kind: &str,
        id: &str,
        bounds: StoredBounds,
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        let what = "read a stored response";
        let body: Option<String> = sqlx::query(
            "SELECT body FROM stored_responses WHERE tenant = $1 AND kind = $2 AND id = $3 AND used_at >= $4",
        )
        .bind(tenant)
        .bind(kind)
        .bind(id)
        .bind(now - bounds.idle_ms)
        .fetch_optional(&self.pool)
        .await
        .map_err(sql(what))?
        .map(|r| r.try_get(0))
        .transpose()
        .map_err(sql(what))?;
        if body.is_some() {
            sqlx::query(
                "UPDATE stored_responses SET used_at = $1 WHERE tenant = $2 AND kind = $3 AND id = $4",
            )
            .bind(now)
            .bind(tenant)
            .bind(kind)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(sql(what))?;
        }
        Ok(body)
    }

    /// The id of the stored response of `tenant` holding output item `item_id`.
    pub async fn stored_item_owner(
        &self,
        tenant: &str,
        item_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let what = "read a stored item";
        sqlx::query("SELECT response_id FROM stored_items WHERE tenant = $1 AND item_id = $2")
            .bind(tenant)
            .bind(item_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(sql(what))?
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(sql(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stored_rows_are_per_tenant_bounded_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("r.db")).await.unwrap();
        let bounds = StoredBounds {
            max_entries: 3,
            max_bytes: 1_000,
            idle_ms: 100_000,
        };
        let items = ["msg_1".to_string()];
        let put = |tenant: &'static str, id: &'static str, now: i64| {
            let store = store.clone();
            let items = items.clone();
            async move {
                store
                    .put_stored(
                        &StoredRow {
                            tenant,
                            kind: "response",
                            id,
                            body: "{}",
                            bytes: 10,
                            item_ids: &items,
                        },
                        bounds,
                        now,
                    )
                    .await
                    .unwrap()
            }
        };
        put("a", "r1", 1_000_000).await;
        assert_eq!(
            store
                .get_stored("a", "response", "r1", bounds, 1_001_000)
                .await
                .unwrap()
                .as_deref(),
            Some("{}")
        );
        // Another tenant and another kind do not see it.
        assert!(store
            .get_stored("b", "response", "r1", bounds, 1_001_000)
            .await
            .unwrap()
            .is_none());
        assert!(store
            .get_stored("a", "thread", "r1", bounds, 1_001_000)
            .await
            .unwrap()
            .is_none());
        assert_eq!(
            store
                .stored_item_owner("a", "msg_1")
                .await
                .unwrap()
                .as_deref(),
            Some("r1")
        );
        // Past the count bound the fullest tenant's oldest goes: b's flood evicts b's own.
        put("b", "b1", 1_002_000).await;
        put("b", "b2", 1_003_000).await;
        put("b", "b3", 1_004_000).await;
        assert!(store
            .get_stored("a", "response", "r1", bounds, 1_005_000)
            .await
            .unwrap()
            .is_some());
        assert!(store
            .get_stored("b", "response", "b1", bounds, 1_005_000)
            .await
            .unwrap()
            .is_none());
        // Idle rows are not found.
        assert!(store
            .get_stored("b", "response", "b3", bounds, 1_200_000)
            .await
            .unwrap()
            .is_none());
    }
}
