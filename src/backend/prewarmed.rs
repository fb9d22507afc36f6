//! A pre-warmed process: a CLI spawned ahead of time with the pool's flags, waiting for a
//! first turn, parked (`parked.rs`) under the pool's key on its account (`pool.rs` keeps
//! them coming).
//!
//! Its end path ([`Idle::retire`]): kill the process group and reap it, then free the slot
//! (it has seen no prompt, so it has no files to tidy).

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

use super::child::Spawned;
use super::request::Account;

/// One idle pre-warmed process and the concurrency slot it holds.
pub(super) struct Idle {
    pub(super) proc: Spawned,
    pub(super) permit: OwnedSemaphorePermit,
    /// The account it was spawned for (None: the implicit one); only its runs take it.
    pub(super) account: Option<Arc<Account>>,
}

impl Idle {
    /// Kill + reap the process, then free its slot.
    pub(super) async fn retire(self) {
        let Idle { proc, permit, .. } = self;
        let _ = proc.reap().await;
        drop(permit);
    }
}
