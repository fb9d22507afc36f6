//! Prometheus metrics (prometheus-client): requests by endpoint/status/kind, latencies,
//! CLI processes, probes and rule reloads. `GET /metrics` renders the registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub status: u16,
    pub kind: String,
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
    pub cli_in_flight: Gauge,
    pub cli_queued: Gauge,
    pub cli_spawned: Gauge,
    pub cli_health_ok: Gauge,
    pub cli_pool_hits: Counter,
    pub cli_pool_misses: Family<ReasonLabels, Counter>,
    pub cli_pool_idle: Gauge,
    pub cli_pool_first_line: Histogram,
    pub probes: Family<OutcomeLabels, Counter>,
    pub probe_last_duration: Gauge<f64, AtomicU64>,
    pub reload_successful: Gauge,
    pub reload_success_timestamp: Gauge<f64, AtomicU64>,
    pub reloads: Family<ResultLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
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
        let cli_in_flight = Gauge::default();
        registry.register(
            "ccgate_cli_in_flight",
            "CLI processes running now",
            cli_in_flight.clone(),
        );
        let cli_queued = Gauge::default();
        registry.register(
            "ccgate_cli_queued",
            "Requests waiting for a CLI slot",
            cli_queued.clone(),
        );
        // A gauge mirrored from the backend's counter at scrape time (monotonic).
        let cli_spawned = Gauge::default();
        registry.register(
            "ccgate_cli_spawned",
            "CLI processes spawned since start",
            cli_spawned.clone(),
        );
        let cli_health_ok = Gauge::default();
        cli_health_ok.set(1);
        registry.register(
            "ccgate_cli_health_ok",
            "1 while the CLI is considered healthy, 0 while the health gate is closed",
            cli_health_ok.clone(),
        );
        let cli_pool_hits = Counter::default();
        registry.register(
            "ccgate_cli_pool_hits",
            "Requests served by a pre-warmed CLI process",
            cli_pool_hits.clone(),
        );
        let cli_pool_misses = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "ccgate_cli_pool_misses",
            "Requests that cold-spawned while the pre-warmed pool is on, by reason (key: other model or a system prompt; empty: no idle process; handover: the pre-warmed process died silently at hand-over and the request was re-run cold)",
            cli_pool_misses.clone(),
        );
        let cli_pool_idle = Gauge::default();
        registry.register(
            "ccgate_cli_pool_idle",
            "Pre-warmed CLI processes waiting for a request (also counted in ccgate_cli_in_flight)",
            cli_pool_idle.clone(),
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
        Metrics {
            registry,
            requests,
            request_duration,
            cli_first_line,
            cli_runs,
            cli_in_flight,
            cli_queued,
            cli_spawned,
            cli_health_ok,
            cli_pool_hits,
            cli_pool_misses,
            cli_pool_idle,
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
            misses_key: miss("key"),
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
