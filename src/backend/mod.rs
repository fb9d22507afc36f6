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
//!   [`Backend::start`] hands any first turn (not the probe; no thinking options) an idle
//!   process of its account and gives it the request's settings over the control channel
//!   (`late`); the run is otherwise identical.
//! - Parked processes (see `docs/parked-processes.md`): pre-warmed processes, kept
//!   conversations and held tool runs share one registry (`registry` + `parked`): [`Backend::hold`],
//!   [`Backend::continue_held`], [`Backend::end_held_asked`], [`Backend::held_pids`],
//!   [`Backend::kept_pids`], [`Backend::close_kept`]; [`Backend::invalidate_pool`] /
//!   [`Backend::invalidate_account`] drain pre-warmed and kept processes (all, or one
//!   account's).
//! - [`Backend::abort_all`] ends every run and the pool for good (end of the shutdown grace
//!   period).
//! - [`cli_args`] / [`user_line`]: exactly how ccgate presents a turn to the CLI (for the
//!   benchmarks and the real-CLI tests).
//!
//! Inside, the dependencies point one way: `run` (the driver task and watch loop) →
//! `admission` (limiter, wait queue) → `pool` (which request takes a pre-warmed process,
//! the refill task) → `parked` (the store of pre-warmed, kept and held processes over the
//! pure `registry`: the eviction order) → `prewarmed` / `kept` / `held` (each kind and its
//! end path) → `handle` (`CliRun`) → `child` (spawn, process group, reaping) → `io`
//! (stdout lines, stderr ring) / `args` (argv, stdin line, system-prompt file) → `request`
//! / `stats` / `options`. `crate::protocol` (pure parser,
//! `RunAccumulator`) is used only through `new` / `push_line` / `conclude`.

mod admission;
mod args;
pub mod capabilities;
mod child;
pub mod egress;
mod handle;
mod held;
mod io;
mod kept;
mod late;
pub mod mcp;
mod options;
mod parked;
mod pool;
pub mod present;
mod prewarmed;
mod reaper;
mod registry;
mod request;
mod run;
mod session;
mod stats;
pub mod usage;

pub use crate::protocol::{CliEvent, Success, Usage};
pub use args::{cli_args, user_line};
pub use handle::{CliRun, ToolResults};
pub use io::MAX_LINE_BYTES;
pub use options::{Effort, RunOptions, Thinking, WebTools};
pub use pool::PoolHandle;
pub use present::{SessionBlock, SessionTurn};
pub use reaper::become_subreaper;
pub use request::ToolResult;
pub use request::{Account, CliRequest, CliSettings};
pub use stats::{BackendStats, PoolMetrics, StatsSnapshot};

use std::sync::Arc;

use crate::shutdown::Shutdown;
use admission::Limiter;
use parked::ParkedStore;
use pool::{Pool, PoolDeps};
use registry::Limits;
use run::Shared;

/// A run to hold ([`Backend::hold`]).
pub struct Hold {
    /// The conversation up to and including the answer with the calls.
    pub key: present::Fingerprint,
    /// The conversation up to the user turn that answer answers.
    pub asked: present::Fingerprint,
    /// Who the client is (per-tenant caps).
    pub tenant: String,
    pub run: CliRun,
    /// The tool-use ids of the calls.
    pub calls: Vec<String>,
}

/// Runs CLI processes. Cheap to clone; clones share the concurrency limiter and stats.
#[derive(Clone)]
pub struct Backend {
    shared: Arc<Shared>,
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
        let prewarm = settings.prewarm.min(limiter.capacity());
        let kept_cap = settings.keep_conversations.min(limiter.capacity());
        // At least one slot stays free of held runs, so they cannot starve others.
        let held_cap = settings
            .max_held_runs
            .min(limiter.capacity().saturating_sub(1));
        let parked = Arc::new(ParkedStore::new(
            Limits {
                cap: prewarm,
                per_tenant: prewarm,
                timeout: settings.prewarm_max_idle,
            },
            Limits {
                cap: kept_cap,
                per_tenant: settings.keep_conversations_per_key.unwrap_or(kept_cap),
                timeout: settings.conversation_idle_timeout,
            },
            Limits {
                cap: held_cap,
                per_tenant: settings.max_held_runs_per_key.unwrap_or(held_cap),
                timeout: settings.tool_hold_timeout,
            },
            Arc::clone(&stats),
        ));
        let pool = (prewarm > 0).then(|| {
            Arc::new(Pool::new(
                prewarm,
                settings.prewarm_model.clone(),
                PoolDeps {
                    settings: Arc::clone(&settings),
                    stats: Arc::clone(&stats),
                    slots: limiter.slots(),
                    parked: Arc::clone(&parked),
                },
            ))
        });
        Backend {
            shared: Arc::new(Shared {
                parked,
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
    /// Reads the plan windows of `account` (None: the implicit one) through `get_usage`
    /// (no model call; see [`usage`]).
    pub async fn read_windows(
        &self,
        account: Option<&Account>,
    ) -> Result<usage::UsageReport, String> {
        usage::read_windows(&self.shared.settings, account).await
    }

    pub fn account(&self, name: &str, env: &[(String, String)]) -> Arc<Account> {
        Arc::new(Account::new(&self.shared.settings, name, env))
    }

    /// Drains the idle pool (kill + reap in the background); processes spawned before this
    /// call are never handed out. The pool refills afterwards while `ready` holds. Called
    /// after a rules reload and on an unhealthy verdict. No-op without a pool.
    pub fn invalidate_pool(&self) {
        // Kept conversations too: they hold the same possibly stale state.
        self.shared.parked.invalidate(None);
        if let Some(pool) = self.shared.pool.as_ref() {
            pool.notify();
        }
    }

    /// [`Backend::invalidate_pool`] for one account (None: the implicit one, which is all
    /// there is then): its idle pre-warmed and kept processes only (an unhealthy suspicion
    /// about one account's credentials says nothing about another's).
    pub fn invalidate_account(&self, account: Option<&str>) {
        if account.is_none() {
            return self.invalidate_pool();
        }
        self.shared.parked.invalidate(Some(account));
        if let Some(pool) = self.shared.pool.as_ref() {
            pool.notify();
        }
    }

    /// Ends every kept conversation process and every held run for good (the end of
    /// `serve`); returns once the kept ones are reaped (held runs end in their drivers).
    pub async fn close_kept(&self) {
        self.shared.parked.close().await;
    }

    /// Holds `run`, whose answer ended with the client's tool calls `calls`, for `tenant`
    /// under the conversation `key` (`asked`: the conversation before that answer) until
    /// the client's results come ([`Backend::continue_held`]).
    pub fn hold(&self, held: Hold) {
        let Hold {
            key,
            asked,
            tenant,
            run,
            calls,
        } = held;
        self.shared
            .parked
            .hold(key, &tenant, held::HeldRun { run, calls, asked });
    }

    /// The run held under `key`, continued with what `accept` makes of the tool calls it
    /// waits for (None: a run whose calls it refuses is ended).
    pub fn continue_held(
        &self,
        key: &present::Fingerprint,
        accept: impl FnOnce(&[String]) -> Option<ToolResults>,
    ) -> Option<CliRun> {
        self.shared.parked.continue_held(key, accept)
    }

    /// Ends the held runs whose conversation, up to the user turn their calls answer, is
    /// one of `asked`: a request of that conversation went on without their results.
    pub fn end_held_asked(&self, asked: &std::collections::HashSet<present::Fingerprint>) -> usize {
        self.shared.parked.end_held_asked(asked)
    }

    /// Pids of the held runs' processes (tests).
    pub fn held_pids(&self) -> Vec<u32> {
        self.shared.parked.pids(registry::Kind::Held)
    }

    /// The tenants of the held runs, oldest first (tests).
    pub fn held_tenants(&self) -> Vec<String> {
        self.shared.parked.tenants(registry::Kind::Held)
    }

    /// Pids of the kept conversation processes, least recently used first (tests).
    pub fn kept_pids(&self) -> Vec<u32> {
        self.shared.parked.pids(registry::Kind::Kept)
    }

    /// Ends every run in progress or waiting for a slot (their process groups are killed
    /// and reaped, their requests answered by the rules' `shutting_down` kind) and refuses
    /// new ones; the pool stops refilling and its idle processes are killed and reaped.
    /// For the end of the shutdown grace period; cannot be undone.
    pub fn abort_all(&self) {
        self.shared.abort.send_replace(true);
        if let Some(pool) = self.shared.pool.as_ref() {
            pool::end_now(pool.close());
        }
        self.shared.parked.refuse_new();
    }

    /// Pids of the idle pre-warmed processes, oldest first (for tests and debugging).
    pub fn pool_pids(&self) -> Vec<u32> {
        self.shared.parked.pids(registry::Kind::Prewarmed)
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
