//! A held run: a run whose answer ended with the client's tool calls stays alive, its CLI
//! waiting inside the `tools/call` it sent, parked (`parked.rs`) under the fingerprint of
//! the conversation up to and including that answer (tool calls by id and name: a client
//! that re-serialises or normalises a call's input still holds the same conversation),
//! until the client's next request returns the results. That request continues the very
//! same run: no respawn, no replayed history, no extra upstream call.
//!
//! Its end path ([`HeldRun::end`]): the run is stopped, and its driver kills and reaps the
//! process group and frees the slot, without answering the calls (an answer would only
//! start a model call nobody waits for); a late continuation then runs fresh from the
//! history it carries.

use super::handle::CliRun;
use super::present::Fingerprint;

/// One held run and what it waits for.
pub(super) struct HeldRun {
    pub(super) run: CliRun,
    /// The tool-use ids of the calls it waits in.
    pub(super) calls: Vec<String>,
    /// The conversation up to the user turn the calls answer: a request of the same
    /// conversation that goes on from there without the results ends the run at once.
    pub(super) asked: Fingerprint,
}

impl HeldRun {
    pub(super) fn end(self) {
        self.run.stop();
    }
}
