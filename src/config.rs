//! Process configuration: `config/ccgate.yaml` (if present) < `--config FILE` < `CCGATE_*`
//! environment variables (nested keys joined with `__`) < command-line flags.
//!
//! [`Config::load`] merges the sources into the raw [`Config`]; [`Config::compile`] checks it
//! (every problem at once) and turns it into the typed [`Settings`], the only form the rest
//! of ccgate reads.
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

use crate::backend::CliSettings;

mod env;
mod web;
use env::env_source;
pub use web::WebConfig;

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

/// The whole process config as written (seconds as numbers, origins as strings). Unknown
/// keys are an error at start. [`Config::compile`] turns it into [`Settings`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to bind. Loopback by default.
    pub listen: SocketAddr,
    /// Rules file; the embedded default rules are used when it does not exist.
    pub rules: PathBuf,
    /// Reload the rules when the file changes (SIGHUP always reloads).
    pub watch_rules: bool,
    /// Client keys: when any key exists (here or in `keys`), `/v1/*` requires one
    /// (`/admin/*` an admin key of the keys file).
    pub api_keys: Vec<String>,
    /// Needed to bind a non-loopback address without `api_keys`.
    pub allow_unauthenticated: bool,
    pub log_format: LogFormat,
    /// `tracing` filter directive (`RUST_LOG` wins when set).
    pub log_level: String,
    /// Log lines that may wait for the log writer thread; beyond that, lines are dropped
    /// (and counted in `ccgate_log_lines_dropped_total`) instead of slowing requests down.
    pub log_buffer_lines: usize,
    /// Allowed CORS origins (`*` or `scheme://host[:port]`); CORS is off when empty. `*`
    /// allows any.
    pub cors_origins: Vec<String>,
    /// Max request body in bytes (chunked bodies included).
    pub request_body_limit: usize,
    /// Seconds in-flight requests get to finish after SIGTERM / Ctrl-C; the ones still
    /// running then are ended (CLI killed, `shutting_down` answer) and ccgate exits.
    pub shutdown_timeout: f64,
    /// Seconds a streaming response may stay silent before ccgate sends a keep-alive
    /// (Anthropic `ping` event / OpenAI SSE comment); 0 disables.
    pub sse_keepalive: f64,
    /// Host names accepted in the `Host` header besides `localhost`, `*.localhost` and IP
    /// literals (`name` or `*.domain`, any port); `*` accepts any. Empty: on a loopback
    /// bind only those loopback names (DNS rebinding defence), elsewhere any host.
    pub allowed_hosts: Vec<String>,
    /// The `http:` section: connection timeouts and limits.
    pub http: HttpConfig,
    pub cli: CliConfig,
    /// The accounts requests are spread over (each its own credentials through `env`);
    /// empty: one implicit account, the CLI's environment as it is. From the environment:
    /// `CCGATE_ACCOUNTS` holding the whole list as JSON.
    pub accounts: Vec<AccountConfig>,
    /// The `openai:` section: what the Chat Completions API adds beyond OpenAI's shape.
    pub openai: OpenaiConfig,
    /// The `web:` section: whether requests may use the CLI's web search and web fetch.
    pub web: WebConfig,
    /// The keys file (roles, allow-lists, limits), reloaded with the rules; see
    /// docs/governance.md. `api_keys` stay valid as client keys beside it.
    pub keys: Option<PathBuf>,
    /// The `state:` section: the embedded store of the usage ledger.
    pub state: StateConfig,
}

/// The `state:` section.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    /// The SQLite database file (created with its directory when missing).
    pub path: PathBuf,
    /// Days of ledger rows kept (older rows are purged hourly); at least 1.
    pub retention_days: u32,
    /// Ledger rows waiting to be written; beyond it rows are dropped and counted
    /// (`ccgate_ledger_rows_dropped_total`).
    pub buffer_rows: usize,
    /// `postgres://user:password@host:port/db`: the shared store of several replicas
    /// (docs/scaling.md). When set, `path` is not used.
    pub url: Option<String>,
    /// Connections the pool opens at most (PostgreSQL; SQLite uses two): 1 to 100.
    pub max_connections: u32,
    /// Seconds a statement may run before the server cancels it (PostgreSQL), and the
    /// longest a request waits for the store before it goes on without it.
    pub statement_timeout: f64,
    /// Seconds to open a connection or wait for a free one.
    pub connect_timeout: f64,
    /// Seconds between two reads of the account cooldowns other replicas shared.
    pub poll_interval: f64,
}

impl StateConfig {
    /// How often the account cooldowns other replicas shared are read.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs_f64(self.poll_interval.clamp(0.05, 300.0))
    }

    /// Where and how to open the store: PostgreSQL at `url` when set, else the SQLite
    /// file at `path`.
    pub fn store_options(&self) -> crate::store::StoreOptions {
        let mut o = match &self.url {
            Some(url) => crate::store::StoreOptions::url(url),
            None => crate::store::StoreOptions::sqlite(&self.path),
        };
        if self.url.is_some() {
            o.max_connections = self.max_connections;
        }
        o.statement_timeout = Duration::from_secs_f64(self.statement_timeout);
        o.connect_timeout = Duration::from_secs_f64(self.connect_timeout);
        o
    }
}

/// Without the URL's password.
impl std::fmt::Debug for StateConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateConfig")
            .field("path", &self.path)
            .field("retention_days", &self.retention_days)
            .field("buffer_rows", &self.buffer_rows)
            .field("url", &self.url.as_deref().map(crate::store::redact_url))
            .field("max_connections", &self.max_connections)
            .field("statement_timeout", &self.statement_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

/// Where the store lives by default: `state/ccgate.db` under the working directory (the
/// Docker image and the systemd unit set `/var/lib/ccgate/ccgate.db`).
pub const DEFAULT_STATE_PATH: &str = "state/ccgate.db";

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            path: PathBuf::from(DEFAULT_STATE_PATH),
            retention_days: 90,
            buffer_rows: 10_000,
            url: None,
            max_connections: 8,
            statement_timeout: 2.0,
            connect_timeout: 2.0,
            poll_interval: 1.0,
        }
    }
}

/// One entry of `accounts:`: a credential the CLI runs with.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// Unique name: shown in `/v1/auth/status`, logs and the `account` metric label
    /// (letters, digits, `_ - .`; at most 64 characters).
    pub name: String,
    /// Environment for this account's CLI processes, on top of `cli.env`: e.g. its own
    /// `CLAUDE_CONFIG_DIR` (a logged-in state directory), `ANTHROPIC_API_KEY` or
    /// `CLAUDE_CODE_OAUTH_TOKEN`. Values are secrets: never logged or shown.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Models this account serves (exact names, case-insensitive); unset: every model.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Share of the new conversations this account gets relative to the others (1-1000,
    /// default 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// What to do when the CLI reports that this account's requests are billed as extra
    /// usage beyond its plan: `refuse` (default: the account cools down until its window
    /// resets) or `allow` (keep spending).
    #[serde(default)]
    pub extra_usage: ExtraUsage,
}

/// `accounts[].extra_usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtraUsage {
    #[default]
    Refuse,
    Allow,
}

fn default_weight() -> u32 {
    1
}

impl std::fmt::Debug for AccountConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountConfig")
            .field("name", &self.name)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("models", &self.models)
            .field("weight", &self.weight)
            .field("extra_usage", &self.extra_usage)
            .finish()
    }
}

/// The `openai:` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenaiConfig {
    /// Give Chat Completions clients the model's thinking as `reasoning_content` (stream
    /// deltas and a message field; not part of the OpenAI API). Off: no thinking at all.
    pub reasoning_content: bool,
}

/// The `http:` section: how long a client connection may take and how many may be open.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Seconds a request head (request line and headers) may take, from its first byte
    /// (for a new connection: from the accept).
    pub header_timeout: f64,
    /// Seconds a request body may take to arrive, from when ccgate starts reading it.
    pub body_timeout: f64,
    /// Seconds a keep-alive connection may wait for its next request.
    pub idle_timeout: f64,
    /// Seconds a response may wait for the client to take its bytes (a socket that stays
    /// full); beyond it the connection is closed and its run cancelled.
    pub write_timeout: f64,
    /// Client connections open at once; beyond it a new connection gets a 503 and is closed.
    pub max_connections: usize,
    /// Max bytes of a request head (request line and headers); beyond it a 431.
    pub max_header_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_timeout: 10.0,
            body_timeout: 30.0,
            idle_timeout: 60.0,
            write_timeout: 60.0,
            max_connections: 512,
            max_header_bytes: 64 * 1024,
        }
    }
}

/// The longest duration any setting may take (a year): larger ones overflowed
/// `Instant + Duration` and millisecond arithmetic inside tasks.
pub const DURATION_MAX: Duration = Duration::from_secs(366 * 86_400);

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
    /// CLI processes kept alive after a clean answer, so the conversation's next request
    /// continues in them (0 = off; at most `max_concurrent`). They count against
    /// `max_concurrent`, and one is ended whenever a request would otherwise wait for a slot.
    pub keep_conversations: usize,
    /// Seconds a kept conversation process may wait for its next turn.
    pub conversation_idle_timeout: f64,
    /// Runs held inside a client tool call at once, waiting for the client's results
    /// (0 = off: a continuation then always runs fresh). They count against
    /// `max_concurrent`, and at least one slot stays free of them.
    pub max_held_runs: usize,
    /// Seconds a held run waits for the client's tool results before it is ended.
    pub tool_hold_timeout: f64,
    /// Held runs one API key may have at once (unset: `max_held_runs`). When the total is
    /// reached, the key holding the most gives up its oldest, so one key's abandoned tool
    /// loops never end another key's held run while that key holds fewer.
    pub max_held_runs_per_key: Option<usize>,
    /// Kept conversation processes one API key may have at once (unset:
    /// `keep_conversations`; the same fairness as `max_held_runs_per_key`).
    pub keep_conversations_per_key: Option<usize>,
    /// Directory for the private system-prompt files; unset = ccgate's temp dir (TMPDIR).
    pub temp_dir: Option<PathBuf>,
    /// Seconds between reads of each account's plan windows through the CLI's `get_usage`
    /// control request (a short-lived process, no model call; one read at a time); 0 = off.
    pub windows_refresh: f64,
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
            log_buffer_lines: 16384,
            cors_origins: Vec::new(),
            request_body_limit: 1024 * 1024,
            shutdown_timeout: 30.0,
            sse_keepalive: 15.0,
            allowed_hosts: Vec::new(),
            http: HttpConfig::default(),
            cli: CliConfig::default(),
            accounts: Vec::new(),
            openai: OpenaiConfig::default(),
            web: WebConfig::default(),
            keys: None,
            state: StateConfig::default(),
        }
    }
}

impl Default for CliConfig {
    fn default() -> Self {
        CliConfig {
            command: PathBuf::from("claude"),
            args: Vec::new(),
            workdir: None,
            // DISABLE_TELEMETRY: the CLI queues each run's telemetry under
            // CLAUDE_CONFIG_DIR when its endpoint is unreachable (~200 KB a request).
            env: [
                ("CLAUDE_CODE_MAX_RETRIES".to_string(), "2".to_string()),
                ("DISABLE_TELEMETRY".to_string(), "1".to_string()),
            ]
            .into(),
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
            keep_conversations: 2,
            conversation_idle_timeout: 300.0,
            max_held_runs: 4,
            tool_hold_timeout: 600.0,
            max_held_runs_per_key: None,
            keep_conversations_per_key: None,
            temp_dir: None,
            windows_refresh: 300.0,
        }
    }
}

/// Errors loading or validating the process config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    /// Every problem found, each on its own line when there are several.
    #[error("invalid configuration{}", render_problems(.0))]
    Invalid(Vec<String>),
}

fn render_problems(problems: &[String]) -> String {
    match problems {
        [one] => format!(": {one}"),
        many => {
            let mut s = format!(" ({} problems):", many.len());
            for p in many {
                s.push_str("\n  ");
                s.push_str(p);
            }
            s
        }
    }
}

/// The process config compiled: checked, with durations and options instead of numbers of
/// seconds. Built once at start by [`Config::compile`]; nothing after start reads the raw
/// [`Config`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Rules file; the embedded rules are used when it does not exist.
    pub rules: PathBuf,
    pub watch_rules: bool,
    /// When non-empty, `/v1/*` and `/admin/*` require one of these keys (none is empty).
    pub api_keys: Vec<String>,
    /// The keys file, if any.
    pub keys: Option<PathBuf>,
    /// The store's settings.
    pub state: StateConfig,
    /// Allowed CORS origins, each `*` or `scheme://host[:port]`; CORS is off when empty.
    pub cors_origins: Vec<String>,
    /// Max request body in bytes (at least 1024).
    pub request_body_limit: usize,
    /// Grace period for in-flight requests after SIGTERM / Ctrl-C.
    pub shutdown_timeout: Duration,
    /// Keep-alive interval of quiet streams; None = off.
    pub sse_keepalive: Option<Duration>,
    pub log: LogSettings,
    /// Extra `Host` names accepted (see [`Config::allowed_hosts`]); `*` = any.
    pub allowed_hosts: Vec<String>,
    /// Connection timeouts and limits.
    pub http: HttpSettings,
    /// How the CLI is run. Its `workdir` is empty here: [`Settings::cli_settings`] fills in
    /// the directory actually used.
    pub cli: CliSettings,
    /// The configured `cli.workdir`; None = a private temporary directory made by `serve`.
    pub cli_workdir: Option<PathBuf>,
    /// The configured accounts (checked); empty: the one implicit account.
    pub accounts: Vec<AccountSettings>,
    /// `openai.reasoning_content`: Chat Completions answers carry the model's thinking.
    pub openai_reasoning_content: bool,
    /// `web.search` / `web.fetch`: which of the CLI's web tools requests may enable.
    pub web: WebConfig,
    /// `cli.windows_refresh`; None = off.
    pub windows_refresh: Option<Duration>,
}

/// One configured account, checked.
#[derive(Clone)]
pub struct AccountSettings {
    pub name: String,
    /// Added to the CLI's environment for this account (secrets: never logged).
    pub env: Vec<(String, String)>,
    /// Models it serves, lowercased; None: all.
    pub models: Option<Vec<String>>,
    /// 1-1000.
    pub weight: u32,
    pub extra_usage: ExtraUsage,
}

impl std::fmt::Debug for AccountSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountSettings")
            .field("name", &self.name)
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("models", &self.models)
            .field("weight", &self.weight)
            .finish()
    }
}

/// The longest account name.
pub const ACCOUNT_NAME_MAX: usize = 64;
/// The most accounts one gateway drives.
pub const ACCOUNTS_MAX: usize = 64;

/// Connection timeouts and limits (the `http:` section, checked).
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long a response may wait for the client to take its bytes.
    pub write_timeout: Duration,
    /// At least 1.
    pub max_connections: usize,
    /// At least 1024.
    pub max_header_bytes: usize,
}

impl Settings {
    /// Whether the `Host` check is on: a loopback bind, or `allowed_hosts` set without `*`.
    pub fn checks_host(&self) -> bool {
        if self.allowed_hosts.iter().any(|h| h == "*") {
            return false;
        }
        self.listen.ip().is_loopback() || !self.allowed_hosts.is_empty()
    }
}

/// Logging on stderr.
#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    /// `tracing` filter directive (`RUST_LOG` wins when set).
    pub level: String,
    /// Lines the non-blocking log writer buffers before it drops (and counts) lines.
    pub buffer_lines: usize,
}

impl Settings {
    /// The backend's settings, running the CLI in `workdir` (the configured one, or the
    /// temporary directory `serve` made).
    pub fn cli_settings(&self, workdir: PathBuf) -> CliSettings {
        CliSettings {
            workdir,
            ..self.cli.clone()
        }
    }
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
    /// With a shared state store (`state.url`), each account that logs in through a
    /// config directory rather than a long-lived credential: replicas sharing it would
    /// each refresh its single-use OAuth refresh token and log the others out
    /// (docs/scaling.md). `process_env` answers for the implicit account's variables.
    pub fn shared_login_warnings(&self, process_env: &dyn Fn(&str) -> bool) -> Vec<String> {
        if self.state.url.is_none() {
            return Vec::new();
        }
        const CREDENTIALS: [&str; 3] = [
            "CLAUDE_CODE_OAUTH_TOKEN",
            "ANTHROPIC_API_KEY",
            "ANTHROPIC_AUTH_TOKEN",
        ];
        let has = |env: &std::collections::BTreeMap<String, String>, outer: bool| {
            CREDENTIALS.iter().any(|k| {
                env.contains_key(*k) || self.cli.env.contains_key(*k) || (outer && process_env(k))
            })
        };
        let advice = "its OAuth refresh token is single-use, so replicas sharing it log each other out; give it a long-lived token (`claude setup-token` -> CLAUDE_CODE_OAUTH_TOKEN in its env)";
        if self.accounts.is_empty() {
            if has(&std::collections::BTreeMap::new(), true) {
                return Vec::new();
            }
            return vec![format!(
                "warning: state.url is set (several replicas) and the CLI logs in through its config directory: {advice}"
            )];
        }
        self.accounts
            .iter()
            .filter(|a| !has(&a.env, true))
            .map(|a| {
                format!(
                    "warning: state.url is set (several replicas) and account `{}` logs in through a config directory: {advice}",
                    a.name
                )
            })
            .collect()
    }

    /// Load with the documented precedence. `explicit` is `--config FILE` (must exist).
    /// `env` is the environment to read `CCGATE_*` from (injectable for tests). Only the
    /// shape is checked here (keys, types); [`Config::compile`] checks the values.
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
            .map_err(|e| ConfigError::Invalid(e.into_iter().map(|e| e.to_string()).collect()))?;
        Ok(LoadedConfig {
            config,
            ignored_env: ignored,
        })
    }

    /// Checks what figment cannot express and builds the typed [`Settings`]. Reports every
    /// problem, not just the first.
    pub fn compile(&self) -> Result<Settings, ConfigError> {
        let mut problems = Vec::new();
        let mut positive = |name: &str, v: f64| match Duration::try_from_secs_f64(v) {
            Ok(d) if !d.is_zero() && d <= DURATION_MAX => d,
            _ => {
                problems.push(format!(
                    "{name} must be a positive number of seconds up to {}, got {v}",
                    DURATION_MAX.as_secs()
                ));
                Duration::ZERO
            }
        };
        let start_timeout = positive("cli.start_timeout", self.cli.start_timeout);
        let inactivity_timeout = positive("cli.inactivity_timeout", self.cli.inactivity_timeout);
        let total_timeout = positive("cli.total_timeout", self.cli.total_timeout);
        let prewarm_max_idle = positive("cli.prewarm_max_idle", self.cli.prewarm_max_idle);
        let conversation_idle_timeout = positive(
            "cli.conversation_idle_timeout",
            self.cli.conversation_idle_timeout,
        );
        let tool_hold_timeout = positive("cli.tool_hold_timeout", self.cli.tool_hold_timeout);
        let header_timeout = positive("http.header_timeout", self.http.header_timeout);
        let body_timeout = positive("http.body_timeout", self.http.body_timeout);
        let idle_timeout = positive("http.idle_timeout", self.http.idle_timeout);
        let write_timeout = positive("http.write_timeout", self.http.write_timeout);
        let mut at_least_zero = |name: &str, v: f64| match Duration::try_from_secs_f64(v) {
            Ok(d) if d <= DURATION_MAX => d,
            _ => {
                problems.push(format!(
                    "{name} must be a number of seconds from 0 to {}, got {v}",
                    DURATION_MAX.as_secs()
                ));
                Duration::ZERO
            }
        };
        let shutdown_timeout = at_least_zero("shutdown_timeout", self.shutdown_timeout);
        let sse_keepalive =
            Some(at_least_zero("sse_keepalive", self.sse_keepalive)).filter(|d| !d.is_zero());
        let windows_refresh = Some(at_least_zero(
            "cli.windows_refresh",
            self.cli.windows_refresh,
        ))
        .filter(|d| !d.is_zero());
        if self.cli.max_concurrent == 0 {
            problems.push("cli.max_concurrent must be at least 1".into());
        }
        if self.cli.prewarm > self.cli.max_concurrent {
            problems.push(format!(
                "cli.prewarm ({}) must not exceed cli.max_concurrent ({}): pre-warmed processes use concurrency slots",
                self.cli.prewarm, self.cli.max_concurrent
            ));
        }
        if self.log_buffer_lines == 0 {
            problems.push("log_buffer_lines must be at least 1".into());
        }
        if self.request_body_limit < 1024 {
            problems.push("request_body_limit must be at least 1024 bytes".into());
        }
        if self.api_keys.iter().any(|k| k.trim().is_empty()) {
            problems.push("api_keys must not contain empty keys".into());
        }
        if !self.listen.ip().is_loopback()
            && self.api_keys.is_empty()
            && self.keys.is_none()
            && !self.allow_unauthenticated
        {
            problems.push(format!(
                "refusing to listen on non-loopback address {} without api_keys; \
                 set api_keys (CCGATE_API_KEYS) or allow_unauthenticated: true",
                self.listen
            ));
        }
        for origin in &self.cors_origins {
            if !is_cors_origin(origin) {
                problems.push(format!(
                    "cors_origins: {origin:?} is not an origin: write `*` or scheme://host[:port], without a path or a trailing slash"
                ));
            }
        }
        if self.http.max_connections == 0 {
            problems.push("http.max_connections must be at least 1".into());
        }
        if self.http.max_header_bytes < 1024 {
            problems.push("http.max_header_bytes must be at least 1024".into());
        }
        for host in &self.allowed_hosts {
            if !is_host_pattern(host) {
                problems.push(format!(
                    "allowed_hosts: {host:?} is not a host name: write `*`, a name like `gw.example.com`, or `*.example.com`, without a scheme or port"
                ));
            }
        }
        check_accounts(&self.accounts, &mut problems);
        if self.state.retention_days == 0 {
            problems.push("state.retention_days must be at least 1".into());
        }
        if self.state.buffer_rows == 0 {
            problems.push("state.buffer_rows must be at least 1".into());
        }
        if self.state.path.as_os_str().is_empty() {
            problems.push("state.path must name a file".into());
        }
        if let Some(url) = &self.state.url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                problems.push(
                    "state.url must be a postgres:// URL (leave it unset for the embedded SQLite store at state.path)"
                        .into(),
                );
            }
        }
        if !(1..=100).contains(&self.state.max_connections) {
            problems.push("state.max_connections must be 1 to 100".into());
        }
        for (name, v) in [
            ("statement_timeout", self.state.statement_timeout),
            ("connect_timeout", self.state.connect_timeout),
            ("poll_interval", self.state.poll_interval),
        ] {
            if !(v.is_finite() && (0.05..=300.0).contains(&v)) {
                problems.push(format!("state.{name} must be 0.05 to 300 seconds"));
            }
        }
        if let Err(e) = self.web.check_route() {
            problems.push(e);
        }
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        let c = &self.cli;
        Ok(Settings {
            listen: self.listen,
            rules: self.rules.clone(),
            watch_rules: self.watch_rules,
            api_keys: self.api_keys.clone(),
            keys: self.keys.clone(),
            state: self.state.clone(),
            cors_origins: self.cors_origins.clone(),
            request_body_limit: self.request_body_limit,
            shutdown_timeout,
            sse_keepalive,
            log: LogSettings {
                format: self.log_format,
                level: self.log_level.clone(),
                buffer_lines: self.log_buffer_lines,
            },
            allowed_hosts: self
                .allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            http: HttpSettings {
                header_timeout,
                body_timeout,
                idle_timeout,
                write_timeout,
                max_connections: self.http.max_connections,
                max_header_bytes: self.http.max_header_bytes,
            },
            cli: CliSettings {
                command: c.command.clone(),
                extra_args: c.args.clone(),
                workdir: PathBuf::new(),
                env: c.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                tools: c.tools,
                start_timeout,
                inactivity_timeout,
                total_timeout,
                max_concurrent: c.max_concurrent,
                queue_size: c.queue_size,
                stderr_tail_bytes: c.stderr_tail_bytes,
                prewarm: c.prewarm,
                prewarm_model: c.prewarm_model.clone().filter(|m| !m.is_empty()),
                prewarm_max_idle,
                keep_conversations: c.keep_conversations,
                conversation_idle_timeout,
                max_held_runs: c.max_held_runs,
                tool_hold_timeout,
                max_held_runs_per_key: c.max_held_runs_per_key,
                keep_conversations_per_key: c.keep_conversations_per_key,
                temp_dir: c.temp_dir.clone().unwrap_or_else(std::env::temp_dir),
            },
            cli_workdir: c.workdir.clone(),
            accounts: self
                .accounts
                .iter()
                .map(|a| AccountSettings {
                    name: a.name.clone(),
                    env: a.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    models: a
                        .models
                        .as_ref()
                        .map(|m| m.iter().map(|m| m.to_ascii_lowercase()).collect()),
                    weight: a.weight,
                    extra_usage: a.extra_usage,
                })
                .collect(),
            openai_reasoning_content: self.openai.reasoning_content,
            web: self.web.clone(),
            windows_refresh,
        })
    }
}

/// The `accounts:` checks: names unique and label-safe, weights in range, env names
/// non-empty, models non-empty. Values are never quoted (they are secrets).
fn check_accounts(accounts: &[AccountConfig], problems: &mut Vec<String>) {
    if accounts.len() > ACCOUNTS_MAX {
        problems.push(format!(
            "accounts: at most {ACCOUNTS_MAX} accounts, got {}",
            accounts.len()
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, a) in accounts.iter().enumerate() {
        let label_safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        if a.name.is_empty() || a.name.len() > ACCOUNT_NAME_MAX || !a.name.chars().all(label_safe) {
            problems.push(format!(
                "accounts[{i}].name {:?} must be 1-{ACCOUNT_NAME_MAX} letters, digits, `_`, `-` or `.`",
                a.name
            ));
        } else if !seen.insert(a.name.to_ascii_lowercase()) {
            problems.push(format!("accounts[{i}].name {:?} is used twice", a.name));
        }
        if !(1..=1000).contains(&a.weight) {
            problems.push(format!(
                "accounts[{i}] ({}): weight must be 1-1000, got {}",
                a.name, a.weight
            ));
        }
        for key in a.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                problems.push(format!(
                    "accounts[{i}] ({}): env names must be non-empty, without `=` or NUL: {key:?}",
                    a.name
                ));
            }
        }
        if let Some(models) = &a.models {
            if models.is_empty() || models.iter().any(|m| m.trim().is_empty()) {
                problems.push(format!(
                    "accounts[{i}] ({}): models must list at least one non-empty model name (omit it for every model)",
                    a.name
                ));
            }
        }
    }
}

/// Whether `o` can match a browser's `Origin` header: `*`, or `scheme://host[:port]` with
/// no path, query, user info or trailing slash (an origin written with one never matches).
fn is_cors_origin(o: &str) -> bool {
    if o == "*" {
        return true;
    }
    let Some((scheme, authority)) = o.split_once("://") else {
        return false;
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    // The host (a name, an IPv4 address or a bracketed IPv6 literal), then `:port` or nothing.
    let (host_ok, rest) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((ip, rest)) => (
                !ip.is_empty()
                    && ip
                        .chars()
                        .all(|c| c.is_ascii_hexdigit() || matches!(c, ':' | '.')),
                rest,
            ),
            None => (false, ""),
        },
        None => {
            let (host, rest) = authority.split_at(authority.find(':').unwrap_or(authority.len()));
            let name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
            (!host.is_empty() && host.chars().all(name), rest)
        }
    };
    let port_ok = match rest.strip_prefix(':') {
        Some(p) => {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
        }
        None => rest.is_empty(),
    };
    scheme_ok && host_ok && port_ok
}

/// Whether `h` is an `allowed_hosts` entry: `*`, a host name, or `*.` and a host name.
fn is_host_pattern(h: &str) -> bool {
    if h == "*" {
        return true;
    }
    let name = h.strip_prefix("*.").unwrap_or(h);
    !name.is_empty()
        && !name.starts_with('.')
        && !name.ends_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}
