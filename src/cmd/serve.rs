//! `ccgate serve`: load the process config into [`Settings`], load the rules, bind, and run
//! the gateway until SIGTERM / Ctrl-C.

use std::path::PathBuf;

use crate::backend::Backend;
use crate::config::{LogFormat, LogSettings, Overrides, Settings};
use crate::reload::IfMissing;

/// Flags of `ccgate serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Process config file (YAML). Default: config/ccgate.yaml if present.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on (overrides `listen` / CCGATE_LISTEN).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// Rules file (overrides `rules` / CCGATE_RULES).
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// Errors that stop `serve` before it listens.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("rules: {0}")]
    Rules(#[from] crate::reload::RulesLoadError),
    #[error("cannot create the CLI working directory: {0}")]
    Workdir(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("keys: {0}")]
    Keys(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The settings from the real environment with the documented precedence, and the
/// `CCGATE_*` variables that are no config keys.
/// The settings `serve` runs with, the `CCGATE_*` variables it ignores, and the warnings
/// about the config as a whole (with `state.url`: accounts that log in through a config
/// directory, see `Config::shared_login_warnings`).
pub fn load_settings(
    args: &ServeArgs,
) -> Result<(Settings, Vec<String>, Vec<String>), crate::config::ConfigError> {
    let loaded = super::load_config(
        args.config.as_deref(),
        &Overrides {
            listen: args.listen,
            rules: args.rules.clone(),
            log_format: args.log_format,
        },
    )?;
    let warnings = loaded
        .config
        .shared_login_warnings(&|k| std::env::var_os(k).is_some());
    Ok((loaded.config.compile()?, loaded.ignored_env, warnings))
}

/// Keeps the log writer thread alive; dropping it writes out the lines still buffered
/// (for up to two seconds) and stops the thread. Hold it until the process is done logging.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard(#[allow(dead_code)] Option<super::log::LogWriterGuard>);

/// Sets up logging to stderr in the configured format.
///
/// Log lines go through a bounded buffer to a writer thread ([`super::log`]), so a request
/// never waits for stderr: the request line was a quarter of the gate path's cost. When
/// `log.buffer_lines` lines are waiting, further lines are dropped and counted
/// (`ccgate_log_lines_dropped_total`).
pub fn init_logging(log: &LogSettings) -> LogGuard {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let dropped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (writer, guard) =
        super::log::log_writer(std::io::stderr(), log.buffer_lines, dropped.clone());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let installed = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    if installed.is_err() {
        // Another subscriber is already installed (tests): keep it, and stop this writer.
        return LogGuard(None);
    }
    crate::metrics::watch_log_drops(dropped);
    LogGuard(Some(guard))
}

/// `ccgate serve` from `main`: settings, logging, a runtime, and [`run`] to completion.
pub fn serve(args: &ServeArgs) -> Result<(), ServeError> {
    let (settings, ignored_env, warnings) = load_settings(args)?;
    // Dropped last, after the runtime: the final lines ("ccgate stopped") are written out.
    let _log = init_logging(&settings.log);
    for name in ignored_env {
        tracing::warn!(variable = %name, "ignoring environment variable: not a ccgate config key");
    }
    for w in warnings {
        tracing::warn!(warning = %w, "config warning (see `ccgate check`)");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(run(settings));
    // Dropping a runtime waits for every blocking task; a reload still compiling (given up
    // after `RELOAD_TIMEOUT`) must not hold the exit after SIGTERM.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// Runs the gateway with these settings until SIGTERM / Ctrl-C.
pub async fn run(settings: Settings) -> Result<(), ServeError> {
    // Installed before anything else: a SIGTERM while the rules load or the port binds
    // must stop ccgate, not kill it with the default action.
    let stop = shutdown_signal();
    // With the CLI's tools on, descendants that leave their run's process group (`setsid`)
    // are re-parented to ccgate, which ends and reaps them with the run (see
    // `backend::reaper`). Without tools no run starts such processes.
    if settings.cli.tools {
        crate::backend::become_subreaper();
    }
    let loaded = crate::reload::load_rules_file(&settings.rules, IfMissing::Embedded)?;
    let rules = loaded.rules;
    tracing::info!(path = %settings.rules.display(), source = loaded.source.as_str(),
        kinds = rules.kinds_count(), sha256 = rules.sha256(), "rules loaded");
    for w in rules.warnings() {
        tracing::warn!(warning = %w, "rules loaded with a warning (see `ccgate check`)");
    }
    // The CLI writes per-project state under its cwd; by default give it a private,
    // empty directory that disappears with the process.
    let (workdir, _tmp) = match &settings.cli_workdir {
        Some(dir) => (dir.clone(), None),
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("ccgate-cli-")
                .tempdir()
                .map_err(ServeError::Workdir)?;
            (tmp.path().to_path_buf(), Some(tmp))
        }
    };
    let backend = Backend::new(settings.cli_settings(workdir));
    let addr = settings.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let store = crate::store::Store::open_with(settings.state.store_options()).await?;
    tracing::info!(store = %store.url(), shared = store.is_shared(), "state store open");
    let state =
        crate::AppState::build(settings, rules, backend, Some(store)).map_err(ServeError::Keys)?;
    tracing::info!(listen = %listener.local_addr()?, "ccgate listening");
    // The CLI's version and capabilities, in the background (about a second; no model
    // call): logged, a version outside the tested range warned about, and shown in
    // `/v1/auth/status`.
    let (cli_report, cli_settings) = (state.cli.clone(), state.backend.settings().clone());
    tokio::spawn(async move {
        let report = std::sync::Arc::new(crate::backend::capabilities::check(&cli_settings).await);
        cli_report.store(Some(report.clone()));
        report.log();
    });
    crate::serve(listener, state, stop).await?;
    tracing::info!("ccgate stopped");
    Ok(())
}

/// SIGTERM or SIGINT, with both handlers installed when this is called (not when the
/// future is first polled).
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = wait(term) => {},
            () = wait(int) => {},
        }
    }
}
