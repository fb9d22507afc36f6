//! The usage ledger: one row per API request, queued off the request path and written in
//! batches; grouped reads for `/admin/usage`, `ccgate usage` and the operator page.
//!
//! [`Ledger::record`] only queues (a bounded buffer; rows beyond it are dropped and
//! counted), waking the writer only when the queue was empty. The writer task inserts
//! what gathered in 100 ms in batches (so it and SQLite's worker thread wake once per
//! window, not per request); while the store is unreachable it
//! keeps its batch and retries with a growing pause (the buffer fills meanwhile, and rows
//! beyond it are dropped and counted, never silently), so an outage of PostgreSQL loses
//! no row the buffer holds. [`Ledger::flush`] writes what is queued at shutdown. A purge
//! loop deletes rows older than `state.retention_days`, until the shutdown signal.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};

use super::{as_i64, sql, Store, StoreError};
use crate::shutdown::Shutdown;

/// Rows inserted per transaction at most.
const BATCH_ROWS: usize = 500;
/// The ledger's columns, in the order every insert gives them.
const LEDGER_COLUMNS: &str = "at, request_id, key_name, model, served_model, account, api, \
     streamed, status, kind, input_tokens, output_tokens, cache_read_tokens, \
     cache_creation_tokens, duration_ms, ttft_ms, round, requests";
/// How many columns [`LEDGER_COLUMNS`] names.
const COLUMNS: usize = 18;
/// Rows per INSERT statement (18 parameters each: 900 in all, far below either
/// database's limit).
pub(super) const INSERT_ROWS: usize = 50;
/// The longest pause between two tries of a batch while the store is unreachable.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(2);
/// How long [`Ledger::flush`] waits for the store at most.
const FLUSH_WAIT: Duration = Duration::from_secs(10);
/// How often old rows are purged.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// One ledger row: one API request. No prompt, no key material (`key` is the key's name).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LedgerRow {
    /// Unix seconds when the request ended.
    pub at: i64,
    pub request_id: String,
    pub key: String,
    pub model: String,
    pub served_model: String,
    pub account: String,
    /// The endpoint label (`chat_completions`, `messages`, `responses`, …).
    pub api: String,
    pub streamed: bool,
    pub status: u16,
    pub kind: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_creation_tokens: u64,
    pub duration_ms: u64,
    pub ttft_ms: Option<u64>,
    /// `held` or `fresh`.
    pub round: Option<String>,
}

/// A grouping of [`Store::usage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Key,
    Model,
    Account,
    Api,
    Day,
    Hour,
}

impl GroupBy {
    /// Parses `key`, `model`, `account`, `api`, `day`, `hour`.
    pub fn parse(s: &str) -> Option<GroupBy> {
        Some(match s.trim() {
            "key" => GroupBy::Key,
            "model" => GroupBy::Model,
            "account" => GroupBy::Account,
            "api" => GroupBy::Api,
            "day" => GroupBy::Day,
            "hour" => GroupBy::Hour,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            GroupBy::Key => "key",
            GroupBy::Model => "model",
            GroupBy::Account => "account",
            GroupBy::Api => "api",
            GroupBy::Day => "day",
            GroupBy::Hour => "hour",
        }
    }

    /// The SQL expression (fixed text: nothing a client sent).
    pub(super) fn expr(self) -> &'static str {
        match self {
            GroupBy::Key => "key_name",
            GroupBy::Model => "model",
            GroupBy::Account => "account",
            GroupBy::Api => "api",
            GroupBy::Day => "(at / 86400) * 86400",
            GroupBy::Hour => "(at / 3600) * 3600",
        }
    }

    fn is_time(self) -> bool {
        matches!(self, GroupBy::Day | GroupBy::Hour)
    }
}

/// One row of [`Store::usage`]: the grouped fields, then the sums.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageRow {
    /// The grouped fields in the order asked (`day` / `hour` as RFC 3339 times).
    #[serde(flatten)]
    pub group: serde_json::Map<String, serde_json::Value>,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_creation_tokens: u64,
    /// Requests answered with a status of 400 or more (client disconnects included).
    pub errors: u64,
}

/// Rows to insert, each with the number of requests it stands for: a failure (status 400
/// or more) that used no tokens is counted into the first alike one of the same second
/// (same key, model, served model, account, API, streaming, status, kind and round),
/// which keeps its request id and duration. Any other row stands for itself.
fn fold(rows: &[LedgerRow]) -> Vec<(&LedgerRow, u64)> {
    type Alike<'a> = (
        i64,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        bool,
        u16,
        &'a str,
        Option<&'a str>,
    );
    let mut out: Vec<(&LedgerRow, u64)> = Vec::with_capacity(rows.len());
    let mut first: std::collections::HashMap<Alike<'_>, usize> = std::collections::HashMap::new();
    for r in rows {
        let tokens =
            r.input_tokens | r.output_tokens | r.cache_read_tokens | r.cache_creation_tokens;
        if r.status < 400 || tokens != 0 {
            out.push((r, 1));
            continue;
        }
        let alike = (
            r.at,
            r.key.as_str(),
            r.model.as_str(),
            r.served_model.as_str(),
            r.account.as_str(),
            r.api.as_str(),
            r.streamed,
            r.status,
            r.kind.as_str(),
            r.round.as_deref(),
        );
        match first.entry(alike) {
            std::collections::hash_map::Entry::Occupied(i) => out[*i.get()].1 += 1,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(out.len());
                out.push((r, 1));
            }
        }
    }
    out
}

impl Store {
    /// Inserts rows in one transaction, several rows per statement ([`INSERT_ROWS`]).
    ///
    /// Each statement is a round trip to the database (on SQLite to sqlx's worker thread:
    /// two thread wake-ups), so one per row cost more than the insert itself. On SQLite the
    /// parameters are anonymous (`?`): binding a numbered one (`$N`) looks its name up in a
    /// list (`sqlite3_bind_parameter_name`), which made a statement's cost grow with the
    /// square of its parameters (perf: a fifth of the gateway's CPU under a flood of gated
    /// requests at 50 rows per statement). PostgreSQL only takes `$N`; the placeholder is
    /// the one thing that differs between the two texts.
    ///
    /// Failures that used no tokens and are alike but for their request id and duration
    /// go in as one row per second with their number in `requests` ([`fold`]): a client
    /// retrying against a closed gate or a spent limit costs a row per second, not one
    /// per request (the table's growth stays bounded by the distinct failures, and the
    /// gate's answers stay cheap).
    pub async fn insert(&self, rows: &[LedgerRow]) -> Result<(), StoreError> {
        self.insert_counted(&fold(rows)).await
    }

    /// [`Store::insert`] of rows with the number of requests each stands for.
    async fn insert_counted(&self, rows: &[(&LedgerRow, u64)]) -> Result<(), StoreError> {
        let numbered = self.is_shared();
        let mut tx = self.pool.begin().await.map_err(sql("write the ledger"))?;
        for chunk in rows.chunks(INSERT_ROWS) {
            let mut text = format!("INSERT INTO usage_ledger ({LEDGER_COLUMNS}) VALUES ");
            for i in 0..chunk.len() {
                text.push_str(if i == 0 { "(" } else { ", (" });
                for c in 0..COLUMNS {
                    if c > 0 {
                        text.push_str(", ");
                    }
                    if numbered {
                        text.push_str(&format!("${}", i * COLUMNS + c + 1));
                    } else {
                        text.push('?');
                    }
                }
                text.push(')');
            }
            // Not kept in the connection's statement cache: a batch's last chunk has any
            // length, and each length would be one more cached statement.
            let mut q = sqlx::query(&text).persistent(chunk.len() == INSERT_ROWS);
            for &(r, requests) in chunk {
                q = q
                    .bind(r.at)
                    .bind(&r.request_id)
                    .bind(&r.key)
                    .bind(&r.model)
                    .bind(&r.served_model)
                    .bind(&r.account)
                    .bind(&r.api)
                    .bind(i64::from(r.streamed))
                    .bind(i64::from(r.status))
                    .bind(&r.kind)
                    .bind(as_i64(r.input_tokens))
                    .bind(as_i64(r.output_tokens))
                    .bind(as_i64(r.cache_read_tokens))
                    .bind(as_i64(r.cache_creation_tokens))
                    .bind(as_i64(r.duration_ms))
                    .bind(r.ttft_ms.map(as_i64))
                    .bind(r.round.clone())
                    .bind(as_i64(requests));
            }
            q.execute(&mut *tx).await.map_err(sql("write the ledger"))?;
        }
        tx.commit().await.map_err(sql("write the ledger"))
    }

    /// Deletes rows that ended before `before` (Unix seconds); returns how many.
    pub async fn purge(&self, before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM usage_ledger WHERE at < $1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(sql("purge the ledger"))?;
        Ok(done.rows_affected())
    }

    /// The rows of a ledger query whose `$1` / `$2` are `from` and `to` (Unix seconds).
    pub(super) async fn rows_between(
        &self,
        q: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<AnyRow>, StoreError> {
        sqlx::query(q)
            .bind(from)
            .bind(to)
            .fetch_all(&self.pool)
            .await
            .map_err(sql("read the ledger"))
    }

    /// Usage from `from` (inclusive) to `to` (exclusive, Unix seconds), grouped.
    pub async fn usage(
        &self,
        group_by: &[GroupBy],
        from: i64,
        to: i64,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let cols: Vec<&str> = group_by.iter().map(|g| g.expr()).collect();
        let mut q = String::from("SELECT ");
        for c in &cols {
            q.push_str(c);
            q.push_str(", ");
        }
        q.push_str(
            "CAST(SUM(requests) AS BIGINT), CAST(SUM(input_tokens) AS BIGINT), \
             CAST(SUM(output_tokens) AS BIGINT), CAST(SUM(cache_read_tokens) AS BIGINT), \
             CAST(SUM(cache_creation_tokens) AS BIGINT), \
             CAST(SUM(CASE WHEN status >= 400 THEN requests ELSE 0 END) AS BIGINT) \
             FROM usage_ledger WHERE at >= $1 AND at < $2",
        );
        if !cols.is_empty() {
            let list = cols.join(", ");
            q.push_str(&format!(" GROUP BY {list} ORDER BY {list}"));
        }
        let rows = self.rows_between(&q, from, to).await?;
        let n = group_by.len();
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let get = |i: usize| -> Result<u64, StoreError> {
                let v: Option<i64> = row.try_get(i).map_err(sql("read the ledger"))?;
                Ok(v.unwrap_or(0).max(0) as u64)
            };
            let requests = get(n)?;
            if requests == 0 {
                // No group by and no rows: one all-NULL aggregate row.
                continue;
            }
            let mut group = serde_json::Map::new();
            for (i, g) in group_by.iter().enumerate() {
                let v = if g.is_time() {
                    let t: i64 = row.try_get(i).map_err(sql("read the ledger"))?;
                    serde_json::Value::String(crate::clock::rfc3339_of_unix(t.max(0) as u64))
                } else {
                    let s: String = row.try_get(i).map_err(sql("read the ledger"))?;
                    serde_json::Value::String(s)
                };
                group.insert(g.name().to_string(), v);
            }
            out.push(UsageRow {
                group,
                requests,
                input_tokens: get(n + 1)?,
                output_tokens: get(n + 2)?,
                cache_read_tokens: get(n + 3)?,
                cache_creation_tokens: get(n + 4)?,
                errors: get(n + 5)?,
            });
        }
        Ok(out)
    }
}

/// A time for a usage query: RFC 3339 (`2026-12-01T00:00:00Z`), a date (`2026-12-01`,
/// midnight UTC), Unix seconds, or a span back from `now` (`90m`, `24h`, `7d`).
pub fn parse_time(s: &str, now: i64) -> Option<i64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    if let Some(span) = parse_span(s) {
        return Some(now - span);
    }
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return Some(t.unix_timestamp());
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, &fmt)
        .ok()
        .map(|d| d.midnight().assume_utc().unix_timestamp())
}

/// A query's `from` / `to` ([`parse_time`] each; default: everything up to now), or the
/// message naming the one that is not a time.
pub fn parse_range(from: Option<&str>, to: Option<&str>, now: i64) -> Result<(i64, i64), String> {
    let time = |v: Option<&str>, default: i64, name: &str| {
        match v {
        None => Ok(default),
        Some(s) => parse_time(s, now).ok_or_else(|| {
            format!("{name}: `{s}` is not a time (RFC 3339, YYYY-MM-DD, Unix seconds, or a span such as 24h)")
        }),
    }
    };
    Ok((time(from, 0, "from")?, time(to, now + 1, "to")?))
}

/// `90s`, `30m`, `24h`, `7d`, `2w` in seconds.
pub fn parse_span(s: &str) -> Option<i64> {
    let s = s.trim();
    let unit = s.chars().last()?;
    let n: i64 = s[..s.len() - unit.len_utf8()].parse().ok()?;
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => return None,
    };
    (n >= 0).then(|| n.saturating_mul(mult))
}

/// Parses `key,model,day` into groupings (each at most once), or names the bad one.
pub fn parse_group_by(s: &str) -> Result<Vec<GroupBy>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let g = GroupBy::parse(part).ok_or_else(|| {
            format!("unknown group_by `{part}`; use key, model, account, api, day or hour")
        })?;
        if !out.contains(&g) {
            out.push(g);
        }
    }
    if out.contains(&GroupBy::Day) && out.contains(&GroupBy::Hour) {
        return Err("group_by takes day or hour, not both".into());
    }
    Ok(out)
}

/// Usage rows as CSV: the grouped fields, then the sums.
pub fn usage_csv(group_by: &[GroupBy], rows: &[UsageRow]) -> String {
    let mut out = String::new();
    for g in group_by {
        out.push_str(g.name());
        out.push(',');
    }
    out.push_str(
        "requests,input_tokens,output_tokens,cache_read_tokens,cache_creation_tokens,errors\n",
    );
    for r in rows {
        for g in group_by {
            let v = r.group.get(g.name()).and_then(|v| v.as_str()).unwrap_or("");
            out.push_str(&csv_field(v));
            out.push(',');
        }
        out.push_str(&format!(
            "{},{},{},{},{},{}\n",
            r.requests,
            r.input_tokens,
            r.output_tokens,
            r.cache_read_tokens,
            r.cache_creation_tokens,
            r.errors
        ));
    }
    out
}

/// A CSV field, quoted when needed; a leading `= + - @` is prefixed with `'` so a
/// spreadsheet does not run a model name as a formula.
fn csv_field(v: &str) -> String {
    let v = if v.starts_with(['=', '+', '-', '@']) {
        format!("'{v}")
    } else {
        v.to_string()
    };
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v
    }
}

/// What the request path asks of the writer besides rows (rows go through [`Pending`]).
enum Msg {
    /// Write what is queued, then answer.
    Flush(oneshot::Sender<()>),
}

/// How long the writer lets rows gather after the first one of a batch arrives.
const BATCH_WINDOW: Duration = Duration::from_millis(100);

/// Rows queued by the request path. A push takes a short lock and wakes the writer only
/// when the queue was empty, so under load the writer (and the database's worker thread
/// behind it) wakes once per [`BATCH_WINDOW`], not once per request.
struct Pending {
    rows: std::sync::Mutex<Vec<LedgerRow>>,
    cap: usize,
    wake: tokio::sync::Notify,
}

impl Pending {
    /// Takes every queued row, counting them as `held` before the queue's lock is
    /// released (so [`Ledger::pending`] never sees them in neither place).
    fn take(&self, held: &AtomicU64) -> Vec<LedgerRow> {
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        held.fetch_add(rows.len() as u64, Ordering::Relaxed);
        std::mem::take(&mut *rows)
    }

    fn len(&self) -> usize {
        self.rows.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The request path's handle on the ledger: queues rows for the writer task.
#[derive(Clone)]
pub struct Ledger {
    tx: mpsc::Sender<Msg>,
    pending: Arc<Pending>,
    store: Store,
    dropped: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
    /// Rows the writer has taken and not yet written (a batch being written or retried).
    held: Arc<AtomicU64>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// The writer task of a [`Ledger`]: run it (e.g. `tokio::spawn(writer.run())`).
pub struct LedgerWriter {
    rx: mpsc::Receiver<Msg>,
    pending: Arc<Pending>,
    store: Store,
    written: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    held: Arc<AtomicU64>,
}

impl Ledger {
    /// A ledger over `store` holding at most `buffer` queued rows, and its writer.
    pub fn new(store: Store, buffer: usize) -> (Ledger, LedgerWriter) {
        let (tx, rx) = mpsc::channel(16);
        let pending = Arc::new(Pending {
            rows: std::sync::Mutex::new(Vec::new()),
            cap: buffer.max(1),
            wake: tokio::sync::Notify::new(),
        });
        let written = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let held = Arc::new(AtomicU64::new(0));
        (
            Ledger {
                tx,
                pending: Arc::clone(&pending),
                store: store.clone(),
                dropped: Arc::clone(&dropped),
                written: Arc::clone(&written),
                held: Arc::clone(&held),
            },
            LedgerWriter {
                rx,
                pending,
                store,
                written,
                dropped,
                held,
            },
        )
    }

    /// Queues a row; when the buffer is full it is dropped and counted.
    pub fn record(&self, row: LedgerRow) {
        let first = {
            let mut rows = self.pending.rows.lock().unwrap_or_else(|p| p.into_inner());
            if rows.len() >= self.pending.cap {
                None
            } else {
                rows.push(row);
                Some(rows.len() == 1)
            }
        };
        match first {
            Some(true) => self.pending.wake.notify_one(),
            Some(false) => {}
            None => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(dropped = n, "usage ledger buffer full: rows dropped");
                }
            }
        }
    }

    /// Rows dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Rows written.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Waits until every row queued before this call is written (at shutdown, after the
    /// last request ended; before an admin read; in tests), for at most 10 s: false when
    /// the store did not take them in that time (they stay queued).
    pub async fn flush(&self) -> bool {
        let (done, wait) = oneshot::channel();
        let sent = async {
            if self.tx.send(Msg::Flush(done)).await.is_ok() {
                let _ = wait.await;
            }
        };
        tokio::time::timeout(FLUSH_WAIT, sent).await.is_ok()
    }

    /// Rows waiting: queued in the buffer or held by the writer for a retry.
    pub fn pending(&self) -> u64 {
        self.pending.len() as u64 + self.held.load(Ordering::Relaxed)
    }

    /// The retention purge: every hour, rows older than `days` go, until `shutdown`.
    pub async fn purge_loop(self, days: u32, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(PURGE_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let before = crate::clock::unix_now() as i64 - i64::from(days) * 86_400;
                    match self.store.purge(before).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(rows = n, days, "usage ledger: old rows purged"),
                        Err(e) => tracing::warn!(error = %e, "usage ledger purge failed"),
                    }
                    let now = crate::clock::unix_now() as i64;
                    if let Err(e) = self.store.purge_counters(now).await {
                        tracing::warn!(error = %e, "key counters purge failed");
                    }
                    if let Err(e) = self.store.purge_conversation_accounts(now).await {
                        tracing::warn!(error = %e, "conversation map purge failed");
                    }
                }
                () = shutdown.triggered() => break,
            }
        }
    }
}

impl LedgerWriter {
    /// Writes queued rows in batches until every [`Ledger`] handle is gone: a batch
    /// [`BATCH_WINDOW`] after its first row, or at once for a flush.
    pub async fn run(mut self) {
        enum Next {
            Flush(oneshot::Sender<()>),
            Closed,
            Batch,
        }
        let of = |m: Option<Msg>| m.map_or(Next::Closed, |Msg::Flush(done)| Next::Flush(done));
        loop {
            let next = tokio::select! {
                m = self.rx.recv() => of(m),
                // Let the batch gather, unless a flush (or the end) comes first.
                () = self.pending.wake.notified() => tokio::select! {
                    m = self.rx.recv() => of(m),
                    () = tokio::time::sleep(BATCH_WINDOW) => Next::Batch,
                },
            };
            self.write_pending().await;
            match next {
                Next::Flush(done) => {
                    let _ = done.send(());
                }
                Next::Closed => return,
                Next::Batch => {}
            }
        }
    }

    /// Writes every queued row, [`BATCH_ROWS`] per transaction.
    async fn write_pending(&self) {
        let mut rows = self.pending.take(&self.held);
        while !rows.is_empty() {
            let rest = rows.split_off(rows.len().min(BATCH_ROWS));
            self.write(&mut rows).await;
            rows = rest;
        }
    }

    async fn write(&self, batch: &mut Vec<LedgerRow>) {
        if batch.is_empty() {
            return;
        }
        // While the store is unreachable (PostgreSQL down or slow, SQLite busy) the batch
        // is kept and retried with a growing pause: the queue's bound holds everything
        // else, and rows beyond it are dropped and counted by `record`. A batch the store
        // refuses as such (a constraint, the schema) is retried once, then given up and
        // counted: it would never go in.
        let mut pause = Duration::from_millis(100);
        let mut refused = 0;
        let mut failures = 0u64;
        loop {
            match self.store.insert(batch).await {
                Ok(()) => {
                    self.written
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    self.held.fetch_sub(batch.len() as u64, Ordering::Relaxed);
                    if failures > 0 {
                        tracing::info!(
                            rows = batch.len(),
                            "usage ledger: store back, rows written"
                        );
                    }
                    batch.clear();
                    return;
                }
                Err(e) if is_permanent(&e) => {
                    refused += 1;
                    if refused >= 2 {
                        tracing::error!(error = %e, rows = batch.len(), "usage ledger write refused; rows lost");
                        self.dropped
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                        self.held.fetch_sub(batch.len() as u64, Ordering::Relaxed);
                        batch.clear();
                        return;
                    }
                }
                Err(e) => {
                    failures += 1;
                    if failures.is_power_of_two() {
                        tracing::warn!(error = %e, rows = batch.len(), "usage ledger: store unreachable; rows held and retried");
                    }
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_RETRY_PAUSE);
        }
    }
}

/// True when the store answered that it refuses the statement itself (a constraint or the
/// schema: SQLSTATE classes 22, 23 and 42), so retrying cannot help; a lost connection,
/// a timeout, a server shutting down or a busy file can.
pub(super) fn is_permanent(e: &StoreError) -> bool {
    let StoreError::Sql {
        source: sqlx::Error::Database(db),
        ..
    } = e
    else {
        return false;
    };
    db.code()
        .is_some_and(|c| c.starts_with("22") || c.starts_with("23") || c.starts_with("42"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_groupings() {
        assert_eq!(parse_time("24h", 100_000), Some(100_000 - 86_400));
        assert_eq!(parse_time("1700000000", 0), Some(1_700_000_000));
        assert_eq!(parse_time("2026-12-01", 0), Some(1_796_083_200));
        assert_eq!(parse_time("2026-12-01T00:00:00Z", 0), Some(1_796_083_200));
        assert_eq!(parse_time("soon", 0), None);
        assert_eq!(
            parse_group_by("key, model,key").unwrap(),
            vec![GroupBy::Key, GroupBy::Model]
        );
        assert!(parse_group_by("key;drop").is_err());
        assert!(parse_group_by("day,hour").is_err());
    }

    #[tokio::test]
    async fn rows_queue_without_waking_the_writer_per_row_and_a_full_buffer_drops() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("q.db")).await.unwrap();
        let (ledger, writer) = Ledger::new(store.clone(), 2);
        let task = tokio::spawn(writer.run());
        // No await in between: the writer (same thread) cannot take rows meanwhile.
        for i in 0..3 {
            ledger.record(LedgerRow {
                at: 1_000 + i,
                key: "k".into(),
                status: 401,
                ..LedgerRow::default()
            });
        }
        assert_eq!(ledger.dropped(), 1);
        ledger.flush().await;
        assert_eq!(ledger.written(), 2);
        // After a write the buffer has room again.
        ledger.record(LedgerRow {
            at: 1_010,
            key: "k".into(),
            ..LedgerRow::default()
        });
        ledger.flush().await;
        assert_eq!((ledger.written(), ledger.dropped()), (3, 1));
        drop(ledger);
        task.await.unwrap();
        let rows = store.usage(&[GroupBy::Key], 0, 2_000).await.unwrap();
        assert_eq!(rows[0].requests, 3);
    }

    #[tokio::test]
    async fn ledger_rows_survive_reopening_and_sum_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/ccgate.db");
        let store = Store::open_sqlite(&path).await.unwrap();
        let (ledger, writer) = Ledger::new(store.clone(), 16);
        let task = tokio::spawn(writer.run());
        for (key, tokens) in [("a", 10), ("a", 5), ("b", 7)] {
            ledger.record(LedgerRow {
                at: 1_000,
                key: key.into(),
                model: "sonnet".into(),
                api: "messages".into(),
                status: 200,
                input_tokens: tokens,
                output_tokens: 1,
                ..LedgerRow::default()
            });
        }
        ledger.flush().await;
        drop(ledger);
        task.await.unwrap();
        store.close().await;
        let store = Store::open_sqlite(&path).await.unwrap();
        assert_eq!(
            store.version().await.unwrap(),
            crate::store::schema_version()
        );
        let rows = store.usage(&[GroupBy::Key], 0, 2_000).await.unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].group["key"], "a");
        assert_eq!((rows[0].requests, rows[0].input_tokens), (2, 15));
        assert_eq!(rows[1].input_tokens, 7);
        let csv = usage_csv(&[GroupBy::Key], &rows);
        assert!(csv.starts_with("key,requests,"), "{csv}");
        assert!(store.usage(&[], 2_000, 3_000).await.unwrap().is_empty());
        // A schema newer than known is refused.
        sqlx::query("INSERT INTO ccgate_schema (version) VALUES (999)")
            .execute(&store.pool)
            .await
            .unwrap();
        store.close().await;
        let e = Store::open_sqlite(&path).await.unwrap_err().to_string();
        assert!(e.contains("schema version 999 is newer"), "{e}");
    }
}
