//! ccgate: an OpenAI- and Anthropic-compatible HTTP gateway in front of the Claude Code CLI,
//! whose failure handling is driven by a hot-reloaded rules file.
//!
//! Data flow: HTTP request (`http`) → health gate (`health`) → CLI run (`backend`) →
//! success translated to the API's shape, or failure facts → classified by the current
//! rules snapshot (`rules`, swapped by `reload`) → status + headers + body (`http::errors`).
#![forbid(unsafe_code)]

pub mod backend;
pub mod cmd;
pub mod config;
pub mod health;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod reload;
pub mod rules;
pub mod shutdown;
pub mod state;

use std::future::{Future, IntoFuture};

pub use state::AppState;

/// After the shutdown grace period, how long the ended requests get to deliver their
/// error answers before `serve` returns regardless.
const ABORT_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves the gateway on an already bound listener until `shutdown` resolves, then
/// drains in-flight requests for `shutdown_timeout`, and ends the rest. Also runs the background tasks that belong to a serving
/// process: the health probe, SIGHUP reloads and (if enabled) the rules file watcher.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if !state.rules.load().probe().interval.is_zero() {
        state.health.expect_startup_probe();
    }
    let probe = tokio::spawn(health::probe_loop(state.clone()));
    let hup = tokio::spawn(reload::sighup_reloads(state.reloader.clone()));
    let _watch = if state.settings.watch_rules {
        reload::spawn_watcher(
            state.reloader.clone(),
            std::time::Duration::from_millis(200),
        )
    } else {
        None
    };
    // The pre-warmed pool (no-op unless `cli.prewarm` > 0) stays empty while the CLI is
    // known unhealthy or the first probe has not answered yet. Dropping the handle (also
    // when this future is dropped) drains it.
    let health = state.health.clone();
    let pool = state
        .backend
        .start_pool(move || health.is_ok() && !health.startup_probe_pending());
    let backend = state.backend.clone();
    let grace = state.settings.shutdown_timeout;
    let app = http::router(state);
    // Streamed deltas are small writes: without TCP_NODELAY, Nagle holds each one back until
    // the previous is acknowledged, and with the client's delayed ACK that adds ~40 ms
    // stalls to SSE responses (measured by `benches/gateway.rs`).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted connection");
        }
    });
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!(grace_s = grace.as_secs_f64(), "stopping: draining requests");
            let _ = stopping_tx.send(());
        })
        .into_future();
    tokio::pin!(server);
    let grace_over = async move {
        match stopping_rx.await {
            Ok(()) => tokio::time::sleep(grace).await,
            Err(_) => std::future::pending().await,
        }
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
    probe.abort();
    hup.abort();
    pool.shutdown().await;
    result
}
