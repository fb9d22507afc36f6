//! The engine's one boundary to the processes ([`Runner`]): start a run, hold one, continue
//! or end held ones. [`Backend`] is the real one; the engine's decisions (held, kept,
//! fresh, fallback, failover) are unit-tested through a fake that records what it was
//! asked and answers with scripted runs (`tests.rs`), no process needed.

use std::collections::HashSet;

use crate::backend::present::Fingerprint;
use crate::backend::{Backend, CliRequest, CliRun, Hold, ToolResults};

/// What the engine asks of the backend.
pub(crate) trait Runner: Send + Sync {
    /// Starts a run of `req` (returns at once; see [`Backend::start`]).
    fn start(&self, req: CliRequest) -> CliRun;
    /// Holds a run whose answer ended with the client's tool calls.
    fn hold(&self, held: Hold);
    /// The run held under `key`, continued with what `accept` makes of its calls.
    fn continue_held(
        &self,
        key: &Fingerprint,
        accept: &mut dyn FnMut(&[String]) -> Option<ToolResults>,
    ) -> Option<CliRun>;
    /// Ends the held runs whose conversation went on without their results.
    fn end_held_asked(&self, asked: &HashSet<Fingerprint>) -> usize;
}

impl Runner for Backend {
    fn start(&self, req: CliRequest) -> CliRun {
        Backend::start(self, req)
    }

    fn hold(&self, held: Hold) {
        Backend::hold(self, held);
    }

    fn continue_held(
        &self,
        key: &Fingerprint,
        accept: &mut dyn FnMut(&[String]) -> Option<ToolResults>,
    ) -> Option<CliRun> {
        Backend::continue_held(self, key, accept)
    }

    fn end_held_asked(&self, asked: &HashSet<Fingerprint>) -> usize {
        Backend::end_held_asked(self, asked)
    }
}
