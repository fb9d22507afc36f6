//! The failures view of the usage ledger (the operator page's, `GET /admin/failures`):
//! failed requests (status 400 or more) per kind and hour or day, and the latest ones.
//! A row may count several alike failures (`requests`, see [`super::ledger`]).

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::ledger::GroupBy;
use super::{sql, Store, StoreError};

/// One bucket of [`Store::failures`]: failed requests of one kind in one hour or day.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailureBucket {
    /// The bucket's start, RFC 3339.
    pub bucket: String,
    pub kind: String,
    pub count: u64,
}

/// One failed request, newest first in [`Store::latest_failures`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailedRequest {
    /// When it ended, RFC 3339.
    pub time: String,
    pub request_id: String,
    pub key: String,
    pub api: String,
    pub model: String,
    pub account: String,
    pub kind: String,
    pub status: u16,
    /// How many alike failures of that second this row counts (1 and up): `request_id`
    /// is the first of them.
    pub requests: u64,
}

impl Store {
    /// Failed requests (status 400 or more) from `from` to `to`, counted per kind and per
    /// `bucket` (hour or day).
    pub async fn failures(
        &self,
        bucket: GroupBy,
        from: i64,
        to: i64,
    ) -> Result<Vec<FailureBucket>, StoreError> {
        let b = if bucket == GroupBy::Day {
            GroupBy::Day
        } else {
            GroupBy::Hour
        }
        .expr();
        let q = format!(
            "SELECT {b}, kind, CAST(SUM(requests) AS BIGINT) FROM usage_ledger \
             WHERE at >= $1 AND at < $2 AND status >= 400 GROUP BY {b}, kind ORDER BY {b}, kind"
        );
        let rows = self.rows_between(&q, from, to).await?;
        rows.iter()
            .map(|row| {
                let t: i64 = row.try_get(0).map_err(sql("read the ledger"))?;
                let n: i64 = row.try_get(2).map_err(sql("read the ledger"))?;
                Ok(FailureBucket {
                    bucket: crate::clock::rfc3339_of_unix(t.max(0) as u64),
                    kind: row.try_get(1).map_err(sql("read the ledger"))?,
                    count: n.max(0) as u64,
                })
            })
            .collect()
    }

    /// The `limit` latest failed requests, newest first.
    pub async fn latest_failures(&self, limit: u32) -> Result<Vec<FailedRequest>, StoreError> {
        let rows: Vec<AnyRow> = sqlx::query(
            "SELECT at, request_id, key_name, api, model, account, kind, status, requests \
             FROM usage_ledger \
             WHERE status >= 400 ORDER BY at DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(sql("read the ledger"))?;
        rows.iter()
            .map(|row| {
                let g = |i: usize| -> Result<String, StoreError> {
                    row.try_get(i).map_err(sql("read the ledger"))
                };
                let at: i64 = row.try_get(0).map_err(sql("read the ledger"))?;
                let status: i64 = row.try_get(7).map_err(sql("read the ledger"))?;
                let requests: i64 = row.try_get(8).map_err(sql("read the ledger"))?;
                Ok(FailedRequest {
                    time: crate::clock::rfc3339_of_unix(at.max(0) as u64),
                    request_id: g(1)?,
                    key: g(2)?,
                    api: g(3)?,
                    model: g(4)?,
                    account: g(5)?,
                    kind: g(6)?,
                    status: u16::try_from(status).unwrap_or(0),
                    requests: requests.max(1) as u64,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ledger::INSERT_ROWS;
    use crate::store::LedgerRow;

    fn row(at: i64, id: &str, status: u16, kind: &str) -> LedgerRow {
        LedgerRow {
            at,
            request_id: id.into(),
            key: "alice".into(),
            model: "sonnet".into(),
            api: "messages".into(),
            status,
            kind: kind.into(),
            ..LedgerRow::default()
        }
    }

    /// A flood of alike failures that used no tokens is one row per second, counted:
    /// the usage, the failures per kind and the latest list all see every request.
    #[tokio::test]
    async fn alike_failures_without_tokens_are_one_counted_row_per_second() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("s.db")).await.unwrap();
        let mut rows: Vec<LedgerRow> = (0..1000)
            .map(|i| row(5_000 + i / 500, &format!("g{i}"), 401, "auth_failure"))
            .collect();
        // Not alike: another kind, another key, and failures or answers with tokens.
        rows.push(row(5_000, "other-kind", 529, "overloaded"));
        rows.push(LedgerRow {
            key: "bob".into(),
            ..row(5_000, "other-key", 401, "auth_failure")
        });
        for (id, status) in [("tokens-failed", 500), ("ok", 200), ("ok2", 200)] {
            rows.push(LedgerRow {
                input_tokens: 3,
                ..row(
                    5_000,
                    id,
                    status,
                    if status == 200 { "ok" } else { "api_error" },
                )
            });
        }
        store.insert(&rows).await.unwrap();
        let stored: i64 = sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM usage_ledger")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        // Two seconds of the flood, and five rows that are not alike.
        assert_eq!(stored, 2 + 5);
        let usage = store.usage(&[], 0, 10_000).await.unwrap();
        assert_eq!((usage[0].requests, usage[0].errors), (1005, 1003));
        assert_eq!(usage[0].input_tokens, 9);
        let per_kind = store.failures(GroupBy::Hour, 0, 10_000).await.unwrap();
        let auth: u64 = per_kind
            .iter()
            .filter(|b| b.kind == "auth_failure")
            .map(|b| b.count)
            .sum();
        assert_eq!(auth, 1001);
        let latest = store.latest_failures(10).await.unwrap();
        let flood: Vec<(&str, u64)> = latest
            .iter()
            .filter(|f| f.request_id.starts_with('g'))
            .map(|f| (f.request_id.as_str(), f.requests))
            .collect();
        // Each second's row keeps its first request id.
        assert_eq!(flood, [("g500", 500), ("g0", 500)]);
        assert!(latest
            .iter()
            .all(|f| f.request_id.starts_with('g') || f.requests == 1));
    }

    /// A batch longer than one statement ([`INSERT_ROWS`]) goes in whole, every column in
    /// its place (the statements' placeholders are positional).
    #[tokio::test]
    async fn a_batch_of_several_statements_keeps_every_row_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("s.db")).await.unwrap();
        let n = INSERT_ROWS * 2 + 23;
        let rows: Vec<LedgerRow> = (0..n)
            .map(|i| LedgerRow {
                input_tokens: i as u64,
                output_tokens: 2,
                ttft_ms: (i % 2 == 0).then_some(7),
                round: Some("continued".into()),
                ..row(1_000 + i as i64, &format!("r{i}"), 500, "api_error")
            })
            .collect();
        store.insert(&rows).await.unwrap();
        let latest = store.latest_failures(1_000).await.unwrap();
        assert_eq!(latest.len(), n);
        assert_eq!(latest[0].request_id, format!("r{}", n - 1));
        assert_eq!(
            (
                latest[0].key.as_str(),
                latest[0].kind.as_str(),
                latest[0].status
            ),
            ("alice", "api_error", 500)
        );
        let usage = store.usage(&[GroupBy::Key], 0, 10_000).await.unwrap();
        assert_eq!(usage[0].requests, n as u64);
        assert_eq!(usage[0].input_tokens, (0..n as u64).sum::<u64>());
        assert_eq!(usage[0].output_tokens, 2 * n as u64);
    }

    #[tokio::test]
    async fn failures_count_per_kind_and_bucket_and_list_the_latest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("s.db")).await.unwrap();
        store
            .insert(&[
                row(3_600, "r1", 200, "ok"),
                row(3_700, "r2", 429, "rate_limit"),
                row(3_800, "r3", 429, "rate_limit"),
                row(7_300, "r4", 529, "overloaded"),
                row(90_000, "r5", 401, "auth_failure"),
            ])
            .await
            .unwrap();
        let hours = store.failures(GroupBy::Hour, 0, 10_000).await.unwrap();
        let got: Vec<(&str, &str, u64)> = hours
            .iter()
            .map(|b| (b.bucket.as_str(), b.kind.as_str(), b.count))
            .collect();
        assert_eq!(
            got,
            [
                ("1970-01-01T01:00:00+00:00", "rate_limit", 2),
                ("1970-01-01T02:00:00+00:00", "overloaded", 1)
            ]
        );
        let days = store.failures(GroupBy::Day, 0, 100_000).await.unwrap();
        assert_eq!(days.len(), 3, "{days:?}");
        let latest = store.latest_failures(2).await.unwrap();
        let ids: Vec<&str> = latest.iter().map(|f| f.request_id.as_str()).collect();
        assert_eq!(ids, ["r5", "r4"]);
        assert_eq!(
            (latest[0].status, latest[0].kind.as_str()),
            (401, "auth_failure")
        );
        assert_eq!(latest[0].key, "alice");
    }
}
