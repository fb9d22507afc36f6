//! Held runs: a run whose answer ended with the client's tool calls stays alive, its CLI
//! waiting inside the `tools/call` it sent, until the client's next request returns the
//! results. That request continues the very same run: no respawn, no replayed history,
//! no extra upstream call.
//!
//! Rules:
//! - **Exact match only.** A run is held under the [`Fingerprint`] of the conversation up
//!   to and including the answer with the calls (tenant, model, system prompt, tools, every
//!   message); only a request whose earlier turns hash to it, from the same tenant, takes it.
//! - **Bounded.** At most `cap` held runs (the oldest goes first); one held longer than
//!   `timeout` is ended. Ending a held run kills its process without answering its calls
//!   (an answer would only start a model call nobody waits for); a late continuation then
//!   runs fresh from the history it carries.
//! - [`HeldStore::close`] (shutdown, rules reload, unhealthy verdict) ends them all.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::present::Fingerprint;
use super::run::CliRun;
use super::stats::BackendStats;

/// One held run: the key of its conversation, the run, the calls it waits for.
struct Held {
    key: Fingerprint,
    run: CliRun,
    calls: Vec<String>,
    since: tokio::time::Instant,
}

/// The held runs of one backend.
pub(super) struct HeldStore {
    cap: usize,
    timeout: Duration,
    stats: Arc<BackendStats>,
    entries: Mutex<Vec<Held>>,
    closed: AtomicBool,
    sweeping: AtomicBool,
    wake: Notify,
}

impl HeldStore {
    pub(super) fn new(cap: usize, timeout: Duration, stats: Arc<BackendStats>) -> HeldStore {
        HeldStore {
            cap,
            timeout,
            stats,
            entries: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            sweeping: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Held>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, n: usize) {
        self.stats.held_runs.store(n, Ordering::Relaxed);
    }

    /// Holds `run` (waiting for the results of `calls`) under `key`; the oldest held run
    /// goes if that makes too many. Without room at all the run ends at once.
    pub(super) fn hold(self: &Arc<Self>, key: Fingerprint, run: CliRun, calls: Vec<String>) {
        let dropped: Vec<Held> = {
            let mut entries = self.lock();
            if self.cap == 0 || self.closed.load(Ordering::Acquire) {
                drop(entries);
                run.stop();
                return;
            }
            // A second answer with calls for the same conversation replaces the first.
            let mut dropped: Vec<Held> = Vec::new();
            if let Some(i) = entries.iter().position(|h| h.key == key) {
                dropped.push(entries.remove(i));
            }
            entries.push(Held {
                key,
                run,
                calls,
                since: tokio::time::Instant::now(),
            });
            while entries.len() > self.cap {
                dropped.push(entries.remove(0));
            }
            self.publish(entries.len());
            dropped
        };
        self.stats
            .held_evicted_total
            .fetch_add(dropped.len() as u64, Ordering::Relaxed);
        end(dropped);
        if !self.sweeping.swap(true, Ordering::AcqRel) {
            tokio::spawn(Arc::clone(self).sweep());
        }
    }

    /// The run held under `key`, if it is still there and `accept` takes the calls it
    /// waits for (returning what continues them). A run whose calls `accept` refuses is
    /// ended: its conversation went on without them.
    pub(super) fn take<T>(
        &self,
        key: &Fingerprint,
        accept: impl FnOnce(&[String]) -> Option<T>,
    ) -> Option<(CliRun, T)> {
        let h = {
            let mut entries = self.lock();
            let i = entries.iter().position(|h| h.key == *key)?;
            let h = entries.remove(i);
            self.publish(entries.len());
            h
        };
        let Some(with) = accept(&h.calls) else {
            h.run.stop();
            return None;
        };
        self.stats
            .held_continued_total
            .fetch_add(1, Ordering::Relaxed);
        Some((h.run, with))
    }

    /// Ends every held run.
    pub(super) fn clear(&self) {
        let drained: Vec<Held> = {
            let mut entries = self.lock();
            self.publish(0);
            entries.drain(..).collect()
        };
        end(drained);
        self.wake.notify_one();
    }

    /// Ends every held run and refuses new ones for good (shutdown).
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.clear();
    }

    /// Ends held runs older than `timeout`, until none is left.
    async fn sweep(self: Arc<Self>) {
        loop {
            let next = {
                let mut entries = self.lock();
                let (expired, kept): (Vec<Held>, Vec<Held>) = entries
                    .drain(..)
                    .partition(|h| h.since.elapsed() >= self.timeout);
                *entries = kept;
                self.publish(entries.len());
                self.stats
                    .held_expired_total
                    .fetch_add(expired.len() as u64, Ordering::Relaxed);
                if !expired.is_empty() {
                    tracing::info!(
                        runs = expired.len(),
                        "held tool calls expired; their CLI processes are ended"
                    );
                }
                end(expired);
                entries.iter().map(|h| h.since + self.timeout).min()
            };
            let Some(at) = next else {
                self.sweeping.store(false, Ordering::Release);
                if !self.lock().is_empty() && !self.sweeping.swap(true, Ordering::AcqRel) {
                    continue;
                }
                return;
            };
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                () = self.wake.notified() => {}
            }
        }
    }

    /// Pids of the held runs' processes (tests).
    pub(super) fn pids(&self) -> Vec<u32> {
        self.lock().iter().filter_map(|h| h.run.pid()).collect()
    }
}

/// Ends runs: their drivers kill and reap the processes and free the slots.
fn end(held: Vec<Held>) {
    for h in held {
        h.run.stop();
    }
}
