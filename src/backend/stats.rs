//! The backend's counters and gauges ([`BackendStats`], read as a [`StatsSnapshot`]), the
//! Prometheus metrics the pool feeds directly ([`PoolMetrics`]), and [`InFlight`], the
//! guard that counts a live process.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Counters and gauges for the metrics module (all relaxed atomics; read with
/// [`BackendStats::snapshot`]).
#[derive(Debug, Default)]
pub struct BackendStats {
    pub(super) in_flight: AtomicUsize,
    pub(super) queued: AtomicUsize,
    pub(super) spawned_total: AtomicU64,
    pub(super) spawn_errors_total: AtomicU64,
    pub(super) queue_full_total: AtomicU64,
    pub(super) timeouts_total: AtomicU64,
    pub(super) cancelled_total: AtomicU64,
    pub(super) stopped_total: AtomicU64,
    first_line_count: AtomicU64,
    first_line_micros_sum: AtomicU64,
    last_first_line_micros: AtomicU64,
    /// Also observed per run when the metrics module attached it.
    first_line_histogram: OnceLock<prometheus_client::metrics::histogram::Histogram>,
    pub(super) pool_idle: AtomicUsize,
    pub(super) pool_hits_total: AtomicU64,
    pub(super) pool_misses_total: AtomicU64,
    pub(super) pool_spawned_total: AtomicU64,
    pub(super) pool_died_total: AtomicU64,
    pub(super) pool_expired_total: AtomicU64,
    pub(super) pool_drained_total: AtomicU64,
    pub(super) pool_evicted_total: AtomicU64,
    pub(super) pool_handover_retries_total: AtomicU64,
    pub(super) kept_idle: AtomicUsize,
    pub(super) kept_hits_total: AtomicU64,
    pub(super) kept_misses_total: AtomicU64,
    pub(super) kept_evicted_total: AtomicU64,
    pub(super) kept_expired_total: AtomicU64,
    pub(super) held_runs: AtomicUsize,
    pub(super) held_continued_total: AtomicU64,
    pub(super) held_expired_total: AtomicU64,
    pub(super) held_evicted_total: AtomicU64,
    pub(super) held_abandoned_total: AtomicU64,
    pool_metrics: OnceLock<PoolMetrics>,
}

/// Prometheus metrics the pool updates directly (attached by the metrics module).
#[derive(Debug, Clone)]
pub struct PoolMetrics {
    /// Requests that got a pre-warmed process.
    pub hits: prometheus_client::metrics::counter::Counter,
    /// Requests that cold-spawned because they carry earlier turns (a resumed session is
    /// a spawn flag).
    pub misses_history: prometheus_client::metrics::counter::Counter,
    /// Requests that cold-spawned because of thinking options (not settable late).
    pub misses_thinking: prometheus_client::metrics::counter::Counter,
    /// Requests without a model while the pool's processes have one.
    pub misses_model: prometheus_client::metrics::counter::Counter,
    /// Requests whose schema is not JSON the control channel can carry.
    pub misses_schema: prometheus_client::metrics::counter::Counter,
    /// Requests with the pool's key that found no idle process.
    pub misses_empty: prometheus_client::metrics::counter::Counter,
    /// Requests whose pre-warmed process died silently at hand-over and that were re-run
    /// cold (they also count as hits).
    pub misses_handover: prometheus_client::metrics::counter::Counter,
    /// Prompt written → first stdout line, for pooled runs (cold runs observe
    /// spawn → first line in the first-line histogram instead).
    pub first_line: prometheus_client::metrics::histogram::Histogram,
}

/// Why a request did not get a pooled process.
pub(super) enum PoolMiss {
    /// Earlier turns (`--resume`): a spawn flag.
    History,
    /// Thinking options: not settable after spawn.
    Thinking,
    /// No model named while the pool's processes run `prewarm_model`.
    Model,
    /// A schema that is not JSON (cannot happen after validation).
    Schema,
    /// The key matched but no usable idle process was there.
    Empty,
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
    /// Runs ended early by their caller because the answer was complete (a stop sequence).
    pub stopped_total: u64,
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
    /// Kept conversation processes waiting for their next turn now.
    pub kept_idle: usize,
    /// Requests that continued a kept conversation process.
    pub kept_hits_total: u64,
    /// Requests with earlier turns that found no kept process for them (a fresh run).
    pub kept_misses_total: u64,
    /// Kept processes ended for their slot or for the cap (least recently used first).
    pub kept_evicted_total: u64,
    /// Kept processes ended after `cli.conversation_idle_timeout`.
    pub kept_expired_total: u64,
    /// Runs waiting in a client tool call now.
    pub held_runs: usize,
    /// Requests that continued a held run with their tool results.
    pub held_continued_total: u64,
    /// Held runs ended after `cli.tool_hold_timeout`.
    pub held_expired_total: u64,
    /// Held runs ended for the cap (`cli.max_held_runs`, oldest first).
    pub held_evicted_total: u64,
    /// Held runs ended because their conversation went on without their results (not
    /// exported yet: the metrics reference is moving to docs/).
    pub held_abandoned_total: u64,
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
            stopped_total: self.stopped_total.load(r),
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
            kept_idle: self.kept_idle.load(r),
            kept_hits_total: self.kept_hits_total.load(r),
            kept_misses_total: self.kept_misses_total.load(r),
            kept_evicted_total: self.kept_evicted_total.load(r),
            kept_expired_total: self.kept_expired_total.load(r),
            held_runs: self.held_runs.load(r),
            held_continued_total: self.held_continued_total.load(r),
            held_expired_total: self.held_expired_total.load(r),
            held_evicted_total: self.held_evicted_total.load(r),
            held_abandoned_total: self.held_abandoned_total.load(r),
        }
    }

    /// Makes the pool count hits / misses and pooled first-line latencies in these metrics.
    pub fn attach_pool_metrics(&self, metrics: PoolMetrics) {
        let _ = self.pool_metrics.set(metrics);
    }

    pub(super) fn record_pool_hit(&self) {
        self.pool_hits_total.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = self.pool_metrics.get() {
            m.hits.inc();
        }
    }

    pub(super) fn record_pool_miss(&self, miss: &PoolMiss) {
        self.pool_misses_total.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = self.pool_metrics.get() {
            match miss {
                PoolMiss::History => m.misses_history.inc(),
                PoolMiss::Thinking => m.misses_thinking.inc(),
                PoolMiss::Model => m.misses_model.inc(),
                PoolMiss::Schema => m.misses_schema.inc(),
                PoolMiss::Empty => m.misses_empty.inc(),
            };
        }
    }

    pub(super) fn record_pool_handover_retry(&self) {
        self.pool_handover_retries_total
            .fetch_add(1, Ordering::Relaxed);
        if let Some(m) = self.pool_metrics.get() {
            m.misses_handover.inc();
        }
    }

    pub(super) fn record_pool_first_line(&self, latency: Duration) {
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

    pub(super) fn record_first_line(&self, latency: Duration) {
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

/// Counts a live process in `in_flight` until dropped.
pub(super) struct InFlight(Arc<BackendStats>);

impl InFlight {
    pub(super) fn new(stats: &Arc<BackendStats>) -> Self {
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
