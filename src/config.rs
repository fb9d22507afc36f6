//! Process configuration: `config/ccgate.yaml` (if present) < `--config FILE` < `CCGATE_*`
//! environment variables (nested keys joined with `__`) < command-line flags.
//!
//! These settings apply at start only (listen address, CLI command, limits). Everything an
//! operator may change at run time lives in the rules file instead, so nothing here is ever
//! silently ignored by a reload.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format as _, Serialized};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Where the default process config is looked for (relative to the working directory).
pub const DEFAULT_CONFIG_PATH: &str = "config/ccgate.yaml";

/// Log line format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The whole process config. Unknown keys are an error at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to bind. Loopback by default.
    pub listen: SocketAddr,
    /// Rules file; the embedded default rules are used when it does not exist.
    pub rules: PathBuf,
    /// Reload the rules when the file changes (SIGHUP always reloads).
    pub watch_rules: bool,
    /// When non-empty, `/v1/*` and `/admin/*` require one of these keys.
    pub api_keys: Vec<String>,
    /// Needed to bind a non-loopback address without `api_keys`.
    pub allow_unauthenticated: bool,
    pub log_format: LogFormat,
    /// `tracing` filter directive (`RUST_LOG` wins when set).
    pub log_level: String,
    /// Allowed CORS origins; CORS is off when empty. `*` allows any.
    pub cors_origins: Vec<String>,
    /// Max request body in bytes (chunked bodies included).
    pub request_body_limit: usize,
    /// Seconds in-flight requests get to finish after SIGTERM / Ctrl-C; the ones still
    /// running then are ended (CLI killed, `shutting_down` answer) and ccgate exits.
    pub shutdown_timeout: f64,
    /// Seconds a streaming response may stay silent before ccgate sends a keep-alive
    /// (Anthropic `ping` event / OpenAI SSE comment); 0 disables.
    pub sse_keepalive: f64,
    pub cli: CliConfig,
}

/// The `cli:` section: how the Claude CLI is run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CliConfig {
    /// Program to run: a path, or a name looked up on PATH.
    pub command: PathBuf,
    /// Extra arguments appended to ccgate's own flags.
    pub args: Vec<String>,
    /// Working directory for the CLI; a private empty temp dir when unset.
    pub workdir: Option<PathBuf>,
    /// Extra environment for the CLI (it also inherits ccgate's environment).
    pub env: std::collections::BTreeMap<String, String>,
    /// Let the CLI use its tools. Off: `--tools ""`.
    pub tools: bool,
    /// Seconds from spawn to the first stdout line.
    pub start_timeout: f64,
    /// Seconds allowed between stdout lines.
    pub inactivity_timeout: f64,
    /// Seconds for a whole request.
    pub total_timeout: f64,
    /// CLI processes at once.
    pub max_concurrent: usize,
    /// Requests waiting for a slot; beyond it the rules' `queue_full` kind answers.
    pub queue_size: usize,
    /// Bytes of CLI stderr kept for classification and logs.
    pub stderr_tail_bytes: usize,
    /// Pre-warmed idle CLI processes (0 = off). They count against `max_concurrent`.
    pub prewarm: usize,
    /// Model the pre-warmed processes are started with (`--model`); unset = the CLI's
    /// default. Only requests for exactly this model, without a system prompt, use them.
    pub prewarm_model: Option<String>,
    /// Seconds an idle pre-warmed process may wait before it is replaced.
    pub prewarm_max_idle: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            rules: PathBuf::from("rules/rules.yaml"),
            watch_rules: true,
            api_keys: Vec::new(),
            allow_unauthenticated: false,
            log_format: LogFormat::Text,
            log_level: "info".into(),
            cors_origins: Vec::new(),
            request_body_limit: 1024 * 1024,
            shutdown_timeout: 30.0,
            sse_keepalive: 15.0,
            cli: CliConfig::default(),
        }
    }
}

impl Default for CliConfig {
    fn default() -> Self {
        CliConfig {
            command: PathBuf::from("claude"),
            args: Vec::new(),
            workdir: None,
            env: [("CLAUDE_CODE_MAX_RETRIES".to_string(), "2".to_string())].into(),
            tools: false,
            start_timeout: 30.0,
            inactivity_timeout: 120.0,
            total_timeout: 600.0,
            max_concurrent: 4,
            queue_size: 32,
            stderr_tail_bytes: 8192,
            prewarm: 0,
            prewarm_model: None,
            prewarm_max_idle: 300.0,
        }
    }
}

/// Errors loading or validating the process config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Flag values that override everything else (None = not given).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

/// A loaded config and the `CCGATE_*` variables that were not config keys (logged as a
/// warning once logging is up).
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    pub ignored_env: Vec<String>,
}

impl Config {
    /// Load with the documented precedence. `explicit` is `--config FILE` (must exist).
    /// `env` is the environment to read `CCGATE_*` from (injectable for tests).
    pub fn load(
        explicit: Option<&Path>,
        overrides: &Overrides,
        env: &[(String, String)],
    ) -> Result<LoadedConfig, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if Path::new(DEFAULT_CONFIG_PATH).is_file() {
            fig = fig.merge(serde_saphyr::figment::Yaml::file(DEFAULT_CONFIG_PATH));
        }
        if let Some(path) = explicit {
            if !path.is_file() {
                return Err(ConfigError::Missing(path.to_path_buf()));
            }
            fig = fig.merge(serde_saphyr::figment::Yaml::file(path));
        }
        let (env_provider, ignored) = env_source(env);
        fig = fig.merge(env_provider);
        fig = fig.merge(Serialized::defaults(overrides));
        let config: Config = fig
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(LoadedConfig {
            config,
            ignored_env: ignored,
        })
    }

    /// Checks figment cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        for (name, v) in [
            ("cli.start_timeout", self.cli.start_timeout),
            ("cli.inactivity_timeout", self.cli.inactivity_timeout),
            ("cli.total_timeout", self.cli.total_timeout),
            ("cli.prewarm_max_idle", self.cli.prewarm_max_idle),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(format!(
                    "{name} must be a positive number of seconds, got {v}"
                ));
            }
        }
        for (name, v) in [
            ("shutdown_timeout", self.shutdown_timeout),
            ("sse_keepalive", self.sse_keepalive),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{name} must be a number of seconds >= 0, got {v}"));
            }
        }
        if self.cli.max_concurrent == 0 {
            return bad("cli.max_concurrent must be at least 1".into());
        }
        if self.cli.prewarm > self.cli.max_concurrent {
            return bad(format!(
                "cli.prewarm ({}) must not exceed cli.max_concurrent ({}): pre-warmed processes use concurrency slots",
                self.cli.prewarm, self.cli.max_concurrent
            ));
        }
        if self.request_body_limit < 1024 {
            return bad("request_body_limit must be at least 1024 bytes".into());
        }
        if self.api_keys.iter().any(|k| k.trim().is_empty()) {
            return bad("api_keys must not contain empty keys".into());
        }
        if !self.listen.ip().is_loopback()
            && self.api_keys.is_empty()
            && !self.allow_unauthenticated
        {
            return bad(format!(
                "refusing to listen on non-loopback address {} without api_keys; \
                 set api_keys (CCGATE_API_KEYS) or allow_unauthenticated: true",
                self.listen
            ));
        }
        Ok(())
    }

    pub fn start_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.cli.start_timeout)
    }

    /// The SSE keep-alive interval; None when disabled (0).
    pub fn sse_keepalive(&self) -> Option<Duration> {
        Duration::try_from_secs_f64(self.sse_keepalive)
            .ok()
            .filter(|d| !d.is_zero())
    }

    /// The shutdown grace period (validated finite and >= 0).
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::try_from_secs_f64(self.shutdown_timeout).unwrap_or(Duration::ZERO)
    }
}

/// Top-level keys of [`Config`], the only `CCGATE_*` names read from the environment.
const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "rules",
    "watch_rules",
    "api_keys",
    "allow_unauthenticated",
    "log_format",
    "log_level",
    "cors_origins",
    "request_body_limit",
    "shutdown_timeout",
    "sse_keepalive",
    "cli",
];

/// `CCGATE_*` variables from the given environment, as a figment provider, plus the names
/// that were ignored. Variables whose first segment is no config key are skipped, not
/// fatal: Kubernetes injects `CCGATE_PORT`, `CCGATE_SERVICE_HOST`… for a Service named
/// `ccgate`, and tools use their own `CCGATE_*` variables. Keys under `cli__env__` keep
/// their case (they are environment variable names for the CLI).
fn env_source(env: &[(String, String)]) -> (Serialized<figment::value::Dict>, Vec<String>) {
    use figment::value::{Dict, Value};
    let mut root = Dict::new();
    let mut ignored = Vec::new();
    for (key, raw) in env {
        let Some(rest) = key.strip_prefix("CCGATE_") else {
            continue;
        };
        let mut path: Vec<String> = rest.split("__").map(str::to_string).collect();
        let is_cli_env = path.len() > 2
            && path[0].eq_ignore_ascii_case("cli")
            && path[1].eq_ignore_ascii_case("env");
        let keep_case_from = if is_cli_env { 2 } else { path.len() };
        for seg in path.iter_mut().take(keep_case_from) {
            *seg = seg.to_ascii_lowercase();
        }
        if path.iter().any(String::is_empty) || !TOP_LEVEL_KEYS.contains(&path[0].as_str()) {
            ignored.push(key.clone());
            continue;
        }
        let value: Value = if is_cli_env {
            Value::from(raw.clone())
        } else {
            raw.parse().unwrap_or_else(|_| Value::from(raw.clone()))
        };
        insert_path(&mut root, &path, value);
    }
    (Serialized::defaults(root), ignored)
}

fn insert_path(dict: &mut figment::value::Dict, path: &[String], value: figment::value::Value) {
    use figment::value::{Dict, Value};
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            } else {
                let mut inner = Dict::new();
                insert_path(&mut inner, rest, value);
                *entry = Value::from(inner);
            }
        }
    }
}
