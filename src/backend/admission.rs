//! Admission: the concurrency limiter (`max_concurrent` slots, shared with the pool's idle
//! processes), the bounded wait queue (`queue_size`), and the decision taken synchronously
//! when a run starts ([`Limiter::admit`] → [`Admission`]), so it is deterministic for the
//! caller. The wait for a queued slot happens later, in the run's task.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::kept::Kept;
use super::parked::{Evicted, ParkedStore};
use super::pool::{Idle, Pool};
use super::request::CliRequest;
use super::stats::BackendStats;

/// How a run got (or will get, or did not get) its concurrency slot.
pub(super) enum Admission {
    /// The health probe: no slot, no queue.
    Bypass,
    Ready(OwnedSemaphorePermit),
    /// A pre-warmed process (with the slot it holds).
    Pooled(Box<Idle>),
    /// No free slot, but an idle pre-warmed process: retire it and take its slot.
    Evict(Box<Idle>),
    /// A kept process holding exactly this request's earlier turns (with its slot).
    Continue(Box<Kept>),
    /// No free slot, but a kept process: retire the least recently used, take its slot.
    EvictKept(Box<Kept>),
    /// Waiting for a slot (also after a held run was ended to free one: then beyond
    /// `queue_size` if need be, as the slot is on its way).
    Queued(QueueTicket),
    Full,
}

/// A place in the wait queue; gives it back on drop.
pub(super) struct QueueTicket(Arc<BackendStats>);

impl Drop for QueueTicket {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The shared concurrency slots and the wait queue in front of them.
pub(super) struct Limiter {
    slots: Arc<Semaphore>,
    capacity: usize,
    queue_size: usize,
    stats: Arc<BackendStats>,
}

impl Limiter {
    /// `max_concurrent` slots (0 is treated as 1), at most `queue_size` runs waiting.
    pub(super) fn new(max_concurrent: usize, queue_size: usize, stats: Arc<BackendStats>) -> Self {
        let permits = max_concurrent.clamp(1, Semaphore::MAX_PERMITS);
        Limiter {
            slots: Arc::new(Semaphore::new(permits)),
            capacity: permits,
            queue_size,
            stats,
        }
    }

    /// How many processes may be alive at once.
    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// The slots themselves (the pool's idle processes hold some).
    pub(super) fn slots(&self) -> Arc<Semaphore> {
        Arc::clone(&self.slots)
    }

    /// Waits for a free slot (fair: the longest waiting run gets it first).
    pub(super) async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.slots).acquire_owned().await.ok()
    }

    /// The admission decision for `req`: a pre-warmed process, a free slot, an idle pooled
    /// process's slot, a place in the queue, or nothing.
    pub(super) fn admit(
        &self,
        req: &CliRequest,
        pool: Option<&Arc<Pool>>,
        parked: &ParkedStore,
    ) -> Admission {
        if req.bypass_queue {
            return Admission::Bypass;
        }
        if let Some(k) = req
            .continue_from
            .as_ref()
            .and_then(|key| parked.checkout_kept(&key.on_account(req.account_name())))
        {
            return Admission::Continue(Box::new(k));
        }
        let pool = pool.filter(|p| p.enabled());
        if let Some(pool) = pool {
            match pool.checkout(req) {
                Ok(idle) => {
                    self.stats.record_pool_hit();
                    return Admission::Pooled(Box::new(idle));
                }
                Err(miss) => self.stats.record_pool_miss(&miss),
            }
        }
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return Admission::Ready(permit);
        }
        // Every slot is taken; parked processes must not make this request wait: the
        // oldest pre-warmed one gives way, else the oldest kept one, else the oldest held.
        match parked.evict_for_slot() {
            Some(Evicted::Prewarmed(idle)) => return Admission::Evict(idle),
            Some(Evicted::Kept(k)) => return Admission::EvictKept(k),
            Some(Evicted::Held) => {
                self.stats.queued.fetch_add(1, Ordering::AcqRel);
                return Admission::Queued(QueueTicket(Arc::clone(&self.stats)));
            }
            None => {}
        }
        if take_queue_place(&self.stats.queued, self.queue_size) {
            Admission::Queued(QueueTicket(Arc::clone(&self.stats)))
        } else {
            self.stats.queue_full_total.fetch_add(1, Ordering::Relaxed);
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
