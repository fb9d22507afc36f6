//! The one store of parked CLI processes: pre-warmed processes (`pool.rs`), kept
//! conversations (`kept.rs`) and held tool runs (`held.rs`) in one [`Registry`] (one key
//! type, one LRU, the caps per kind and per tenant, eviction for a slot), with one expiry
//! sweep and each kind's one end path.
//!
//! - **Sweep.** One task, started when something is parked, sleeps until the next expiry
//!   (or a wake-up), ends what expired, and ends once nothing is parked or the store is
//!   closed (shutdown: [`ParkedStore::close`] / [`ParkedStore::refuse_new`]).
//! - **Dead entries.** A held run whose driver ended (its CLI died, a watchdog) leaves at
//!   once (a watcher per held run), so the gauge counts only live runs; a kept or
//!   pre-warmed process found dead at checkout is ended and not handed out (the pool's
//!   refill also looks for dead pre-warmed ones on every tick:
//!   [`ParkedStore::end_dead_prewarmed`]). None counts as continued.
//! - **Ending.** Pre-warmed: kill the group and reap (it has seen no prompt and has no
//!   files to tidy), free the slot. Kept: close stdin, let the CLI exit and tidy its files,
//!   kill after `GRACEFUL_EXIT`, reap, free the slot (in the background). Held: stop the
//!   run (its driver kills, reaps and frees the slot).
//! - **Accounts.** A kept or pre-warmed process is only handed to its own account (its key
//!   is `Fingerprint::on_account`); [`ParkedStore::invalidate`] ends the pre-warmed and kept
//!   processes of one account (an unhealthy suspicion) or of all (a rules reload); a
//!   pre-warmed process spawned before an invalidation is refused when it is parked after
//!   it (the epoch).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::handle::{CliRun, ToolResults};
use super::held::HeldRun;
use super::kept::Kept;
use super::present::Fingerprint;
use super::prewarmed::Idle;
use super::registry::{Entry, Kind, Limits, Parked, Registry};
use super::request::name_of;
use super::stats::BackendStats;

/// A parked process of any kind.
pub(super) enum Proc {
    Prewarmed(Box<Idle>),
    Kept(Box<Kept>),
    Held(HeldRun),
}

impl Proc {
    fn pid(&self) -> Option<u32> {
        match self {
            Proc::Prewarmed(i) => Some(i.proc.pid()),
            Proc::Kept(k) => Some(k.proc.pid()),
            Proc::Held(h) => h.run.pid(),
        }
    }

    /// The name of the account it runs on (None: a held run, not filed by account here).
    fn account(&self) -> Option<Option<&str>> {
        match self {
            Proc::Prewarmed(i) => Some(name_of(i.account.as_ref())),
            Proc::Kept(k) => Some(name_of(k.account.as_ref())),
            Proc::Held(_) => None,
        }
    }
}

/// What the admission got from [`ParkedStore::evict_for_slot`].
pub(super) enum Evicted {
    /// A pre-warmed process: the request takes its slot once it is ended.
    Prewarmed(Box<Idle>),
    /// A kept process: the request takes its slot once it is ended.
    Kept(Box<Kept>),
    /// A held run was stopped: its slot is freed by its driver, shortly.
    Held,
}

/// The pre-warmed, kept and held processes of one backend.
pub(super) struct ParkedStore {
    reg: Mutex<Registry<Proc>>,
    stats: Arc<BackendStats>,
    sweeping: AtomicBool,
    wake: Notify,
    /// Counts invalidations (changed under the registry's lock): a pre-warmed process
    /// spawned in an earlier epoch is refused.
    epoch: AtomicU64,
}

impl ParkedStore {
    pub(super) fn new(
        prewarmed: Limits,
        kept: Limits,
        held: Limits,
        stats: Arc<BackendStats>,
    ) -> ParkedStore {
        ParkedStore {
            reg: Mutex::new(Registry::new(kept, held).with_prewarmed(prewarmed)),
            stats,
            sweeping: AtomicBool::new(false),
            wake: Notify::new(),
            epoch: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry<Proc>> {
        self.reg.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, reg: &Registry<Proc>) {
        self.stats
            .pool_idle
            .store(reg.count(Kind::Prewarmed), Ordering::Relaxed);
        self.stats
            .kept_idle
            .store(reg.count(Kind::Kept), Ordering::Relaxed);
        self.stats
            .held_runs
            .store(reg.count(Kind::Held), Ordering::Relaxed);
    }

    /// Whether processes may be kept at all (`keep_conversations` > 0, not closed).
    pub(super) fn keeps(&self) -> bool {
        self.lock().accepts(Kind::Kept)
    }

    /// The kept process holding exactly the conversation `key`, if it is still usable.
    pub(super) fn checkout_kept(&self, key: &Fingerprint) -> Option<Kept> {
        let found = {
            let mut reg = self.lock();
            let found = reg.take(Kind::Kept, key);
            self.publish(&reg);
            found
        };
        let kept = match found.map(|e| e.value) {
            Some(Proc::Kept(mut k)) => {
                if k.proc.idle_usable() {
                    Some(*k)
                } else {
                    end_all(vec![Proc::Kept(k)]);
                    None
                }
            }
            Some(other) => {
                end_all(vec![other]);
                None
            }
            None => None,
        };
        let counter = if kept.is_some() {
            &self.stats.kept_hits_total
        } else {
            &self.stats.kept_misses_total
        };
        counter.fetch_add(1, Ordering::Relaxed);
        kept
    }

    /// The oldest live pre-warmed process parked under `key` (dead ones met on the way are
    /// ended and counted).
    pub(super) fn checkout_prewarmed(&self, key: &Fingerprint) -> Option<Idle> {
        loop {
            let found = {
                let mut reg = self.lock();
                let found = reg.take(Kind::Prewarmed, key);
                self.publish(&reg);
                found
            }?;
            match found.value {
                Proc::Prewarmed(mut i) => {
                    if i.proc.idle_usable() {
                        return Some(*i);
                    }
                    self.stats.pool_died_total.fetch_add(1, Ordering::Relaxed);
                    end_all(vec![Proc::Prewarmed(i)]);
                }
                other => end_all(vec![other]),
            }
        }
    }

    /// The current epoch, to hand to [`ParkedStore::park_prewarmed`] with a process
    /// spawned now.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Parks a pre-warmed process under `key` for its account `owner`, unless the pool is
    /// closed or an invalidation came since `epoch` (then it is handed back to be ended).
    pub(super) fn park_prewarmed(
        self: &Arc<Self>,
        key: Fingerprint,
        owner: &str,
        idle: Idle,
        epoch: u64,
    ) -> Result<(), Box<Idle>> {
        let parked = {
            let mut reg = self.lock();
            if self.epoch.load(Ordering::Acquire) != epoch {
                return Err(Box::new(idle));
            }
            let now = tokio::time::Instant::now();
            let parked = reg.park(
                Kind::Prewarmed,
                key,
                owner,
                Proc::Prewarmed(Box::new(idle)),
                now,
            );
            self.publish(&reg);
            parked
        };
        match parked {
            Parked::Yes { ended, .. } => {
                self.after_park(ended);
                Ok(())
            }
            Parked::Refused(Proc::Prewarmed(i)) => Err(i),
            Parked::Refused(other) => {
                end_all(vec![other]);
                Ok(())
            }
        }
    }

    /// How many pre-warmed processes are parked for the account `owner`.
    pub(super) fn prewarmed_of(&self, owner: &str) -> usize {
        self.lock().count_of(Kind::Prewarmed, owner)
    }

    /// How many pre-warmed processes are parked.
    pub(super) fn prewarmed(&self) -> usize {
        self.lock().count(Kind::Prewarmed)
    }

    /// Whether a pre-warmed process has stayed alive for `age` (its start worked).
    pub(super) fn prewarmed_survived(&self, age: std::time::Duration) -> bool {
        let now = tokio::time::Instant::now();
        self.lock()
            .iter()
            .any(|e| e.kind == Kind::Prewarmed && now.saturating_duration_since(e.since) >= age)
    }

    /// Ends the pre-warmed processes that exited or printed something while idle; returns
    /// how many.
    pub(super) fn end_dead_prewarmed(&self) -> usize {
        let dead = {
            let mut reg = self.lock();
            let ids: Vec<u64> = reg
                .iter_mut()
                .filter_map(|e| match &mut e.value {
                    Proc::Prewarmed(i) => (!i.proc.idle_usable()).then_some(e.id),
                    _ => None,
                })
                .collect();
            let dead: Vec<_> = ids.into_iter().filter_map(|id| reg.take_id(id)).collect();
            self.publish(&reg);
            dead
        };
        let n = dead.len();
        self.stats
            .pool_died_total
            .fetch_add(n as u64, Ordering::Relaxed);
        end_all(dead.into_iter().map(|e| e.value).collect());
        n
    }

    /// Ends the pre-warmed processes of the accounts `keep` refuses (they cannot serve
    /// now); returns how many.
    pub(super) fn drain_prewarmed_unless(&self, keep: impl Fn(Option<&str>) -> bool) -> usize {
        let drained = {
            let mut reg = self.lock();
            let drained = reg.take_where(Kind::Prewarmed, |e| {
                e.value.account().is_some_and(|name| !keep(name))
            });
            self.publish(&reg);
            drained
        };
        let n = drained.len();
        self.stats
            .pool_drained_total
            .fetch_add(n as u64, Ordering::Relaxed);
        end_all(drained.into_iter().map(|e| e.value).collect());
        n
    }

    /// Refuses pre-warmed processes for good and takes those parked (the pool's end: the
    /// caller ends them, with or without a runtime).
    pub(super) fn close_prewarmed(&self) -> Vec<Idle> {
        let drained = {
            let mut reg = self.lock();
            let drained = reg.close_kind(Kind::Prewarmed);
            self.publish(&reg);
            drained
        };
        self.wake.notify_one();
        drained
            .into_iter()
            .filter_map(|e| match e.value {
                Proc::Prewarmed(i) => Some(*i),
                other => {
                    end_all(vec![other]);
                    None
                }
            })
            .collect()
    }

    /// Whether pre-warmed processes may still be parked (the pool is on and not closed).
    pub(super) fn takes_prewarmed(&self) -> bool {
        self.lock().accepts(Kind::Prewarmed)
    }

    /// Keeps `kept` under `key` for `tenant`, or hands it back when nothing may be kept
    /// (the caller ends it). Checked under the lock [`ParkedStore::close`] takes, so a
    /// process offered during shutdown is either ended by `close` or handed back.
    pub(super) fn offer_kept(
        self: &Arc<Self>,
        key: Fingerprint,
        tenant: &str,
        kept: Kept,
    ) -> Option<Kept> {
        match self.park(Kind::Kept, key, tenant, Proc::Kept(Box::new(kept))) {
            Ok(_) => None,
            Err(Proc::Kept(k)) => Some(*k),
            Err(other) => {
                end_all(vec![other]);
                None
            }
        }
    }

    /// Holds `held` under `key` for `tenant` until the client's results come; without
    /// room it ends at once.
    pub(super) fn hold(self: &Arc<Self>, key: Fingerprint, tenant: &str, held: HeldRun) {
        let gone = held.run.gone();
        held.run.set_held(true);
        match self.park(Kind::Held, key, tenant, Proc::Held(held)) {
            Ok(id) => {
                // A held run whose driver ends (the CLI died) leaves at once.
                let store = Arc::clone(self);
                tokio::spawn(async move {
                    gone.await;
                    let dead = {
                        let mut reg = store.lock();
                        let dead = reg.take_id(id);
                        store.publish(&reg);
                        dead
                    };
                    if let Some(e) = dead {
                        tracing::debug!("a held run ended while it waited for its results");
                        end_all(vec![e.value]);
                    }
                });
            }
            Err(refused) => end_all(vec![refused]),
        }
    }

    fn park(
        self: &Arc<Self>,
        kind: Kind,
        key: Fingerprint,
        tenant: &str,
        proc: Proc,
    ) -> Result<u64, Proc> {
        let (id, ended) = {
            let mut reg = self.lock();
            let parked = reg.park(kind, key, tenant, proc, tokio::time::Instant::now());
            self.publish(&reg);
            match parked {
                Parked::Refused(p) => return Err(p),
                Parked::Yes { id, ended } => (id, ended),
            }
        };
        self.after_park(ended);
        Ok(id)
    }

    /// Ends what a park pushed out and makes sure the sweep runs.
    fn after_park(self: &Arc<Self>, ended: Vec<Entry<Proc>>) {
        self.count_ended(&ended, Gone::Evicted);
        end_all(ended.into_iter().map(|e| e.value).collect());
        if !self.sweeping.swap(true, Ordering::AcqRel) {
            tokio::spawn(Arc::clone(self).sweep());
        }
    }

    /// The run held under `key`, continued with what `accept` makes of the calls it waits
    /// for: `Some` is sent to the run, which is returned (counted as continued). A run
    /// whose calls `accept` refuses is ended (its conversation went on without them); a
    /// run that died meanwhile is not counted.
    pub(super) fn continue_held(
        &self,
        key: &Fingerprint,
        accept: impl FnOnce(&[String]) -> Option<ToolResults>,
    ) -> Option<CliRun> {
        let entry = {
            let mut reg = self.lock();
            let e = reg.take(Kind::Held, key);
            self.publish(&reg);
            e
        }?;
        let Proc::Held(held) = entry.value else {
            return None;
        };
        let Some(results) = accept(&held.calls) else {
            held.end();
            return None;
        };
        held.run.set_held(false);
        if !held.run.send_results(results) {
            held.end();
            return None;
        }
        self.stats
            .held_continued_total
            .fetch_add(1, Ordering::Relaxed);
        Some(held.run)
    }

    /// Ends the held runs of conversations that `asked` names (the fingerprints of a
    /// request's user turns): that request goes on without their results. Returns how
    /// many were ended.
    pub(super) fn end_held_asked(&self, asked: &HashSet<Fingerprint>) -> usize {
        let ended = {
            let mut reg = self.lock();
            let ended = reg.take_where(Kind::Held, |e| match &e.value {
                Proc::Held(h) => asked.contains(&h.asked),
                _ => false,
            });
            self.publish(&reg);
            ended
        };
        let n = ended.len();
        if n > 0 {
            self.stats
                .held_abandoned_total
                .fetch_add(n as u64, Ordering::Relaxed);
            tracing::debug!(
                runs = n,
                "the conversation went on without the held calls' results; their runs end"
            );
        }
        end_all(ended.into_iter().map(|e| e.value).collect());
        n
    }

    /// Ends one parked process so that a request need not wait for a slot: the oldest
    /// pre-warmed one, else the oldest kept one (either handed over: the request takes its
    /// slot), else the oldest held one.
    pub(super) fn evict_for_slot(&self) -> Option<Evicted> {
        let e = {
            let mut reg = self.lock();
            let e = reg.evict_for_slot();
            self.publish(&reg);
            e
        }?;
        match e.value {
            Proc::Prewarmed(i) => {
                self.stats
                    .pool_evicted_total
                    .fetch_add(1, Ordering::Relaxed);
                Some(Evicted::Prewarmed(i))
            }
            Proc::Kept(k) => {
                self.stats
                    .kept_evicted_total
                    .fetch_add(1, Ordering::Relaxed);
                Some(Evicted::Kept(k))
            }
            Proc::Held(h) => {
                self.stats
                    .held_evicted_total
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!("a held tool run was ended to give a waiting request its slot");
                h.end();
                Some(Evicted::Held)
            }
        }
    }

    /// Ends the pre-warmed and kept processes of `account` (None: of every account), in
    /// the background; pre-warmed processes spawned before this are refused.
    pub(super) fn invalidate(&self, account: Option<Option<&str>>) {
        let drained = {
            let mut reg = self.lock();
            self.epoch.fetch_add(1, Ordering::AcqRel);
            let drained = reg.take_all(|e| match (e.value.account(), account) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(name), Some(wanted)) => name == wanted,
            });
            self.publish(&reg);
            drained
        };
        let warm = drained.iter().filter(|e| e.kind == Kind::Prewarmed).count();
        self.stats
            .pool_drained_total
            .fetch_add(warm as u64, Ordering::Relaxed);
        if warm > 0 {
            tracing::debug!(count = warm, "pre-warmed processes drained");
        }
        end_all(drained.into_iter().map(|e| e.value).collect());
        self.wake.notify_one();
    }

    /// Refuses new entries for good and ends every parked process; returns once the kept
    /// ones are reaped (held runs end in their drivers).
    pub(super) async fn close(&self) {
        let drained = {
            let mut reg = self.lock();
            let drained = reg.close();
            self.publish(&reg);
            drained
        };
        self.wake.notify_one();
        for e in drained {
            match e.value {
                Proc::Prewarmed(i) => i.retire().await,
                Proc::Kept(k) => k.retire().await,
                Proc::Held(h) => h.end(),
            }
        }
    }

    /// Refuses new entries for good and ends the held runs, at once; the kept ones wait
    /// for [`ParkedStore::close`] to end them (`serve` awaits it before it returns).
    pub(super) fn refuse_new(&self) {
        let held = {
            let mut reg = self.lock();
            reg.refuse();
            let held = reg.take_where(Kind::Held, |_| true);
            self.publish(&reg);
            held
        };
        end_all(held.into_iter().map(|e| e.value).collect());
        self.wake.notify_one();
    }

    /// Ends what expired, until nothing is parked or the store is closed.
    async fn sweep(self: Arc<Self>) {
        loop {
            let (expired, next, closed) = {
                let mut reg = self.lock();
                let expired = reg.expire(tokio::time::Instant::now());
                self.publish(&reg);
                (expired, reg.next_expiry(), reg.is_closed())
            };
            if expired.iter().any(|e| e.kind == Kind::Held) {
                tracing::info!(
                    runs = expired.iter().filter(|e| e.kind == Kind::Held).count(),
                    "held tool calls expired; their CLI processes are ended"
                );
            }
            self.count_ended(&expired, Gone::Expired);
            end_all(expired.into_iter().map(|e| e.value).collect());
            let Some(at) = next.filter(|_| !closed) else {
                self.sweeping.store(false, Ordering::Release);
                // Something may have been parked in between: make sure someone sweeps it.
                let again = {
                    let reg = self.lock();
                    reg.next_expiry().is_some() && !reg.is_closed()
                };
                if again && !self.sweeping.swap(true, Ordering::AcqRel) {
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

    fn count_ended(&self, entries: &[Entry<Proc>], why: Gone) {
        let s = &self.stats;
        for e in entries {
            let counter = match (e.kind, why) {
                (Kind::Prewarmed, Gone::Evicted) => &s.pool_evicted_total,
                (Kind::Prewarmed, Gone::Expired) => &s.pool_expired_total,
                (Kind::Kept, Gone::Evicted) => &s.kept_evicted_total,
                (Kind::Kept, Gone::Expired) => &s.kept_expired_total,
                (Kind::Held, Gone::Evicted) => &s.held_evicted_total,
                (Kind::Held, Gone::Expired) => &s.held_expired_total,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Pids of the parked processes of `kind`, least recently parked first (tests).
    pub(super) fn pids(&self, kind: Kind) -> Vec<u32> {
        self.lock()
            .iter()
            .filter(|e| e.kind == kind)
            .filter_map(|e| e.value.pid())
            .collect()
    }

    /// The tenants owning the parked processes of `kind`, oldest first (tests).
    pub(super) fn tenants(&self, kind: Kind) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.tenant.clone())
            .collect()
    }
}

/// Why parked entries left (for the counters).
#[derive(Clone, Copy)]
enum Gone {
    Evicted,
    Expired,
}

/// Ends parked processes by their kind's end path (pre-warmed and kept ones in the
/// background).
fn end_all(procs: Vec<Proc>) {
    let mut later = Vec::new();
    for p in procs {
        match p {
            Proc::Held(h) => h.end(),
            other => later.push(other),
        }
    }
    if !later.is_empty() {
        tokio::spawn(async move {
            for p in later {
                match p {
                    Proc::Prewarmed(i) => i.retire().await,
                    Proc::Kept(k) => k.retire().await,
                    Proc::Held(h) => h.end(),
                }
            }
        });
    }
}
