//! The pre-warmed pool (`cli.prewarm`): idle CLI processes spawned ahead of time for the
//! default per-request flags, each used for exactly ONE request and then retired.
//!
//! Why it helps: a CLI started with `--input-format stream-json` does its ~0.6 s start-up
//! work right away, then prints nothing until its first stdin line arrives; a request that
//! takes such a process only pays the turn itself.
//!
//! Rules:
//! - **Key.** A process is spawned with `--model=<cli.prewarm_model>` (none = the CLI's
//!   default), `--system-prompt ""` and the configured tools, i.e. exactly the argv a cold
//!   run for such a request gets. Only a request with that model and no system prompt
//!   takes one; the health probe (`bypass_queue`) never does. Everything else cold-spawns.
//! - **One conversation per process.** The request writes its one user line and closes
//!   stdin; the process exits after that turn and the run reaps it like a cold one. No
//!   process ever sees a second prompt.
//! - **Concurrency.** Every idle process holds a slot of the shared limiter, so
//!   idle + running ≤ `max_concurrent`. The pool refills only from free slots (a queued
//!   request wins a freed slot: tokio's semaphore is fair). A request that cannot take an
//!   idle process and finds no free slot evicts the newest idle process and takes its slot.
//! - **Freshness.** An idle process that exited (checked with `waitid(WNOWAIT)` on every
//!   tick and at hand-over) or printed anything is never handed out; one older than
//!   `cli.prewarm_max_idle` is recycled; [`Pool::invalidate`] (rules reload, unhealthy
//!   verdict) drains all idle processes, and processes spawned before it (generation
//!   counter) are discarded on arrival. While the gate closure says "not ready" (health
//!   unhealthy, first probe pending) the pool stays empty.
//! - **CPU.** No refill starts while a pooled run is still waiting for its first stdout
//!   line: a CLI start-up takes ~0.6 s of CPU and would slow exactly that turn.
//! - **Hygiene.** Every discarded process goes through [`Spawned::reap`] (kill group +
//!   reap) before its slot is released; one dropped without it (a cancelled task, no
//!   runtime left) is still killed and reaped by its guard.
//! - **Hand-over.** A pooled process that ends without a single stdout line after its
//!   prompt is re-run cold once by the driver (nothing reached the client), counted as
//!   `ccgate_cli_pool_misses_total{reason="handover"}`.
//! - **End.** Once the shutdown signal fires, `Backend::abort_all` is called or the
//!   [`PoolHandle`] is shut down or dropped, the pool is closed for good: no refill, every
//!   idle process retired, the maintainer ends. [`PoolHandle::shutdown`] awaits that.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::child::{spawn_cli, Spawned};
use super::request::{name_of, Account, CliRequest, CliSettings};
use super::stats::{BackendStats, PoolMiss};
use crate::shutdown::Shutdown;

/// How often the maintainer checks idle processes (exit, age) and refills.
const TICK: Duration = Duration::from_millis(200);
/// Back-off after a pool process failed to spawn or died while idle (doubles up to MAX).
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// An idle process alive this long counts as a successful start (resets the back-off).
const SURVIVED: Duration = Duration::from_secs(2);

/// The accounts the pool may keep processes for now (empty: none, the pool stays empty;
/// `None` in the list: the implicit account).
pub(super) type ReadyAccounts = Box<dyn Fn() -> Vec<Option<Arc<Account>>> + Send + Sync>;

/// One idle pre-warmed process and the concurrency slot it holds.
pub(super) struct Idle {
    pub(super) proc: Spawned,
    pub(super) permit: OwnedSemaphorePermit,
    born: tokio::time::Instant,
    generation: u64,
    /// The account it was spawned for (None: the implicit one); only its runs take it.
    account: Option<Arc<Account>>,
}

impl Idle {
    /// Kill + reap the process, then free its slot.
    pub(super) async fn retire(self) {
        let Idle { proc, permit, .. } = self;
        let _ = proc.reap().await;
        drop(permit);
    }
}

#[derive(Default)]
struct State {
    idle: VecDeque<Idle>,
    generation: u64,
    closed: bool,
}

/// What the pool needs from its backend: how to spawn, where to count, and the
/// concurrency slots its idle processes hold.
pub(super) struct PoolDeps {
    pub(super) settings: Arc<CliSettings>,
    pub(super) stats: Arc<BackendStats>,
    pub(super) slots: Arc<Semaphore>,
}

/// The pool's shared state (one per backend, inert when `prewarm` is 0).
pub(super) struct Pool {
    size: usize,
    model: Option<String>,
    max_idle: Duration,
    deps: PoolDeps,
    state: Mutex<State>,
    /// Wakes the maintainer (a slot was freed, a process was taken, an invalidation).
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

impl Pool {
    pub(super) fn new(
        size: usize,
        model: Option<String>,
        max_idle: Duration,
        deps: PoolDeps,
    ) -> Pool {
        Pool {
            size,
            model: model.filter(|m| !m.is_empty()),
            max_idle,
            deps,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            starting: AtomicUsize::new(0),
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.size > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `req` runs with exactly the flags the pool's processes were spawned with.
    pub(super) fn matches(&self, req: &CliRequest) -> bool {
        !req.bypass_queue
            && req.system_prompt.is_none()
            // A resumed session needs its own flags (`--resume <id>`).
            && req.history.is_empty()
            // The client's tools are flags too (`--mcp-config`, `--allowedTools`).
            && req.tools.is_none()
            // Schema, effort and thinking are flags the idle processes do not have.
            && req.options.is_default()
            && req.model.as_deref().filter(|m| !m.is_empty()) == self.model.as_deref()
    }

    /// An idle process for `req`, oldest (warmest) first. Dead, stale or expired ones met
    /// on the way are retired in the background and never handed out.
    pub(super) fn checkout(self: &Arc<Self>, req: &CliRequest) -> Result<Idle, PoolMiss> {
        if !self.matches(req) {
            return Err(PoolMiss::Key);
        }
        let mut discard = Vec::new();
        let found = {
            let mut st = self.lock();
            let generation = st.generation;
            let mut found = None;
            let mut others = VecDeque::new();
            while let Some(mut idle) = st.idle.pop_front() {
                if idle.generation != generation
                    || idle.born.elapsed() >= self.max_idle
                    || !idle.proc.idle_usable()
                {
                    discard.push(idle);
                } else if name_of(idle.account.as_ref()) != req.account_name() {
                    // Another account's process: never handed to this run.
                    others.push_back(idle);
                } else {
                    found = Some(idle);
                    break;
                }
            }
            others.append(&mut st.idle);
            st.idle = others;
            found
        };
        self.count_discarded(&discard);
        self.retire_in_background(discard);
        self.publish_idle();
        self.wake.notify_one();
        found.ok_or(PoolMiss::Empty)
    }

    /// Takes the newest (least warm) idle process out so a request can have its slot.
    pub(super) fn evict_one(&self) -> Option<Idle> {
        let idle = self.lock().idle.pop_back();
        if idle.is_some() {
            self.deps
                .stats
                .pool_evicted_total
                .fetch_add(1, Ordering::Relaxed);
            self.publish_idle();
        }
        idle
    }

    /// Drains every idle process (kill + reap in the background) and makes processes
    /// spawned before now unusable. The maintainer refills afterwards (when the gate is
    /// open).
    pub(super) fn invalidate(self: &Arc<Self>) {
        let drained: Vec<Idle> = {
            let mut st = self.lock();
            st.generation += 1;
            st.idle.drain(..).collect()
        };
        self.deps
            .stats
            .pool_drained_total
            .fetch_add(drained.len() as u64, Ordering::Relaxed);
        if !drained.is_empty() {
            tracing::debug!(count = drained.len(), "pre-warmed pool drained");
        }
        self.retire_in_background(drained);
        self.publish_idle();
        self.wake.notify_one();
    }

    /// Drains the idle processes of account `name` only (kill + reap in the background);
    /// the maintainer refills them while that account is ready.
    pub(super) fn invalidate_account(self: &Arc<Self>, name: Option<&str>) {
        let drained: Vec<Idle> = {
            let mut st = self.lock();
            let (drop, keep): (VecDeque<Idle>, VecDeque<Idle>) = st
                .idle
                .drain(..)
                .partition(|i| name_of(i.account.as_ref()) == name);
            st.idle = keep;
            drop.into_iter().collect()
        };
        self.deps
            .stats
            .pool_drained_total
            .fetch_add(drained.len() as u64, Ordering::Relaxed);
        self.retire_in_background(drained);
        self.publish_idle();
        self.wake.notify_one();
    }

    /// Stops refilling for good; the maintainer retires the idle processes and ends.
    /// (Shutdown, `Backend::abort_all`, the end of the [`PoolHandle`].)
    pub(super) fn close(&self) {
        {
            let mut st = self.lock();
            st.closed = true;
            st.generation += 1;
        }
        self.wake.notify_one();
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Takes every idle process out of the pool.
    fn take_idle(&self) -> Vec<Idle> {
        let drained: Vec<Idle> = self.lock().idle.drain(..).collect();
        self.publish_idle();
        drained
    }

    /// Pids of the idle processes (oldest first).
    pub(super) fn idle_pids(&self) -> Vec<u32> {
        self.lock().idle.iter().map(|i| i.proc.pid()).collect()
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

    fn publish_idle(&self) {
        let n = self.lock().idle.len();
        self.deps.stats.pool_idle.store(n, Ordering::Relaxed);
    }

    fn count_discarded(&self, discard: &[Idle]) {
        let stats = &self.deps.stats;
        let generation = self.lock().generation;
        for idle in discard {
            let counter = if idle.generation != generation {
                &stats.pool_drained_total
            } else if idle.born.elapsed() >= self.max_idle {
                &stats.pool_expired_total
            } else {
                &stats.pool_died_total
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn retire_in_background(self: &Arc<Self>, procs: Vec<Idle>) {
        if procs.is_empty() {
            return;
        }
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            for idle in procs {
                idle.retire().await;
            }
            pool.notify();
        });
    }
}

/// The maintainer: retire dead / expired idle processes, keep `size` idle processes while
/// `ready()` holds (drain otherwise), back off when processes fail to start. Once the pool
/// is closed or `shutdown` fires it retires every idle process and ends.
pub(super) async fn maintain(pool: Arc<Pool>, shutdown: Shutdown, ready: ReadyAccounts) {
    let stats = &pool.deps.stats;
    let mut failures: u32 = 0;
    let mut not_before = tokio::time::Instant::now();
    loop {
        if shutdown.is_triggered() {
            pool.close();
        }
        if pool.is_closed() {
            break;
        }
        // 1. Housekeeping: dead, printed-something, expired, stale.
        let discard: Vec<Idle> = {
            let mut st = pool.lock();
            let generation = st.generation;
            let mut keep = VecDeque::with_capacity(st.idle.len());
            let mut discard = Vec::new();
            while let Some(mut idle) = st.idle.pop_front() {
                if idle.generation == generation
                    && idle.born.elapsed() < pool.max_idle
                    && idle.proc.idle_usable()
                {
                    keep.push_back(idle);
                } else {
                    discard.push(idle);
                }
            }
            // Processes that stay alive well past a failed start clear the back-off.
            if keep.iter().any(|i| i.born.elapsed() >= SURVIVED) {
                failures = 0;
            }
            st.idle = keep;
            discard
        };
        if !discard.is_empty() {
            let before = stats.pool_died_total.load(Ordering::Relaxed);
            pool.count_discarded(&discard);
            if stats.pool_died_total.load(Ordering::Relaxed) > before {
                // Processes dying on their own while idle: do not respawn in a tight loop.
                failures = failures.saturating_add(1);
                not_before = tokio::time::Instant::now() + backoff(failures);
                tracing::warn!(
                    failures,
                    "a pre-warmed CLI process exited while idle; backing off"
                );
            }
            for idle in discard {
                idle.retire().await;
            }
            pool.publish_idle();
        }

        // 2. Closed gate (unhealthy, first probe pending): keep nothing warm; nor for an
        // account that cannot serve now.
        let usable = ready();
        let open = !usable.is_empty();
        {
            let drained: Vec<Idle> = {
                let mut st = pool.lock();
                let (keep, drop): (VecDeque<Idle>, VecDeque<Idle>) =
                    st.idle.drain(..).partition(|i| {
                        let name = name_of(i.account.as_ref());
                        usable.iter().any(|a| name_of(a.as_ref()) == name)
                    });
                st.idle = keep;
                drop.into_iter().collect()
            };
            if !drained.is_empty() {
                stats
                    .pool_drained_total
                    .fetch_add(drained.len() as u64, Ordering::Relaxed);
                for idle in drained {
                    idle.retire().await;
                }
                pool.publish_idle();
            }
        }

        // 3. Refill from free slots only, and not while a pooled run awaits its first line.
        while open
            && !shutdown.is_triggered()
            && tokio::time::Instant::now() >= not_before
            && pool.starting.load(Ordering::Relaxed) == 0
        {
            let generation = {
                let st = pool.lock();
                if st.closed || st.idle.len() >= pool.size {
                    break;
                }
                st.generation
            };
            let Ok(permit) = Arc::clone(&pool.deps.slots).try_acquire_owned() else {
                break;
            };
            // The usable account with the fewest idle processes (first in order on a tie).
            let account = {
                let st = pool.lock();
                usable
                    .iter()
                    .min_by_key(|a| {
                        st.idle
                            .iter()
                            .filter(|i| name_of(i.account.as_ref()) == name_of(a.as_ref()))
                            .count()
                    })
                    .cloned()
                    .flatten()
            };
            let settings = account
                .as_ref()
                .map_or(&pool.deps.settings, |a| a.settings());
            // No system prompt, history, tools or options: what `Pool::fits` asks of a request.
            let flags = CliRequest {
                model: pool.model.clone(),
                ..CliRequest::default()
            };
            match spawn_cli(settings, stats, &flags) {
                Ok(proc) => {
                    stats.pool_spawned_total.fetch_add(1, Ordering::Relaxed);
                    let idle = Idle {
                        proc,
                        permit,
                        born: tokio::time::Instant::now(),
                        generation,
                        account,
                    };
                    let rejected = {
                        let mut st = pool.lock();
                        if st.closed || st.generation != generation {
                            Some(idle)
                        } else {
                            st.idle.push_back(idle);
                            None
                        }
                    };
                    if let Some(idle) = rejected {
                        idle.retire().await;
                    }
                    pool.publish_idle();
                }
                Err(facts) => {
                    drop(permit);
                    failures = failures.saturating_add(1);
                    not_before = tokio::time::Instant::now() + backoff(failures);
                    tracing::warn!(
                        failures,
                        error = facts.spawn_error_message.as_deref().unwrap_or(""),
                        "cannot spawn a pre-warmed CLI process; backing off"
                    );
                    break;
                }
            }
        }
        if pool.is_closed() {
            break;
        }
        let sleep = if tokio::time::Instant::now() < not_before {
            TICK.min(not_before - tokio::time::Instant::now())
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
    for idle in pool.take_idle() {
        idle.retire().await;
    }
}

fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(10);
    BACKOFF_MIN.saturating_mul(1 << exp).min(BACKOFF_MAX)
}

/// Keeps the pool's maintainer running until the shutdown signal given to
/// `Backend::start_pool` fires (it then drains the pool and ends; the handle's
/// [`PoolHandle::shutdown`] is the awaitable end). [`PoolHandle::shutdown`] stops it and waits until
/// every idle process is killed and reaped; dropping the handle stops it too and kills +
/// reaps the idle processes before `drop` returns (blocking briefly, also without a
/// runtime).
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

    /// Stops the maintainer and kills + reaps every idle process before returning.
    pub async fn shutdown(mut self) {
        let Some(pool) = self.pool.take() else {
            return;
        };
        pool.close();
        // The maintainer retires what it holds and what is idle, then ends; it is not
        // aborted, so no process is dropped halfway through its reaping.
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        // Left over only if the maintainer never ran or panicked.
        for idle in pool.take_idle() {
            idle.retire().await;
        }
    }
}

impl Drop for PoolHandle {
    fn drop(&mut self) {
        let Some(pool) = self.pool.take() else {
            return;
        };
        // A maintainer still running (the runtime is alive) sees the pool closed and ends
        // by itself; it is not aborted halfway through reaping a process.
        pool.close();
        // There may be no runtime any more (or one shutting down, which runs no new task):
        // kill every idle group first, then each dropped process reaps its leader.
        let drained = pool.take_idle();
        for idle in &drained {
            idle.proc.kill_group();
        }
        drop(drained);
    }
}

impl std::fmt::Debug for PoolHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolHandle")
            .field("running", &self.task.is_some())
            .finish()
    }
}
