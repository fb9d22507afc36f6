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
pub mod reload;
pub mod rules;
pub mod serve_cmd;
pub mod state;

use std::future::Future;

pub use state::AppState;

/// Serves the gateway on an already bound listener until `shutdown` resolves, then
/// drains in-flight requests. Also runs the background tasks that belong to a serving
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
    let _watch = if state.config.watch_rules {
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
    let app = http::router(state);
    // Streamed deltas are small writes: without TCP_NODELAY, Nagle holds each one back until
    // the previous is acknowledged, and with the client's delayed ACK that adds ~40 ms
    // stalls to SSE responses (measured by `benches/gateway.rs`).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted connection");
        }
    });
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    probe.abort();
    hup.abort();
    pool.shutdown().await;
    result
}
