//! A kept process: one that answered its conversation's turn cleanly, stdin still open,
//! parked (`parked.rs`) under the fingerprint of the conversation it holds (tenant, model,
//! system prompt, the client's tools, the run options, every message and its own answer)
//! for that conversation's next request.
//!
//! Its end path ([`Kept::retire`]): stdin is closed first so the CLI exits on its own and
//! tidies its state directory (a SIGKILLed CLI leaves its files behind); what is still
//! running after [`GRACEFUL_EXIT`] is killed, everything is reaped, then the slot is freed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;

use super::child::Spawned;
use super::request::Account;

/// How long a process being ended gracefully may take to exit by itself.
pub(super) const GRACEFUL_EXIT: Duration = Duration::from_secs(2);

/// One kept process, the slot it holds and the account it runs on.
pub(super) struct Kept {
    pub(super) proc: Spawned,
    pub(super) permit: OwnedSemaphorePermit,
    /// The account its process runs on (None: the implicit one).
    pub(super) account: Option<Arc<Account>>,
}

impl Kept {
    /// Ends the process gracefully (see the module docs), then frees its slot.
    pub(super) async fn retire(self) {
        let Kept { proc, permit, .. } = self;
        end_gracefully(proc).await;
        drop(permit);
    }
}

/// Closes `proc`'s stdin so the CLI exits by itself (and removes its files), kills what
/// is left after [`GRACEFUL_EXIT`] and reaps it.
pub(super) async fn end_gracefully(mut proc: Spawned) {
    proc.close_stdin().await;
    let deadline = tokio::time::Instant::now() + GRACEFUL_EXIT;
    while !proc.leader_exited() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = proc.reap().await;
}
