//! The process-wide CLI health state (the `cli_health` contract of
//! `shared/spec/health-contract.md`) and the gate that answers requests without spawning
//! while the CLI is known unhealthy. The probe task that feeds it lives in `probe.rs`.
//!
//! Invariant: only a verdict whose kind the rules mark `unhealthy` flips `ok` to false;
//! anything else a probe sees is recorded as inconclusive and leaves `ok` alone.

use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::Notify;

use crate::clock::now_rfc3339;

/// `error_message` is cut to this many characters (contract).
pub const ERROR_MESSAGE_MAX_CHARS: usize = 500;

/// Where the current verdict came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Probe,
    Request,
}

/// What the last probe concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeOutcome {
    Ok,
    Unhealthy,
    Inconclusive,
}

/// The last probe run, kept apart from `cli_health` so an inconclusive probe never
/// changes the contract fields.
#[derive(Debug, Clone, Serialize)]
pub struct LastProbe {
    pub at: String,
    pub outcome: ProbeOutcome,
    pub kind: Option<String>,
    pub message: Option<String>,
    pub duration_ms: u64,
}

/// `cli_health` exactly as the contract names it, plus ccgate's extras.
#[derive(Debug, Clone, Serialize)]
pub struct CliHealth {
    pub ok: bool,
    pub last_probed_at: Option<String>,
    pub last_ok_at: Option<String>,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    /// Who produced the current verdict (`probe` or `request`); null before any.
    pub source: Option<Source>,
    pub consecutive_failures: u32,
    pub last_probe: Option<LastProbe>,
}

impl Default for CliHealth {
    fn default() -> Self {
        CliHealth {
            ok: true,
            last_probed_at: None,
            last_ok_at: None,
            error_kind: None,
            error_message: None,
            source: None,
            consecutive_failures: 0,
            last_probe: None,
        }
    }
}

/// Shared health state. Cheap to read; writes are rare.
#[derive(Debug)]
pub struct Health {
    state: Mutex<CliHealth>,
    /// Wakes the probe task: a request-path auth verdict asks for a confirming probe,
    /// a reload may change the interval.
    pub probe_wakeup: Notify,
    /// Wakes the probe task to re-read its settings (a reload changed the interval)
    /// without probing now.
    pub settings_changed: Notify,
    /// True while the first probe after start is running. Requests arriving meanwhile wait
    /// for its verdict (bounded by [`STARTUP_PROBE_WAIT`]) instead of each spawning a CLI
    /// of their own: a logged-out CLI then costs one process, and clients get the gate's
    /// 401 as soon as that one probe knows.
    startup_probe: tokio::sync::watch::Sender<bool>,
}

/// The longest a request waits for the first probe's verdict before running anyway.
pub const STARTUP_PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

impl Default for Health {
    fn default() -> Self {
        Health {
            state: Mutex::default(),
            probe_wakeup: Notify::new(),
            settings_changed: Notify::new(),
            startup_probe: tokio::sync::watch::Sender::new(false),
        }
    }
}

fn cut(message: &str) -> String {
    message.chars().take(ERROR_MESSAGE_MAX_CHARS).collect()
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, CliHealth> {
        // A poisoned lock only means a panic elsewhere mid-update of plain data; the
        // state is still a valid value, so keep serving it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn snapshot(&self) -> CliHealth {
        self.lock().clone()
    }

    pub fn is_ok(&self) -> bool {
        self.lock().ok
    }

    /// Contract `mark_ok`: `last_probed_at` = `last_ok_at` = now, error fields cleared.
    pub fn mark_ok(&self, source: Source) {
        let now = now_rfc3339();
        let mut s = self.lock();
        s.ok = true;
        s.last_probed_at = Some(now.clone());
        s.last_ok_at = Some(now);
        s.error_kind = None;
        s.error_message = None;
        s.source = Some(source);
        s.consecutive_failures = 0;
    }

    /// A verdict of an `unhealthy` kind: `ok=false`, `last_probed_at`, error fields set,
    /// `last_ok_at` kept. Returns true if this flipped the state from ok to failed.
    pub fn mark_failed(&self, source: Source, kind: &str, message: &str) -> bool {
        let mut s = self.lock();
        let flipped = s.ok;
        s.ok = false;
        s.last_probed_at = Some(now_rfc3339());
        s.error_kind = Some(kind.to_string());
        s.error_message = Some(cut(message));
        s.source = Some(source);
        s.consecutive_failures = s.consecutive_failures.saturating_add(1);
        flipped
    }

    /// Record a probe run (all outcomes) for `/v1/auth/status`.
    pub fn record_probe(&self, probe: LastProbe) {
        self.lock().last_probe = Some(LastProbe {
            message: probe.message.as_deref().map(cut),
            ..probe
        });
    }

    /// Marks the first probe as pending; called by `serve` before it accepts connections
    /// (so no request can slip in before the mark) when the periodic probe is enabled.
    pub fn expect_startup_probe(&self) {
        self.startup_probe.send_replace(true);
    }

    /// True while the first probe after start is still running.
    pub fn startup_probe_pending(&self) -> bool {
        *self.startup_probe.borrow()
    }

    /// Waits (bounded) while the first probe after start is still running.
    pub async fn await_startup_probe(&self) {
        let mut rx = self.startup_probe.subscribe();
        let _ = tokio::time::timeout(STARTUP_PROBE_WAIT, rx.wait_for(|running| !running)).await;
    }

    /// Some(kind) while the gate is closed (CLI known unhealthy).
    pub fn gate(&self) -> Option<CliHealth> {
        let s = self.lock();
        (!s.ok).then(|| s.clone())
    }
}

/// Serializes probes (the periodic task and `POST /admin/probe`).
static PROBE_SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs one probe now with the current rules' probe settings and records its verdict.
/// Only an `unhealthy` kind closes the gate; other failures are inconclusive.
pub async fn probe_once(state: &crate::state::AppState, source: Source) -> ProbeOutcome {
    use crate::backend::{CliEvent, CliRequest};
    let _serial = PROBE_SERIAL.lock().await;
    let rules = state.rules.load_full();
    let settings = rules.probe().clone();
    let started = std::time::Instant::now();
    let mut run = state.backend.start(CliRequest {
        prompt: settings.prompt.clone(),
        attachments: Vec::new(),
        system_prompt: None,
        model: settings.model.clone(),
        timeout: Some(settings.timeout),
        bypass_queue: true,
    });
    let result = loop {
        match run.recv().await {
            Some(CliEvent::Done(r)) => break r,
            Some(_) => continue,
            None => {
                break Err(Box::new(crate::rules::FailureFacts {
                    condition: Some(crate::rules::GatewayCondition::NoResult),
                    ..Default::default()
                }))
            }
        }
    };
    let elapsed = started.elapsed();
    let (outcome, kind, message) = match result {
        Ok(_) => {
            state.health.mark_ok(source);
            (ProbeOutcome::Ok, None, None)
        }
        Err(facts) => {
            let verdict = rules.classify(&facts);
            if verdict.unhealthy {
                state.mark_unhealthy(source, &verdict.kind, &verdict.message);
                (
                    ProbeOutcome::Unhealthy,
                    Some(verdict.kind),
                    Some(verdict.message),
                )
            } else {
                (
                    ProbeOutcome::Inconclusive,
                    Some(verdict.kind),
                    Some(verdict.message),
                )
            }
        }
    };
    let label = match outcome {
        ProbeOutcome::Ok => "ok",
        ProbeOutcome::Unhealthy => "unhealthy",
        ProbeOutcome::Inconclusive => "inconclusive",
    };
    tracing::info!(
        outcome = label,
        kind = kind.as_deref().unwrap_or(""),
        duration_ms = elapsed.as_millis() as u64,
        "CLI probe"
    );
    state
        .metrics
        .probes
        .get_or_create(&crate::metrics::OutcomeLabels {
            outcome: label.into(),
        })
        .inc();
    state.metrics.probe_last_duration.set(elapsed.as_secs_f64());
    state
        .metrics
        .cli_health_ok
        .set(i64::from(state.health.is_ok()));
    state.health.record_probe(LastProbe {
        at: now_rfc3339(),
        outcome,
        kind,
        message,
        duration_ms: elapsed.as_millis() as u64,
    });
    outcome
}

/// The periodic probe: first run right after start, then every `probe.interval`
/// (`probe.unhealthy_interval` while unhealthy). Woken early by a request-path unhealthy
/// verdict (probe now) or by a reload (re-time only). Interval 0 disables the timer.
pub async fn probe_loop(state: crate::state::AppState) {
    let mut last_run = tokio::time::Instant::now();
    // Interval 0 disables the periodic probe, including the one at start; a request-path
    // verdict or POST /admin/probe still probes.
    let mut run_now = !state.rules.load().probe().interval.is_zero();
    loop {
        if run_now {
            probe_once(&state, Source::Probe).await;
            state.health.startup_probe.send_replace(false);
            last_run = tokio::time::Instant::now();
        }
        let interval = {
            let rules = state.rules.load();
            let p = rules.probe();
            if !state.health.is_ok() && !p.unhealthy_interval.is_zero() && !p.interval.is_zero() {
                p.unhealthy_interval.min(p.interval)
            } else if !state.health.is_ok() && !p.unhealthy_interval.is_zero() {
                p.unhealthy_interval
            } else {
                p.interval
            }
        };
        let timer = async {
            if interval.is_zero() {
                std::future::pending::<()>().await
            } else {
                tokio::time::sleep_until(last_run + interval).await
            }
        };
        tokio::select! {
            _ = timer => run_now = true,
            _ = state.health.probe_wakeup.notified() => run_now = true,
            _ = state.health.settings_changed.notified() => run_now = false,
        }
    }
}
