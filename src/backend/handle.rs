//! The handle of one run ([`CliRun`]) and what it shares with the run's driver task
//! (`run.rs`): its pid, whether it was stopped or is held, its account; and the client's
//! results for a held run ([`ToolResults`]). Below `run` and the parked store, so both can
//! hold runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;

use super::present::FingerprintBuilder;
use super::request::{Account, ToolResult};
use super::stats::BackendStats;
use crate::protocol::{CliEvent, Success};
use crate::rules::{FailureFacts, GatewayCondition};

/// One run in progress. Events arrive in order; the last one is always [`CliEvent::Done`].
/// Dropping it kills the process group (client disconnect).
#[derive(Debug)]
pub struct CliRun {
    pub(super) cell: Arc<RunCell>,
    pub(super) rx: mpsc::Receiver<CliEvent>,
    pub(super) cmd: mpsc::Sender<ToolResults>,
}

/// The client's results for a held run's tool calls.
#[derive(Debug, Clone)]
pub struct ToolResults {
    /// Tool-use id → the result's content blocks and whether it is an error.
    pub results: Vec<ToolResult>,
    /// The conversation after these results, to keep the process under once the turn
    /// is answered (replaces the run's earlier one).
    pub keep: Option<FingerprintBuilder>,
    /// From now on answer every new call with an error result (`tool_choice: none`).
    pub refuse_calls: bool,
}

/// What a [`CliRun`] and its driver task share.
#[derive(Debug, Default)]
pub(super) struct RunCell {
    pub(super) pid: OnceLock<u32>,
    /// The caller ended the run because its answer was complete ([`CliRun::stop`]), so the
    /// end is not a cancellation.
    pub(super) stopped: AtomicBool,
    /// The run is held: its answer is complete and its CLI waits in the client's tool
    /// calls. Only then are its watchdogs suspended (the parked store bounds that wait).
    pub(super) held: AtomicBool,
    /// The account the run's process runs on (None: the implicit one).
    pub(super) account: Option<Arc<Account>>,
}

impl RunCell {
    /// Counts a run whose consumer went away: stopped by its caller, or cancelled.
    pub(super) fn count_gone(&self, stats: &BackendStats) {
        let counter = if self.stopped.load(Ordering::Acquire) {
            &stats.stopped_total
        } else {
            &stats.cancelled_total
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl CliRun {
    /// A run without a process that yields `events` (end them with `Done`) on `account`,
    /// and the receiving end of what is sent to it ([`CliRun::send_results`]): the engine's
    /// tests drive their decisions through a fake backend with it.
    #[cfg(test)]
    pub(crate) fn scripted(
        events: Vec<CliEvent>,
        account: Option<Arc<Account>>,
    ) -> (CliRun, mpsc::Receiver<ToolResults>) {
        let (tx, rx) = mpsc::channel(events.len().max(1));
        for e in events {
            let _ = tx.try_send(e);
        }
        let (cmd, results) = mpsc::channel(4);
        let cell = Arc::new(RunCell {
            account,
            ..RunCell::default()
        });
        (CliRun { cell, rx, cmd }, results)
    }

    /// The next event; `None` after `Done`.
    pub async fn recv(&mut self) -> Option<CliEvent> {
        self.rx.recv().await
    }

    /// The CLI's pid (also its process-group id), once spawned.
    pub fn pid(&self) -> Option<u32> {
        self.cell.pid.get().copied()
    }

    /// Hands the client's results for the run's held tool calls to the driver, which
    /// answers the CLI's `tools/call` requests with them. False if the run is gone.
    pub fn send_results(&self, results: ToolResults) -> bool {
        self.cmd.try_send(results).is_ok()
    }

    /// The name of the account the run's process runs on (None: the implicit one).
    pub fn account_name(&self) -> Option<&str> {
        self.cell.account.as_deref().map(Account::name)
    }

    /// Marks the run as held (its watchdogs pause while its calls wait for the client) or
    /// as going on.
    pub(super) fn set_held(&self, held: bool) {
        self.cell.held.store(held, Ordering::Release);
    }

    /// Resolves once the run's driver has ended (its process is gone).
    pub(super) fn gone(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let cmd = self.cmd.clone();
        async move { cmd.closed().await }
    }

    /// Ends the run because its answer is complete (a stop sequence ended it): the process
    /// group is killed and reaped as on a drop, but the run counts as stopped, not as a
    /// cancellation.
    pub fn stop(self) {
        self.cell.stopped.store(true, Ordering::Release);
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
