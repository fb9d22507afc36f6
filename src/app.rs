//! App wiring: [`serve`] runs the HTTP router on a listener together with the background
//! tasks a serving process owns (the health probe, SIGHUP reloads, the rules file watcher,
//! the pre-warmed pool's maintainer, the usage ledger's writer and its retention purge),
//! all stopped by one shutdown signal and awaited before it returns (the state store's
//! background writes finish and the ledger's writer is flushed after the last request
//! ended). `conn` is the accept loop and the client connections, with
//! their timeouts and cap.

mod conn;

use std::future::Future;
use std::time::Duration;

use crate::http::state::AppState;
use crate::{http, reload, shutdown};

/// After the shutdown grace period, how long the ended requests get to deliver their
/// error answers before `serve` returns regardless.
const ABORT_FLUSH: Duration = Duration::from_secs(5);

/// How long the rules file watcher waits for a burst of file events to settle.
const WATCH_DEBOUNCE: Duration = Duration::from_millis(200);

/// Serves the gateway on an already bound listener until `shutdown` resolves, then
/// drains in-flight requests for `shutdown_timeout`, and ends the rest. The background
/// tasks stop when `shutdown` resolves (or this future is dropped) and have ended when
/// this returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Dropping the trigger fires it, so the tasks also stop if this future is dropped.
    let (trigger, stopping) = shutdown::channel();
    if !state.rules.load().probe().interval.is_zero() {
        state.health.expect_startup_probe();
    }
    let probe = tokio::spawn(state.accounts.clone().run_probes(stopping.clone()));
    // The accounts' plan windows through get_usage, on a schedule (no model call).
    let windows = state.settings.windows_refresh.map(|every| {
        tokio::spawn(state.accounts.clone().run_window_refresh(
            state.backend.clone(),
            every,
            stopping.clone(),
        ))
    });
    // The usage ledger's writer (until the ledger is flushed below) and retention purge.
    let writer = state
        .ledger_writer
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .map(|w| tokio::spawn(w.run()));
    let purge = state
        .ledger
        .clone()
        .map(|l| tokio::spawn(l.purge_loop(state.settings.state.retention_days, stopping.clone())));
    // Cooldowns other replicas found (a no-op without a state store or accounts).
    let cooldowns = tokio::spawn(
        state
            .accounts
            .clone()
            .poll_shared_cooldowns(state.settings.state.poll_interval(), stopping.clone()),
    );
    let hup = tokio::spawn(reload::sighup_reloads(
        state.reloader.clone(),
        stopping.clone(),
    ));
    let watch = if state.settings.watch_rules {
        reload::spawn_watcher(state.reloader.clone(), WATCH_DEBOUNCE, stopping.clone())
    } else {
        None
    };
    // The pre-warmed pool (no-op unless `cli.prewarm` > 0) stays empty while the CLI is
    // known unhealthy or the first probe has not answered yet. Dropping the handle (also
    // when this future is dropped) drains it.
    let accounts = state.accounts.clone();
    let pool = state
        .backend
        .start_pool_for(stopping.clone(), move || accounts.pool_accounts());
    let backend = state.backend.clone();
    let ledger = state.ledger.clone();
    let grace = state.settings.shutdown_timeout;
    let http_settings = state.settings.http.clone();
    let app = http::router(state);
    // Stops accepting on `stopping`, then resolves when every connection has ended.
    let server = conn::serve_connections(listener, app, http_settings, stopping.clone());
    tokio::pin!(server);
    let grace_over = async {
        shutdown.await;
        tracing::info!(grace_s = grace.as_secs_f64(), "stopping: draining requests");
        trigger.trigger();
        tokio::time::sleep(grace).await;
    };
    let result = tokio::select! {
        result = &mut server => result,
        () = grace_over => {
            let in_flight = backend.stats().snapshot().in_flight;
            tracing::warn!(in_flight, "shutdown grace period over: ending the remaining requests");
            // Runs end as `shutting_down` (groups killed and reaped); their responses and
            // streams then finish, and the connections close.
            backend.abort_all();
            match tokio::time::timeout(ABORT_FLUSH, &mut server).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!("connections still open after the grace period; stopping anyway");
                    Ok(())
                }
            }
        }
    };
    // Also when the server ended by itself: its background tasks end with it.
    trigger.trigger();
    for (name, task) in [
        ("probe", probe),
        ("SIGHUP listener", hup),
        ("shared cooldowns", cooldowns),
    ] {
        if let Err(e) = task.await {
            tracing::warn!(task = name, error = %e, "background task failed");
        }
    }
    if let Some(watch) = watch {
        watch.stop().await;
    }
    if let Some(windows) = windows {
        let _ = windows.await;
    }
    pool.shutdown().await;
    backend.close_kept().await;
    if let Some(purge) = purge {
        let _ = purge.await;
    }
    // Every request has ended: the store's background writes (slot releases, token
    // counts, shared account state) get a last, bounded, chance.
    if let Some(store) = ledger.as_ref().map(|l| l.store()) {
        if !store.finish_writes().await {
            tracing::warn!(
                running = store.writes_in_flight(),
                "state store: background writes still running at shutdown; dropped"
            );
        }
    }
    // Every request has ended (its row is queued): write them all.
    if let Some(ledger) = ledger {
        if writer.is_some() {
            if ledger.flush().await {
                tracing::info!(
                    written = ledger.written(),
                    dropped = ledger.dropped(),
                    "usage ledger flushed"
                );
            } else {
                tracing::error!(
                    written = ledger.written(),
                    dropped = ledger.dropped(),
                    lost = ledger.pending(),
                    "usage ledger: the store did not take the last rows before shutdown"
                );
            }
        }
    }
    result
}
