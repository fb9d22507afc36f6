//! Writes to the store that nobody waits for: a finished request's slot release and token
//! count (`http::keyed`), and what accounts share with the other replicas (cooldowns, plan
//! windows, the conversation → account map; `accounts::shared`).
//!
//! One helper for all of them, so each has the same bounds:
//! - **in number**: at most [`MAX_IN_FLIGHT`] writes of a store run at once; one more is
//!   refused at once (the caller gets `false` and counts it), never queued;
//! - **in time**: each attempt is bounded by `state.statement_timeout` ([`Store::bounded`]),
//!   so a store that does not answer never holds a write longer, and the caller never
//!   waits at all;
//! - **at shutdown**: [`Store::finish_writes`] gives the writes still running a last chance,
//!   bounded: a write pausing between retries tries once more at once and then stops.
//!
//! A write may ask to be retried after a transient failure ([`Retry::For`]): a lost
//! connection or a timeout, not a statement the store refuses as such (a constraint, the
//! schema), with a growing pause, like the ledger's writer. Cooldowns use it, so one found
//! while PostgreSQL was down is shared once it is back.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::{Store, StoreError};

/// Writes of one store running at once (each holds a task and, while it runs, a
/// connection or a place in the pool's queue).
pub const MAX_IN_FLIGHT: usize = 1024;

/// The first pause before a retry; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// Whether a write is tried again after a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// One attempt.
    Never,
    /// Attempts until one succeeds, the store refuses the statement as such, this much
    /// time has passed since the first, or shutdown.
    For(Duration),
}

/// The state of a store's background writes (shared by its clones).
#[derive(Debug)]
pub(crate) struct Writes {
    max: usize,
    in_flight: AtomicUsize,
    overflowed: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    /// Set by [`Store::finish_writes`]: no more retry pauses.
    stopping: AtomicBool,
    /// Woken when the last write ends and when stopping begins.
    changed: Notify,
}

impl Writes {
    pub(crate) fn new(max: usize) -> Writes {
        Writes {
            max,
            in_flight: AtomicUsize::new(0),
            overflowed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }
}

/// Ends one write: the count goes down even if the task is dropped (runtime shutdown).
struct Slot(Arc<Writes>);

impl Drop for Slot {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.changed.notify_waiters();
        }
    }
}

impl Store {
    /// Runs `write` on this store in the background and returns at once: true when it was
    /// started, false when [`MAX_IN_FLIGHT`] writes are already running (nothing runs; the
    /// caller counts it) or there is no runtime. Each attempt is bounded by the statement
    /// timeout; `done` gets the last attempt's result (on the write's task).
    pub fn write_behind<W, F>(
        &self,
        what: &'static str,
        retry: Retry,
        mut write: W,
        done: impl FnOnce(Result<(), StoreError>) + Send + 'static,
    ) -> bool
    where
        W: FnMut(Store) -> F + Send + 'static,
        F: Future<Output = Result<(), StoreError>> + Send + 'static,
    {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let writes = Arc::clone(&self.writes);
        if writes.in_flight.fetch_add(1, Ordering::AcqRel) >= writes.max {
            writes.in_flight.fetch_sub(1, Ordering::AcqRel);
            writes.overflowed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let slot = Slot(writes);
        let store = self.clone();
        rt.spawn(async move {
            let deadline = match retry {
                Retry::Never => None,
                Retry::For(d) => Some(Instant::now() + d),
            };
            let mut pause = FIRST_PAUSE;
            let result = loop {
                let r = store.bounded(what, write(store.clone())).await;
                let again = match (&r, deadline) {
                    (Err(e), Some(deadline)) => {
                        !is_refused(&store, e)
                            && !slot.0.stopping.load(Ordering::Acquire)
                            && Instant::now() + pause < deadline
                    }
                    _ => false,
                };
                if !again {
                    break r;
                }
                slot.0.retried.fetch_add(1, Ordering::Relaxed);
                // Until the pause is over, or shutdown: then once more at once.
                let stopping = slot.0.changed.notified();
                tokio::pin!(stopping);
                stopping.as_mut().enable();
                if !slot.0.stopping.load(Ordering::Acquire) {
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = stopping => {}
                    }
                }
                pause = (pause * 2).min(MAX_PAUSE);
            };
            if result.is_err() {
                slot.0.failed.fetch_add(1, Ordering::Relaxed);
            }
            done(result);
            drop(slot);
        });
        true
    }

    /// Background writes running now.
    pub fn writes_in_flight(&self) -> usize {
        self.writes.in_flight.load(Ordering::Acquire)
    }

    /// Background writes refused because [`MAX_IN_FLIGHT`] were running (since start).
    pub fn writes_overflowed(&self) -> u64 {
        self.writes.overflowed.load(Ordering::Relaxed)
    }

    /// Background writes whose last attempt failed (since start).
    pub fn writes_failed(&self) -> u64 {
        self.writes.failed.load(Ordering::Relaxed)
    }

    /// Attempts that failed and are being retried (since start).
    pub fn writes_retried(&self) -> u64 {
        self.writes.retried.load(Ordering::Relaxed)
    }

    /// At shutdown, after the last request ended: writes pausing between retries try once
    /// more at once, and this waits until every write has ended, at most twice the
    /// statement timeout (an attempt under way is bounded by one). False when some were
    /// still running then (they are lost with the process).
    pub async fn finish_writes(&self) -> bool {
        let writes = &self.writes;
        writes.stopping.store(true, Ordering::Release);
        writes.changed.notify_waiters();
        let all_done = async {
            loop {
                let changed = writes.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if writes.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(self.statement_timeout * 2, all_done)
            .await
            .is_ok()
    }
}

/// True when the store refused the statement as such, so retrying cannot help:
/// PostgreSQL's SQLSTATE classes 22, 23 and 42 (as the ledger's writer decides), or
/// SQLite's primary codes SQLITE_ERROR (a missing table, bad SQL), SQLITE_TOOBIG,
/// SQLITE_CONSTRAINT and SQLITE_MISMATCH (a busy or locked file is transient).
fn is_refused(store: &Store, e: &StoreError) -> bool {
    if store.is_shared() {
        return super::ledger::is_permanent(e);
    }
    let StoreError::Sql {
        source: sqlx::Error::Database(db),
        ..
    } = e
    else {
        return false;
    };
    let sqlite_code = db.code().and_then(|c| c.parse::<u32>().ok());
    sqlite_code.is_some_and(|c| matches!(c & 0xff, 1 | 18 | 19 | 20))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    async fn store(dir: &tempfile::TempDir, timeout_ms: u64) -> Store {
        let mut o = super::super::StoreOptions::sqlite(&dir.path().join("w.db"));
        o.statement_timeout = Duration::from_millis(timeout_ms);
        Store::open_with(o).await.unwrap()
    }

    fn unreachable() -> StoreError {
        StoreError::Timeout {
            what: "test".into(),
        }
    }

    /// Waits (a hang guard only) until no write of `s` runs.
    async fn idle(s: &Store) {
        for _ in 0..3000 {
            if s.writes_in_flight() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("writes still running: {}", s.writes_in_flight());
    }

    #[tokio::test]
    async fn writes_are_bounded_in_number_and_the_overflow_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir, 60_000).await;
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let ran = Arc::new(AtomicUsize::new(0));
        for _ in 0..MAX_IN_FLIGHT + 5 {
            let (gate, ran) = (Arc::clone(&gate), Arc::clone(&ran));
            s.write_behind(
                "test",
                Retry::Never,
                move |_| {
                    let (gate, ran) = (Arc::clone(&gate), Arc::clone(&ran));
                    async move {
                        let _p = gate.acquire().await;
                        ran.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }
                },
                |_| {},
            );
        }
        assert_eq!(s.writes_in_flight(), MAX_IN_FLIGHT);
        assert_eq!(s.writes_overflowed(), 5);
        gate.add_permits(MAX_IN_FLIGHT);
        idle(&s).await;
        assert_eq!(ran.load(Ordering::Relaxed), MAX_IN_FLIGHT);
        // Room again once they ended.
        let (tx, rx) = tokio::sync::oneshot::channel();
        assert!(s.write_behind(
            "test",
            Retry::Never,
            |_| async { Ok(()) },
            move |r| {
                let _ = tx.send(r.is_ok());
            }
        ));
        assert!(rx.await.unwrap());
        assert_eq!(s.writes_overflowed(), 5);
    }

    #[tokio::test]
    async fn a_store_that_does_not_answer_never_blocks_the_caller_and_each_write_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir, 50).await;
        // A write that would never end: the caller returns at once, the write ends at the
        // statement timeout with an error.
        let (tx, rx) = tokio::sync::oneshot::channel();
        assert!(s.write_behind(
            "hang",
            Retry::Never,
            |_| std::future::pending(),
            move |r| {
                let _ = tx.send(r);
            }
        ));
        assert_eq!(s.writes_in_flight(), 1);
        let r = rx.await.unwrap();
        assert!(matches!(r, Err(StoreError::Timeout { .. })), "{r:?}");
        idle(&s).await;
        assert_eq!(s.writes_failed(), 1);
        // A closed pool (PostgreSQL gone): the write fails, the caller never waited.
        s.close().await;
        let (tx, rx) = tokio::sync::oneshot::channel();
        assert!(s.write_behind(
            "closed",
            Retry::Never,
            |s: Store| async move { s.release_lease("x").await },
            move |r| {
                let _ = tx.send(r.is_err());
            }
        ));
        assert!(rx.await.unwrap());
    }

    /// Runs a write that fails `failures` times (the store unreachable), then succeeds;
    /// whether it went in, and its attempts.
    async fn flaky(s: &Store, retry: Retry, failures: usize) -> (bool, usize) {
        let attempts = Arc::new(AtomicUsize::new(0));
        let a = Arc::clone(&attempts);
        let (tx, rx) = tokio::sync::oneshot::channel();
        s.write_behind(
            "flaky",
            retry,
            move |_| {
                let n = a.fetch_add(1, Ordering::Relaxed);
                async move {
                    if n < failures {
                        Err(unreachable())
                    } else {
                        Ok(())
                    }
                }
            },
            move |r| {
                let _ = tx.send(r.is_ok());
            },
        );
        let ok = rx.await.unwrap();
        (ok, attempts.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn a_retried_write_goes_in_once_the_store_answers_again() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir, 60_000).await;
        assert_eq!(
            flaky(&s, Retry::For(Duration::from_secs(60)), 2).await,
            (true, 3)
        );
        assert_eq!(s.writes_retried(), 2);
        assert_eq!(s.writes_failed(), 0);
        // Without retries: one attempt.
        assert_eq!(flaky(&s, Retry::Never, 2).await, (false, 1));
        assert_eq!(s.writes_failed(), 1);
        // Retries end with their time (the first pause alone is longer than this).
        assert_eq!(
            flaky(&s, Retry::For(Duration::from_millis(10)), 2).await,
            (false, 1)
        );
    }

    #[tokio::test]
    async fn a_statement_the_store_refuses_is_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir, 60_000).await;
        let attempts = Arc::new(AtomicUsize::new(0));
        let a = Arc::clone(&attempts);
        let (tx, rx) = tokio::sync::oneshot::channel();
        s.write_behind(
            "bad",
            Retry::For(Duration::from_secs(60)),
            move |s: Store| {
                a.fetch_add(1, Ordering::Relaxed);
                async move {
                    sqlx::query("INSERT INTO no_such_table VALUES (1)")
                        .execute(&s.pool)
                        .await
                        .map(|_| ())
                        .map_err(super::super::sql("bad"))
                }
            },
            move |r| {
                let _ = tx.send(r.is_err());
            },
        );
        assert!(rx.await.unwrap());
        assert_eq!(attempts.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn shutdown_gives_a_retrying_write_one_last_attempt_and_waits_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir, 200).await;
        let attempts = Arc::new(AtomicUsize::new(0));
        let results = Arc::new(Mutex::new(Vec::new()));
        // Fails until shutdown: one attempt, then a pause; shutdown wakes it for one more.
        let a = Arc::clone(&attempts);
        let r = Arc::clone(&results);
        s.write_behind(
            "retrying",
            Retry::For(Duration::from_secs(3600)),
            move |_| {
                a.fetch_add(1, Ordering::Relaxed);
                async { Err(unreachable()) }
            },
            move |res| r.lock().unwrap().push(res.is_ok()),
        );
        // One that succeeds once it may (held until shutdown begins).
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let g = Arc::clone(&gate);
        let r = Arc::clone(&results);
        s.write_behind(
            "slow",
            Retry::Never,
            move |_| {
                let g = Arc::clone(&g);
                async move {
                    let _p = g.acquire().await;
                    Ok(())
                }
            },
            move |res| r.lock().unwrap().push(res.is_ok()),
        );
        // The retrying one made its first attempt (a count; the loop is a hang guard).
        for _ in 0..1000 {
            if attempts.load(Ordering::Relaxed) >= 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let before = attempts.load(Ordering::Relaxed);
        gate.add_permits(1);
        assert!(s.finish_writes().await);
        assert_eq!(s.writes_in_flight(), 0);
        // Exactly one attempt after shutdown began (or the pause had just ended).
        let after = attempts.load(Ordering::Relaxed);
        assert!(after > before && after <= before + 2, "{before} {after}");
        let mut got = results.lock().unwrap().clone();
        got.sort();
        assert_eq!(got, [false, true]);
        // A write that never ends: shutdown waits for it at most twice the timeout
        // (its own timeout ends it first).
        let dir2 = tempfile::tempdir().unwrap();
        let s2 = store(&dir2, 50).await;
        s2.write_behind("hang", Retry::Never, |_| std::future::pending(), |_| {});
        assert!(s2.finish_writes().await);
    }
}
