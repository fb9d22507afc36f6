//! The CLI process driver: one `claude` process per request, in its own process group.
//!
//! Lifecycle of a run (all inside one spawned tokio task, see [`Backend::start`]):
//! 1. Admission: a slot from the shared limiter (`max_concurrent`), or a place in the wait
//!    queue (`queue_size`), or at once `Done(Err(condition QueueFull))`. The admission
//!    decision is taken synchronously in `start()`, so it is deterministic for the caller;
//!    the wait for a slot counts against the total timeout.
//! 2. Spawn with flags only (the prompt never goes to argv), the prompt as one stream-json
//!    `user` line on stdin, then stdin is closed.
//! 3. stdout is split into lines (max [`MAX_LINE_BYTES`]) by a reader task and fed to
//!    [`RunAccumulator`]; its events are forwarded as they come. stderr is drained
//!    concurrently into a ring of the last `stderr_tail_bytes` bytes.
//! 4. Watchdogs: start (spawn → first line), inactivity (between lines), total (whole run,
//!    including the queue wait). When one fires the group is SIGKILLed and the facts get
//!    `timeout`.
//! 5. End: once the leader has exited (detected with `waitid(WNOWAIT)`, which does *not*
//!    reap it, so its pid/pgid cannot be reused yet), the group is SIGKILLed to remove
//!    stragglers, stdout is read to EOF, the leader is reaped and `Done` is sent.
//! 6. Cancellation: when the [`CliRun`] is dropped, the task notices (`tx.closed()`), kills
//!    the group and reaps the leader. A guard also kills the group if the task itself is
//!    dropped (runtime shutdown) before the leader is reaped.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::{
    AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWriteExt as _, BufReader,
};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::pool::{Idle, Miss, Pool, PoolDeps, PoolHandle};
use super::{CliEvent, CliRequest, CliSettings, Success};
use crate::protocol::{RunAccumulator, RunEnd};
use crate::rules::{FailureFacts, GatewayCondition, SpawnErrorKind, TimeoutKind};

/// Longest stdout line accepted (the Python SDK uses the same 1 MB limit). A longer line
/// is a protocol error (`GatewayCondition::BadJson`).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Events buffered between the driver task and the consumer.
const EVENT_CHANNEL: usize = 256;
/// Lines buffered between the stdout reader task and the driver.
const LINE_CHANNEL: usize = 64;
/// How often the driver checks whether the leader exited while stdout is still open
/// (a straggler may hold the pipe open after the leader has gone).
const EXIT_PEEK_OPEN: Duration = Duration::from_millis(100);
/// Upper bound for the exit-check backoff once stdout has reached EOF.
const EXIT_PEEK_CLOSED_MAX: Duration = Duration::from_millis(20);
/// How long to wait for the leader to die after SIGKILL before giving up on reaping it
/// here (then `kill_on_drop` and tokio's orphan queue take over).
const REAP_GRACE: Duration = Duration::from_secs(5);
/// How long to wait for the stderr drain to reach EOF once the group is dead.
const STDERR_GRACE: Duration = Duration::from_millis(500);

/// Counters and gauges for the metrics module (all relaxed atomics; read with
/// [`BackendStats::snapshot`]).
#[derive(Debug, Default)]
pub struct BackendStats {
    in_flight: AtomicUsize,
    queued: AtomicUsize,
    spawned_total: AtomicU64,
    spawn_errors_total: AtomicU64,
    queue_full_total: AtomicU64,
    timeouts_total: AtomicU64,
    cancelled_total: AtomicU64,
    first_line_count: AtomicU64,
    first_line_micros_sum: AtomicU64,
    last_first_line_micros: AtomicU64,
    /// Also observed per run when the metrics module attached it.
    first_line_histogram: std::sync::OnceLock<prometheus_client::metrics::histogram::Histogram>,
    pub(super) pool_idle: AtomicUsize,
    pub(super) pool_hits_total: AtomicU64,
    pub(super) pool_misses_total: AtomicU64,
    pub(super) pool_spawned_total: AtomicU64,
    pub(super) pool_died_total: AtomicU64,
    pub(super) pool_expired_total: AtomicU64,
    pub(super) pool_drained_total: AtomicU64,
    pub(super) pool_evicted_total: AtomicU64,
    pub(super) pool_handover_retries_total: AtomicU64,
    pool_metrics: std::sync::OnceLock<PoolMetrics>,
}

/// Prometheus metrics the pool updates directly (attached by the metrics module).
#[derive(Debug, Clone)]
pub struct PoolMetrics {
    /// Requests that got a pre-warmed process.
    pub hits: prometheus_client::metrics::counter::Counter,
    /// Requests that cold-spawned because their flags differ from the pool's key.
    pub misses_key: prometheus_client::metrics::counter::Counter,
    /// Requests with the pool's key that found no idle process.
    pub misses_empty: prometheus_client::metrics::counter::Counter,
    /// Requests whose pre-warmed process died silently at hand-over and that were re-run
    /// cold (they also count as hits).
    pub misses_handover: prometheus_client::metrics::counter::Counter,
    /// Prompt written → first stdout line, for pooled runs (cold runs observe
    /// spawn → first line in the first-line histogram instead).
    pub first_line: prometheus_client::metrics::histogram::Histogram,
}

/// A plain copy of [`BackendStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// CLI processes currently alive (spawned, not yet reaped).
    pub in_flight: usize,
    /// Runs waiting for a concurrency slot.
    pub queued: usize,
    /// Processes spawned successfully since start.
    pub spawned_total: u64,
    /// Spawn attempts that failed.
    pub spawn_errors_total: u64,
    /// Runs refused because the wait queue was full.
    pub queue_full_total: u64,
    /// Runs ended by one of the watchdogs (start / inactivity / total).
    pub timeouts_total: u64,
    /// Runs whose consumer went away (client disconnect) before the end.
    pub cancelled_total: u64,
    /// Number of runs that produced a first stdout line.
    pub first_line_count: u64,
    /// Sum of spawn → first stdout line latencies, in microseconds.
    pub first_line_micros_sum: u64,
    /// The latest spawn → first stdout line latency, in microseconds.
    pub last_first_line_micros: u64,
    /// Pre-warmed processes waiting for a request now.
    pub pool_idle: usize,
    /// Requests served by a pre-warmed process.
    pub pool_hits_total: u64,
    /// Requests that cold-spawned while the pool was on (other flags, or pool empty).
    pub pool_misses_total: u64,
    /// Pre-warmed processes spawned.
    pub pool_spawned_total: u64,
    /// Idle pre-warmed processes found dead (or talking) and replaced.
    pub pool_died_total: u64,
    /// Idle pre-warmed processes recycled for age (`prewarm_max_idle`).
    pub pool_expired_total: u64,
    /// Idle pre-warmed processes drained by an invalidation (reload, unhealthy, stop).
    pub pool_drained_total: u64,
    /// Idle pre-warmed processes killed to give their slot to a non-matching request.
    pub pool_evicted_total: u64,
    /// Pooled runs whose process ended silently at hand-over and were re-run cold.
    pub pool_handover_retries_total: u64,
}

impl BackendStats {
    /// Current values.
    pub fn snapshot(&self) -> StatsSnapshot {
        let r = Ordering::Relaxed;
        StatsSnapshot {
            in_flight: self.in_flight.load(r),
            queued: self.queued.load(r),
            spawned_total: self.spawned_total.load(r),
            spawn_errors_total: self.spawn_errors_total.load(r),
            queue_full_total: self.queue_full_total.load(r),
            timeouts_total: self.timeouts_total.load(r),
            cancelled_total: self.cancelled_total.load(r),
            first_line_count: self.first_line_count.load(r),
            first_line_micros_sum: self.first_line_micros_sum.load(r),
            last_first_line_micros: self.last_first_line_micros.load(r),
            pool_idle: self.pool_idle.load(r),
            pool_hits_total: self.pool_hits_total.load(r),
            pool_misses_total: self.pool_misses_total.load(r),
            pool_spawned_total: self.pool_spawned_total.load(r),
            pool_died_total: self.pool_died_total.load(r),
            pool_expired_total: self.pool_expired_total.load(r),
            pool_drained_total: self.pool_drained_total.load(r),
            pool_evicted_total: self.pool_evicted_total.load(r),
            pool_handover_retries_total: self.pool_handover_retries_total.load(r),
        }
    }

    /// Makes the pool count hits / misses and pooled first-line latencies in these metrics.
    pub fn attach_pool_metrics(&self, metrics: PoolMetrics) {
        let _ = self.pool_metrics.set(metrics);
    }

    fn record_pool_hit(&self) {
        self.pool_hits_total.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = self.pool_metrics.get() {
            m.hits.inc();
        }
    }

    fn record_pool_miss(&self, miss: &Miss) {
        self.pool_misses_total.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = self.pool_metrics.get() {
            match miss {
                Miss::Key => m.misses_key.inc(),
                Miss::Empty => m.misses_empty.inc(),
            };
        }
    }

    fn record_pool_handover_retry(&self) {
        self.pool_handover_retries_total
            .fetch_add(1, Ordering::Relaxed);
        if let Some(m) = self.pool_metrics.get() {
            m.misses_handover.inc();
        }
    }

    fn record_pool_first_line(&self, latency: Duration) {
        if let Some(m) = self.pool_metrics.get() {
            m.first_line.observe(latency.as_secs_f64());
        }
    }

    /// Makes every later spawn → first-line latency also land in `histogram`.
    pub fn attach_first_line_histogram(
        &self,
        histogram: prometheus_client::metrics::histogram::Histogram,
    ) {
        let _ = self.first_line_histogram.set(histogram);
    }

    fn record_first_line(&self, latency: Duration) {
        if let Some(h) = self.first_line_histogram.get() {
            h.observe(latency.as_secs_f64());
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.first_line_count.fetch_add(1, Ordering::Relaxed);
        self.first_line_micros_sum
            .fetch_add(micros, Ordering::Relaxed);
        self.last_first_line_micros.store(micros, Ordering::Relaxed);
    }
}

/// Runs CLI processes. Cheap to clone; clones share the concurrency limiter and stats.
#[derive(Clone)]
pub struct Backend {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Arc<CliSettings>,
    limiter: Arc<Semaphore>,
    stats: Arc<BackendStats>,
    /// The pre-warmed pool (None when `prewarm` is 0).
    pool: Option<Arc<Pool>>,
    /// Set once by [`Backend::abort_all`] (end of the shutdown grace period): every run
    /// in progress or queued ends as `ShuttingDown`, and no new process is spawned.
    abort: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("command", &self.inner.settings.command)
            .field("stats", &self.inner.stats.snapshot())
            .finish()
    }
}

/// One run in progress. Events arrive in order; the last one is always [`CliEvent::Done`].
/// Dropping it kills the process group (client disconnect).
#[derive(Debug)]
pub struct CliRun {
    pid: Arc<OnceLock<u32>>,
    rx: mpsc::Receiver<CliEvent>,
}

impl CliRun {
    /// The next event; `None` after `Done`.
    pub async fn recv(&mut self) -> Option<CliEvent> {
        self.rx.recv().await
    }

    /// The CLI's pid (also its process-group id), once spawned.
    pub fn pid(&self) -> Option<u32> {
        self.pid.get().copied()
    }

    /// Consume the run up to its final result, ignoring the intermediate events.
    /// (If the driver task vanished without `Done`, which should not happen, this reports
    /// `condition: NoResult`.)
    pub async fn finish(mut self) -> Result<Success, Box<FailureFacts>> {
        while let Some(ev) = self.rx.recv().await {
            if let CliEvent::Done(r) = ev {
                return r;
            }
        }
        Err(Box::new(FailureFacts {
            condition: Some(GatewayCondition::NoResult),
            ..FailureFacts::default()
        }))
    }
}

enum Admission {
    Bypass,
    Ready(OwnedSemaphorePermit),
    /// A pre-warmed process (with the slot it holds).
    Pooled(Box<Idle>),
    /// No free slot, but an idle pooled process: retire it and take its slot.
    Evict(Box<Idle>),
    Queued(QueueTicket),
    Full,
}

/// A place in the wait queue; gives it back on drop.
struct QueueTicket(Arc<BackendStats>);

impl Drop for QueueTicket {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a live process in `in_flight` until dropped.
pub(super) struct InFlight(Arc<BackendStats>);

impl InFlight {
    fn new(stats: &Arc<BackendStats>) -> Self {
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        stats.spawned_total.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(stats))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// SIGKILLs the process group on drop unless disarmed (done right after the leader is
/// reaped, because from then on the pgid may be reused).
struct GroupGuard {
    pgid: Option<Pid>,
}

impl GroupGuard {
    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            kill_group(pgid);
        }
    }
}

/// SIGKILL a whole process group; "no such group" is fine (everyone is already gone).
fn kill_group(pgid: Pid) {
    match killpg(pgid, Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid = pgid.as_raw(), error = %e, "killpg failed"),
    }
}

/// Whether the leader has exited, *without* reaping it (WNOWAIT): the zombie keeps the
/// pid and pgid reserved until we call `wait()`, so a later `killpg` cannot hit a stranger.
fn leader_exited(pid: Pid) -> bool {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(pid), flags) {
        Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => false,
        // Exited, or an error such as ECHILD: either way there is nothing left to wait for.
        Ok(_) | Err(_) => true,
    }
}

impl Backend {
    /// A backend for these settings. `max_concurrent` 0 is treated as 1.
    pub fn new(settings: CliSettings) -> Backend {
        let permits = settings.max_concurrent.clamp(1, Semaphore::MAX_PERMITS);
        let settings = Arc::new(settings);
        let limiter = Arc::new(Semaphore::new(permits));
        let stats = Arc::new(BackendStats::default());
        let pool = (settings.prewarm > 0).then(|| {
            Arc::new(Pool::new(
                settings.prewarm.min(permits),
                settings.prewarm_model.clone(),
                settings.prewarm_max_idle,
                PoolDeps {
                    settings: Arc::clone(&settings),
                    stats: Arc::clone(&stats),
                    slots: Arc::clone(&limiter),
                },
            ))
        });
        Backend {
            inner: Arc::new(Inner {
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
    /// first probe still running) the pool is kept empty. Dropping the handle, or
    /// [`PoolHandle::shutdown`], stops it and kills + reaps the idle processes. Must be
    /// called inside a tokio runtime.
    pub fn start_pool(&self, ready: impl Fn() -> bool + Send + Sync + 'static) -> PoolHandle {
        PoolHandle::start(self.inner.pool.clone(), Box::new(ready))
    }

    /// Drains the idle pool (kill + reap in the background); processes spawned before this
    /// call are never handed out. The pool refills afterwards while `ready` holds. Called
    /// after a rules reload and on an unhealthy verdict. No-op without a pool.
    pub fn invalidate_pool(&self) {
        if let Some(pool) = self.inner.pool.as_ref() {
            pool.invalidate();
        }
    }

    /// Ends every run in progress or waiting for a slot (their process groups are killed
    /// and reaped, their requests answered by the rules' `shutting_down` kind) and refuses
    /// new ones. For the end of the shutdown grace period; cannot be undone.
    pub fn abort_all(&self) {
        self.inner.abort.send_replace(true);
    }

    /// Pids of the idle pre-warmed processes, oldest first (for tests and debugging).
    pub fn pool_pids(&self) -> Vec<u32> {
        self.inner
            .pool
            .as_ref()
            .map(|p| p.idle_pids())
            .unwrap_or_default()
    }

    /// The settings this backend runs with.
    pub fn settings(&self) -> &CliSettings {
        &self.inner.settings
    }

    /// Shared counters for metrics.
    pub fn stats(&self) -> Arc<BackendStats> {
        Arc::clone(&self.inner.stats)
    }

    /// Start a run. Returns at once; must be called inside a tokio runtime.
    pub fn start(&self, req: CliRequest) -> CliRun {
        let (tx, rx) = mpsc::channel(EVENT_CHANNEL);
        let pid = Arc::new(OnceLock::new());
        let admission = self.admit(&req);
        tokio::spawn(drive(
            Arc::clone(&self.inner),
            req,
            admission,
            tx,
            Arc::clone(&pid),
        ));
        CliRun { pid, rx }
    }

    fn admit(&self, req: &CliRequest) -> Admission {
        if req.bypass_queue {
            return Admission::Bypass;
        }
        let inner = &self.inner;
        let pool = inner.pool.as_ref().filter(|p| p.enabled());
        if let Some(pool) = pool {
            match pool.checkout(req) {
                Ok(idle) => {
                    inner.stats.record_pool_hit();
                    return Admission::Pooled(Box::new(idle));
                }
                Err(miss) => inner.stats.record_pool_miss(&miss),
            }
        }
        if let Ok(permit) = Arc::clone(&inner.limiter).try_acquire_owned() {
            return Admission::Ready(permit);
        }
        // Every slot is taken; idle pooled processes must not make this request wait.
        if let Some(idle) = pool.and_then(|p| p.evict_one()) {
            return Admission::Evict(Box::new(idle));
        }
        let max = inner.settings.queue_size;
        if take_queue_place(&inner.stats.queued, max) {
            Admission::Queued(QueueTicket(Arc::clone(&inner.stats)))
        } else {
            inner.stats.queue_full_total.fetch_add(1, Ordering::Relaxed);
            Admission::Full
        }
    }
}

/// Increments `queued` unless it already is `max`. (A plain CAS loop: `fetch_update` is
/// deprecated in newer toolchains, `try_update` not yet stable in ours.)
fn take_queue_place(queued: &AtomicUsize, max: usize) -> bool {
    let mut n = queued.load(Ordering::Acquire);
    while n < max {
        match queued.compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(current) => n = current,
        }
    }
    false
}

fn far_future(now: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

fn condition_facts(condition: GatewayCondition) -> Box<FailureFacts> {
    Box::new(FailureFacts {
        condition: Some(condition),
        ..FailureFacts::default()
    })
}

/// Resolves once [`Backend::abort_all`] was called (never if the backend is gone).
async fn aborted(rx: &mut tokio::sync::watch::Receiver<bool>) {
    if rx.wait_for(|a| *a).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The task behind one [`CliRun`].
async fn drive(
    inner: Arc<Inner>,
    req: CliRequest,
    admission: Admission,
    tx: mpsc::Sender<CliEvent>,
    pid_cell: Arc<OnceLock<u32>>,
) {
    let total = req.timeout.unwrap_or(inner.settings.total_timeout);
    let total_deadline = far_future(tokio::time::Instant::now(), total);
    let mut abort = inner.abort.subscribe();
    let stopping = *abort.borrow_and_update();
    if stopping {
        let _ = tx
            .send(CliEvent::Done(Err(condition_facts(
                GatewayCondition::ShuttingDown,
            ))))
            .await;
        return;
    }
    let mut pooled = None;
    let permit = match admission {
        Admission::Pooled(idle) => {
            let Idle { proc, permit, .. } = *idle;
            pooled = Some(proc);
            Some(permit)
        }
        Admission::Evict(idle) => {
            let Idle { proc, permit, .. } = *idle;
            let _ = proc.reap().await;
            Some(permit)
        }
        Admission::Full => {
            let facts = condition_facts(GatewayCondition::QueueFull);
            let _ = tx.send(CliEvent::Done(Err(facts))).await;
            return;
        }
        Admission::Bypass => None,
        Admission::Ready(p) => Some(p),
        Admission::Queued(ticket) => {
            let acquired = tokio::select! {
                biased;
                _ = tx.closed() => {
                    inner.stats.cancelled_total.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                () = aborted(&mut abort) => {
                    drop(ticket);
                    let facts = condition_facts(GatewayCondition::ShuttingDown);
                    let _ = tx.send(CliEvent::Done(Err(facts))).await;
                    return;
                }
                _ = tokio::time::sleep_until(total_deadline) => None,
                p = Arc::clone(&inner.limiter).acquire_owned() => p.ok(),
            };
            drop(ticket);
            match acquired {
                Some(p) => Some(p),
                None => {
                    inner.stats.timeouts_total.fetch_add(1, Ordering::Relaxed);
                    let facts = Box::new(FailureFacts {
                        timeout: Some(TimeoutKind::Total),
                        ..FailureFacts::default()
                    });
                    let _ = tx.send(CliEvent::Done(Err(facts))).await;
                    return;
                }
            }
        }
    };
    let mut outcome = run_process(
        &inner,
        &req,
        total_deadline,
        &tx,
        &pid_cell,
        pooled,
        &mut abort,
    )
    .await;
    if matches!(outcome, Ran::PooledSilent(_)) {
        // The pre-warmed process died at hand-over without a word (killed, crashed before
        // reading its prompt): nothing reached the client, so this request gets the cold
        // run it would have had without a pool (same slot, same deadline). A real problem
        // with the CLI repeats there and is reported from that run.
        inner.stats.record_pool_handover_retry();
        tracing::warn!("pre-warmed cli process ended silently at hand-over; retrying cold");
        outcome = run_process(
            &inner,
            &req,
            total_deadline,
            &tx,
            &pid_cell,
            None,
            &mut abort,
        )
        .await;
    }
    // Free the slot before reporting, so a caller that starts its next run right after
    // `Done` finds it available.
    drop(permit);
    if let Some(pool) = inner.pool.as_ref() {
        pool.notify();
    }
    match outcome {
        Ran::Done(result) | Ran::PooledSilent(result) => {
            let _ = tx.send(CliEvent::Done(result)).await;
        }
        Ran::Cancelled => {}
    }
}

/// How [`run_process`] ended.
enum Ran {
    Done(Result<Success, Box<FailureFacts>>),
    /// The consumer went away.
    Cancelled,
    /// A pre-warmed process ended without printing a single stdout line after its prompt
    /// was written (its failure, should the caller not retry).
    PooledSilent(Result<Success, Box<FailureFacts>>),
}

/// The argv after the program name (flags only; the prompt goes to stdin). Public so the
/// benchmarks and the real-CLI protocol tests run the CLI exactly as ccgate does.
pub fn cli_args(
    settings: &CliSettings,
    req: &CliRequest,
    system_prompt_file: Option<&Path>,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "-p",
        "--input-format",
        "stream-json",
        "--output-format",
        "stream-json",
        "--verbose",
        "--include-partial-messages",
        "--no-session-persistence",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    if !settings.tools {
        args.push("--tools".into());
        args.push("".into());
    }
    if let Some(model) = req.model.as_deref().filter(|m| !m.is_empty()) {
        // Equals form: a value starting with `--` stays the value of --model.
        args.push(format!("--model={model}").into());
    }
    match system_prompt_file {
        Some(path) => {
            args.push("--system-prompt-file".into());
            args.push(path.as_os_str().to_owned());
        }
        // Without any system-prompt flag the CLI sends its own very large agent prompt
        // (tools, CLAUDE.md, environment …), which costs tokens and changes the model's
        // behaviour. An explicit empty prompt keeps the request clean, as the SDK does.
        None => {
            args.push("--system-prompt".into());
            args.push("".into());
        }
    }
    args.extend(settings.extra_args.iter().map(OsString::from));
    args
}

/// The one stdin line: `{"type":"user","message":{"role":"user","content":<prompt>}}\n`;
/// with attachments, `content` is `[{"type":"text","text":<prompt>}, <image blocks>…]` (the
/// CLI passes content blocks to the API unchanged).
pub fn user_line(prompt: &str, attachments: &[serde_json::Value]) -> String {
    #[derive(serde::Serialize)]
    #[serde(untagged)]
    enum Content<'a> {
        Text(&'a str),
        Blocks(Vec<serde_json::Value>),
    }
    #[derive(serde::Serialize)]
    struct Message<'a> {
        role: &'static str,
        content: Content<'a>,
    }
    #[derive(serde::Serialize)]
    struct Line<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        message: Message<'a>,
    }
    let line = Line {
        kind: "user",
        message: Message {
            role: "user",
            content: if attachments.is_empty() {
                Content::Text(prompt)
            } else {
                let mut blocks = vec![serde_json::json!({"type": "text", "text": prompt})];
                blocks.extend(attachments.iter().cloned());
                Content::Blocks(blocks)
            },
        },
    };
    // Serializing plain strings cannot fail.
    let mut s = serde_json::to_string(&line).unwrap_or_default();
    s.push('\n');
    s
}

fn spawn_error_facts(kind: SpawnErrorKind, message: String) -> Box<FailureFacts> {
    Box::new(FailureFacts {
        spawn_error: Some(kind),
        spawn_error_message: Some(message),
        ..FailureFacts::default()
    })
}

fn spawn_error_kind(e: &std::io::Error) -> SpawnErrorKind {
    match e.kind() {
        std::io::ErrorKind::NotFound => SpawnErrorKind::NotFound,
        std::io::ErrorKind::PermissionDenied => SpawnErrorKind::PermissionDenied,
        _ => SpawnErrorKind::Other,
    }
}

fn write_system_prompt(text: &str) -> std::io::Result<tempfile::NamedTempFile> {
    // NamedTempFile is created with mode 0600 and deleted when dropped (end of the run).
    let mut file = tempfile::Builder::new()
        .prefix("ccgate-system-prompt-")
        .suffix(".txt")
        .tempfile()?;
    file.write_all(text.as_bytes())?;
    file.flush()?;
    Ok(file)
}

fn build_command(settings: &CliSettings, args: Vec<OsString>) -> Command {
    let mut cmd = Command::new(&settings.command);
    cmd.args(args)
        .current_dir(&settings.workdir)
        .env_remove("CLAUDECODE")
        .envs(settings.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    cmd
}

/// What the stdout reader hands to the driver.
enum LineMsg {
    Line(String),
    TooLong,
}

/// Split stdout into lines of at most `max` bytes (without the '\n'); a longer line is
/// reported as [`LineMsg::TooLong`] and skipped up to its end.
async fn read_lines<R: AsyncRead + Unpin>(out: R, tx: mpsc::Sender<LineMsg>, max: usize) {
    let mut reader = BufReader::with_capacity(64 * 1024, out);
    let mut line: Vec<u8> = Vec::new();
    let mut too_long = false;
    loop {
        let (used, complete) = {
            let buf = match reader.fill_buf().await {
                Ok(b) => b,
                Err(_) => break,
            };
            if buf.is_empty() {
                break;
            }
            let (chunk, used, complete) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], i + 1, true),
                None => (buf, buf.len(), false),
            };
            if !too_long {
                if line.len() + chunk.len() > max {
                    too_long = true;
                    line = Vec::new();
                } else {
                    line.extend_from_slice(chunk);
                }
            }
            (used, complete)
        };
        reader.consume(used);
        if complete {
            let msg = if too_long {
                LineMsg::TooLong
            } else {
                LineMsg::Line(String::from_utf8_lossy(&line).into_owned())
            };
            line.clear();
            too_long = false;
            if tx.send(msg).await.is_err() {
                return;
            }
        }
    }
    // EOF (or read error) with an unterminated last line.
    let last = if too_long {
        Some(LineMsg::TooLong)
    } else if !line.is_empty() {
        Some(LineMsg::Line(String::from_utf8_lossy(&line).into_owned()))
    } else {
        None
    };
    if let Some(msg) = last {
        let _ = tx.send(msg).await;
    }
}

type Ring = Arc<Mutex<VecDeque<u8>>>;

/// Keep the last `cap` bytes of stderr.
async fn drain_stderr<R: AsyncRead + Unpin>(mut err: R, ring: Ring, cap: usize) {
    let mut buf = vec![0u8; 8192];
    loop {
        match err.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut r = ring.lock().unwrap_or_else(|p| p.into_inner());
                r.extend(&buf[..n]);
                let excess = r.len().saturating_sub(cap);
                r.drain(..excess);
            }
        }
    }
}

fn ring_to_string(ring: &Ring) -> String {
    let r = ring.lock().unwrap_or_else(|p| p.into_inner());
    let bytes: Vec<u8> = r.iter().copied().collect();
    // The ring may start in the middle of a UTF-8 sequence: drop those continuation bytes.
    let start = bytes
        .iter()
        .take(3)
        .take_while(|&&b| (0x80..0xC0).contains(&b))
        .count();
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// How the watch loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// stdout reached EOF and the leader exited.
    Finished,
    Timeout(TimeoutKind),
    /// The consumer dropped the run.
    Cancelled,
    /// [`Backend::abort_all`]: the server is stopping.
    Aborted,
}

/// A spawned CLI process with its stdout reader and stderr drain already running, and its
/// stdin still open (nothing written yet). A pooled process waits in this state; a cold
/// run writes its prompt right away. Dropping it SIGKILLs the group (guard) and the leader
/// (`kill_on_drop`); [`Spawned::reap`] is the orderly end (kill group, then reap).
pub(super) struct Spawned {
    child: Child,
    pid: i32,
    pgid: Pid,
    group: GroupGuard,
    stdin: Option<tokio::process::ChildStdin>,
    stdin_task: Option<tokio::task::JoinHandle<()>>,
    line_rx: mpsc::Receiver<LineMsg>,
    stdout_task: Option<tokio::task::JoinHandle<()>>,
    stderr_task: Option<tokio::task::JoinHandle<()>>,
    ring: Ring,
    /// The system prompt file must outlive the process (deleted on drop).
    system_file: Option<tempfile::NamedTempFile>,
    spawned_at: tokio::time::Instant,
    _in_flight: InFlight,
}

impl Spawned {
    /// The process id (also its process-group id).
    pub(super) fn pid(&self) -> u32 {
        self.pid.unsigned_abs()
    }

    /// Whether a process that has not been given a prompt yet can still take one: its
    /// leader is alive (not even a zombie) and it has printed nothing on stdout. Consumes
    /// a stray stdout line if there is one (the process is unusable anyway).
    pub(super) fn idle_usable(&mut self) -> bool {
        if leader_exited(self.pgid) {
            return false;
        }
        matches!(
            self.line_rx.try_recv(),
            Err(mpsc::error::TryRecvError::Empty)
        )
    }

    /// Writes the one user line and closes stdin (so the CLI exits after this turn), in
    /// its own task so a huge prompt cannot block the watchdogs; it fails harmlessly
    /// (EPIPE) if the process dies first.
    fn send_prompt(&mut self, req: &CliRequest) {
        if let Some(mut stdin) = self.stdin.take() {
            let line = user_line(&req.prompt, &req.attachments);
            self.stdin_task = Some(tokio::spawn(async move {
                let _ = stdin.write_all(line.as_bytes()).await;
                let _ = stdin.shutdown().await;
            }));
        }
    }

    /// The end of every process: SIGKILL whatever is left of the group (before reaping,
    /// see [`leader_exited`]), reap the leader, stop the helper tasks. Returns the exit
    /// status (None if it could not be reaped in time; `kill_on_drop` and tokio's orphan
    /// queue take over then).
    pub(super) async fn reap(self) -> Option<ExitStatus> {
        let Spawned {
            mut child,
            pid,
            pgid,
            mut group,
            stdin,
            stdin_task,
            line_rx,
            stdout_task,
            stderr_task,
            ring: _,
            system_file,
            spawned_at: _,
            _in_flight,
        } = self;
        drop(stdin);
        kill_group(pgid);
        let status = match tokio::time::timeout(REAP_GRACE, child.wait()).await {
            Ok(Ok(s)) => {
                group.disarm();
                Some(s)
            }
            Ok(Err(e)) => {
                tracing::warn!(pid, error = %e, "waiting for the cli process failed");
                group.disarm();
                None
            }
            Err(_) => {
                tracing::warn!(
                    pid,
                    "cli process did not die after SIGKILL; leaving it to the orphan reaper"
                );
                None
            }
        };
        drop(group);
        drop(child);
        drop(system_file);
        drop(line_rx);
        if let Some(t) = stdin_task {
            t.abort();
        }
        if let Some(t) = stdout_task {
            t.abort();
        }
        if let Some(mut t) = stderr_task {
            if tokio::time::timeout(STDERR_GRACE, &mut t).await.is_err() {
                t.abort();
            }
        }
        status
    }
}

/// Spawns the CLI for `model` / `system_prompt` with ccgate's flags and starts draining its
/// stdout and stderr. Nothing is written to stdin. Spawn errors come back as facts.
pub(super) fn spawn_cli(
    settings: &CliSettings,
    stats: &Arc<BackendStats>,
    model: Option<&str>,
    system_prompt: Option<&str>,
) -> Result<Spawned, Box<FailureFacts>> {
    let system_file = match system_prompt {
        Some(text) => match write_system_prompt(text) {
            Ok(f) => Some(f),
            Err(e) => {
                stats.spawn_errors_total.fetch_add(1, Ordering::Relaxed);
                let msg = format!("cannot write the system prompt file: {e}");
                return Err(spawn_error_facts(SpawnErrorKind::Other, msg));
            }
        },
        None => None,
    };
    // A missing working directory also fails with ENOENT; say so instead of "not found".
    if let Err(e) = std::fs::metadata(&settings.workdir) {
        stats.spawn_errors_total.fetch_add(1, Ordering::Relaxed);
        let msg = format!("working directory {}: {e}", settings.workdir.display());
        return Err(spawn_error_facts(SpawnErrorKind::Other, msg));
    }
    let flags = CliRequest {
        model: model.map(str::to_string),
        ..CliRequest::default()
    };
    let args = cli_args(settings, &flags, system_file.as_ref().map(|f| f.path()));
    let mut cmd = build_command(settings, args);

    let spawned_at = tokio::time::Instant::now();
    let mut child: Child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            stats.spawn_errors_total.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(command = %settings.command.display(), error = %e, "cli spawn failed");
            return Err(spawn_error_facts(spawn_error_kind(&e), e.to_string()));
        }
    };
    let in_flight = InFlight::new(stats);
    let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
        // Cannot happen for a freshly spawned child; be defensive rather than panic.
        // (`kill_on_drop` kills it; tokio's orphan queue reaps it.)
        let _ = child.start_kill();
        let msg = "spawned process has no pid".to_string();
        return Err(spawn_error_facts(SpawnErrorKind::Other, msg));
    };
    let pgid = Pid::from_raw(pid);
    let group = GroupGuard { pgid: Some(pgid) };

    let (line_tx, line_rx) = mpsc::channel(LINE_CHANNEL);
    let stdout_task = match child.stdout.take() {
        Some(out) => Some(tokio::spawn(read_lines(out, line_tx, MAX_LINE_BYTES))),
        None => {
            drop(line_tx);
            None
        }
    };
    let ring: Ring = Arc::new(Mutex::new(VecDeque::new()));
    let stderr_task = child.stderr.take().map(|err| {
        tokio::spawn(drain_stderr(
            err,
            Arc::clone(&ring),
            settings.stderr_tail_bytes,
        ))
    });
    Ok(Spawned {
        stdin: child.stdin.take(),
        child,
        pid,
        pgid,
        group,
        stdin_task: None,
        line_rx,
        stdout_task,
        stderr_task,
        ring,
        system_file,
        spawned_at,
        _in_flight: in_flight,
    })
}

/// Spawn (or take the pre-warmed `pooled` process), watch and reap one process.
///
/// The start timeout counts from the moment the prompt is written: for a cold process
/// that is its spawn, for a pooled one the hand-over.
async fn run_process(
    inner: &Inner,
    req: &CliRequest,
    total_deadline: tokio::time::Instant,
    tx: &mpsc::Sender<CliEvent>,
    pid_cell: &OnceLock<u32>,
    pooled: Option<Spawned>,
    abort: &mut tokio::sync::watch::Receiver<bool>,
) -> Ran {
    let settings = &inner.settings;
    let stats = &inner.stats;
    let t0 = Instant::now();

    let is_pooled = pooled.is_some();
    let mut sp = match pooled {
        Some(sp) => sp,
        None => match spawn_cli(
            settings,
            stats,
            req.model.as_deref(),
            req.system_prompt.as_deref(),
        ) {
            Ok(sp) => sp,
            Err(facts) => return Ran::Done(Err(facts)),
        },
    };
    let pid = sp.pid;
    let pgid = sp.pgid;
    let _ = pid_cell.set(sp.pid());
    let start_base = if is_pooled {
        tokio::time::Instant::now()
    } else {
        sp.spawned_at
    };
    // While a pooled run waits for its first line the pool does not refill: a refill's
    // CPU-heavy start-up would eat the very latency the pool exists to save.
    let mut starting = if is_pooled {
        inner.pool.as_deref().map(Pool::starting)
    } else {
        None
    };
    sp.send_prompt(req);
    let ring = Arc::clone(&sp.ring);

    let mut acc = RunAccumulator::new();
    let mut first_line = false;
    let mut last_line = start_base;
    let mut stdout_open = true;
    let mut exited = false;
    let mut too_long = false;
    let mut peek_closed = Duration::from_millis(1);
    let end = 'watch: loop {
        if !stdout_open && exited {
            break End::Finished;
        }
        let (line_deadline, line_kind) = if first_line {
            (
                far_future(last_line, settings.inactivity_timeout),
                TimeoutKind::Inactivity,
            )
        } else {
            (
                far_future(start_base, settings.start_timeout),
                TimeoutKind::Start,
            )
        };
        let (deadline, kind) = if total_deadline <= line_deadline {
            (total_deadline, TimeoutKind::Total)
        } else {
            (line_deadline, line_kind)
        };
        let peek = if stdout_open {
            EXIT_PEEK_OPEN
        } else {
            peek_closed
        };
        tokio::select! {
            biased;
            _ = tx.closed() => break 'watch End::Cancelled,
            () = aborted(abort) => break 'watch End::Aborted,
            msg = sp.line_rx.recv(), if stdout_open => {
                let Some(msg) = msg else {
                    stdout_open = false;
                    // stdout EOF usually means the leader is exiting or already a zombie:
                    // look now rather than after the first backoff sleep (>= 1 ms timer tick,
                    // which the response would otherwise wait for).
                    if !exited && leader_exited(pgid) {
                        exited = true;
                        kill_group(pgid);
                    }
                    continue;
                };
                last_line = tokio::time::Instant::now();
                if !first_line {
                    first_line = true;
                    let latency = last_line.duration_since(start_base);
                    if is_pooled {
                        stats.record_pool_first_line(latency);
                        drop(starting.take());
                    } else {
                        stats.record_first_line(latency);
                    }
                }
                let line = match msg {
                    LineMsg::Line(l) => l,
                    LineMsg::TooLong => {
                        too_long = true;
                        continue;
                    }
                };
                for ev in acc.push_line(&line) {
                    match tokio::time::timeout_at(total_deadline, tx.send(ev)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break 'watch End::Cancelled,
                        Err(_) => break 'watch End::Timeout(TimeoutKind::Total),
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => break 'watch End::Timeout(kind),
            _ = tokio::time::sleep(peek), if !exited => {
                if leader_exited(pgid) {
                    exited = true;
                    // The leader is a zombie (pgid still reserved): remove stragglers so
                    // that nobody holds stdout open and stdout reaches EOF.
                    kill_group(pgid);
                } else if !stdout_open {
                    peek_closed = (peek_closed * 2).min(EXIT_PEEK_CLOSED_MAX);
                }
            }
        }
    };

    // Always: kill whatever is left of the group, then reap the leader.
    let status = sp.reap().await;
    let exit_code = status.and_then(|s| s.code());
    let signal = status.and_then(|s| s.signal());
    tracing::debug!(
        pid,
        pooled = is_pooled,
        ?exit_code,
        ?signal,
        ?end,
        duration_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
        "cli run ended"
    );

    let timeout = match end {
        End::Cancelled => {
            stats.cancelled_total.fetch_add(1, Ordering::Relaxed);
            return Ran::Cancelled;
        }
        End::Timeout(kind) => {
            stats.timeouts_total.fetch_add(1, Ordering::Relaxed);
            Some(kind)
        }
        End::Aborted => {
            return Ran::Done(Err(Box::new(FailureFacts {
                condition: Some(GatewayCondition::ShuttingDown),
                exit_code,
                signal,
                ..FailureFacts::default()
            })));
        }
        End::Finished => None,
    };
    let result = acc.conclude(RunEnd {
        exit_code,
        signal,
        stderr_tail: ring_to_string(&ring),
        timeout,
        condition: too_long.then_some(GatewayCondition::BadJson),
    });
    if is_pooled && !first_line && end == End::Finished && result.is_err() {
        return Ran::PooledSilent(result);
    }
    Ran::Done(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_line_is_exactly_one_json_line() {
        assert_eq!(
            user_line("--model x\n\"q\"", &[]),
            "{\"type\":\"user\",\"message\":{\"role\":\"user\",\"content\":\"--model x\\n\\\"q\\\"\"}}\n"
        );
    }

    #[test]
    fn user_line_with_images_is_a_content_block_list() {
        let image = serde_json::json!({"type": "image", "source": {"type": "url", "url": "https://x/y.png"}});
        let line = user_line("look: [image 1]", std::slice::from_ref(&image));
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(
            v["message"]["content"],
            serde_json::json!([{"type": "text", "text": "look: [image 1]"}, image])
        );
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
    }

    #[test]
    fn system_prompt_file_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let f = write_system_prompt("Be terse.").expect("temp file");
        let mode = std::fs::metadata(f.path())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(f.path()).expect("read"),
            "Be terse."
        );
        let path = f.path().to_path_buf();
        drop(f);
        assert!(!path.exists());
    }

    #[test]
    fn ring_drops_a_split_utf8_prefix() {
        let ring: Ring = Arc::new(Mutex::new("é·x".bytes().skip(1).collect()));
        assert_eq!(ring_to_string(&ring), "·x");
    }

    #[tokio::test]
    async fn line_reader_enforces_the_limit_and_keeps_the_last_line() {
        let input: &[u8] = b"short\n0123456789abc\nok\nlast-no-newline";
        let (tx, mut rx) = mpsc::channel(16);
        read_lines(input, tx, 10).await;
        let mut got = Vec::new();
        while let Some(m) = rx.recv().await {
            got.push(match m {
                LineMsg::Line(l) => l,
                LineMsg::TooLong => "<too long>".into(),
            });
        }
        assert_eq!(got, ["short", "<too long>", "ok", "<too long>"]);
    }
}
