//! Prometheus metrics (prometheus-client): requests by endpoint/status/kind, latencies,
//! CLI processes, probes and rule reloads. `GET /metrics` renders the registry.
//!
//! Events (requests, runs, probes, reloads) are counted where they happen; point-in-time
//! values (CLI processes alive and queued, health) are read from [`Health`] and
//! [`BackendStats`] while a scrape is encoded, so nothing has to keep them in sync.
//! `ccgate_log_lines_dropped_total` is read from the log writer's own counter (see
//! [`watch_log_drops`]).

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use crate::backend::BackendStats;
use crate::health::Health;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub status: u16,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub write: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToolLabels {
    pub tool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountRequestLabels {
    pub account: String,
    pub endpoint: String,
    pub status: u16,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountOutcomeLabels {
    pub account: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountLabels {
    pub account: String,
}

/// The accounts' names and health states, read at scrape time (set at start).
type AccountHealths = Arc<std::sync::Mutex<Vec<(String, Arc<Health>)>>>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountReasonLabels {
    pub account: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountWindowLabels {
    pub account: String,
    pub window: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    pub key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyTokenLabels {
    pub key: String,
    /// `input`, `output`, `cache_read` or `cache_creation`.
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

/// All metrics of the process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<EndpointLabels, Histogram>,
    pub cli_first_line: Histogram,
    pub cli_runs: Family<OutcomeLabels, Counter>,
    pub cli_pool_hits: Counter,
    pub cli_pool_misses: Family<ReasonLabels, Counter>,
    pub cli_pool_first_line: Histogram,
    pub probes: Family<OutcomeLabels, Counter>,
    pub probe_last_duration: Gauge<f64, AtomicU64>,
    pub reload_successful: Gauge,
    pub reload_success_timestamp: Gauge<f64, AtomicU64>,
    pub reloads: Family<ResultLabels, Counter>,
    /// Conversations with earlier turns that the CLI would not resume as a session and
    /// that were answered from a transcript instead.
    pub conversation_fallbacks: Counter,
    /// Per account (label: the configured name, `default` without `accounts`).
    pub account_requests: Family<AccountRequestLabels, Counter>,
    pub account_cli_runs: Family<AccountOutcomeLabels, Counter>,
    pub account_cooldowns: Family<AccountLabels, Counter>,
    /// Requests retried on another account before their first byte, by the account left.
    pub account_failovers: Family<AccountLabels, Counter>,
    /// Accounts taken out because a person must act on them (`account_action_required`),
    /// by account and the CLI's reason.
    pub account_action_required: Family<AccountReasonLabels, Counter>,
    /// The plan's usage windows per account (0-1) and their resets (Unix seconds), as
    /// last reported (an answer's `rate_limit_event` or the scheduled `get_usage`).
    pub account_window_utilization: Family<AccountWindowLabels, Gauge<f64, AtomicU64>>,
    pub account_window_resets_at: Family<AccountWindowLabels, Gauge<f64, AtomicU64>>,
    /// Per API key (label: the key's name, never key material).
    pub key_requests: Family<KeyLabels, Counter>,
    pub key_tokens: Family<KeyTokenLabels, Counter>,
    /// Usage ledger rows dropped because its buffer was full (no series until the first
    /// drop: the label set is empty).
    pub ledger_rows_dropped: Family<Vec<(String, String)>, Counter>,
    /// Requests refused by a key's limits, by key.
    pub key_limited: Family<KeyLabels, Counter>,
    /// Runs with the CLI's web tools, by tool (`search`, `fetch`).
    pub web_runs: Family<ToolLabels, Counter>,
    /// Web searches and fetches the answers reported, by tool.
    pub web_calls: Family<ToolLabels, Counter>,
    /// The egress proxy of fetching runs: tunnels opened and refused.
    pub egress: crate::backend::egress::EgressStats,
    /// Limit checks decided by this replica alone because the shared store did not
    /// answer in time (no series until the first).
    pub limits_local_fallback: Family<Vec<(String, String)>, Counter>,
    /// Account state not shared with the other replicas because too many state store
    /// writes were running, by `write` (`cooldown`, `windows`, `conversation`).
    pub state_writes_skipped: Family<WriteLabels, Counter>,
    accounts: AccountHealths,
}

/// The process's non-blocking log writer's count of lines it dropped because its buffer
/// was full (logging is process-wide, so this is too).
static LOG_LINES_DROPPED: OnceLock<Arc<AtomicU64>> = OnceLock::new();

/// Makes `ccgate_log_lines_dropped_total` report `counter` (the first call wins; `serve`
/// calls it once when it sets up logging).
pub fn watch_log_drops(counter: Arc<AtomicU64>) {
    let _ = LOG_LINES_DROPPED.set(counter);
}

/// Log lines dropped so far (0 without a non-blocking log writer).
pub fn log_lines_dropped() -> u64 {
    LOG_LINES_DROPPED
        .get()
        .map_or(0, |c| c.load(Ordering::Relaxed))
}

/// Metrics read from live state at scrape time. Their help texts end with the period that
/// `Registry::register` appends to the others.
#[derive(Debug)]
struct LiveGauges {
    health: Arc<Health>,
    backend: Arc<BackendStats>,
    accounts: AccountHealths,
}

impl Collector for LiveGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.backend.snapshot();
        let gauges: [(&str, &str, i64); 7] = [
            (
                "ccgate_cli_in_flight",
                "CLI processes running now.",
                stats.in_flight as i64,
            ),
            (
                "ccgate_cli_queued",
                "Requests waiting for a CLI slot.",
                stats.queued as i64,
            ),
            // A gauge (as it always was) over the backend's monotonic counter.
            (
                "ccgate_cli_spawned",
                "CLI processes spawned since start.",
                stats.spawned_total as i64,
            ),
            (
                "ccgate_cli_health_ok",
                "1 while the CLI is considered healthy, 0 while the health gate is closed.",
                i64::from(self.health.is_ok()),
            ),
            (
                "ccgate_cli_pool_idle",
                "Pre-warmed CLI processes waiting for a request (also counted in ccgate_cli_in_flight).",
                stats.pool_idle as i64,
            ),
            (
                "ccgate_conversations_kept",
                "CLI processes kept for a conversation's next turn (also counted in ccgate_cli_in_flight).",
                stats.kept_idle as i64,
            ),
            (
                "ccgate_tool_runs_held",
                "CLI runs waiting inside a client tool call for the client's results (also counted in ccgate_cli_in_flight).",
                stats.held_runs as i64,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        let counters: [(&str, &str, u64); 6] = [
            (
                "ccgate_conversations_continued",
                "Requests answered by the kept CLI process holding their earlier turns.",
                stats.kept_hits_total,
            ),
            (
                "ccgate_conversations_resumed",
                "Requests with earlier turns answered by a fresh CLI process resuming them.",
                stats.kept_misses_total,
            ),
            (
                "ccgate_tool_runs_continued",
                "Requests whose tool results continued the held run that made the calls.",
                stats.held_continued_total,
            ),
            (
                "ccgate_tool_runs_expired",
                "Held runs ended after cli.tool_hold_timeout without the client's results.",
                stats.held_expired_total,
            ),
            (
                "ccgate_tool_runs_evicted",
                "Held runs ended to stay within cli.max_held_runs / max_held_runs_per_key, or to give a waiting request its slot.",
                stats.held_evicted_total,
            ),
            (
                "ccgate_tool_runs_abandoned",
                "Held runs ended because a request of their conversation came without the calls' results (text observations, an edited history).",
                stats.held_abandoned_total,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        let accounts = self
            .accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if !accounts.is_empty() {
            self.encode_accounts(&accounts, &mut encoder)?;
        }
        let dropped = ConstCounter::new(log_lines_dropped());
        let metric = encoder.encode_descriptor(
            "ccgate_log_lines_dropped",
            "Log lines dropped because the log writer's buffer (log_buffer_lines) was full.",
            None,
            dropped.metric_type(),
        )?;
        dropped.encode(metric)?;
        Ok(())
    }
}

impl LiveGauges {
    /// `ccgate_account_health_ok{account}` and `ccgate_account_cooldown_seconds{account}`.
    fn encode_accounts(
        &self,
        accounts: &[(String, Arc<Health>)],
        encoder: &mut DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let now = crate::clock::unix_now();
        type Read<'a> = &'a dyn Fn(&Health) -> i64;
        let gauges: [(&str, &str, Read<'_>); 2] = [
            (
                "ccgate_account_health_ok",
                "1 while the account is healthy (its probe or a request said so), 0 while its probe found an unhealthy kind.",
                &|h: &Health| i64::from(h.is_ok()),
            ),
            (
                "ccgate_account_cooldown_seconds",
                "Seconds until the account's cooldown ends (0: not cooling down; it stays out until the probe after the reset).",
                &|h: &Health| {
                    h.cooldown()
                        .map_or(0, |c| c.until_unix.saturating_sub(now).max(1) as i64)
                },
            ),
        ];
        for (name, help, read) in gauges {
            let mut family =
                encoder.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
            for (account, health) in accounts {
                let labels = AccountLabels {
                    account: account.clone(),
                };
                let metric = family.encode_family(&labels)?;
                ConstGauge::new(read(health)).encode(metric)?;
            }
        }
        Ok(())
    }
}

impl Default for Metrics {
    /// Metrics over a fresh [`Health`] and [`BackendStats`] (for tests and tools that have
    /// no running backend).
    fn default() -> Self {
        Self::new(Arc::default(), Arc::default())
    }
}

impl Metrics {
    /// The registry; `health` and `backend` are read at each scrape for the CLI gauges.
    pub fn new(health: Arc<Health>, backend: Arc<BackendStats>) -> Self {
        let mut registry = Registry::default();
        let accounts = AccountHealths::default();
        registry.register_collector(Box::new(LiveGauges {
            health,
            backend,
            accounts: accounts.clone(),
        }));
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "ccgate_requests",
            "API requests answered, by endpoint, HTTP status and error kind (ok on success)",
            requests.clone(),
        );
        let request_duration = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 16))
        });
        registry.register(
            "ccgate_request_duration_seconds",
            "Time to answer an API request (to the end of the stream for streaming)",
            request_duration.clone(),
        );
        let cli_first_line = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "ccgate_cli_first_line_seconds",
            "Time from spawning the CLI to its first stdout line",
            cli_first_line.clone(),
        );
        let cli_runs = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "ccgate_cli_runs",
            "CLI processes run, by outcome (success or the classified kind)",
            cli_runs.clone(),
        );
        let cli_pool_hits = Counter::default();
        registry.register(
            "ccgate_cli_pool_hits",
            "Requests served by a pre-warmed CLI process",
            cli_pool_hits.clone(),
        );
        let cli_pool_misses = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "ccgate_pool_misses",
            "Requests that cold-spawned while the pre-warmed pool is on, by reason (history: earlier turns, a spawn flag; thinking: thinking options, not settable after spawn; model: no model named while the pool has one; schema: not JSON; empty: no idle process; handover: the pre-warmed process died silently at hand-over and the request was re-run cold)",
            cli_pool_misses.clone(),
        );
        let cli_pool_first_line = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "ccgate_cli_pool_first_line_seconds",
            "Pre-warmed runs: time from writing the prompt to the CLI's first stdout line (cold runs are in ccgate_cli_first_line_seconds)",
            cli_pool_first_line.clone(),
        );
        let probes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "ccgate_probes",
            "Health probes run, by outcome (ok, unhealthy, inconclusive)",
            probes.clone(),
        );
        let probe_last_duration = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "ccgate_probe_last_duration_seconds",
            "Duration of the last health probe",
            probe_last_duration.clone(),
        );
        let reload_successful = Gauge::default();
        reload_successful.set(1);
        registry.register(
            "ccgate_rules_last_reload_successful",
            "1 if the last rules reload attempt succeeded",
            reload_successful.clone(),
        );
        let reload_success_timestamp = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "ccgate_rules_last_reload_success_timestamp_seconds",
            "Unix time of the last successful rules load",
            reload_success_timestamp.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "ccgate_rules_reloads",
            "Rules reload attempts, by result (success, failure, unchanged)",
            reloads.clone(),
        );
        // Series that alerts watch exist from the start at 0, so `increase(...)` sees the
        // first failure instead of a series appearing out of nowhere.
        for outcome in ["ok", "unhealthy", "inconclusive"] {
            drop(probes.get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            }));
        }
        for result in ["success", "failure", "unchanged"] {
            drop(reloads.get_or_create(&ResultLabels {
                result: result.into(),
            }));
        }
        let conversation_fallbacks = Counter::default();
        registry.register(
            "ccgate_conversation_fallbacks",
            "Conversations the CLI would not resume as a session, answered from a transcript instead",
            conversation_fallbacks.clone(),
        );
        let account_requests = Family::<AccountRequestLabels, Counter>::default();
        registry.register(
            "ccgate_account_requests",
            "API requests answered, by the account that ran them (none: no account was chosen), endpoint, HTTP status and kind",
            account_requests.clone(),
        );
        let account_cli_runs = Family::<AccountOutcomeLabels, Counter>::default();
        registry.register(
            "ccgate_account_cli_runs",
            "CLI processes run for requests, by account and outcome (success or the classified kind)",
            account_cli_runs.clone(),
        );
        let account_cooldowns = Family::<AccountLabels, Counter>::default();
        registry.register(
            "ccgate_account_cooldowns",
            "Times an account was taken out of service by a kind with cooldown (the kind is in the log and /v1/auth/status)",
            account_cooldowns.clone(),
        );
        let account_failovers = Family::<AccountLabels, Counter>::default();
        registry.register(
            "ccgate_account_failovers",
            "Requests retried on another account before their first byte, by the account that failed",
            account_failovers.clone(),
        );
        let account_action_required = Family::<AccountReasonLabels, Counter>::default();
        registry.register(
            "ccgate_account_action_required",
            "Times an account was taken out of service until a person acts on it (kind account_action_required), by account and reason (the CLI's startup_failure_reason or api_error, `text` for a matched text)",
            account_action_required.clone(),
        );
        let account_window_utilization =
            Family::<AccountWindowLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "ccgate_account_window_utilization",
            "Utilization (0-1) of each plan usage window of an account (five_hour, seven_day, ...), as its last answer or the scheduled get_usage reported it",
            account_window_utilization.clone(),
        );
        let account_window_resets_at =
            Family::<AccountWindowLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "ccgate_account_window_resets_at_seconds",
            "When each plan usage window of an account resets (Unix seconds)",
            account_window_resets_at.clone(),
        );
        let key_requests = Family::<KeyLabels, Counter>::default();
        registry.register(
            "ccgate_key_requests",
            "API requests answered, by API key name (from the keys file; api_keys[N] for the process config's keys)",
            key_requests.clone(),
        );
        let key_tokens = Family::<KeyTokenLabels, Counter>::default();
        registry.register(
            "ccgate_key_tokens",
            "Tokens the answers' usage reported, by API key name and type (input, output, cache_read, cache_creation)",
            key_tokens.clone(),
        );
        let key_limited = Family::<KeyLabels, Counter>::default();
        registry.register(
            "ccgate_key_limited",
            "Requests refused with 429 by a key's limits, by API key name",
            key_limited.clone(),
        );
        let ledger_rows_dropped = Family::<Vec<(String, String)>, Counter>::default();
        registry.register(
            "ccgate_ledger_rows_dropped",
            "Usage ledger rows dropped because the write buffer (state.buffer_rows) was full",
            ledger_rows_dropped.clone(),
        );
        let web_runs = Family::<ToolLabels, Counter>::default();
        registry.register(
            "ccgate_web_runs",
            "CLI runs with the CLI's web tools enabled, by tool (search, fetch)",
            web_runs.clone(),
        );
        let web_calls = Family::<ToolLabels, Counter>::default();
        registry.register(
            "ccgate_web_calls",
            "Web searches and web fetches the CLI made for answers, by tool (search, fetch)",
            web_calls.clone(),
        );
        for tool in ["search", "fetch"] {
            let l = ToolLabels { tool: tool.into() };
            drop(web_runs.get_or_create(&l));
            drop(web_calls.get_or_create(&l));
        }
        let egress = crate::backend::egress::EgressStats::default();
        registry.register(
            "ccgate_web_fetch_tunnels",
            "Connections of web-fetching runs the egress proxy opened to public addresses",
            egress.tunnels.clone(),
        );
        registry.register(
            "ccgate_web_fetch_refused",
            "Connections of web-fetching runs the egress proxy refused: the destination resolved to a loopback, private, link-local or other non-public address",
            egress.refused.clone(),
        );
        let limits_local_fallback = Family::<Vec<(String, String)>, Counter>::default();
        registry.register(
            "ccgate_limits_local_fallback",
            "Key limit checks and counts this replica did alone because the state store (state.url) did not answer within state.statement_timeout",
            limits_local_fallback.clone(),
        );
        let state_writes_skipped = Family::<WriteLabels, Counter>::default();
        registry.register(
            "ccgate_state_writes_skipped",
            "Account state (a cooldown, plan windows, a conversation's account) not shared with the other replicas because too many state store writes were running",
            state_writes_skipped.clone(),
        );
        // Zero from the start, so a dashboard and an alert see a series before the first
        // event (a counter created on first use has none until then).
        for family in [&ledger_rows_dropped, &limits_local_fallback] {
            let _ = family.get_or_create(&Vec::new());
        }
        for write in ["cooldown", "windows", "conversation"] {
            let _ = state_writes_skipped.get_or_create(&WriteLabels {
                write: write.into(),
            });
        }
        Metrics {
            web_runs,
            web_calls,
            egress,
            key_requests,
            key_tokens,
            key_limited,
            limits_local_fallback,
            state_writes_skipped,
            ledger_rows_dropped,
            account_requests,
            account_cli_runs,
            account_cooldowns,
            account_failovers,
            account_action_required,
            account_window_utilization,
            account_window_resets_at,
            accounts,
            conversation_fallbacks,
            registry,
            requests,
            request_duration,
            cli_first_line,
            cli_runs,
            cli_pool_hits,
            cli_pool_misses,
            cli_pool_first_line,
            probes,
            probe_last_duration,
            reload_successful,
            reload_success_timestamp,
            reloads,
        }
    }

    /// The pool's handles into these metrics (for `BackendStats::attach_pool_metrics`).
    pub fn pool_metrics(&self) -> crate::backend::PoolMetrics {
        let miss = |reason: &str| {
            self.cli_pool_misses
                .get_or_create(&ReasonLabels {
                    reason: reason.into(),
                })
                .clone()
        };
        crate::backend::PoolMetrics {
            hits: self.cli_pool_hits.clone(),
            misses_history: miss("history"),
            misses_thinking: miss("thinking"),
            misses_model: miss("model"),
            misses_schema: miss("schema"),
            misses_empty: miss("empty"),
            misses_handover: miss("handover"),
            first_line: self.cli_pool_first_line.clone(),
        }
    }

    /// Prometheus text exposition (OpenMetrics flavour, which Prometheus scrapes).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Names the accounts whose health the scrape reports (the last call wins); their
    /// cooldown and failover counters exist from then on at 0 (so `increase(...)` sees
    /// the first one).
    pub fn attach_accounts(&self, accounts: Vec<(String, Arc<Health>)>) {
        for (name, _) in &accounts {
            let labels = AccountLabels {
                account: name.clone(),
            };
            drop(self.account_cooldowns.get_or_create(&labels));
            drop(self.account_failovers.get_or_create(&labels));
        }
        *self.accounts.lock().unwrap_or_else(|p| p.into_inner()) = accounts;
    }

    /// An account left service until a person acts on it (`reason`: see the metric's help).
    pub fn count_action_required(&self, account: &str, reason: &str) {
        self.account_action_required
            .get_or_create(&AccountReasonLabels {
                account: account.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// An account's plan windows as reported (the gauges keep the last value of a window
    /// no longer reported).
    pub fn set_windows(&self, account: &str, windows: &crate::protocol::PlanWindows) {
        for w in &windows.windows {
            let labels = AccountWindowLabels {
                account: account.into(),
                window: w.name.clone(),
            };
            self.account_window_utilization
                .get_or_create(&labels)
                .set(w.utilization);
            if let Some(at) = w.resets_at {
                self.account_window_resets_at
                    .get_or_create(&labels)
                    .set(at as f64);
            }
        }
    }

    /// One limit check or count done by this replica alone (the store did not answer).
    pub fn count_limits_fallback(&self) {
        self.limits_local_fallback.get_or_create(&Vec::new()).inc();
    }

    /// An account state write not started (too many state store writes running).
    pub fn count_state_write_skipped(&self, write: &str) {
        self.state_writes_skipped
            .get_or_create(&WriteLabels {
                write: write.into(),
            })
            .inc();
    }

    /// A run with the CLI's web tools (`search`, `fetch`).
    pub fn count_web_run(&self, tool: &str) {
        self.web_runs
            .get_or_create(&ToolLabels { tool: tool.into() })
            .inc();
    }

    /// Searches and fetches an answer reported.
    pub fn count_web_calls(&self, tool: &str, n: u64) {
        if n > 0 {
            self.web_calls
                .get_or_create(&ToolLabels { tool: tool.into() })
                .inc_by(n);
        }
    }

    /// One usage ledger row dropped (the buffer was full).
    pub fn count_ledger_drop(&self) {
        self.ledger_rows_dropped.get_or_create(&Vec::new()).inc();
    }

    /// A request refused with 429 by a limit of `key` (this replica's or the cluster's).
    pub fn count_key_limited(&self, key: &str) {
        self.key_limited
            .get_or_create(&KeyLabels { key: key.into() })
            .inc();
    }

    pub fn count_cooldown(&self, account: &str) {
        self.account_cooldowns
            .get_or_create(&AccountLabels {
                account: account.into(),
            })
            .inc();
    }

    pub fn count_account_run(&self, account: &str, outcome: &str) {
        self.account_cli_runs
            .get_or_create(&AccountOutcomeLabels {
                account: account.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn count_failover(&self, account: &str) {
        self.account_failovers
            .get_or_create(&AccountLabels {
                account: account.into(),
            })
            .inc();
    }

    /// A request answered on `account` (None: no account was chosen).
    pub fn count_account_request(
        &self,
        account: Option<&str>,
        endpoint: &str,
        status: u16,
        kind: &str,
    ) {
        self.account_requests
            .get_or_create(&AccountRequestLabels {
                account: account.unwrap_or("none").into(),
                endpoint: endpoint.into(),
                status,
                kind: kind.into(),
            })
            .inc();
    }

    pub fn count_request(&self, endpoint: &str, status: u16, kind: &str, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_string(),
                status,
                kind: kind.to_string(),
            })
            .inc();
        self.request_duration
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.to_string(),
            })
            .observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Source;

    #[test]
    fn cli_gauges_are_read_from_live_state_at_scrape_time() {
        let health = Arc::new(Health::default());
        let metrics = Metrics::new(health.clone(), Arc::default());
        let text = metrics.render();
        for line in [
            "# TYPE ccgate_cli_in_flight gauge\nccgate_cli_in_flight 0\n",
            "# TYPE ccgate_cli_queued gauge\nccgate_cli_queued 0\n",
            "# TYPE ccgate_cli_spawned gauge\nccgate_cli_spawned 0\n",
            "# HELP ccgate_cli_health_ok 1 while the CLI is considered healthy, 0 while the health gate is closed.\n# TYPE ccgate_cli_health_ok gauge\nccgate_cli_health_ok 1\n",
            "# TYPE ccgate_cli_pool_idle gauge\nccgate_cli_pool_idle 0\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        health.mark_failed(Source::Request, "auth_failure", "Not logged in");
        assert!(metrics.render().contains("\nccgate_cli_health_ok 0\n"));
        health.mark_ok(Source::Probe);
        assert!(metrics.render().contains("\nccgate_cli_health_ok 1\n"));
    }

    /// The log writer's count of dropped lines is what the scrape reports.
    #[test]
    fn dropped_log_lines_are_counted_in_the_metrics() {
        let metrics = Metrics::default();
        assert!(
            metrics.render().contains(
                "# TYPE ccgate_log_lines_dropped counter\nccgate_log_lines_dropped_total 0\n"
            ),
            "{}",
            metrics.render()
        );
        let counter = Arc::new(AtomicU64::new(0));
        watch_log_drops(counter.clone());
        counter.fetch_add(97, Ordering::Relaxed);
        assert!(
            metrics
                .render()
                .contains("\nccgate_log_lines_dropped_total 97\n"),
            "{}",
            metrics.render()
        );
    }
}
