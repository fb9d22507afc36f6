//! The CLI process driver: spawns `claude` in stream-json mode, one process per request,
//! in its own process group; feeds the prompt on stdin; parses stdout into [`CliEvent`]s;
//! drains stderr into a bounded ring; enforces the start / inactivity / total timeouts;
//! and kills + reaps the whole group when the run ends or the receiver is dropped
//! (client disconnect). It never classifies: failures come out as [`FailureFacts`].
//!
//! PUBLIC API CONTRACT (the HTTP layer and the health probe build against this):
//! - `Backend::new(CliSettings) -> Backend` (cheap to clone; shares the concurrency limiter)
//! - `backend.start(CliRequest) -> CliRun` — returns at once; waiting for a concurrency
//!   slot happens inside the run (queue full → `Done(Err(facts with condition QueueFull))`).
//! - `run.recv().await -> Option<CliEvent>`; the last event is always `CliEvent::Done`.
//! - Dropping a `CliRun` (or its receiver) kills the process group and reaps it.
//! - `run.pid()` is filled after spawn (for tests asserting the process is gone).
//! - Additions (process.rs): `run.finish().await -> Result<Success, Box<FailureFacts>>`
//!   (skip to `Done`), `backend.stats() -> Arc<BackendStats>` (`.snapshot()` for metrics:
//!   in-flight, queued, spawned/spawn-error/queue-full/timeout/cancelled totals, spawn →
//!   first-line latency), `backend.settings()`, `MAX_LINE_BYTES` (1 MiB stdout line limit).
//! - A result with `is_error: false` wins even if a watchdog fired after it; an over-long
//!   stdout line turns the run into a failure with `condition: BadJson`.
//! - Pre-warmed pool (pool.rs, `prewarm` > 0): `backend.start_pool(ready) -> PoolHandle`
//!   (the maintainer; drop or `.shutdown().await` drains it), `backend.invalidate_pool()`
//!   (reload / unhealthy: kill + reap the idle processes, refill later),
//!   `backend.pool_pids()`. `start()` hands a matching request (model = `prewarm_model`,
//!   no system prompt, not the probe) an idle process; the run is otherwise identical.
//!   Pool counters are in `StatsSnapshot::pool_*`; `BackendStats::attach_pool_metrics`.
//! - `crate::protocol` (pure parser, `RunAccumulator`) is used only through `new` /
//!   `push_line` / `conclude`.

mod pool;
pub mod present;
pub mod process;

pub use pool::PoolHandle;
pub use process::{
    cli_args, user_line, Backend, BackendStats, CliRun, PoolMetrics, StatsSnapshot, MAX_LINE_BYTES,
};

use std::path::PathBuf;
use std::time::Duration;

/// Process-level settings for running the CLI (from the `cli:` section of the process config).
#[derive(Debug, Clone)]
pub struct CliSettings {
    /// Program to run (`claude` from PATH by default).
    pub command: PathBuf,
    /// Extra arguments appended after ccgate's own flags.
    pub extra_args: Vec<String>,
    /// Working directory for every CLI process.
    pub workdir: PathBuf,
    /// Extra environment for the CLI (on top of ccgate's own, which it inherits).
    pub env: Vec<(String, String)>,
    /// Enable the CLI's tools. When false, `--tools ""` is passed.
    pub tools: bool,
    pub start_timeout: Duration,
    pub inactivity_timeout: Duration,
    pub total_timeout: Duration,
    /// Max CLI processes at once.
    pub max_concurrent: usize,
    /// Max requests waiting for a slot; beyond that the request fails with QueueFull.
    pub queue_size: usize,
    /// Bytes of stderr kept (ring).
    pub stderr_tail_bytes: usize,
    /// Idle pre-warmed processes to keep (0 = no pool). Capped at `max_concurrent`.
    pub prewarm: usize,
    /// `--model` the pre-warmed processes are spawned with (None = the CLI's default);
    /// only requests for exactly this model (and without a system prompt) use them.
    pub prewarm_model: Option<String>,
    /// An idle pre-warmed process older than this is recycled.
    pub prewarm_max_idle: Duration,
}

/// One turn to run.
#[derive(Debug, Clone, Default)]
pub struct CliRequest {
    /// The user prompt, written to stdin as one stream-json user message. Never argv.
    pub prompt: String,
    /// Anthropic image content blocks sent after the prompt text in that same message.
    pub attachments: Vec<serde_json::Value>,
    /// System prompt (passed via a private temp file, `--system-prompt-file`).
    pub system_prompt: Option<String>,
    /// `--model` value.
    pub model: Option<String>,
    /// Overrides `total_timeout` (the probe uses its own timeout).
    pub timeout: Option<Duration>,
    /// Skip the concurrency queue (the health probe must not be refused by load).
    pub bypass_queue: bool,
}

impl CliRequest {
    /// The request for one conversation as the backend presents it to the CLI
    /// ([`present::present`]).
    pub fn for_conversation(
        conversation: &crate::conversation::Conversation,
        model: &str,
    ) -> Result<CliRequest, present::PresentError> {
        let p = present::present(conversation)?;
        Ok(CliRequest {
            prompt: p.prompt,
            attachments: p.attachments,
            system_prompt: p.system_prompt,
            model: Some(model.to_string()),
            timeout: None,
            bypass_queue: false,
        })
    }
}

pub use crate::protocol::{CliEvent, Success, Usage};
