//! Blocking or CPU-heavy steps run where they cannot stall the runtime: a synchronous
//! call that may take milliseconds (a session file of a 30k-turn history, the
//! presentation and fingerprint of a megabyte of conversation) moves its async worker's
//! other tasks to a fresh worker first ([`tokio::task::block_in_place`]), so `/health`
//! and every other request keep being served meanwhile. Unlike `spawn_blocking` it needs
//! no owned copy of the data the step reads.
//!
//! Outside a multi-threaded runtime (unit tests, `#[tokio::test]`) the step just runs.

/// Runs `f` without holding up the runtime's other tasks.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn other_tasks_run_while_a_step_blocks() {
        // With one worker, a plain blocking call in a task would hold the ticker (a task
        // on the same worker) for the whole step.
        let ticker = tokio::spawn(async {
            let started = Instant::now();
            tokio::time::sleep(Duration::from_millis(20)).await;
            started.elapsed()
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let step = tokio::spawn(async {
            super::blocking(|| std::thread::sleep(Duration::from_millis(400)));
        });
        let waited = ticker.await.unwrap();
        step.await.unwrap();
        assert!(waited < Duration::from_millis(300), "{waited:?}");
    }

    #[tokio::test]
    async fn a_current_thread_runtime_just_runs_the_step() {
        assert_eq!(super::blocking(|| 7), 7);
    }
}
