//! The state store: what replicas must agree on, in one database — the embedded SQLite
//! file at `state.path` by default, or PostgreSQL at `state.url` for several replicas
//! (docs/scaling.md).
//!
//! One interface ([`Store`]), one schema and one set of queries, run through sqlx's `Any`
//! driver: the SQL is portable (`$N` parameters, `BIGINT` and `TEXT` columns, integer
//! time buckets, `CAST(SUM(…) AS BIGINT)`, `INSERT … ON CONFLICT`), so PostgreSQL is one
//! more driver feature and URL, not a second code path. No compile-time-checked macros:
//! building needs no database. PostgreSQL is reached without TLS (a loopback, a pod
//! network or a sidecar); see docs/scaling.md for why and how to add it.
//!
//! Versioned migrations (`migrations/NNNN_*.sql`, never edited once released) run at
//! open, each in a transaction; on PostgreSQL under an advisory lock so replicas starting
//! together migrate once. A database whose schema is newer than this build knows is
//! refused.
//!
//! - [`ledger`]: the usage ledger (batched writes, grouped reads).
//! - [`counters`]: per-key limit counters and concurrency leases, shared by replicas.
//! - [`responses`]: stored responses and threads, shared by replicas.
//! - [`cooldowns`]: account cooldowns, shared by replicas.
//! - [`write_behind`]: the writes nobody waits for (slot releases, token counts, what
//!   accounts share), bounded in number and time, with a last chance at shutdown.

pub mod account_state;
pub mod cooldowns;
pub mod counters;
pub mod failures;
pub mod ledger;
mod migrations;
pub mod responses;
pub mod write_behind;

use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Connection, Row};

pub use account_state::SharedWindows;
pub use cooldowns::SharedCooldown;
pub use counters::{Admission, KeyLimits, KeyUsage};
pub use failures::{FailedRequest, FailureBucket};
pub use ledger::{
    parse_group_by, parse_range, parse_span, parse_time, usage_csv, GroupBy, Ledger, LedgerRow,
    LedgerWriter, UsageRow,
};
pub use migrations::schema_version;
pub use responses::{StoredBounds, StoredRow};
pub use write_behind::Retry;

/// The key of the PostgreSQL advisory lock held while migrating (any fixed number: it
/// names ccgate's migration among the database's other advisory-lock users).
const MIGRATION_LOCK: i64 = 0x6363_6761_7465_0001;

/// Why the store could not be opened or queried.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {what}: {source}")]
    Sql {
        what: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("state store {url}: its schema version {found} is newer than this ccgate knows ({known}); run a newer ccgate or another state.path / state.url")]
    TooNew { url: String, found: i64, known: i64 },
    #[error("state store: cannot create {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("state store {what}: no answer within the statement timeout")]
    Timeout { what: String },
}

pub(crate) fn sql(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Sql { what, source }
}

/// How to reach the store and how much of it to use.
#[derive(Clone)]
pub struct StoreOptions {
    /// `sqlite://PATH?mode=rwc` or `postgres://…`.
    pub url: String,
    /// Pool size (PostgreSQL; SQLite always uses two: its one writer and a reader).
    pub max_connections: u32,
    /// A statement running longer is cancelled by the server (PostgreSQL); the request
    /// path also gives up on the store after it.
    pub statement_timeout: Duration,
    /// To open a connection or wait for a free one.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("statement_timeout", &self.statement_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl StoreOptions {
    /// The embedded SQLite database at `path`, with default bounds.
    pub fn sqlite(path: &std::path::Path) -> StoreOptions {
        StoreOptions {
            url: format!("sqlite://{}?mode=rwc", path.display()),
            max_connections: 2,
            statement_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
        }
    }

    /// The SQLite file these options name, if they name one.
    pub fn sqlite_path(&self) -> Option<std::path::PathBuf> {
        let rest = self.url.strip_prefix("sqlite://")?;
        Some(rest.split('?').next().unwrap_or("").into())
    }

    /// A database at `url` (`postgres://…`), with default bounds.
    pub fn url(url: &str) -> StoreOptions {
        StoreOptions {
            url: url.to_string(),
            max_connections: 8,
            ..StoreOptions::sqlite(std::path::Path::new(""))
        }
    }
}

/// The store.
#[derive(Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    url: String,
    postgres: bool,
    statement_timeout: Duration,
    /// The background writes of this store and its clones ([`Store::write_behind`]).
    writes: std::sync::Arc<write_behind::Writes>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish()
    }
}

impl Store {
    /// Opens (creating it and its directory when missing) the SQLite database at `path`
    /// and brings its schema up to date.
    pub async fn open_sqlite(path: &std::path::Path) -> Result<Store, StoreError> {
        Store::open_with(StoreOptions::sqlite(path)).await
    }

    /// Opens the database at `url` and runs the migrations it lacks.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        Store::open_with(StoreOptions::url(url)).await
    }

    /// Opens the store `options` name (creating a SQLite file and its directory when
    /// missing) and runs the migrations it lacks.
    pub async fn open_with(options: StoreOptions) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let url = options.url.as_str();
        let sqlite = url.starts_with("sqlite:");
        if let Some(path) = options.sqlite_path() {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                    path: dir.display().to_string(),
                    source,
                })?;
            }
        }
        let statement_ms = options.statement_timeout.as_millis().max(1);
        let pool = AnyPoolOptions::new()
            // SQLite has one writer: one connection for the writer task and one for reads.
            .max_connections(if sqlite {
                2
            } else {
                options.max_connections.max(1)
            })
            .acquire_timeout(options.connect_timeout)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    use sqlx::Executor;
                    if sqlite {
                        conn.execute("PRAGMA journal_mode=WAL").await?;
                        conn.execute("PRAGMA synchronous=NORMAL").await?;
                        conn.execute("PRAGMA busy_timeout=5000").await?;
                    } else {
                        // A fixed number: no client text reaches this statement.
                        conn.execute(format!("SET statement_timeout = {statement_ms}").as_str())
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(sql(format!("{}: open", redact_url(url))))?;
        let store = Store {
            pool,
            url: redact_url(url),
            postgres: !sqlite,
            statement_timeout: options.statement_timeout,
            writes: std::sync::Arc::new(write_behind::Writes::new(write_behind::MAX_IN_FLIGHT)),
        };
        store.migrate(&options).await?;
        Ok(store)
    }

    /// True on PostgreSQL (shared by replicas), false on the embedded SQLite file.
    pub fn is_shared(&self) -> bool {
        self.postgres
    }

    /// The store's URL without its password.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How long the request path waits for the store.
    pub fn statement_timeout(&self) -> Duration {
        self.statement_timeout
    }

    /// `fut` (a store call) bounded by the statement timeout.
    pub async fn bounded<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.statement_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout { what: what.into() }),
        }
    }

    /// Runs the migrations the database lacks. On PostgreSQL on a connection of its own
    /// holding an advisory lock (released when it closes, also when this process dies),
    /// so replicas starting together wait for each other and the second finds the work
    /// done; the version is read only under the lock.
    async fn migrate(&self, options: &StoreOptions) -> Result<(), StoreError> {
        if !self.postgres {
            let mut conn = self.pool.acquire().await.map_err(sql("migrate"))?;
            return self.migrate_on(&mut conn).await;
        }
        let connect: AnyConnectOptions = options
            .url
            .parse()
            .map_err(sql(format!("{}: open", self.url)))?;
        let mut conn = connect
            .connect()
            .await
            .map_err(sql(format!("{}: open", self.url)))?;
        sqlx::query("SELECT 1 FROM pg_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut conn)
            .await
            .map_err(sql("take the migration lock"))?;
        let done = self.migrate_on(&mut conn).await;
        let _ = sqlx::query("SELECT 1 FROM pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut conn)
            .await;
        let _ = conn.close().await;
        done
    }

    async fn migrate_on(&self, conn: &mut sqlx::AnyConnection) -> Result<(), StoreError> {
        sqlx::query("CREATE TABLE IF NOT EXISTS ccgate_schema (version BIGINT NOT NULL)")
            .execute(&mut *conn)
            .await
            .map_err(sql("create ccgate_schema"))?;
        let found = read_version(&mut *conn).await?;
        let known = schema_version();
        if found > known {
            return Err(StoreError::TooNew {
                url: self.url.clone(),
                found,
                known,
            });
        }
        for (version, text) in migrations::MIGRATIONS.iter().filter(|m| m.0 > found) {
            let mut tx = conn.begin().await.map_err(sql("migrate"))?;
            for s in migrations::statements(text) {
                sqlx::query(s)
                    .execute(&mut *tx)
                    .await
                    .map_err(sql(format!("migration {version}")))?;
            }
            sqlx::query("INSERT INTO ccgate_schema (version) VALUES ($1)")
                .bind(*version)
                .execute(&mut *tx)
                .await
                .map_err(sql(format!("migration {version}")))?;
            tx.commit()
                .await
                .map_err(sql(format!("migration {version}")))?;
            tracing::info!(version, store = %self.url, "state store schema migrated");
        }
        Ok(())
    }

    /// The schema version of the database.
    pub async fn version(&self) -> Result<i64, StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(sql("read the schema version"))?;
        read_version(&mut conn).await
    }

    /// Closes the pool (after the writer's last batch).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

async fn read_version(conn: &mut sqlx::AnyConnection) -> Result<i64, StoreError> {
    let row = sqlx::query("SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM ccgate_schema")
        .fetch_one(&mut *conn)
        .await
        .map_err(sql("read the schema version"))?;
    row.try_get::<i64, _>(0)
        .map_err(sql("read the schema version"))
}

pub(crate) fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A URL without its password (`postgres://user:secret@host` → `postgres://user:…@host`).
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:…{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            redact_url("postgres://u:secret@db:5432/x"),
            "postgres://u:…@db:5432/x"
        );
        assert_eq!(redact_url("sqlite:///a/b.db"), "sqlite:///a/b.db");
        let o = StoreOptions::url("postgres://u:secret@db/x");
        assert!(!format!("{o:?}").contains("secret"));
    }

    #[test]
    fn migrations_are_numbered_in_order_and_split_into_statements() {
        let versions: Vec<i64> = migrations::MIGRATIONS.iter().map(|m| m.0).collect();
        let expected: Vec<i64> = (1..=versions.len() as i64).collect();
        assert_eq!(versions, expected);
        // Every file is listed (a new file left out would never run).
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/migrations");
        let files = std::fs::read_dir(dir).unwrap().count();
        assert_eq!(files, versions.len());
        let first = migrations::statements(migrations::MIGRATIONS[0].1);
        assert_eq!(first.len(), 2, "{first:?}");
        assert!(
            first[0].starts_with("CREATE TABLE usage_ledger"),
            "{}",
            first[0]
        );
    }
}
