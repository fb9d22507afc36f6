//! `ccgate serve`: load the process config and rules, bind, and run the gateway until
//! SIGTERM / Ctrl-C. Kept in the library so tests and `main` share it.

use std::path::PathBuf;
use std::time::Duration;

use crate::backend::{Backend, CliSettings};
use crate::config::{Config, LogFormat, Overrides};
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
}

/// Loads the config with the documented precedence from the real environment.
pub fn load_config(
    args: &ServeArgs,
) -> Result<crate::config::LoadedConfig, crate::config::ConfigError> {
    super::load_config(
        args.config.as_deref(),
        &Overrides {
            listen: args.listen,
            rules: args.rules.clone(),
            log_format: args.log_format,
        },
    )
}

/// Builds the backend settings from the config; `workdir` is the resolved directory.
pub fn cli_settings(config: &Config, workdir: PathBuf) -> CliSettings {
    let c = &config.cli;
    CliSettings {
        command: c.command.clone(),
        extra_args: c.args.clone(),
        workdir,
        env: c.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        tools: c.tools,
        start_timeout: Duration::from_secs_f64(c.start_timeout),
        inactivity_timeout: Duration::from_secs_f64(c.inactivity_timeout),
        total_timeout: Duration::from_secs_f64(c.total_timeout),
        max_concurrent: c.max_concurrent,
        queue_size: c.queue_size,
        stderr_tail_bytes: c.stderr_tail_bytes,
        prewarm: c.prewarm,
        prewarm_model: c.prewarm_model.clone().filter(|m| !m.is_empty()),
        prewarm_max_idle: Duration::from_secs_f64(c.prewarm_max_idle),
    }
}

/// Sets up logging to stderr in the configured format.
pub fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}

/// Runs `ccgate serve` to completion.
pub async fn run(config: Config) -> Result<(), ServeError> {
    let loaded = crate::reload::load_rules_file(&config.rules, IfMissing::Embedded)?;
    let rules = loaded.rules;
    tracing::info!(path = %config.rules.display(), source = loaded.source.as_str(),
        kinds = rules.kinds_count(), sha256 = rules.sha256(), "rules loaded");
    // The CLI writes per-project state under its cwd; by default give it a private,
    // empty directory that disappears with the process.
    let (workdir, _tmp) = match &config.cli.workdir {
        Some(dir) => (dir.clone(), None),
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("ccgate-cli-")
                .tempdir()
                .map_err(ServeError::Workdir)?;
            (tmp.path().to_path_buf(), Some(tmp))
        }
    };
    let backend = Backend::new(cli_settings(&config, workdir));
    let addr = config.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let state = crate::AppState::new(config, rules, backend);
    tracing::info!(listen = %listener.local_addr()?, "ccgate listening");
    crate::serve(listener, state, shutdown_signal()).await?;
    tracing::info!("ccgate stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
