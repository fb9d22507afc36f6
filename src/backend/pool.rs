//! The pre-warmed pool (`cli.prewarm`): idle CLI processes spawned ahead of time without
//! per-request settings, each used for exactly ONE first turn and then retired.
//!
//! Why it helps: a CLI started with `--input-format stream-json` does its ~0.6 s start-up
//! work right away, then prints nothing until its first stdin line arrives; a request that
//! takes such a process only pays the turn itself.
//!
//! Rules:
//! - **Where they wait.** The idle processes are parked in the one registry of parked
//!   processes (`parked.rs`, kind pre-warmed): its LRU, its expiry sweep
//!   (`cli.prewarm_max_idle`), its eviction order (pre-warmed first), its end path (kill
//!   and reap) and its per-account keys. What is left here is the refill task that keeps
//!   `prewarm` of them parked, and the rule of which request may take one.
//! - **Key.** A process is spawned with `--model=<cli.prewarm_model>` (none = the CLI's
//!   default), `--system-prompt ""` and the configured tools, no client tools and no
//!   options, and no `initialize` (the CLI takes it once); it is parked under
//!   [`Pool::key`] (those flags, on its account). Any first turn of that account takes one:
//!   its system prompt, schema, client tools, model and effort are written over the control
//!   channel before its prompt (`late.rs`). Earlier turns and thinking options cannot be
//!   set after spawn: those requests cold-spawn, counted by reason. The health probe
//!   (`bypass_queue`) never takes one.
//! - **One conversation per process.** The request writes its one user line and closes
//!   stdin; the process exits after that turn and the run reaps it like a cold one. No
//!   process ever sees a second prompt.
//! - **Concurrency.** Every idle process holds a slot of the shared limiter, so
//!   idle + running ≤ `max_concurrent`. The pool refills only from free slots (a queued
//!   request wins a freed slot: tokio's semaphore is fair). A request that cannot take an
//!   idle process and finds no free slot evicts the oldest idle process (the registry's
//!   eviction order) and takes its slot.
//! - **Freshness.** An idle process that exited (checked with `waitid(WNOWAIT)` on every
//!   tick and at hand-over) or printed anything is never handed out; one older than
//!   `cli.prewarm_max_idle` is expired by the registry's sweep; an invalidation (rules
//!   reload, unhealthy verdict) drains the idle processes (all, or one account's), and
//!   processes spawned before it (the registry's epoch) are refused on arrival. While the
//!   gate closure says "not ready" (health unhealthy, first probe pending) the pool stays
//!   empty.
//! - **CPU.** No refill starts while a pooled run is still waiting for its first stdout
//!   line: a CLI start-up takes ~0.6 s of CPU and would slow exactly that turn.
//! - **Hygiene.** Every discarded process goes through `Spawned::reap` (kill group +
//!   reap) before its slot is released; one dropped without it (a cancelled task, no
//!   runtime left) is still killed and reaped by its guard.
//! - **Hand-over.** A pooled process that ends without a single stdout line after its
//!   prompt is re-run cold once by the driver (nothing reached the client), counted as
//!   `ccgate_pool_misses_total{reason="handover"}`.
//! - **End.** Once the shutdown signal fires, `Backend::abort_all` is called or the
//!   [`PoolHandle`] is shut down or dropped, the pool is closed for good: the registry
//!   refuses pre-warmed processes, every idle one is retired, the refill task ends.
//!   [`PoolHandle::shutdown`] awaits that.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest as _;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::child::spawn_cli;
use super::late;
use super::parked::ParkedStore;
use super::present::Fingerprint;
pub(super) use super::prewarmed::Idle;
use super::request::{name_of, Account, CliRequest, CliSettings};
use super::stats::{BackendStats, PoolMiss};
use crate::shutdown::Shutdown;

/// How often the refill task checks idle processes (exit) and refills.
const TICK: Duration = Duration::from_millis(200);
/// Back-off after a pool process failed to spawn or died while idle (doubles up to MAX).
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// An idle process alive this long counts as a successful start (resets the back-off).
const SURVIVED: Duration = Duration::from_secs(2);

/// The accounts the pool may keep processes for now (empty: none, the pool stays empty;
/// `None` in the list: the implicit account).
pub(super) type ReadyAccounts = Box<dyn Fn() -> Vec<Option<Arc<Account>>> + Send + Sync>;

/// What the pool needs from its backend: how to spawn, where to count, the concurrency
/// slots its idle processes hold, and the registry they wait in.
pub(super) struct PoolDeps {
    pub(super) settings: Arc<CliSettings>,
    pub(super) stats: Arc<BackendStats>,
    pub(super) slots: Arc<Semaphore>,
    pub(super) parked: Arc<ParkedStore>,
}

/// The pool's shared state (one per backend, inert when `prewarm` is 0).
pub(super) struct Pool {
    size: usize,
    model: Option<String>,
    deps: PoolDeps,
    /// Wakes the refill task (a slot was freed, a process was taken).
    wake: Notify,
    /// Pooled runs that have not printed their first line yet (refills wait for them).
    starting: AtomicUsize,
}

/// Marks a pooled run as starting (no refills meanwhile); on drop, wakes the pool.
pub(super) struct Starting<'a>(&'a Pool);

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        self.0.starting.fetch_sub(1, Ordering::Relaxed);
        self.0.notify();
    }
}

/// The account name a pre-warmed process is filed under in the registry.
fn owner(account: Option<&str>) -> &str {
    account.unwrap_or("")
}

impl Pool {
    pub(super) fn new(size: usize, model: Option<String>, deps: PoolDeps) -> Pool {
        Pool {
            size,
            model: model.filter(|m| !m.is_empty()),
            deps,
            wake: Notify::new(),
            starting: AtomicUsize::new(0),
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.size > 0
    }

    /// The registry key of the pool's processes on account `name`: the spawn flags they
    /// share (the model), on that account.
    fn key(&self, name: Option<&str>) -> Fingerprint {
        let mut h = sha2::Sha256::new();
        h.update(b"ccgate pre-warmed\0");
        match &self.model {
            Some(m) => {
                h.update([1]);
                h.update(m.as_bytes());
            }
            None => h.update([0]),
        }
        Fingerprint::from_bytes(h.finalize().into()).on_account(name)
    }

    /// The model the pool's processes are spawned with (None: the CLI's default).
    pub(super) fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// An idle process for `req` on its account, oldest (warmest) first. Dead ones met on
    /// the way are retired and never handed out.
    pub(super) fn checkout(&self, req: &CliRequest) -> Result<Idle, PoolMiss> {
        late::fits(req, self.model())?;
        let found = self
            .deps
            .parked
            .checkout_prewarmed(&self.key(req.account_name()));
        self.wake.notify_one();
        found.ok_or(PoolMiss::Empty)
    }

    /// Stops refilling for good and takes the idle processes out (the caller ends them).
    /// (Shutdown, `Backend::abort_all`, the end of the [`PoolHandle`].)
    pub(super) fn close(&self) -> Vec<Idle> {
        let idle = self.deps.parked.close_prewarmed();
        self.wake.notify_one();
        idle
    }

    fn is_closed(&self) -> bool {
        !self.deps.parked.takes_prewarmed()
    }

    /// A slot was freed (a run ended): maybe refill.
    pub(super) fn notify(&self) {
        if self.enabled() {
            self.wake.notify_one();
        }
    }

    /// Marks a pooled run as waiting for its first line until the guard is dropped: a
    /// refill's CPU-heavy start-up would eat the very latency the pool exists to save.
    pub(super) fn starting(&self) -> Starting<'_> {
        self.starting.fetch_add(1, Ordering::Relaxed);
        Starting(self)
    }

    /// Spawns one process for the usable account with the fewest idle ones and parks it.
    /// Err: it could not be spawned (the caller backs off).
    async fn refill_one(
        &self,
        usable: &[Option<Arc<Account>>],
        permit: OwnedSemaphorePermit,
    ) -> Result<(), ()> {
        let parked = &self.deps.parked;
        let stats = &self.deps.stats;
        // The usable account with the fewest idle processes (first in order on a tie).
        let account = usable
            .iter()
            .min_by_key(|a| parked.prewarmed_of(owner(name_of(a.as_ref()))))
            .cloned()
            .flatten();
        let settings = account
            .as_ref()
            .map_or(&self.deps.settings, |a| a.settings());
        // No system prompt, history, tools or options: a request's are applied at
        // hand-over (`late.rs`).
        let flags = CliRequest {
            model: self.model.clone(),
            ..CliRequest::default()
        };
        let epoch = parked.epoch();
        match spawn_cli(settings, stats, &flags) {
            Ok(proc) => {
                stats.pool_spawned_total.fetch_add(1, Ordering::Relaxed);
                let name = name_of(account.as_ref()).map(str::to_string);
                let key = self.key(name.as_deref());
                let idle = Idle {
                    proc,
                    permit,
                    account,
                };
                if let Err(idle) = parked.park_prewarmed(key, owner(name.as_deref()), idle, epoch) {
                    // Closed, or spawned before an invalidation.
                    idle.retire().await;
                }
                Ok(())
            }
            Err(facts) => {
                drop(permit);
                tracing::warn!(
                    error = facts.spawn_error_message.as_deref().unwrap_or(""),
                    "cannot spawn a pre-warmed CLI process; backing off"
                );
                Err(())
            }
        }
    }
}

/// The refill task: keeps `size` idle processes parked while `ready()` names accounts
/// (drains the others), retires the ones that died while idle, backs off when processes
/// fail to start. Once the pool is closed or `shutdown` fires it retires every idle
/// process and ends.
pub(super) async fn maintain(pool: Arc<Pool>, shutdown: Shutdown, ready: ReadyAccounts) {
    let parked = Arc::clone(&pool.deps.parked);
    let mut failures: u32 = 0;
    let mut not_before = tokio::time::Instant::now();
    while !shutdown.is_triggered() && !pool.is_closed() {
        // 1. Processes that stay alive well past a failed start clear the back-off; ones
        // dying (or talking) while idle are ended, and no respawn in a tight loop.
        if parked.prewarmed_survived(SURVIVED) {
            failures = 0;
        }
        if parked.end_dead_prewarmed() > 0 {
            failures = failures.saturating_add(1);
            not_before = tokio::time::Instant::now() + backoff(failures);
            tracing::warn!(
                failures,
                "a pre-warmed CLI process exited while idle; backing off"
            );
        }

        // 2. Closed gate (unhealthy, first probe pending): keep nothing warm; nor for an
        // account that cannot serve now.
        let usable = ready();
        parked.drain_prewarmed_unless(|name| usable.iter().any(|a| name_of(a.as_ref()) == name));

        // 3. Refill from free slots only, and not while a pooled run awaits its first line.
        while !usable.is_empty()
            && !shutdown.is_triggered()
            && !pool.is_closed()
            && tokio::time::Instant::now() >= not_before
            && pool.starting.load(Ordering::Relaxed) == 0
            && parked.prewarmed() < pool.size
        {
            let Ok(permit) = Arc::clone(&pool.deps.slots).try_acquire_owned() else {
                break;
            };
            if pool.refill_one(&usable, permit).await.is_err() {
                failures = failures.saturating_add(1);
                not_before = tokio::time::Instant::now() + backoff(failures);
                break;
            }
        }
        let now = tokio::time::Instant::now();
        let sleep = if now < not_before {
            TICK.min(not_before - now)
        } else {
            TICK
        };
        tokio::select! {
            _ = pool.wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
            () = shutdown.triggered() => {}
        }
    }
    // Closed: nothing is kept warm any more.
    for idle in pool.close() {
        idle.retire().await;
    }
}

fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(10);
    BACKOFF_MIN.saturating_mul(1 << exp).min(BACKOFF_MAX)
}

/// Ends idle processes from synchronous code: their groups are killed at once, and each
/// is reaped in the background (or by its guard when there is no runtime).
pub(super) fn end_now(idle: Vec<Idle>) {
    for i in &idle {
        i.proc.kill_group();
    }
    match tokio::runtime::Handle::try_current() {
        Ok(rt) if !idle.is_empty() => {
            rt.spawn(async move {
                for i in idle {
                    i.retire().await;
                }
            });
        }
        _ => drop(idle),
    }
}

/// Keeps the pool's refill task running until the shutdown signal given to
/// `Backend::start_pool` fires (it then drains the pool and ends; the handle's
/// [`PoolHandle::shutdown`] is the awaitable end). [`PoolHandle::shutdown`] stops it and
/// waits until every idle process is killed and reaped; dropping the handle stops it too
/// and kills + reaps the idle processes before `drop` returns (blocking briefly, also
/// without a runtime).
pub struct PoolHandle {
    pool: Option<Arc<Pool>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl PoolHandle {
    pub(super) fn start(pool: Option<Arc<Pool>>, shutdown: Shutdown, ready: ReadyAccounts) -> Self {
        let task = pool
            .as_ref()
            .filter(|p| p.enabled())
            .map(|p| tokio::spawn(maintain(Arc::clone(p), shutdown, ready)));
        PoolHandle { pool, task }
    }

    /// Stops the refill task and kills + reaps every idle process before returning.
    pub async fn shutdown(mut self) {
        let Some(pool) = self.pool.take() else {
            return;
        };
        let idle = pool.close();
        for i in idle {
            i.retire().await;
        }
        // The task retires what it may still hold, then ends; it is not aborted, so no
        // process is dropped halfway through its reaping.
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for PoolHandle {
    fn drop(&mut self) {
        let Some(pool) = self.pool.take() else {
            return;
        };
        // A refill task still running (the runtime is alive) sees the pool closed and
        // ends by itself; it is not aborted halfway through reaping a process. There may
        // be no runtime any more (or one shutting down, which runs no new task): kill
        // every idle group first, then each dropped process reaps its leader.
        let idle = pool.close();
        for i in &idle {
            i.proc.kill_group();
        }
        drop(idle);
    }
}

impl std::fmt::Debug for PoolHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolHandle")
            .field("running", &self.task.is_some())
            .finish()
    }
}
