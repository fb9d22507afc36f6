//! The process's one shutdown signal. `serve` owns the [`ShutdownTrigger`]; every
//! background task (probe, SIGHUP listener, rules watcher, pool maintainer) holds a
//! [`Shutdown`] and ends when it fires, and `serve` awaits them all before it returns.

use tokio::sync::watch;

/// Fires the shutdown once; dropping it fires it too, so no task outlives its owner.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// A handle on the shutdown signal (cheap to clone).
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new, not yet fired, signal.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    /// Fires the signal (idempotent).
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    /// Another handle on this signal.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Drop for ShutdownTrigger {
    fn drop(&mut self) {
        self.trigger();
    }
}

impl Shutdown {
    /// Whether shutdown has begun.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once shutdown has begun (at once if it already has).
    pub async fn triggered(&self) {
        let mut rx = self.0.clone();
        // A closed channel means the trigger is gone, which also means shutdown.
        let _ = rx.wait_for(|stopping| *stopping).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_handle_sees_the_trigger_and_dropping_it_fires() {
        let (trigger, a) = channel();
        let b = trigger.subscribe();
        assert!(!a.is_triggered());
        trigger.trigger();
        a.triggered().await;
        assert!(b.is_triggered());
        let (trigger, c) = channel();
        drop(trigger);
        c.triggered().await;
        assert!(c.is_triggered());
    }
}
