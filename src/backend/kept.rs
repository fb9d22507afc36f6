//! Kept conversations: a CLI process that answered a turn cleanly stays alive (stdin open)
//! under the [`Fingerprint`] of exactly the conversation it holds, so the next request of
//! that conversation writes only its new user message.
//!
//! Rules:
//! - **Exact match only.** A request continues a kept process only when the fingerprint of
//!   its earlier turns equals the process's key (tenant, model, system prompt, every
//!   message, the process's own answer). Anything else runs fresh. A process is handed to
//!   one request at a time (taken out while it runs).
//! - **Bounded.** At most `cap` kept processes; the least recently used one goes first.
//!   Each holds a concurrency slot; a request that finds no free slot evicts the least
//!   recently used kept process rather than wait (`admission`). One idle longer than
//!   `idle_timeout` is ended by the sweeper.
//! - **Fresh.** A kept process that exited or printed anything while idle is never handed
//!   out. [`KeptStore::invalidate`] (rules reload, unhealthy verdict) ends them all;
//!   [`KeptStore::close`] (shutdown) also refuses new ones.
//! - **Hygiene.** Every ended process goes through `Spawned::reap` before its slot is freed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit};

use super::child::Spawned;
use super::present::Fingerprint;
use super::stats::BackendStats;

/// How long a kept process being ended may take to exit by itself.
const GRACEFUL_EXIT: Duration = Duration::from_secs(2);

/// One kept process, the slot it holds and the conversation it holds.
pub(super) struct Kept {
    pub(super) key: Fingerprint,
    pub(super) proc: Spawned,
    pub(super) permit: OwnedSemaphorePermit,
    since: tokio::time::Instant,
}

impl Kept {
    pub(super) fn new(key: Fingerprint, proc: Spawned, permit: OwnedSemaphorePermit) -> Kept {
        Kept {
            key,
            proc,
            permit,
            since: tokio::time::Instant::now(),
        }
    }

    /// Ends the process, then frees its slot: stdin is closed first so the CLI exits on its
    /// own and tidies its state directory (a SIGKILLed CLI leaves its files behind); what
    /// is still running after [`GRACEFUL_EXIT`] is killed, and everything is reaped.
    pub(super) async fn retire(self) {
        let Kept {
            mut proc, permit, ..
        } = self;
        proc.close_stdin().await;
        let deadline = tokio::time::Instant::now() + GRACEFUL_EXIT;
        while !proc.leader_exited() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = proc.reap().await;
        drop(permit);
    }
}

/// The kept processes of one backend.
pub(super) struct KeptStore {
    cap: usize,
    idle_timeout: Duration,
    stats: Arc<BackendStats>,
    entries: Mutex<VecDeque<Kept>>,
    closed: AtomicBool,
    sweeping: AtomicBool,
    wake: Notify,
}

impl KeptStore {
    pub(super) fn new(cap: usize, idle_timeout: Duration, stats: Arc<BackendStats>) -> Self {
        KeptStore {
            cap,
            idle_timeout,
            stats,
            entries: Mutex::new(VecDeque::new()),
            closed: AtomicBool::new(false),
            sweeping: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// Whether processes may be kept at all (`cap` > 0, not closed).
    pub(super) fn enabled(&self) -> bool {
        self.cap > 0 && !self.closed.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Kept>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, n: usize) {
        self.stats.kept_idle.store(n, Ordering::Relaxed);
    }

    /// The kept process holding exactly the conversation `key`, if it is still usable.
    pub(super) fn checkout(&self, key: &Fingerprint) -> Option<Kept> {
        let (found, dead) = {
            let mut entries = self.lock();
            let found = entries
                .iter()
                .position(|k| k.key == *key)
                .and_then(|i| entries.remove(i));
            self.publish(entries.len());
            match found {
                Some(mut k) => {
                    if k.since.elapsed() < self.idle_timeout && k.proc.idle_usable() {
                        (Some(k), None)
                    } else {
                        (None, Some(k))
                    }
                }
                None => (None, None),
            }
        };
        if let Some(k) = dead {
            retire_in_background(vec![k]);
        }
        let counter = if found.is_some() {
            &self.stats.kept_hits_total
        } else {
            &self.stats.kept_misses_total
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Keeps `kept` (the least recently used one goes if that makes too many), or hands it
    /// back when nothing may be kept (then the caller ends it). Checked under the lock
    /// [`KeptStore::close`] takes, so a process offered during shutdown is either ended by
    /// `close` or handed back, never left behind.
    pub(super) fn offer(self: &Arc<Self>, kept: Kept) -> Option<Kept> {
        let evicted = {
            let mut entries = self.lock();
            if self.cap == 0 || self.closed.load(Ordering::Acquire) {
                return Some(kept);
            }
            entries.push_back(kept);
            let mut evicted = Vec::new();
            while entries.len() > self.cap {
                evicted.extend(entries.pop_front());
            }
            self.publish(entries.len());
            evicted
        };
        self.stats
            .kept_evicted_total
            .fetch_add(evicted.len() as u64, Ordering::Relaxed);
        retire_in_background(evicted);
        if !self.sweeping.swap(true, Ordering::AcqRel) {
            tokio::spawn(Arc::clone(self).sweep());
        }
        None
    }

    /// The least recently used kept process, so a request can have its slot.
    pub(super) fn evict_one(&self) -> Option<Kept> {
        let mut entries = self.lock();
        let k = entries.pop_front();
        self.publish(entries.len());
        if k.is_some() {
            self.stats
                .kept_evicted_total
                .fetch_add(1, Ordering::Relaxed);
        }
        k
    }

    /// Ends every kept process (in the background).
    pub(super) fn invalidate(&self) {
        let drained: Vec<Kept> = {
            let mut entries = self.lock();
            let drained = entries.drain(..).collect();
            self.publish(0);
            drained
        };
        retire_in_background(drained);
        self.wake.notify_one();
    }

    /// Refuses new kept processes for good and ends the kept ones; returns once they are
    /// reaped.
    pub(super) async fn close(&self) {
        let drained: Vec<Kept> = {
            let mut entries = self.lock();
            self.closed.store(true, Ordering::Release);
            self.publish(0);
            entries.drain(..).collect()
        };
        self.wake.notify_one();
        for k in drained {
            k.retire().await;
        }
    }

    /// Refuses new kept processes for good, at once; the kept ones wait for
    /// [`KeptStore::close`] to end them (`serve` awaits it before it returns).
    pub(super) fn refuse_new(&self) {
        let _entries = self.lock();
        self.closed.store(true, Ordering::Release);
    }

    /// Ends kept processes idle longer than `idle_timeout`, until none is left.
    async fn sweep(self: Arc<Self>) {
        loop {
            let next = {
                let mut entries = self.lock();
                let mut expired = Vec::new();
                while entries
                    .front()
                    .is_some_and(|k| k.since.elapsed() >= self.idle_timeout)
                {
                    expired.extend(entries.pop_front());
                }
                self.publish(entries.len());
                self.stats
                    .kept_expired_total
                    .fetch_add(expired.len() as u64, Ordering::Relaxed);
                retire_in_background(expired);
                // Entries are in order of their last use: the front one expires first.
                entries.front().map(|k| k.since + self.idle_timeout)
            };
            let Some(at) = next else {
                self.sweeping.store(false, Ordering::Release);
                // An offer may have come in between: make sure someone sweeps it.
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

    /// Pids of the kept processes, least recently used first (tests, debugging).
    pub(super) fn pids(&self) -> Vec<u32> {
        self.lock().iter().map(|k| k.proc.pid()).collect()
    }
}

fn retire_in_background(kept: Vec<Kept>) {
    if kept.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for k in kept {
            k.retire().await;
        }
    });
}
