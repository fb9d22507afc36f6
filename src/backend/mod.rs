//! The CLI process driver: runs `claude` in stream-json mode, one process per request, in
//! its own process group; feeds the prompt on stdin; parses stdout into [`CliEvent`]s;
//! drains stderr into a bounded ring; enforces the start / inactivity / total timeouts;
//! and kills + reaps the whole group when the run ends or the receiver is dropped
//! (client disconnect). It never classifies: failures come out as
//! [`FailureFacts`](crate::rules::FailureFacts).
//!
//! The public surface is this file:
//! - [`Backend::new`] (cheap to clone; clones share the concurrency limiter, the pool and
//!   the stats); [`Backend::start`] returns a [`CliRun`] at once: waiting for a slot
//!   happens inside the run (queue full → `Done(Err(facts with condition QueueFull))`).
//! - [`CliRun::recv`]: the last event is always `CliEvent::Done`; [`CliRun::finish`] skips
//!   to it; dropping the run kills and reaps its process group; [`CliRun::pid`] is filled
//!   after spawn.
//! - A result with `is_error: false` wins even if a watchdog fired after it; a stdout line
//!   longer than [`MAX_LINE_BYTES`] turns the run into a failure with `condition: BadJson`.
//! - [`Backend::stats`] → [`BackendStats`] (`.snapshot()` → [`StatsSnapshot`] for metrics;
//!   [`PoolMetrics`] for the pool's Prometheus counters).
//! - The pre-warmed pool (`prewarm` > 0): [`Backend::start_pool`] → [`PoolHandle`] (the
//!   maintainer; it ends with the given shutdown signal, on drop, or on
//!   [`PoolHandle::shutdown`]), [`Backend::invalidate_pool`], [`Backend::pool_pids`].
//!   [`Backend::start`] hands a matching request (model = `prewarm_model`, no system
//!   prompt, not the probe) an idle process; the run is otherwise identical.
//! - [`Backend::abort_all`] ends every run and the pool for good (end of the shutdown grace
//!   period).
//! - [`cli_args`] / [`user_line`]: exactly how ccgate presents a turn to the CLI (for the
//!   benchmarks and the real-CLI tests).
//!
//! Inside, the dependencies point one way: `run` (the driver task and watch loop) →
//! `admission` (limiter, wait queue) → `pool` (pre-warmed processes) → `child` (spawn,
//! process group, reaping) → `io` (stdout lines, stderr ring) / `args` (argv, stdin line,
//! system-prompt file) → `request` / `stats` / `options`. `crate::protocol` (pure parser,
//! `RunAccumulator`) is used only through `new` / `push_line` / `conclude`.

mod admission;
mod args;
pub mod capabilities;
mod child;
mod held;
mod io;
mod kept;
pub mod mcp;
mod options;
mod pool;
pub mod present;
mod reaper;
mod request;
mod run;
mod session;
mod stats;

pub use crate::protocol::{CliEvent, Success, Usage};
pub use args::{cli_args, user_line};
pub use io::MAX_LINE_BYTES;
pub use options::{Effort, RunOptions, Thinking};
pub use pool::PoolHandle;
pub use present::SessionTurn;
pub use reaper::become_subreaper;
pub use request::ToolResult;
pub use request::{Account, CliRequest, CliSettings};
pub use run::{CliRun, ToolResults};
pub use stats::{BackendStats, PoolMetrics, StatsSnapshot};

use std::sync::Arc;

use crate::shutdown::Shutdown;
use admission::Limiter;
use held::HeldStore;
use kept::KeptStore;
use pool::{Pool, PoolDeps};
use run::Shared;

/// Runs CLI processes. Cheap to clone; clones share the concurrency limiter and stats.
#[derive(Clone)]
pub struct Backend {
    shared: Arc<Shared>,
    /// Runs waiting for the results of their client tool calls.
    held: Arc<HeldStore>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("command", &self.shared.settings.command)
            .field("stats", &self.shared.stats.snapshot())
            .finish()
    }
}

impl Backend {
    /// A backend for these settings. `max_concurrent` 0 is treated as 1.
    pub fn new(settings: CliSettings) -> Backend {
        let settings = Arc::new(settings);
        let stats = Arc::new(BackendStats::default());
        let limiter = Limiter::new(
            settings.max_concurrent,
            settings.queue_size,
            Arc::clone(&stats),
        );
        let pool = (settings.prewarm > 0).then(|| {
            Arc::new(Pool::new(
                settings.prewarm.min(limiter.capacity()),
                settings.prewarm_model.clone(),
                settings.prewarm_max_idle,
                PoolDeps {
                    settings: Arc::clone(&settings),
                    stats: Arc::clone(&stats),
                    slots: limiter.slots(),
                },
            ))
        });
        Backend {
            // At least one slot stays free of held runs, so they cannot starve others.
            held: Arc::new(HeldStore::new(
                settings
                    .max_held_runs
                    .min(limiter.capacity().saturating_sub(1)),
                settings.tool_hold_timeout,
                Arc::clone(&stats),
            )),
            shared: Arc::new(Shared {
                kept: Arc::new(KeptStore::new(
                    settings.keep_conversations.min(limiter.capacity()),
                    settings.conversation_idle_timeout,
                    Arc::clone(&stats),
                )),
                settings,
                limiter,
                stats,
                pool,
                abort: tokio::sync::watch::Sender::new(false),
            }),
        }
    }

    /// Starts keeping `prewarm` idle processes (no-op handle when `prewarm` is 0).
    /// `ready` is polled by the maintainer: while it returns false (CLI known unhealthy,
    /// first probe still running) the pool is kept empty. Once `shutdown` fires the pool
    /// stops refilling for good and its idle processes are killed and reaped;
    /// [`PoolHandle::shutdown`] waits for that (and stops the pool too), and dropping the
    /// handle stops it as well. Must be called inside a tokio runtime.
    pub fn start_pool(
        &self,
        shutdown: Shutdown,
        ready: impl Fn() -> bool + Send + Sync + 'static,
    ) -> PoolHandle {
        self.start_pool_for(
            shutdown,
            move || if ready() { vec![None] } else { Vec::new() },
        )
    }

    /// [`Backend::start_pool`] for several accounts: `ready` names the accounts that can
    /// serve now (`None`: the implicit one). The idle processes are spread over them (the
    /// one with the fewest first); a run only takes a process of its own account, and
    /// the processes of an account no longer named are ended.
    pub fn start_pool_for(
        &self,
        shutdown: Shutdown,
        ready: impl Fn() -> Vec<Option<Arc<Account>>> + Send + Sync + 'static,
    ) -> PoolHandle {
        PoolHandle::start(self.shared.pool.clone(), shutdown, Box::new(ready))
    }

    /// An account whose processes get `env` on top of the configured CLI environment.
    pub fn account(&self, name: &str, env: &[(String, String)]) -> Arc<Account> {
        Arc::new(Account::new(&self.shared.settings, name, env))
    }

    /// Drains the idle pool (kill + reap in the background); processes spawned before this
    /// call are never handed out. The pool refills afterwards while `ready` holds. Called
    /// after a rules reload and on an unhealthy verdict. No-op without a pool.
    pub fn invalidate_pool(&self) {
        if let Some(pool) = self.shared.pool.as_ref() {
            pool.invalidate();
        }
        // Kept conversations too: they hold the same possibly stale state.
        self.shared.kept.invalidate();
    }

    /// Ends every kept conversation process and every held run for good (the end of
    /// `serve`); returns once the kept ones are reaped (held runs end in their drivers).
    pub async fn close_kept(&self) {
        self.held.close();
        self.shared.kept.close().await;
    }

    /// Holds `run`, whose answer ended with the client's tool calls `calls`, under the
    /// conversation `key` until the client's results come ([`Backend::take_held`]).
    pub fn hold(&self, key: present::Fingerprint, run: CliRun, calls: Vec<String>) {
        self.held.hold(key, run, calls);
    }

    /// The run held under `key`, if `accept` takes the tool calls it waits for (and
    /// returns what continues them); a run whose calls it refuses is ended.
    pub fn take_held<T>(
        &self,
        key: &present::Fingerprint,
        accept: impl FnOnce(&[String]) -> Option<T>,
    ) -> Option<(CliRun, T)> {
        self.held.take(key, accept)
    }

    /// Pids of the held runs' processes (tests).
    pub fn held_pids(&self) -> Vec<u32> {
        self.held.pids()
    }

    /// Pids of the kept conversation processes, least recently used first (tests).
    pub fn kept_pids(&self) -> Vec<u32> {
        self.shared.kept.pids()
    }

    /// Ends every run in progress or waiting for a slot (their process groups are killed
    /// and reaped, their requests answered by the rules' `shutting_down` kind) and refuses
    /// new ones; the pool stops refilling and its idle processes are killed and reaped.
    /// For the end of the shutdown grace period; cannot be undone.
    pub fn abort_all(&self) {
        self.shared.abort.send_replace(true);
        if let Some(pool) = self.shared.pool.as_ref() {
            pool.close();
        }
        self.shared.kept.refuse_new();
        self.held.close();
    }

    /// Pids of the idle pre-warmed processes, oldest first (for tests and debugging).
    pub fn pool_pids(&self) -> Vec<u32> {
        self.shared
            .pool
            .as_ref()
            .map(|p| p.idle_pids())
            .unwrap_or_default()
    }

    /// The settings this backend runs with.
    pub fn settings(&self) -> &CliSettings {
        &self.shared.settings
    }

    /// Shared counters for metrics.
    pub fn stats(&self) -> Arc<BackendStats> {
        Arc::clone(&self.shared.stats)
    }

    /// Start a run. Returns at once; must be called inside a tokio runtime.
    pub fn start(&self, req: CliRequest) -> CliRun {
        self.shared.start(req)
    }
}
